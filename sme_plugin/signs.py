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


def split_levels(values: np.ndarray, n_bits: int, cell_bits: int) -> np.ndarray:
    """Non-negative ints (..., ) -> (G, ...) uint8 cell levels, G = ceil(n_bits / cell_bits)."""
    groups = -(-n_bits // cell_bits)
    shifts = (cell_bits * np.arange(groups, dtype=np.int64)).reshape((groups,) + (1,) * values.ndim)
    return ((values[None] >> shifts) & ((1 << cell_bits) - 1)).astype(np.uint8)


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
    levels = split_levels(values, n_bits, cell_bits)  # (G, S, P, N, M)
    return Encoding(levels=np.ascontiguousarray(levels.swapaxes(0, 1)), signs=signs, offset=offset, cell_bits=cell_bits)
