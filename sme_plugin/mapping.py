"""Crossbar mappers: place a layer's cell levels on ``rows x cols`` crossbars and count them.

A crossbar holds ``geometry.rows x geometry.cols`` cells. Rows are tiled in row blocks of
``geometry.rows`` per part; parts never share a crossbar. Every mapper offers

- ``encode(q, geometry) -> Encoding``: :func:`sme_plugin.signs.encode` under the mapper's sign scheme,
  with segments of the mapper's read rows;
- ``place(q, encoding, geometry) -> MappedLayer``: presence, read rows, crossbar count and index cost,
  all derived from ``encoding`` (levels in physical order); squeezers call it after changing levels;
- ``map(q, geometry) -> MappedLayer`` = ``place(q, encode(q, geometry), geometry)``;
- attributes ``label`` (report label), ``packing`` (``tile``, ``column`` or ``ou``) and ``sign``.

Mappers: ``isaac`` (dense, a weight's cells adjacent in one crossbar row), ``bitplane`` (bit-slice, every
plane-tile allocated), ``sme`` (bit-slice, only non-empty plane-tiles / plane-columns / segment-columns
allocated) and ``hybrid`` (per layer the cheaper of ``isaac`` and ``sme``).

Index accounting (bits of routing memory, reported as ``index_bits``):

- ``tile`` packing: none (a crossbar holds one whole plane-tile; its routing is fixed per crossbar);
- ``column`` packing: an output tag per non-empty plane-column of ``ceil(log2 M)`` (output column)
  + ``ceil(log2 G)`` (shift) + ``ceil(log2 S)`` (sign) bits;
- ``ou`` packing: that tag per non-empty segment-column, plus an input-select index of
  ``ceil(log2 N)`` bits per row of every band.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from . import signs
from .hookspecs import hookimpl
from .params import StrategyParams
from .types import Encoding, Geometry, MappedLayer, QuantizedLayer

SignScheme = Literal["differential", "offset", "segment-offset"]
Packing = Literal["tile", "column", "ou"]


def ceil_div(a, b):
    """Elementwise ``ceil(a / b)`` for non-negative integers (arrays or ints)."""
    return -(-a // b)


def index_bits_for(count: int) -> int:
    """Bits of an index that addresses ``count`` items (0 for a single item)."""
    return int(count - 1).bit_length() if count > 1 else 0


def block_reduce(array: np.ndarray, block_rows: int, block_cols: int, reducer=np.any) -> np.ndarray:
    """(..., N, M) -> (..., ceil(N/block_rows), ceil(M/block_cols)) reduced over each block.

    The array is zero-padded to whole blocks, so ``reducer`` must ignore zeros (``any``, ``sum``).
    """
    *lead, rows, cols = array.shape
    blocks_r, blocks_c = ceil_div(rows, block_rows), ceil_div(cols, block_cols)
    pad = [(0, 0)] * len(lead) + [(0, blocks_r * block_rows - rows), (0, blocks_c * block_cols - cols)]
    tiled = np.pad(array, pad).reshape(*lead, blocks_r, block_rows, blocks_c, block_cols)
    return reducer(tiled, axis=(-3, -1))


def block_expand(blocks: np.ndarray, block_rows: int, block_cols: int, rows: int, cols: int) -> np.ndarray:
    """Inverse of :func:`block_reduce`'s tiling: (..., NB, MB) -> (..., rows, cols), one value per block."""
    return np.repeat(np.repeat(blocks, block_rows, axis=-2), block_cols, axis=-1)[..., :rows, :cols]


def region_shape(packing: str, geometry: Geometry) -> tuple[int, int]:
    """(rows, cols) of the unit a packing allocates: plane-tile, plane-column of a row block, or segment-column."""
    if geometry.rows < 1 or geometry.cols < 1:
        raise ValueError(f"crossbar must have at least one row and column, got {geometry.rows}x{geometry.cols}")
    if packing == "tile":
        return geometry.rows, geometry.cols
    if packing == "column":
        return geometry.rows, 1
    if packing == "ou":
        if geometry.ou_rows < 1 or geometry.rows % geometry.ou_rows:
            raise ValueError(f"ou_rows={geometry.ou_rows} must divide the crossbar rows ({geometry.rows})")
        return geometry.ou_rows, 1
    raise ValueError(f"unknown packing {packing!r}; choose tile, column or ou")


def digital_ops(offset: np.ndarray, read_rows: int) -> int:
    """Offset corrections per output position: distinct non-zero offsets per (read group, column).

    offset: (P, N, M) int64 in physical order. A (segment, column) whose rows share one offset ``o``
    needs one correction ``o * sum(x over the segment)``; reordered rows may hold several.
    """
    ordered = np.sort(signs.segment_view(offset, read_rows), axis=2)  # (P, segments, read_rows, M)
    new = np.ones(ordered.shape, dtype=bool)
    new[:, :, 1:] = ordered[:, :, 1:] != ordered[:, :, :-1]
    return int((new & (ordered != 0)).sum())


