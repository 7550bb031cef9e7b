"""Vectorized projections of non-negative integers onto restricted bit patterns.

Used by the orchestrators (k-bit limits, bit windows), by squeeze-out (emptying planes with the
error compensated in the planes kept) and by fine-tuning (:mod:`sme_plugin.finetune`, which projects
real-valued weights every step). Everything is elementwise. The bit projections take numpy arrays or
torch tensors and run the same code on both (:func:`project_to_mask`, :func:`project_in_range`).
"""

from __future__ import annotations

import functools

import numpy as np

ROUNDINGS = ("nearest", "floor", "ceil")


class _NumpyOps:
    """The few array operations :func:`_project_bitwise` needs, for numpy arrays."""

    where = staticmethod(np.where)

    @staticmethod
    def highest_bit(values):
        """Index of the highest set bit of each positive value (exact below 2**53)."""
        return np.frexp(values.astype(np.float64))[1].astype(np.int64) - 1

    @staticmethod
    def take(table: np.ndarray, index):
        return np.take(table, index)

    @staticmethod
    def as_int(values, dtype=np.int64):
        return values.astype(dtype, copy=False)

    @staticmethod
    def is_integer(values) -> bool:
        return np.issubdtype(values.dtype, np.integer)

    floor, ceil, minimum, maximum = np.floor, np.ceil, np.minimum, np.maximum


class _TorchOps:
    """The same operations for torch tensors (any device): the projections below run unchanged on both."""

    def __init__(self, torch):
        self.torch = torch
        self.where, self.floor, self.ceil = torch.where, torch.floor, torch.ceil
        self.minimum, self.maximum = torch.minimum, torch.maximum

    def highest_bit(self, values):
        return self.torch.frexp(values.to(self.torch.float64))[1].to(self.torch.int64) - 1

    def take(self, table: np.ndarray, index):
        return self.torch.take(_torch_table(table, index.device), index).to(self.torch.int64)

    def as_int(self, values, dtype=None):
        return values.to(self.torch.int64)

    def is_integer(self, values) -> bool:
        return not (values.dtype.is_floating_point or values.dtype.is_complex)


def _ops(values):
    """The operations of ``values``' array library: numpy, or torch for a tensor (imported only then)."""
    if isinstance(values, np.ndarray) or np.isscalar(values):
        return _NumpyOps
    import torch

    if isinstance(values, torch.Tensor):
        return _TorchOps(torch)
    raise TypeError(f"expected a numpy array or a torch tensor, got {type(values).__name__}")


def _torch_table(table: np.ndarray, device):
    """A projection table as a tensor on ``device`` (cached per table and device)."""
    key = (id(table), str(device))
    cached = _TORCH_TABLES.get(key)
    if cached is None:
        import torch

        cached = _TORCH_TABLES[key] = (table, torch.from_numpy(table).to(device))
    return cached[1]


_TORCH_TABLES: dict = {}


def _project_bitwise(values, mask, rounding: str, ops=_NumpyOps):
    """:func:`project_to_mask` by bit arithmetic (any width below 2**62), on int64 numpy arrays or tensors."""
    bad = values & ~mask
    fits = bad == 0
    h = ops.where(fits, 0, ops.highest_bit(ops.where(fits, 1, bad)))
    one = h * 0 + 1
    below = (one << h) - 1  # bits under the highest offending bit
    through = (one << (h + 1)) - 1  # ... and that bit
    high = values & ~through
    floor = high | (mask & below)
    ceil = ((high | ~mask | through) + 1) & mask
    ceil_ok = ceil > values
    if rounding == "floor":
        out = floor
    elif rounding == "ceil":
        out = ops.where(ceil_ok, ceil, floor)
    elif rounding == "nearest":
        out = ops.where(ceil_ok & (ceil - values < values - floor), ceil, floor)
    else:
        raise ValueError(f"unknown rounding {rounding!r}; choose one of {', '.join(ROUNDINGS)}")
    return ops.where(fits, values, out)


#: widths up to this many bits project through a cached (mask, value) lookup table
TABLE_BITS = 10


@functools.lru_cache(maxsize=32)
def _projection_table(n_bits: int, rounding: str) -> np.ndarray:
    """Flat int16 table of :func:`_project_bitwise`: entry ``(mask << n_bits) | value`` (n_bits <= 14)."""
    everything = np.arange(1 << n_bits, dtype=np.int64)
    table = _project_bitwise(everything[None, :], everything[:, None], rounding)
    return np.ascontiguousarray(table.astype(np.int16).ravel())


