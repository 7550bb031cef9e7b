"""Building placements: which cells sit where on which crossbar, and how they are read.

Mappers and squeezers describe their arrangement as reads (each with its part, the logical rows of
its row slots and where those rows sit in the crossbar) and column slots (logical column, sign set and
cell group of each); :func:`assemble` gathers the cell levels from the encoding and returns the
:class:`~sme_plugin.types.Placement` every count, cost and simulation reads. The packers here are
shared by the mappers (dense tiles, packed plane-/segment-columns, operation-unit bands) and by
row compaction.
"""

from __future__ import annotations

import numpy as np

from .types import Encoding, Placement

#: cells gathered per chunk by :func:`assemble` (bounds its int64 index temporaries)
GATHER_CELLS = 1 << 22


def ceil_div(a, b):
    """Elementwise ``ceil(a / b)`` for non-negative integers (arrays or ints)."""
    return -(-a // b)


def index_bits_for(count: int) -> int:
    """Bits of an index that addresses ``count`` items (0 for a single item)."""
    return int(count - 1).bit_length() if count > 1 else 0


def block_rows(block: np.ndarray, height: int, n_rows: int) -> np.ndarray:
    """(R,) row-block index of each read -> (R, height) logical rows ``block*height + k`` (-1 past ``n_rows``)."""
    rows = block[:, None] * height + np.arange(height)
    return np.where(rows < n_rows, rows, -1)


def assemble(
    encoding: Encoding,
    *,
    rows: int,
    cols: int,
    part: np.ndarray,
    logical_rows: np.ndarray,
    physical_rows: np.ndarray,
    crossbar: np.ndarray,
    crossbars: int,
    column: np.ndarray,
    sign_set: np.ndarray,
    group: np.ndarray,
    segment_rows: int,
    index_bits: int = 0,
) -> Placement:
    """The placement of ``encoding``'s cells described by reads and column slots.

    Parameters
    ----------
    encoding : levels (S, G, P, N, M) in logical order and the digital offsets.
    rows, cols : crossbar size.
    part : (R,) part of each read.
    logical_rows, physical_rows : (R, K) logical row n of each row slot and its crossbar row (-1 unused).
    crossbar : (R,) crossbar of each read; crossbars: how many there are.
    column : (R, J) logical column m of each column slot (-1 unused); its physical column is the slot index.
    sign_set, group : (R, J) sign set and cell group each column slot holds.
    segment_rows : rows sharing one digital offset correction (the segment of ``segment-offset``).
    index_bits : routing memory of this arrangement.
    """
    n_sets, n_groups, parts, n_rows, n_cols = encoding.levels.shape
    used_rows, used_cols = logical_rows >= 0, column >= 0
    sign_set = np.where(used_cols, sign_set, 0).astype(np.int8)
    group = np.where(used_cols, group, 0).astype(np.int8)
    return Placement(
        shape=(parts, n_rows, n_cols),
        rows=rows,
        cols=cols,
        crossbars=int(crossbars),
        crossbar=np.asarray(crossbar, dtype=np.int64),
        row=np.where(used_rows, physical_rows, -1).astype(np.int32),
        col=np.where(used_cols, np.arange(column.shape[1]), -1).astype(np.int32),
        input=np.where(used_rows, part[:, None] * n_rows + logical_rows, -1).astype(np.int64),
        output=np.where(used_cols, part[:, None] * n_cols + column, -1).astype(np.int64),
        sign_set=sign_set,
        group=group,
        levels=_gather(encoding.levels, part, logical_rows, column, sign_set, group),
        signs=np.asarray(encoding.signs, dtype=np.int64),
        cell_bits=encoding.cell_bits,
        offset=encoding.offset,
        offset_segment=np.arange(parts)[:, None] * ceil_div(n_rows, segment_rows) + np.arange(n_rows) // segment_rows,
        index_bits=int(index_bits),
    )


def _gather(levels: np.ndarray, part, logical_rows, column, sign_set, group) -> np.ndarray:
    """(R, K, J) uint8 ``levels[s, g, p, n, m]`` of every slot pair, 0 where a slot is unused.

    Reads that drive aligned blocks of K consecutive rows (every mapper's) copy K-row column runs of a
    column-major copy of the levels; other reads (row compaction) gather cell by cell."""
    n_sets, n_groups, parts, n_rows, n_cols = levels.shape
    reads, height, width = len(part), logical_rows.shape[1], column.shape[1]
    first = np.maximum(logical_rows[:, :1], 0)
    if reads and (first % height == 0).all() and (block_rows(first[:, 0] // height, height, n_rows) == logical_rows).all():
        blocks = -(-n_rows // height)
        runs = np.zeros((n_sets, n_groups, parts, n_cols + 1, blocks * height), dtype=np.uint8)  # column M: zeros
        runs[:, :, :, :n_cols, :n_rows] = levels.transpose(0, 1, 2, 4, 3)
        runs = runs.reshape(-1, blocks, height)  # (S*G*P*(M+1), blocks, K): one K-row run per block
        index = ((sign_set.astype(np.int64) * n_groups + group) * parts + part[:, None]) * (n_cols + 1)
        index = (index + np.where(column >= 0, column, n_cols)) * blocks + first // height  # (R, J)
        return np.ascontiguousarray(runs.reshape(-1, height)[index].transpose(0, 2, 1))
    flat = np.concatenate([np.zeros(1, dtype=np.uint8), levels.reshape(-1)])
    index_type = np.int64 if flat.size >= 1 << 30 else np.int32
    unused = -(flat.size + 1)
    col_term = (((sign_set.astype(np.int64) * n_groups + group) * parts + part[:, None]) * n_rows) * n_cols + column
    col_term = np.where(column >= 0, col_term + 1, unused).astype(index_type)  # (R, J)
    row_term = np.where(logical_rows >= 0, logical_rows.astype(np.int64) * n_cols, unused).astype(index_type)
    out = np.empty((reads, height, width), dtype=np.uint8)
    step = max(1, GATHER_CELLS // max(height * width, 1))
    for start in range(0, reads, step):  # chunks of reads bound the (chunk, K, J) index temporary
        chunk = slice(start, start + step)
        np.take(flat, row_term[chunk, :, None] + col_term[chunk, None, :], out=out[chunk], mode="clip")
    return out


def pack_columns(occupied: np.ndarray, capacity: int) -> tuple[np.ndarray, ...]:
    """Pack the occupied columns of each (part, block) densely into reads of ``capacity`` column slots.

    occupied : (S, G, P, B, M) bool, column m of sign set s, group g in row block b of part p holds cells.
    Returns (part, block) of each of the R reads and its (R, capacity) column, sign set and group slots
    (column -1 where unused); reads come ordered by (part, block).
    """
    n_sets, n_groups, parts, blocks, n_cols = occupied.shape
    p, b, s, g, m = np.nonzero(occupied.transpose(2, 3, 0, 1, 4))  # ordered by (p, b, s, g, m)
    key = p * blocks + b
    counts = np.bincount(key, minlength=parts * blocks)
    per_key = ceil_div(counts, capacity)
    rank = np.arange(len(key)) - (np.cumsum(counts) - counts)[key]
    read = (np.cumsum(per_key) - per_key)[key] + rank // capacity
    slot = rank % capacity
    read_key = np.repeat(np.arange(parts * blocks), per_key)
    column, sign_set, group = (np.full((len(read_key), capacity), fill, dtype=np.int64) for fill in (-1, 0, 0))
    column[read, slot], sign_set[read, slot], group[read, slot] = m, s, g
    return read_key // blocks, read_key % blocks, column, sign_set, group


def bands_on_crossbars(part: np.ndarray, parts: int, bands_per_crossbar: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Stack the reads (bands) of each part, in order, ``bands_per_crossbar`` to a crossbar.

    part : (R,) part of each read, sorted. Returns the (R,) crossbar and band position of each read and
    the crossbar count; parts never share a crossbar.
    """
    counts = np.bincount(part, minlength=parts)
    rank = np.arange(len(part)) - (np.cumsum(counts) - counts)[part]
    per_part = ceil_div(counts, bands_per_crossbar)
    crossbar = (np.cumsum(per_part) - per_part)[part] + rank // bands_per_crossbar
    return crossbar, rank % bands_per_crossbar, int(per_part.sum())
