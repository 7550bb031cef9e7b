"""Vectorized projections of non-negative integers onto restricted bit patterns.

Used by the orchestrators (k-bit limits, bit windows) and by squeeze-out (emptying planes with the
error compensated in the planes kept). Values are non-negative integer arrays; everything is elementwise.
"""

from __future__ import annotations

import functools

import numpy as np

ROUNDINGS = ("nearest", "floor", "ceil")


def group_bitmask(allowed: np.ndarray, cell_bits: int) -> np.ndarray:
    """(..., G) bool allowed cell groups -> (...) int64 mask of the bits those groups hold."""
    groups = allowed.shape[-1]
    per_group = ((1 << cell_bits) - 1) << (cell_bits * np.arange(groups, dtype=np.int64))
    return (allowed.astype(np.int64) * per_group).sum(axis=-1)


def _highest_bit(values: np.ndarray) -> np.ndarray:
    """Index of the highest set bit of each positive value (exact below 2**53)."""
    return np.frexp(values.astype(np.float64))[1].astype(np.int64) - 1


def _project_bitwise(values: np.ndarray, mask: np.ndarray, rounding: str) -> np.ndarray:
    """:func:`project_to_mask` by bit arithmetic (any width below 2**62)."""
    bad = values & ~mask
    fits = bad == 0
    h = np.where(fits, 0, _highest_bit(np.where(fits, 1, bad)))
    below = (np.int64(1) << h) - 1  # bits under the highest offending bit
    through = (np.int64(1) << (h + 1)) - 1  # ... and that bit
    high = values & ~through
    floor = high | (mask & below)
    ceil = ((high | ~mask | through) + 1) & mask
    ceil_ok = ceil > values
    if rounding == "floor":
        out = floor
    elif rounding == "ceil":
        out = np.where(ceil_ok, ceil, floor)
    elif rounding == "nearest":
        out = np.where(ceil_ok & (ceil - values < values - floor), ceil, floor)
    else:
        raise ValueError(f"unknown rounding {rounding!r}; choose one of {', '.join(ROUNDINGS)}")
    return np.where(fits, values, out)


#: widths up to this many bits project through a cached (mask, value) lookup table
TABLE_BITS = 10


@functools.lru_cache(maxsize=32)
def _projection_table(n_bits: int, rounding: str) -> np.ndarray:
    """Flat int16 table of :func:`_project_bitwise`: entry ``(mask << n_bits) | value`` (n_bits <= 14)."""
    everything = np.arange(1 << n_bits, dtype=np.int64)
    table = _project_bitwise(everything[None, :], everything[:, None], rounding)
    return np.ascontiguousarray(table.astype(np.int16).ravel())


def project_to_mask(values: np.ndarray, mask: np.ndarray, rounding: str = "nearest",
                    n_bits: int | None = None) -> np.ndarray:
    """Nearest value to each of ``values`` whose set bits all lie in ``mask``.

    values: non-negative integer array; mask: integer bit masks broadcastable to it.
    rounding: ``nearest`` (ties go down), ``floor`` (largest fitting value <= x) or ``ceil``
    (smallest fitting value >= x, falling back to ``floor`` when none exists).
    n_bits: a width every value and mask fits in (None: found from the data).
    Narrow widths (<= :data:`TABLE_BITS` bits) use a cached lookup table and return int16; wider
    ones use bit arithmetic and return int64.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; choose one of {', '.join(ROUNDINGS)}")
    values = np.asarray(values)
    mask = np.asarray(mask)
    if n_bits is None:
        top = int(max(values.max(initial=0), mask.max(initial=0)))
        n_bits = max(top.bit_length(), 1)
    if n_bits <= TABLE_BITS:
        index = np.left_shift(mask, n_bits, dtype=np.int32) | values.astype(np.int32, copy=False)
        return np.take(_projection_table(n_bits, rounding), index)
    values = values.astype(np.int64, copy=False)
    return _project_bitwise(values, np.broadcast_to(mask.astype(np.int64, copy=False), values.shape), rounding)


def values_with_k_bits(k: int, n_bits: int) -> np.ndarray:
    """Sorted int64 array of every value below 2**n_bits with at most ``k`` set bits."""
    everything = np.arange(1 << n_bits, dtype=np.int64)
    return everything[np.bitwise_count(everything) <= k]


def project_to_set(values: np.ndarray, allowed: np.ndarray, rounding: str = "nearest") -> np.ndarray:
    """Nearest member of the sorted 1-D ``allowed`` set for each of ``values`` (ties go down).

    ``floor``/``ceil`` pick the member just below/above, clamped to the set's ends.
    """
    values = np.asarray(values, dtype=np.int64)
    upper_idx = np.clip(np.searchsorted(allowed, values, side="left"), 0, len(allowed) - 1)
    lower_idx = np.clip(np.searchsorted(allowed, values, side="right") - 1, 0, len(allowed) - 1)
    lower, upper = allowed[lower_idx], allowed[upper_idx]
    if rounding == "floor":
        return np.where(lower <= values, lower, upper)
    if rounding == "ceil":
        return np.where(upper >= values, upper, lower)
    if rounding == "nearest":
        return np.where(np.abs(upper - values) < np.abs(values - lower), upper, lower)
    raise ValueError(f"unknown rounding {rounding!r}; choose one of {', '.join(ROUNDINGS)}")