def _width(values, mask) -> int:
    """Bits every one of ``values`` and ``mask`` fits in (at least 1)."""
    if isinstance(values, np.ndarray):
        top = int(max(values.max(initial=0), mask.max(initial=0)))
    else:
        top = int(max(values.max(), mask.max())) if values.numel() and mask.numel() else 0
    return max(top.bit_length(), 1)


def project_to_mask(values, mask, rounding: str = "nearest", n_bits: int | None = None):
    """Nearest value to each of ``values`` whose set bits all lie in ``mask``.

    values: non-negative integer array; mask: integer bit masks broadcastable to it. Both numpy arrays,
    or both torch tensors (any device; the same code runs on either).
    rounding: ``nearest`` (ties go down), ``floor`` (largest fitting value <= x) or ``ceil``
    (smallest fitting value >= x, falling back to ``floor`` when none exists).
    n_bits: a width every value and mask fits in (None: found from the data).
    Narrow widths (<= :data:`TABLE_BITS` bits) use a cached lookup table and return int16 (numpy) or
    int64 (torch); wider ones use bit arithmetic and return int64.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; choose one of {', '.join(ROUNDINGS)}")
    ops = _ops(values)
    if ops is _NumpyOps:
        values, mask = np.asarray(values), np.asarray(mask)
    if n_bits is None:
        n_bits = _width(values, mask)
    if ops is _NumpyOps:
        if n_bits <= TABLE_BITS:
            index = np.left_shift(mask, n_bits, dtype=np.int32) | values.astype(np.int32, copy=False)
            return np.take(_projection_table(n_bits, rounding), index)
        values = values.astype(np.int64, copy=False)
        return _project_bitwise(values, np.broadcast_to(mask.astype(np.int64, copy=False), values.shape), rounding)
    values, mask = ops.as_int(values), ops.as_int(mask)
    if n_bits <= TABLE_BITS:
        return ops.take(_projection_table(n_bits, rounding), (mask << n_bits) | values)
    return _project_bitwise(values, mask.expand_as(values), rounding, ops)


def project_in_range(values, mask, low, high, n_bits: int):
    """Nearest member of ``{v : v & ~mask == 0, max(low, 0) <= v <= min(high, 2**n_bits - 1)}`` to each
    of ``values``, ties going down, and where that set is empty (the value returned there is meaningless).

    The one projection of stored values onto allowed bit patterns: the orchestrators and squeezers call it
    on integer stored values (numpy), fine-tuning on real-valued ones in integer units (torch, any device;
    :func:`sme_plugin.orchestrate.project_weights`). ``values`` real or integer, ``mask`` integer bit
    masks, ``low``/``high`` integer bounds, all broadcastable together. Returns (int64 projections,
    bool infeasible); for an integer value inside the range this is ``project_to_mask(..., "nearest")``,
    with ``ceil``/``floor`` taking over where the nearest fitting value leaves the range.
    """
    ops = _ops(values)
    if ops.is_integer(values):  # the nearest fitting value, re-projected only where it leaves the range
        out = ops.as_int(project_to_mask(values, mask, "nearest", n_bits))
        zero = out * 0
        low, high = zero + low, zero + high
        bad = (out < low) | (out > high)
        infeasible = bad
        if bad.any():
            infeasible = bad.copy() if ops is _NumpyOps else bad.clone()
            out[bad], infeasible[bad] = _in_range(ops, values[bad], (zero + mask)[bad], low[bad], high[bad], n_bits)
        return out, infeasible
    return _in_range(ops, values, mask, low, high, n_bits)


def _in_range(ops, values, mask, low, high, n_bits: int):
    """:func:`project_in_range` of real or integer ``values``: the nearer of the largest fitting value
    below and the smallest above, each within the range."""
    top = (1 << n_bits) - 1
    zero = ops.as_int(values * 0)  # int64 zeros of the values' shape
    lo = ops.maximum(zero + low, zero)
    hi = ops.minimum(zero + high, zero + top)
    x = ops.minimum(ops.maximum(values, lo), hi)
    down = ops.minimum(ops.maximum(ops.as_int(ops.floor(x)), zero), zero + top)
    up = ops.minimum(ops.maximum(ops.as_int(ops.ceil(x)), zero), zero + top)
    below = ops.as_int(project_to_mask(down, mask, "floor", n_bits))  # largest fitting value <= x
    above = ops.as_int(project_to_mask(up, mask, "ceil", n_bits))  # smallest fitting value >= x (if any)
    below_ok = (below >= lo) & (below <= hi)
    above_ok = (above >= x) & (above <= hi) & (above >= lo)
    choose_above = above_ok & (~below_ok | (above - x < x - below))
    return ops.where(choose_above, above, below), ~(below_ok | above_ok)


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