def _check_cell_bits(cell_bits: int) -> int:
    if not 1 <= cell_bits <= 8:
        raise ValueError(f"cell_bits must be in 1..8, got {cell_bits}")
    return cell_bits


class _Mapper:
    """Shared construction and ``map`` of every mapper."""

    def __init__(self, params):
        self.params = params
        self.sign = params.sign

    def map(self, q: QuantizedLayer, geometry: Geometry) -> MappedLayer:
        """Encode and place ``q`` on crossbars of ``geometry``."""
        return self.place(q, self.encode(q, geometry), geometry)


class IsaacMapper(_Mapper):
    """ISAAC-style dense mapping: a weight's ``S*G`` cells adjacent in one crossbar row.

    crossbars = sum over parts of ``ceil(N/rows) * ceil(M / (cols // (S*G)))``; every cell is present.
    """

    class Params(StrategyParams):
        """sign: sign scheme. weight_bits: bits per weight incl. sign (None: the quantizer's bits;
        16 for the original ISAAC). cell_bits: bits per cell (None: the cell model's; 2 for ISAAC)."""

        sign: SignScheme = "offset"
        weight_bits: int | None = Field(None, ge=2, le=32)
        cell_bits: int | None = Field(None, ge=1, le=8)

    label = "isaac"
    packing = "tile"

    def encode(self, q: QuantizedLayer, geometry: Geometry) -> Encoding:
        """``q.w_int`` re-encoded at ``weight_bits`` bits on cells of ``cell_bits`` bits."""
        weight_bits = self.params.weight_bits or q.bits
        if weight_bits < q.bits:
            raise ValueError(f"isaac weight_bits={weight_bits} is below the quantizer's {q.bits} bits")
        cell_bits = _check_cell_bits(self.params.cell_bits or geometry.cell_bits)
        return signs.encode(q.w_int, q.layer.mask, weight_bits, cell_bits, self.sign, geometry.rows)

    def place(self, q: QuantizedLayer, encoding: Encoding, geometry: Geometry) -> MappedLayer:
        n_sets, n_groups, parts, rows, cols = encoding.levels.shape
        per_row = geometry.cols // (n_sets * n_groups)
        if per_row == 0:
            raise ValueError(
                f"isaac: a weight needs {n_sets * n_groups} cells, more than the {geometry.cols} crossbar columns"
            )
        crossbars = parts * ceil_div(rows, geometry.rows) * ceil_div(cols, per_row)
        return MappedLayer(
            quantized=q,
            encoding=encoding,
            present=np.ones(encoding.levels.shape, dtype=bool),
            geometry=geometry,
            read_rows=geometry.rows,
            crossbars=int(crossbars),
            label=self.label,
            digital_ops=digital_ops(encoding.offset, geometry.rows),
            details={
                "sign": self.sign,
                "cell_bits": encoding.cell_bits,
                "weight_bits": self.params.weight_bits or q.bits,
                "weights_per_row": per_row,
                "crossbar": f"{geometry.rows}x{geometry.cols}",
            },
        )


class _BitSliceMapper(_Mapper):
    """Bit-slice encoding shared by ``bitplane`` and ``sme``: the quantizer's bits on the cell model's cells."""

    packing = "tile"

    def read_rows(self, geometry: Geometry) -> int:
        """Rows summed by one ADC read (also the segment of the segment-offset scheme)."""
        return geometry.rows

    def encode(self, q: QuantizedLayer, geometry: Geometry) -> Encoding:
        cell_bits = _check_cell_bits(geometry.cell_bits)
        return signs.encode(q.w_int, q.layer.mask, q.bits, cell_bits, self.sign, self.read_rows(geometry))

    def _mapped(self, q, encoding, geometry, present, crossbars, index_bits=0) -> MappedLayer:
        read_rows = self.read_rows(geometry)
        return MappedLayer(
            quantized=q,
            encoding=encoding,
            present=present,
            geometry=geometry,
            read_rows=read_rows,
            crossbars=int(crossbars),
            label=self.label,
            index_bits=int(index_bits),
            digital_ops=digital_ops(encoding.offset, read_rows),
            details={
                "packing": self.packing,
                "sign": self.sign,
                "cell_bits": encoding.cell_bits,
                "crossbar": f"{geometry.rows}x{geometry.cols}",
                "ou_rows": geometry.ou_rows,
            },
        )


