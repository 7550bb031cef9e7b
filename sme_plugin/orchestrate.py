"""Bit orchestrators: rewrite integer weights so their bit patterns are sparser where it saves crossbars.

- ``none`` keeps the weights.
- ``kbits`` limits every magnitude to at most k non-zero bits.
- ``window`` keeps, per segment of the configured mapping and per sign set, only a window of cell groups
  (a group = ``cell_bits`` bits, one crossbar column per weight column), either a fixed number of
  contiguous groups or as many dropped groups as a relative weight-error budget allows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from .bitsets import TABLE_BITS, project_in_range, project_to_mask, project_to_set, values_with_k_bits
from .errors import ConflictError
from .greedy import spend
from .hookspecs import hookimpl
from .mapping import block_any, region_shape
from .params import StrategyParams
from .signs import cell_levels, encoded_bits, scheme_offsets, stored_values
from .types import Layout, QuantizedLayer


def relative_error(before: QuantizedLayer, after: QuantizedLayer) -> float:
    """Relative weight error ``||scale * (w' - w)|| / ||scale * w||`` (0 when both are all zero)."""
    if before.w_int.shape != after.w_int.shape:
        raise ValueError(f"layer {before.layer.name!r}: shapes differ, {before.w_int.shape} vs {after.w_int.shape}")
    change = np.linalg.norm(before.scale * (after.w_int - before.w_int))
    norm = np.linalg.norm(before.dequantized())
    if norm == 0:
        return 0.0 if change == 0 else float("inf")
    return float(change / norm)


def _squared_norm(q: QuantizedLayer) -> float:
    """``||scale * w_int||**2`` in real units."""
    return float(np.square(q.dequantized()).sum())


def _top(q: QuantizedLayer) -> int:
    """Largest magnitude of ``q.bits``-bit sign-magnitude weights; raises if ``q.w_int`` exceeds it."""
    top = (1 << (q.bits - 1)) - 1
    if np.abs(q.w_int).max(initial=0) > top:
        raise ValueError(f"layer {q.layer.name!r}: weights exceed {q.bits}-bit sign-magnitude (|w| <= {top})")
    return top


class NoOrchestrator:
    """Identity: the quantizer's weights go to the mapper unchanged."""

    class Params(StrategyParams):
        """No parameters."""

    per_layer = True

    def __init__(self, params: Params):
        self.params = params

    def orchestrate(self, layers: list[QuantizedLayer], layouts: list[Layout]) -> list[QuantizedLayer]:
        return [q.with_weights(q.w_int.copy()) for q in layers]


class KBitsOrchestrator:
    """Project every magnitude onto the values with at most ``k`` non-zero bits; signs are kept."""

    class Params(StrategyParams):
        """K-bits parameters.

        Attributes
        ----------
        k : int
            Non-zero magnitude bits allowed per weight (1 .. bits-1 of each layer).
        rounding : {"nearest", "floor", "ceil"}
            Which allowed magnitude replaces one that does not fit (ties of ``nearest`` go down).
        """

        k: int = Field(2, ge=1, le=15)
        rounding: Literal["nearest", "floor", "ceil"] = "nearest"

    per_layer = True

    def __init__(self, params: Params):
        self.params = params

    def orchestrate(self, layers: list[QuantizedLayer], layouts: list[Layout]) -> list[QuantizedLayer]:
        out = []
        for q, layout in zip(layers, layouts):
            _top(q)
            if not layout.sparse:  # a dense mapping saves nothing: keep the exact weights
                out.append(q.with_weights(q.w_int.copy()))
                continue
            if self.params.k > q.bits - 1:
                raise ConflictError(
                    f"kbits: k={self.params.k} exceeds the {q.bits - 1} magnitude bits of layer {q.layer.name!r}"
                )
            allowed = values_with_k_bits(self.params.k, q.bits - 1)
            magnitude = project_to_set(np.abs(q.w_int), allowed, self.params.rounding)
            out.append(q.with_weights(np.sign(q.w_int) * magnitude))
        return out


def _narrow(bits: int):
    """Smallest signed integer dtype holding ``bits``-bit stored values and offsets and their range bounds."""
    return np.int16 if bits <= 15 else np.int32


def _unpack(ids: np.ndarray, groups: int) -> np.ndarray:
    """(...) group-set ids -> (..., G) bool membership of each group."""
    return ((ids[..., None] >> np.arange(groups, dtype=ids.dtype)) & 1).astype(bool)


#: stored values a pass over stale units handles at once (bounds the (chunk, G) temporaries)
CHUNK = 1 << 18


@dataclass(frozen=True)
class _Tables:
    """Lookup tables of a layer's projections, rows indexed by ``(window id << n_bits) | value``.

    A window id is a set of cell groups as a G-bit integer. ``mask``: (2**G,) bit mask of each window id.
    ``used``: (2**n_bits,) group-set id of the cell groups a value uses. ``delta`` (rows, G) int32: squared
    change of the projection error when group g leaves the window (0 where the projection does not use
    g); ``high`` / ``low``: the largest / smallest projection involved, to find the values whose range
    limits the table ignores. ``delta`` is None where it would be too large (computed per group then).
    """

    mask: np.ndarray
    used: np.ndarray
    delta: np.ndarray | None = None
    high: np.ndarray | None = None
    low: np.ndarray | None = None
    delta_f32: np.ndarray | None = None  # ``delta`` as float32 (exact: entries below 2**24)


#: largest (windows x values x groups) a ``delta`` table may have
DELTA_ENTRIES = 1 << 22


@functools.lru_cache(maxsize=8)
def _tables(cell_bits: int, groups: int) -> _Tables:
    """The :class:`_Tables` of ``groups`` cell groups of ``cell_bits`` bits."""
    n_bits = groups * cell_bits
    group_bits = ((1 << cell_bits) - 1) << (cell_bits * np.arange(groups, dtype=np.int64))
    ids = np.arange(1 << groups, dtype=np.int64)
    mask = ((ids[:, None] >> np.arange(groups)) & 1) @ group_bits  # (W,)
    used = None
    if n_bits <= 20:
        values = np.arange(1 << n_bits, dtype=np.int64)
        used = (((values[:, None] & group_bits) != 0) << np.arange(groups)).sum(axis=1).astype(np.int32)
    if n_bits > TABLE_BITS or (groups << (groups + n_bits)) > DELTA_ENTRIES:
        return _Tables(mask=mask.astype(np.int32), used=used)
    base = project_to_mask(values[None, :], mask[:, None], "nearest", n_bits).astype(np.int64)  # (W, V)
    dropped = project_to_mask(values[None, :, None], (mask[:, None] & ~group_bits)[:, None, :], "nearest",
                              n_bits).astype(np.int64)  # (W, V, G)
    delta = np.square(dropped - values[None, :, None]) - np.square(base - values)[:, :, None]
    delta = delta.reshape(-1, groups).astype(np.int32)
    return _Tables(mask=mask.astype(np.int32), used=used, delta=delta, delta_f32=delta.astype(np.float32),
                   high=np.maximum(dropped.max(axis=2), base).ravel().astype(np.int32),
                   low=np.minimum(dropped.min(axis=2), base).ravel().astype(np.int32))


class _Units:
    """The stored values of one layer, grouped into units = (sign set, segment), each a row of L slots.

    A unit's window is the set of cell groups its values may use; its stored values are projected onto the
    window's bits (:func:`bitsets.project_to_mask`), within the range that keeps ``|w'| <= 2**(bits-1) - 1``.
    Unit u = ((s * P + p) * RB + rb) * CB + cb holds the ``L = seg_cols * seg_rows`` values of its segment
    in (column, row) order, zero-padded (a zero projects onto zero and costs nothing): per-round work is a
    dense pass over the rows of the units it changes. Units share offsets and scales across sign sets:
    ``spatial = u % (P * RB * CB)``.

    Attributes
    ----------
    top : largest weight magnitude, 2**(bits-1) - 1.
    offset_map : (P, N, M) digital offsets; signs : (S,) sign of each set.
    values, current : (U, L) narrow ints: stored values and their current projections.
    offset : (P*RB*CB, L) narrow ints: digital offset of each slot.
    col_weight : (P*RB*CB, seg_cols) float64 squared scale of each segment column (errors in real units).
    groups, cell_bits, n_bits : G cell groups of ``cell_bits`` bits, ``n_bits = G * cell_bits``.
    min_groups : groups a window keeps at least.
    window : (U,) int32 window id (bit g: group g allowed); after :meth:`drops` the groups in use.
    """

    def __init__(self, quantized, stored, signs, offsets, region, cell_bits, n_groups, min_groups):
        """Units of ``stored`` (S, P, N, M) non-negative values under ``offsets`` (P, N, M), segments of
        ``region`` (rows, cols)."""
        self.quantized = quantized
        self.top = (1 << (quantized.bits - 1)) - 1
        self.groups, self.cell_bits, self.min_groups = n_groups, cell_bits, min_groups
        self.n_bits = n_groups * cell_bits
        dtype = _narrow(max(quantized.bits, self.n_bits))
        self.offset_map = offsets.astype(dtype)
        self.signs = np.asarray(signs, dtype=np.int64)
        self.stored_shape = stored.shape
        n_sets, parts, rows, cols = stored.shape
        self.seg_rows, self.seg_cols = region
        row_blocks, col_blocks = -(-rows // self.seg_rows), -(-cols // self.seg_cols)
        self.blocks = (n_sets, parts, row_blocks, col_blocks)
        self.n_spatial = parts * row_blocks * col_blocks
        self.n_units = n_sets * self.n_spatial
        self.values = self._segment_major(stored.astype(dtype))
        self.offset = self._segment_major(self.offset_map[None])
        self.current = self.values.copy()
        scale = np.broadcast_to(quantized.scale, (parts, 1, cols)).reshape(parts, cols).astype(np.float64)
        padded = np.zeros((parts, col_blocks * self.seg_cols))
        padded[:, :cols] = scale**2
        self.col_weight = np.ascontiguousarray(np.broadcast_to(
            padded.reshape(parts, 1, col_blocks, self.seg_cols), (parts, row_blocks, col_blocks, self.seg_cols)
        ).reshape(self.n_spatial, self.seg_cols))
        self.tables = _tables(cell_bits, n_groups)
        # squared errors of a segment column are integers below 2**24: float32 sums are exact
        self.exact_f32 = self.tables.delta_f32 is not None and self.seg_rows << (2 * self.n_bits) < 1 << 24
        self.group_bits = np.array([((1 << cell_bits) - 1) << (cell_bits * g) for g in range(n_groups)], dtype=np.int32)
        self.window = np.where(self.values.any(axis=1), (1 << n_groups) - 1, 0).astype(np.int32)
        self.low_binds = bool((-self.top - self.offset_map.astype(np.int64)).max(initial=0) > 0)  # any u >= 1 rule
        # (U,) smallest upper range bound top - offset over each unit's non-zero values
        bound = self.top - self.offset[np.arange(self.n_units) % self.n_spatial].astype(np.int32)
        self.high_bound = np.where(self.values != 0, bound, np.int32(1 << 30)).min(axis=1, initial=1 << 30)
        del bound

    @classmethod
    def build(cls, q: QuantizedLayer, layout: Layout, segment: str = "auto") -> _Units:
        """Units of ``q`` for ``segment`` (``auto``: the layout's allocation unit) under the layout's sign
        scheme and offsets (segments of ``layout.read_rows`` rows for ``segment-offset``)."""
        _top(q)
        mask = q.layer.mask
        offsets = scheme_offsets(layout.sign, q.w_int, mask, q.bits, layout.read_rows)
        stored, signs = stored_values(layout.sign, q.w_int, offsets)
        stored = np.where(mask[None], stored, 0)
        region = layout.region if segment == "auto" else region_shape(segment, layout.geometry)
        cell_bits = layout.geometry.cell_bits
        groups = -(-encoded_bits(layout.sign, q.bits) // cell_bits)
        # under the ISAAC offset u = 0 means w = -2**(bits-1): a window may never become empty
        return cls(q, stored, signs, offsets, region, cell_bits, groups, 1 if layout.sign == "offset" else 0)

    def _segment_major(self, array: np.ndarray) -> np.ndarray:
        """(S, P, N, M) -> (S*P*RB*CB, seg_cols*seg_rows): each segment's values in (column, row) order."""
        n_sets, parts, rows, cols = array.shape
        _, _, row_blocks, col_blocks = self.blocks
        padded = np.zeros((n_sets, parts, row_blocks * self.seg_rows, col_blocks * self.seg_cols), dtype=array.dtype)
        padded[:, :, :rows, :cols] = array
        shaped = padded.reshape(n_sets, parts, row_blocks, self.seg_rows, col_blocks, self.seg_cols)
        return np.ascontiguousarray(shaped.transpose(0, 1, 2, 4, 5, 3)).reshape(-1, self.seg_cols * self.seg_rows)

    def chunks(self, units: np.ndarray):
        """``units`` in runs of about :data:`CHUNK` values."""
        step = max(1, CHUNK // self.values.shape[1])
        return [units[start : start + step] for start in range(0, len(units), step)]

    def project(self, values: np.ndarray, masks: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``values`` projected onto the bit ``masks`` within range (:func:`bitsets.project_in_range`, the
        projection fine-tuning shares), and where no value of a mask is in range."""
        offset = offset.astype(np.int64)
        out, infeasible = project_in_range(values, masks, -self.top - offset, self.top - offset, self.n_bits)
        return out.astype(values.dtype), infeasible

    def _used(self, current: np.ndarray) -> np.ndarray:
        """Group-set id of the cell groups each of ``current`` uses."""
        if self.tables.used is not None:
            return np.take(self.tables.used, current)
        return (((current[..., None] & self.group_bits) != 0) << np.arange(self.groups)).sum(axis=-1, dtype=np.int32)

    def _weigh(self, per_slot: np.ndarray, spatial: np.ndarray) -> np.ndarray:
        """(K, L, G) integer squared errors (ints, or integer-valued float32 when :attr:`exact_f32`) -> (K, G)
        real ones: summed per column (exactly), weighed by its scale."""
        k, _, groups = per_slot.shape
        if per_slot.dtype == np.float32:  # column sums stay below 2**24: exact, and a fast matmul
            ones = np.ones((1, self.seg_rows), dtype=np.float32)
            per_column = np.matmul(ones, per_slot.reshape(k * self.seg_cols, self.seg_rows, groups))
            per_column = per_column.reshape(k, self.seg_cols, groups)
        else:
            if per_slot.dtype != np.int64 and self.seg_rows << (2 * self.n_bits) >= 1 << 31:
                per_slot = per_slot.astype(np.int64)  # column sums could overflow int32
            per_column = np.einsum("kcrg->kcg", per_slot.reshape(k, self.seg_cols, self.seg_rows, groups))
        if self.seg_cols == 1:
            return per_column[:, 0] * np.take(self.col_weight, spatial, axis=0)
        return np.einsum("kcg,kc->kg", per_column, np.take(self.col_weight, spatial, axis=0))

    # -- greedy steps --------------------------------------------------------------------------------

    def drops(self, units: np.ndarray, count_cells: bool = False) -> tuple[np.ndarray, ...]:
        """What dropping each group from each of the ``units``' windows would do.

        First narrows each window to the groups its values use. Returns (K, G) arrays: ``saved``, the
        segment columns freed (0: group unused); ``added``, the squared real error added; ``cells``, the
        non-zero cells of the group (only with ``count_cells``, else None); ``infeasible``, True where some
        value has no in-range projection. Squared errors are summed as exact integers per segment column.
        """
        n, G = len(units), self.groups
        saved, added = np.zeros((n, G), dtype=np.int64), np.zeros((n, G))
        cells = np.zeros((n, G), dtype=np.int64) if count_cells else None
        infeasible = np.zeros((n, G), dtype=bool)
        tables, done = self.tables, 0
        for chunk in self.chunks(units):
            k, rows = len(chunk), slice(done, done + len(chunk))
            done += k
            spatial = chunk % self.n_spatial
            current, values = np.take(self.current, chunk, axis=0), np.take(self.values, chunk, axis=0)
            used = self._used(current)
            if count_cells:
                cells[rows] = _unpack(used, G).sum(axis=1)
            per_column = np.bitwise_or.reduce(used.reshape(k, self.seg_cols, self.seg_rows), axis=2)
            saved[rows] = _unpack(per_column, G).sum(axis=1)
            window = self.window[chunk] & np.bitwise_or.reduce(per_column, axis=1)
            self.window[chunk] = window
            if tables.delta is not None:
                key = (window[:, None] << self.n_bits) | values
                delta = np.take(tables.delta_f32 if self.exact_f32 else tables.delta, key, axis=0)  # (K, L, G)
                # units where a projection may leave the range: the window's largest value exceeds a bound
                suspect = np.arange(k) if self.low_binds else \
                    np.flatnonzero(np.take(tables.mask, window) > np.take(self.high_bound, chunk))
                offset = np.take(self.offset, np.take(spatial, suspect), axis=0)
                suspect_key = np.take(key, suspect, axis=0)
                risky = np.take(tables.high, suspect_key) > self.top - offset
                if self.low_binds:
                    risky |= np.take(tables.low, suspect_key) < -self.top - offset
                unit, slot = np.nonzero(risky)
                o, unit = offset[unit, slot], suspect[unit]
            else:
                delta = np.zeros(values.shape + (G,), dtype=np.int64)
                unit, slot = np.nonzero(values)
                o = self.offset[spatial[unit], slot]
            if len(unit):  # exact projections (range fallbacks) where the table's may leave the range
                risky = (unit, slot)
                masks = tables.mask[window][unit]
                v = values[risky]
                base = np.square(current[risky].astype(np.int64) - v)
                bad = np.zeros((len(v), G), dtype=bool)
                for g in range(G):
                    projected, bad[:, g] = self.project(v, masks & ~self.group_bits[g], o)
                    delta[risky + (g,)] = np.square(projected.astype(np.int64) - v) - base
                bad &= _unpack(window[unit], G)
                infeasible[rows] = np.bincount((unit[:, None] * G + np.arange(G)).ravel(), bad.ravel(),
                                               minlength=k * G).reshape(k, G) > 0
            added[rows] = self._weigh(delta, spatial)
        return saved, added, cells, infeasible

    def drop(self, units: np.ndarray, groups: np.ndarray) -> None:
        """Drop ``groups[i]`` from the window of ``units[i]`` and re-project those units' values."""
        self.window[units] &= ~(np.int32(1) << groups.astype(np.int32))
        for chunk in self.chunks(units):
            masks = np.take(self.tables.mask, self.window[chunk])
            values = np.take(self.values, chunk, axis=0)
            current = project_to_mask(values, masks[:, None], "nearest", self.n_bits)
            # range limits only bind where the window's largest value exceeds the unit's bound
            check = np.arange(len(chunk)) if self.low_binds else np.flatnonzero(masks > self.high_bound[chunk])
            if len(check):
                offset = np.take(self.offset, chunk[check] % self.n_spatial, axis=0)
                current[check] = self.project(values[check], masks[check, None], offset)[0]
            self.current[chunk] = current

    def errors_of_windows(self, windows: np.ndarray) -> np.ndarray:
        """(W, G) bool candidate windows -> (W, U) squared real error of each unit under each."""
        masks = (windows.astype(np.int32) * self.group_bits).sum(axis=1, dtype=np.int32)
        out = np.zeros((len(windows), self.n_units))
        for chunk in self.chunks(np.arange(self.n_units)):
            spatial = chunk % self.n_spatial
            values, offset = self.values[chunk], self.offset[spatial]
            for w, mask in enumerate(masks):
                projected = self.project(values, np.full(values.shape, mask, dtype=np.int32), offset)[0]
                error = np.square(projected.astype(np.int64) - values)[:, :, None]
                out[w, chunk] = self._weigh(error, spatial)[:, 0]
        return out

    def set_windows(self, windows: np.ndarray) -> None:
        """Take the (U, G) bool ``windows`` and project every value onto its unit's."""
        self.window = (windows.astype(np.int32) << np.arange(self.groups, dtype=np.int32)).sum(axis=1, dtype=np.int32)
        self.drop(np.arange(self.n_units), np.full(self.n_units, 31))  # bit 31 is no group: re-project only

    def stored(self) -> np.ndarray:
        """(S, P, N, M) current stored values (the narrow dtype)."""
        n_sets, parts, row_blocks, col_blocks = self.blocks
        out = self.current.reshape(n_sets, parts, row_blocks, col_blocks, self.seg_cols, self.seg_rows)
        out = out.transpose(0, 1, 2, 5, 3, 4).reshape(n_sets, parts, row_blocks * self.seg_rows, -1)
        return np.ascontiguousarray(out[:, :, : self.stored_shape[2], : self.stored_shape[3]])

    def decoded(self, stored: np.ndarray | None = None) -> np.ndarray:
        """(P, N, M) int64 weights of the current values (or of ``stored``), clipped to the sign-magnitude range."""
        stored = self.stored() if stored is None else stored
        w_int = self.offset_map.astype(np.int64)
        for sign, values in zip(self.signs, stored):
            w_int += int(sign) * values
        return np.where(self.quantized.layer.mask, np.clip(w_int, -self.top, self.top), 0)


@dataclass(frozen=True)
class AllowedPatterns:
    """The integer values each weight of a layer may take without changing its mapping's allocation.

    masks: (S, P, N, M) int64 bit mask of the stored value of each sign set: the cell groups in use in
    the weight's region (``layout.region``: plane-tile, plane-column or segment-column) *and* in its row of
    the plane-tile (``geometry.cols`` columns; what row compaction keeps), under the layout's sign scheme.
    offset: (P, N, M) int64 digital offsets; signs: (S,) of each set; top: largest magnitude; n_bits:
    bits of a stored value. segments: (P, N, M) int64 offset segment of each weight (``segment-offset``:
    a segment's minimum weight must keep ``u = 0`` so the mapper re-derives the same offset), None for
    the other schemes. exists: (P, N, M) bool layer mask.
    """

    masks: np.ndarray
    offset: np.ndarray
    signs: np.ndarray
    top: int
    n_bits: int
    segments: np.ndarray | None
    exists: np.ndarray

    def contains(self, w_int: np.ndarray) -> np.ndarray:
        """(P, N, M) bool: whether each weight of ``w_int`` is an allowed value (ignores the segment rule)."""
        w = np.asarray(w_int, dtype=np.int64)
        if len(self.signs) == 2:
            stored, mask = np.abs(w), np.where(w >= 0, self.masks[0], self.masks[1])
        else:
            stored, mask = w - self.offset, self.masks[0]
        ok = (stored >= 0) & ((stored & ~mask) == 0) & (np.abs(w) <= self.top)
        return np.where(self.exists, ok, w == 0)


def allowed_patterns(q: QuantizedLayer, layout: Layout) -> AllowedPatterns:
    """The :class:`AllowedPatterns` of an orchestrated (and squeezed) layer ``q`` under ``layout``: every
    weight keeps to the cell groups its region and its plane-tile row already use, so no crossbar column,
    region or compacted row is added (a dense layout allows every value in range)."""
    top = _top(q)
    mask = q.layer.mask
    offsets = scheme_offsets(layout.sign, q.w_int, mask, q.bits, layout.read_rows)
    stored, signs = stored_values(layout.sign, q.w_int, offsets)
    n_bits = encoded_bits(layout.sign, q.bits)
    cell_bits = layout.geometry.cell_bits
    groups = -(-n_bits // cell_bits)
    if not layout.sparse:
        masks = np.full(stored.shape, (1 << n_bits) - 1, dtype=np.int64)
    else:
        levels = np.where(mask[None, None], cell_levels(stored, groups, cell_bits), 0) != 0  # (S, G, P, N, M)
        region_rows, region_cols = layout.region
        keep = _block_spread(levels, region_rows, region_cols) & _block_spread(levels, 1, layout.geometry.cols)
        group_bits = ((1 << cell_bits) - 1) << (cell_bits * np.arange(groups, dtype=np.int64))
        masks = np.tensordot(group_bits, keep.astype(np.int64), axes=([0], [1]))
    segments = None
    if layout.sign == "segment-offset":
        parts, rows, cols = mask.shape
        block = np.arange(rows) // layout.read_rows
        blocks = -(-rows // layout.read_rows)
        segments = ((np.arange(parts)[:, None, None] * blocks + block[None, :, None]) * cols
                    + np.arange(cols)[None, None, :])
    return AllowedPatterns(masks=np.where(mask[None], masks, 0), offset=offsets.astype(np.int64),
                           signs=np.asarray(signs, dtype=np.int64), top=top, n_bits=n_bits, segments=segments,
                           exists=mask)


def _block_spread(flags: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(..., N, M) bool -> same shape: whether any flag of each entry's (rows x cols) block is set."""
    n, m = flags.shape[-2:]
    blocks = block_any(flags, rows, cols)
    return np.repeat(np.repeat(blocks, rows, axis=-2), cols, axis=-1)[..., :n, :m]


def project_weights(x, masks, offset, top: int, n_bits: int):
    """Nearest allowed integer weight to each of ``x`` (real or integer, in integer units; numpy or torch).

    masks: (S, ...) bit masks of each sign set's stored value (S=2: differential, set 0 positive, set 1
    negative; S=1: ``u = w - offset``); offset: digital offsets (zero for differential); top: largest
    magnitude. Ties go towards the smaller stored value. Built on :func:`bitsets.project_in_range`, the
    projection the orchestrators use. Returns (int64 weights, bool infeasible).
    """
    if len(masks) == 2:
        positive = x >= 0
        magnitude = abs(x)
        mask = masks[0] * positive + masks[1] * ~positive
        stored, infeasible = project_in_range(magnitude, mask, 0, top, n_bits)
        return stored * (positive * 2 - 1), infeasible
    stored, infeasible = project_in_range(x - offset, masks[0], -top - offset, top - offset, n_bits)
    return stored + offset, infeasible


class _WindowDrops:
    """The window orchestrator's greedy problem (:class:`sme_plugin.greedy.Problem`) over one layer's units:
    a slot per unit, proposing its cheapest group drop (squared error added per segment column freed)."""

    def __init__(self, units: _Units):
        self.units = units
        self.size = units.n_units
        self.best = np.zeros(units.n_units, dtype=np.int64)
        self.stale = np.flatnonzero(units.window)

    def proposals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        units, self.stale = self.stale, np.empty(0, dtype=np.int64)
        saved, added, _, _ = self.units.drops(units)
        window = _unpack(self.units.window[units], self.units.groups)
        allowed = window & (window.sum(axis=1, keepdims=True) > self.units.min_groups)
        cost = np.where(allowed, added / np.maximum(saved, 1), np.inf)
        best = cost.argmin(axis=1)
        self.best[units] = best
        rows = np.arange(len(units))
        return units, cost[rows, best], added[rows, best]

    def apply(self, slots: np.ndarray) -> None:
        self.units.drop(slots, self.best[slots])
        self.stale = slots


class WindowOrchestrator:
    """Keep a window of cell groups per (segment, sign set), in the encoded domain of the mapper's sign scheme.

    A segment is the layout's allocation unit (``layout.region``: plane-tile, plane-column of a row block
    or segment-column of an operation unit), or the ``segment`` kind given. Differential weights have two
    sign sets, each with its own window; offset schemes project ``u = w - offset`` with the layout's
    offsets (segment-offset: segments of ``layout.read_rows`` rows, whose minimum keeps u = 0, so the
    mapper re-derives the same offsets). Budget mode spends the error with the budgeted greedy engine
    (:func:`sme_plugin.greedy.spend`) that tile-empty shares: each round every segment proposes its
    cheapest group (squared error added per crossbar column freed).
    """

    class Params(StrategyParams):
        """Window parameters.

        Attributes
        ----------
        segment : {"auto", "tile", "column", "ou"}
            Unit that shares one window; ``auto`` = the layout's allocation unit.
        mode : {"fixed", "budget"}
            ``fixed``: every (segment, set) keeps its best contiguous window of ``planes`` groups;
            ``budget``: greedily drop groups while the relative weight error stays within ``budget``.
        planes : int
            Cell groups per window in ``fixed`` mode.
        budget : float
            Largest relative weight error ``||scale (w' - w)|| / ||scale w||`` in ``budget`` mode.
        scope : {"layer", "model"}
            Whether ``budget`` holds per layer or over all layers together.
        """

        segment: Literal["auto", "tile", "column", "ou"] = "auto"
        mode: Literal["fixed", "budget"] = "budget"
        planes: int = Field(2, ge=1, le=16)
        budget: float = Field(0.05, ge=0, le=1)
        scope: Literal["layer", "model"] = "layer"

    def __init__(self, params: Params):
        self.params = params

    @property
    def per_layer(self) -> bool:
        """Whether layers can be orchestrated one at a time (False: a model-wide budget)."""
        return not (self.params.mode == "budget" and self.params.scope == "model")

    def _fixed(self, units: _Units) -> None:
        groups, planes = units.groups, min(self.params.planes, units.groups)
        start = np.arange(groups - planes + 1)[:, None]
        placements = (np.arange(groups) >= start) & (np.arange(groups) < start + planes)  # (placements, G)
        units.set_windows(placements[units.errors_of_windows(placements).argmin(axis=0)])

    def orchestrate(self, layers: list[QuantizedLayer], layouts: list[Layout]) -> list[QuantizedLayer]:
        """Windowed weights of the layers with a sparse layout; layers with a dense one stay exact.

        Per-layer work (``fixed`` mode, or ``budget`` with ``scope: layer``) runs one layer at a time, so
        only one layer's working state is held; ``scope: model`` holds every sparse layer's state."""
        sparse = [i for i, layout in enumerate(layouts) if layout.sparse]
        out = [None if layout.sparse else q.with_weights(q.w_int.copy()) for q, layout in zip(layers, layouts)]
        build = lambda i: _Units.build(layers[i], layouts[i], self.params.segment)
        if self.params.mode == "budget" and self.params.scope == "model":
            problems = [build(i) for i in sparse]
            norm = sum(_squared_norm(q) for q in layers)
            spend([_WindowDrops(units) for units in problems], self.params.budget**2 * norm)
            for i, units in zip(sparse, problems):
                out[i] = layers[i].with_weights(units.decoded())
            return out
        for i in sparse:
            units = build(i)
            if self.params.mode == "fixed":
                self._fixed(units)
            else:
                spend([_WindowDrops(units)], self.params.budget**2 * _squared_norm(layers[i]))
            out[i] = layers[i].with_weights(units.decoded())
            del units
        return out


@hookimpl
def sme_register_orchestrators(register):
    register("none", NoOrchestrator)
    register("kbits", KBitsOrchestrator)
    register("window", WindowOrchestrator)
