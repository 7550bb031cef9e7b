"""Sign schemes: how signed integer weights become non-negative cell levels.

- ``differential``: positive and negative magnitudes on two sign sets (S=2), bits-1 magnitude bits.
- ``offset`` (ISAAC): one set, ``u = w + 2**(bits-1)``, the periphery subtracts ``2**(bits-1) * sum(x)``.
- ``segment-offset``: one set; each segment (``segment_rows`` consecutive rows x one column) stores
  ``u = w - o`` with ``o`` the segment's minimum weight, so a narrow-ranged segment needs few planes;
  the periphery adds ``o * sum(x over the segment's rows)`` (counted as digital work).
"""

from __future__ import annotations

import numpy as np

from .types import Encoding

SIGN_SCHEMES = ("differential", "offset", "segment-offset")


def encoded_bits(scheme: str, bits: int) -> int:
    """Bits of the non-negative value a scheme stores per sign set, for ``bits``-bit weights."""
    return bits - 1 if scheme == "differential" else bits


def segment_view(array: np.ndarray, segment_rows: int, fill=0) -> np.ndarray:
    """(P, N, M) -> (P, ceil(N/segment_rows), segment_rows, M), padding rows with ``fill``."""
    parts, rows, cols = array.shape
    blocks = -(-rows // segment_rows)
    padded = np.full((parts, blocks * segment_rows, cols), fill, dtype=array.dtype)
    padded[:, :rows] = array
    return padded.reshape(parts, blocks, segment_rows, cols)


def segment_offsets(w_int: np.ndarray, mask: np.ndarray, segment_rows: int) -> np.ndarray:
    """(P, N, M) int64 offset of each weight: the minimum existing weight of its segment, 0 where masked out."""
    big = np.iinfo(np.int64).max
    seg = segment_view(np.where(mask, w_int, big), segment_rows, fill=big)
    minimum = seg.min(axis=2, keepdims=True)
    minimum = np.where(minimum == big, 0, minimum)
    rows = w_int.shape[1]
    full = np.broadcast_to(minimum, seg.shape).reshape(w_int.shape[0], -1, w_int.shape[2])[:, :rows]
    return np.where(mask, full, 0)


def scheme_offsets(scheme: str, w_int: np.ndarray, mask: np.ndarray, bits: int, segment_rows: int) -> np.ndarray:
    """(P, N, M) int64 digital offset a scheme subtracts before storing the weights."""
    if scheme == "differential":
        return np.zeros(w_int.shape, dtype=np.int64)
    if scheme == "offset":
        return np.where(mask, -(1 << (bits - 1)), 0).astype(np.int64)
    if scheme == "segment-offset":
        return segment_offsets(w_int, mask, segment_rows)
    raise ValueError(f"unknown sign scheme {scheme!r}; choose one of {', '.join(SIGN_SCHEMES)}")


def cell_levels(stored: np.ndarray, groups: int, cell_bits: int) -> np.ndarray:
    """(S, ...) non-negative stored values -> (S, G, ...) uint8 levels of their G cell groups of
    ``cell_bits`` bits (group g holds bits ``[g*cell_bits, (g+1)*cell_bits)``).

    One whole-array shift per group (G <= 32) writes straight into the uint8 result, so no
    (G, S, ...) int64 temporary is ever held."""
    levels = np.empty((stored.shape[0], groups, *stored.shape[1:]), dtype=np.uint8)
    for g in range(groups):
        np.bitwise_and(stored >> (cell_bits * g), (1 << cell_bits) - 1, out=levels[:, g], casting="unsafe")
    return levels


def stored_values(scheme: str, w_int: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, P, N, M) non-negative values per sign set and the (S,) signs they carry."""
    if scheme == "differential":
        return np.stack([np.maximum(w_int, 0), np.maximum(-w_int, 0)]), np.array([1, -1], dtype=np.int64)
    return (w_int - offset)[None], np.array([1], dtype=np.int64)


def encode(
    w_int: np.ndarray,
    mask: np.ndarray,
    bits: int,
    cell_bits: int,
    scheme: str,
    segment_rows: int = 128,
) -> Encoding:
    """Encode (P, N, M) signed ``bits``-bit weights as cell levels under ``scheme``."""
    offset = scheme_offsets(scheme, w_int, mask, bits, segment_rows)
    values, signs = stored_values(scheme, w_int, offset)
    values = np.where(mask[None], values, 0)
    n_bits = encoded_bits(scheme, bits)
    if values.size and values.max() >= (1 << n_bits):
        raise ValueError(f"weights exceed {bits} bits under the {scheme} sign scheme")
    narrow = values.astype(np.int32) if n_bits < 31 else values  # halves the memory the group shifts read
    levels = cell_levels(narrow, -(-n_bits // cell_bits), cell_bits)
    return Encoding(levels=levels, signs=signs, offset=offset, cell_bits=cell_bits)