class BitplaneMapper(_BitSliceMapper):
    """Dense bit-slice mapping: every plane-tile allocated, ``S*G*sum_parts ceil(N/rows)*ceil(M/cols)``."""

    class Params(StrategyParams):
        """sign: sign scheme."""

        sign: SignScheme = "differential"

    label = "bitplane"

    def place(self, q: QuantizedLayer, encoding: Encoding, geometry: Geometry) -> MappedLayer:
        n_sets, n_groups, parts, rows, cols = encoding.levels.shape
        region_shape("tile", geometry)  # validates the crossbar size
        crossbars = n_sets * n_groups * parts * ceil_div(rows, geometry.rows) * ceil_div(cols, geometry.cols)
        return self._mapped(q, encoding, geometry, np.ones(encoding.levels.shape, dtype=bool), crossbars)


class SmeMapper(_BitSliceMapper):
    """Sparse bit-slice mapping: only non-empty regions of the packing are allocated.

    - ``tile``: one crossbar per non-empty plane-tile (s, g, part, row block, column block);
    - ``column``: per (part, row block), the non-empty plane-columns packed densely:
      ``ceil(nonempty / cols)`` crossbars each;
    - ``ou``: per (part, segment of ``ou_rows`` rows), ``ceil(nonempty segment-columns / cols)`` bands;
      per part ``ceil(bands / (rows // ou_rows))`` crossbars; reads ``ou_rows`` rows at a time.
    """

    class Params(StrategyParams):
        """sign: sign scheme. packing: allocation unit (plane-tile, plane-column, operation-unit band)."""

        sign: SignScheme = "differential"
        packing: Packing = "column"

    label = "sme"

    def __init__(self, params: Params):
        super().__init__(params)
        self.packing = params.packing

    def read_rows(self, geometry: Geometry) -> int:
        return geometry.ou_rows if self.packing == "ou" else geometry.rows

    def place(self, q: QuantizedLayer, encoding: Encoding, geometry: Geometry) -> MappedLayer:
        n_sets, n_groups, _, n_rows, n_cols = encoding.levels.shape
        region_rows, region_cols = region_shape(self.packing, geometry)
        occupied = block_reduce(encoding.levels != 0, region_rows, region_cols)  # (S, G, P, NB, MB)
        present = block_expand(occupied, region_rows, region_cols, n_rows, n_cols)
        if self.packing == "tile":
            return self._mapped(q, encoding, geometry, present, occupied.sum())
        per_block = occupied.sum(axis=(0, 1, 4))  # (P, NB) non-empty plane-/segment-columns
        tags = int(occupied.sum()) * (index_bits_for(n_cols) + index_bits_for(n_groups) + index_bits_for(n_sets))
        bands = ceil_div(per_block, geometry.cols)
        if self.packing == "column":
            return self._mapped(q, encoding, geometry, present, bands.sum(), tags)
        crossbars = ceil_div(bands.sum(axis=1), geometry.rows // geometry.ou_rows).sum()
        selects = int(bands.sum()) * geometry.ou_rows * index_bits_for(n_rows)
        return self._mapped(q, encoding, geometry, present, crossbars, tags + selects)


class HybridMapper(_Mapper):
    """Per layer the cheaper (fewer crossbars) of ``isaac`` (same weight bits) and ``sme``.

    ``encode``/``place`` are those of ``sme`` (what squeezers re-place); ``details["chosen"]`` names the pick.
    """

    class Params(StrategyParams):
        """sign, packing: of the ``sme`` candidate. isaac_sign: sign scheme of the ``isaac`` candidate."""

        sign: SignScheme = "differential"
        packing: Packing = "column"
        isaac_sign: SignScheme = "offset"

    label = "hybrid"

    def __init__(self, params: Params):
        super().__init__(params)
        self.packing = params.packing
        self.isaac = IsaacMapper(IsaacMapper.Params(sign=params.isaac_sign))
        self.sme = SmeMapper(SmeMapper.Params(sign=params.sign, packing=params.packing))

    def encode(self, q: QuantizedLayer, geometry: Geometry) -> Encoding:
        return self.sme.encode(q, geometry)

    def place(self, q: QuantizedLayer, encoding: Encoding, geometry: Geometry) -> MappedLayer:
        return self._relabel(self.sme.place(q, encoding, geometry), "sme")

    def map(self, q: QuantizedLayer, geometry: Geometry) -> MappedLayer:
        dense = self.isaac.map(q, geometry)
        sparse = self.sme.map(q, geometry)
        if sparse.crossbars < dense.crossbars:
            return self._relabel(sparse, "sme")
        return self._relabel(dense, "isaac")

    def _relabel(self, mapped: MappedLayer, chosen: str) -> MappedLayer:
        mapped.label = self.label
        mapped.details["chosen"] = chosen
        return mapped


@hookimpl
def sme_register_mappers(register):
    register("isaac", IsaacMapper)
    register("bitplane", BitplaneMapper)
    register("sme", SmeMapper)
    register("hybrid", HybridMapper)
