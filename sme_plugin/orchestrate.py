"""Bit orchestrators: rewrite integer weights so their bit patterns are sparser where it saves crossbars.

- ``none`` keeps the weights.
- ``kbits`` limits every magnitude to at most k non-zero bits.
- ``window`` keeps, per segment of the configured mapping and per sign set, only a window of cell groups
  (a group = ``cell_bits`` bits, one crossbar column per weight column), either a fixed number of
  contiguous groups or as many dropped groups as a relative weight- or output-error budget allows, by
  default keeping only the drops that free crossbars.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from .bitsets import TABLE_BITS, project_in_range, project_to_mask, project_to_set, values_with_k_bits
from .errors import ConflictError
from .greedy import replay, spend
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
    needs_inputs = False

    def __init__(self, params: Params):
        self.params = params

    def orchestrate(self, layers: list[QuantizedLayer], layouts: list[Layout], grams=None) -> list[QuantizedLayer]:
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
    needs_inputs = False

    def __init__(self, params: Params):
        self.params = params

    def orchestrate(self, layers: list[QuantizedLayer], layouts: list[Layout], grams=None) -> list[QuantizedLayer]:
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
        self.pins_offsets = False  # segment-offset: a weight at its segment's offset must stay there (u = 0)

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
        units = cls(q, stored, signs, offsets, region, cell_bits, groups, 1 if layout.sign == "offset" else 0)
        units.pins_offsets = layout.sign == "segment-offset"
        return units

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

    def narrow(self, chunk: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Narrow the windows of the units ``chunk`` (current values ``current``, (K, L)) to the groups in use.

        Returns the (K, L) group-set id each value uses, the (K, G) segment columns using each group (what
        dropping it frees) and the (K,) narrowed windows."""
        used = self._used(current)
        per_column = np.bitwise_or.reduce(used.reshape(len(chunk), self.seg_cols, self.seg_rows), axis=2)
        window = self.window[chunk] & np.bitwise_or.reduce(per_column, axis=1)
        self.window[chunk] = window
        return used, _unpack(per_column, self.groups).sum(axis=1), window

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
            used, saved[rows], window = self.narrow(chunk, current)
            if count_cells:
                cells[rows] = _unpack(used, G).sum(axis=1)
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

    undoable = True  # a drop changes its unit alone: :meth:`restore` of a :meth:`snapshot` takes it back

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

    def snapshot(self, slots: np.ndarray) -> tuple[np.ndarray, ...]:
        """(units, their windows, (k, L) current values) that applying ``slots`` changes, before it."""
        return slots, self.units.window[slots], self.units.current[slots]

    def restore(self, taken: np.ndarray, units: np.ndarray, window: np.ndarray, current: np.ndarray) -> None:
        """Put back the state of ``units`` (each at most once) :meth:`snapshot` took at ``taken`` (ignored)."""
        self.units.window[units], self.units.current[units] = window, current

    def changed(self, slots: np.ndarray) -> np.ndarray:
        """(k, 1) units applying each slot changes: its own."""
        return slots[:, None]


def _starts(keys: np.ndarray) -> np.ndarray:
    """(K,) bool: whether each of the sorted ``keys`` starts a run of equal keys."""
    return np.r_[True, keys[1:] != keys[:-1]][: len(keys)]


def _in_turn(pools: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order that sorts changes by (pool, time), and their sorted (pool, time) keys."""
    key = pools * (time.max(initial=0) + 1) + time
    order = np.argsort(key, kind="stable")
    return order, key[order]


def _running(pools: np.ndarray, time: np.ndarray, change: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Total of each change's pool just after it: ``base[pool]`` plus the pool's changes so far, taken in
    ``time`` order (changes of one pool at one time in any order)."""
    order, _ = _in_turn(pools, time)
    pool, step = pools[order], change[order]
    total = np.cumsum(step)
    start = np.maximum.accumulate(np.where(_starts(pool), np.arange(len(pool)), 0))
    out = np.empty(len(pool), dtype=np.int64)
    out[order] = base[pool] + total - total[start] + step[start]
    return out


class _Crossbars:
    """The crossbars one layer's units take under its layout, counted as the ``sme`` mapper does, and how
    the drops of a greedy run change them.

    The mapper allocates regions (``layout.region``) per sign set and cell group, and packs the occupied
    ones: ``crossbars = sum_p ceil(sum_b ceil(c_pb / capacity) / bands)``, c_pb the occupied (region,
    group)s of region row b of part p, ``capacity`` of them per read (1 for tile packing: a crossbar per
    plane-tile) and ``bands`` reads per crossbar (``rows // ou_rows`` for ou packing, else 1). Occupancy
    is tracked on fine blocks of one column and ``height = min(segment rows, region rows)`` rows, of which
    segments and regions are both unions: a region occupies group g while one of its fine blocks uses g.

    Attributes
    ----------
    fine : (U, seg_cols * seg_rows // height) int32 group-set id each fine block of each unit uses now.
    base : (S * P * NR * NC * G,) int64 fine blocks of each (region, group) using the group at the start
        (NR x NC regions per part, over the units' padded rows and columns), index ``region * G + g``.
    capacity, bands : the packing's capacity per read and reads per crossbar.
    """

    def __init__(self, units: _Units, layout: Layout):
        self.units = units
        self.region_rows, self.region_cols = layout.region
        self.height = min(units.seg_rows, self.region_rows)
        _, parts, row_blocks, col_blocks = units.blocks
        self.shape = (units.blocks[0], parts, -(-row_blocks * units.seg_rows // self.region_rows),
                      -(-col_blocks * units.seg_cols // self.region_cols))  # (S, P, NR, NC) regions
        self.capacity = layout.capacity or 1
        self.bands = layout.geometry.rows // self.region_rows if layout.packing == "ou" else 1
        everything = np.arange(units.n_units)
        self.fine = np.concatenate([self._fine(chunk) for chunk in units.chunks(everything)])
        self.base = np.zeros(int(np.prod(self.shape)) * units.groups, dtype=np.int64)
        for chunk in units.chunks(everything):
            unit, block, group = np.nonzero(_unpack(self.fine[chunk], units.groups))
            keys = self._regions(chunk)[unit, block] * units.groups + group
            self.base += np.bincount(keys, minlength=self.base.size)

    def _fine(self, units: np.ndarray) -> np.ndarray:
        """(K, F) group-set id each fine block of ``units`` uses now."""
        u = self.units
        used = u._used(np.take(u.current, units, axis=0))
        used = used.reshape(len(units), u.seg_cols, u.seg_rows // self.height, self.height)
        return np.bitwise_or.reduce(used, axis=3).reshape(len(units), -1)

    def _regions(self, units: np.ndarray) -> np.ndarray:
        """(K, F) flat (set, part, region row, region column) index of each fine block of ``units``."""
        u = self.units
        sets, part, rb, cb = np.unravel_index(units, u.blocks)
        per_column = u.seg_rows // self.height
        rows = (rb * u.seg_rows)[:, None] + np.tile(np.arange(per_column) * self.height, u.seg_cols)
        cols = (cb * u.seg_cols)[:, None] + np.repeat(np.arange(u.seg_cols), per_column)
        return np.ravel_multi_index(((sets * self.shape[1] + part)[:, None], rows // self.region_rows,
                                     cols // self.region_cols), (self.shape[0] * self.shape[1], *self.shape[2:]))

    def _levels(self) -> list[tuple]:
        """[(pool of each (region, group) key, start total of each pool, count of a total)] of occupancy
        (fine blocks -> occupied), reads of a region row (occupied -> ceil / capacity), crossbars of a part
        (reads -> ceil / bands) and crossbars of the layer (their sum)."""
        _, parts, region_rows, region_cols = self.shape
        keys = np.arange(self.base.size)
        row_of = keys // (self.units.groups * region_cols) % (parts * region_rows)  # part * NR + region row
        occupied = np.bincount(row_of, self.base > 0, minlength=parts * region_rows).astype(np.int64)
        reads = (-(-occupied // self.capacity)).reshape(parts, region_rows).sum(axis=1)
        return [(keys, self.base, lambda total: np.minimum(total, 1)),
                (row_of, occupied, lambda total: -(-total // self.capacity)),
                (row_of // region_rows, reads, lambda total: -(-total // self.bands)),
                (np.zeros_like(keys), np.array([(-(-reads // self.bands)).sum()]), lambda total: total)]

    def crossbars(self) -> int:
        """Crossbars of the units at the start."""
        return int(self._levels()[-1][1][0])

    def changes(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Take the current values of ``units`` (K,) and return what changed since: (unit row in ``units``,
        (region, group) key, +1 / -1 fine blocks using the group)."""
        fine = self._fine(units)
        G = self.units.groups
        delta = _unpack(fine, G).astype(np.int8) - _unpack(self.fine[units], G)
        self.fine[units] = fine
        row, block, group = np.nonzero(delta)
        return row, self._regions(units)[row, block] * G + group, delta[row, block, group].astype(np.int64)

    def needed(self, time: np.ndarray, key: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """(E,) bool: whether each change (its drop's ``time``, its (region, group) ``key`` and ``delta``, as
        :meth:`changes` gave them) comes no later than the drop at which its pool got the count it needs.

        Pools nest: a (region, group) in a region row of a part, in a part. The top pools, the finest whose
        crossbars add up (a (region, group) for tile packing, a region row for column packing, a part for
        ou packing), need the fewest crossbars of the run; a pool below needs the count it had when its pool
        above got what that needs (a region row the reads it had then, a (region, group) its occupancy
        then). A pool that needs its count at the start needs no drop. Where a segment spans several regions
        (a ``segment`` coarser than the layout's), a drop may occupy a (region, group) that was free and a
        refit may change several pools: the only pool is then the layer, cut at its fewest crossbars."""
        levels = self._levels()
        pools, counts, change = [], [], delta  # each change's pool at each level, and its count after it
        for pool_of, base, count in levels:
            pools.append(pool_of[key])
            total = _running(pools[-1], time, change, base)
            counts.append(count(total))
            change = counts[-1] - count(total - change)
        top = 2 if self.bands > 1 else 1 if self.capacity > 1 else 0
        if not (self.units.seg_rows <= self.region_rows and self.units.seg_cols <= self.region_cols):
            top = len(levels) - 1
        limit = None  # each change's pool above: the time it is cut at
        for level in range(top, -1, -1) if top < len(levels) - 1 else [top]:
            _, base, count = levels[level]
            start = count(base)
            order, turns = _in_turn(pools[level], time)
            final = order[_starts(turns[::-1])[::-1]]  # each pool's count after each of its drops
            if limit is not None:
                final = final[time[final] <= limit[final]]
            pool, at, after = pools[level][final], time[final], counts[level][final]
            target = start.copy()
            if limit is None:  # a top pool: the fewest
                runs = _starts(pool)
                target[pool[runs]] = np.minimum(np.minimum.reduceat(after, np.flatnonzero(runs)), start[pool[runs]])
            else:  # the count when the pool above was cut
                last = _starts(pool[::-1])[::-1]
                target[pool[last]] = after[last]
            reached = np.flatnonzero((after == target[pool]) & (after < start[pool]))
            reached = reached[_starts(pool[reached])]  # the first time per pool
            cut = np.full(len(start), -1, dtype=np.int64)
            cut[pool[reached]] = at[reached]
            limit = cut[pools[level]]
        return time <= limit


class _Tracked:
    """A window problem (:class:`_WindowDrops`, :class:`_OutputDrops`) whose drops are recorded with the
    changes of its layer's crossbar occupancy (:class:`_Crossbars`), to tell afterwards which drops to
    keep (:meth:`kept`) and, where the problem is ``undoable``, its :meth:`snapshot` before each, to take
    the others back in place (:meth:`undo`)."""

    def __init__(self, problem, layout: Layout):
        self.problem, self.size = problem, problem.size
        self.crossbars = _Crossbars(problem.units, layout)
        self.cost = np.full(problem.size, np.inf)  # each slot's open proposal
        self.drops = []  # per apply: (slots, their turns in the engine's order)
        self.changes = []  # per apply: (turn, key, delta)
        self.snapshots = [] if problem.undoable else None  # per apply: problem.snapshot(slots)
        self.applied = 0

    def proposals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        slots, cost, added = self.problem.proposals()
        self.cost[slots] = cost
        return slots, cost, added

    def apply(self, slots: np.ndarray) -> float | None:
        if self.snapshots is not None:
            self.snapshots.append(self.problem.snapshot(slots))
        units = self.problem.changed(slots)
        actual = self.problem.apply(slots)
        row, key, delta = self.crossbars.changes(units.ravel())
        turn = np.empty(len(slots), dtype=np.int64)  # the engine accepts by (cost, slot)
        turn[np.argsort(self.cost[slots], kind="stable")] = self.applied + np.arange(len(slots))
        self.drops.append((slots, turn))
        self.changes.append((turn[row // units.shape[1]], key, delta))
        self.applied += len(slots)
        return actual

    def kept(self) -> tuple[np.ndarray, np.ndarray]:
        """(size,) drops each slot made and (size,) how many of them to keep: up to its last one that comes
        no later than the drop at which a pool it changed first had its fewest crossbars
        (:meth:`_Crossbars.needed`). Drops are taken in the engine's order: by round, then (cost, slot)."""
        made, keep = np.zeros(self.size, dtype=np.int64), np.zeros(self.size, dtype=np.int64)
        if not self.drops:
            return made, keep
        slot, turn = (np.concatenate(part) for part in zip(*self.drops))
        time, key, delta = (np.concatenate(part) for part in zip(*self.changes))
        needed = np.bincount(time[self.crossbars.needed(time, key, delta)], minlength=len(turn)) > 0  # by turn
        order = np.argsort(slot * len(turn) + turn)  # each slot's drops in turn
        slot, turn = slot[order], turn[order]
        rank = np.arange(len(slot)) - np.searchsorted(slot, slot)
        last = np.flatnonzero(needed[turn])
        last = last[_starts(slot[last][::-1])[::-1]]  # each slot's last needed drop
        keep[slot[last]] = rank[last] + 1
        return np.bincount(slot, minlength=self.size), keep

    @property
    def undoable(self) -> bool:
        """Whether :meth:`undo` can take drops back (the problem took a snapshot before each drop)."""
        return self.snapshots is not None

    def undo(self, keep: np.ndarray) -> None:
        """Take back every drop of each slot after its first ``keep[slot]`` ones (:meth:`kept`): a slot's
        drops change only its own units, so each unit a taken-back drop changed gets back the state of the
        snapshot before the first of them. The problem then holds what a fresh one would after
        :func:`sme_plugin.greedy.replay` of ``keep``; the crossbar record is no longer its."""
        if not self.drops:
            return
        slot = np.concatenate([slots for slots, _ in self.drops])  # in the order applied
        order = np.argsort(slot, kind="stable")
        rank = np.empty(len(slot), dtype=np.int64)  # how many earlier drops each drop's slot made
        rank[order] = np.arange(len(slot)) - np.searchsorted(slot[order], slot[order])
        state = [np.concatenate(part) for part in zip(*self.snapshots)]
        undone = np.flatnonzero(rank >= keep[slot])
        _, first = np.unique(state[0][undone], return_index=True)  # each unit's first taken-back drop
        self.problem.restore(undone[first], *(part[undone[first]] for part in state))
        self.snapshots = self.drops = self.changes = None


def damped(gram: np.ndarray, damping: float) -> np.ndarray:
    """(P, N, N) ``gram + damping * mean(diag(gram[p])) * I`` per part (``gram`` itself for 0)."""
    gram = np.asarray(gram, dtype=np.float64)
    if not damping:
        return gram
    n = gram.shape[-1]
    mean = np.trace(gram, axis1=1, axis2=2) / max(n, 1)
    return gram + damping * mean[:, None, None] * np.eye(n)


def output_error(before: QuantizedLayer, after: QuantizedLayer, gram: np.ndarray) -> tuple[float, float]:
    """(||X (W' - W)||^2, ||X W||^2) of one layer in real units, from its inputs' second moments ``gram``
    ((P, N, N) ``sum x x^T`` per part, :func:`sme_plugin.activations.input_gram`); the bias is left out."""
    gram = np.asarray(gram, dtype=np.float64)
    change, weight = after.dequantized() - before.dequantized(), before.dequantized()
    change, weight = (np.broadcast_to(a, before.w_int.shape) for a in (change, weight))
    return (float(np.einsum("pnm,pnk,pkm->", change, gram, change)),
            float(np.einsum("pnm,pnk,pkm->", weight, gram, weight)))


#: units of a column slot priced exactly per proposal (:meth:`_OutputDrops.proposals`): the cheapest by their
#: last prices, plus every unit that changed; a slot with at most this many units prices all of them.
REFRESH = 8
#: relative damping GPTQ adds to the diagonal of H before inverting it (times its mean diagonal)
DAMPING = 0.01
#: rows a refit fixes one by one before it spreads their errors over the rows below in one product
REFIT_ROWS = 128


class _OutputDrops:
    """The window orchestrator's greedy problem in output-error units over one layer's units.

    A slot per column block (part, ``seg_cols`` columns of the segment region) proposes the cheapest group
    drop among its units (every sign set and row block; in a slot of more than :data:`REFRESH` units, among
    the :data:`REFRESH` cheapest by their last prices, re-priced exactly): the exact increase of the output error
    ``sum_m s_m^2 e_m^T H e_m`` (e_m = w'_m - w_m of column m in integer units, H the part's input second
    moments, s_m its scale) per segment column freed, the unit's current values projected onto the window
    without the group. Different slots own different columns, so the drops a round accepts add their errors
    independently. After a drop the slot's columns are refit (``compensate``): a GPTQ-style pass (Frantar et
    al., 2023) re-quantizes each column from the quantizer's weights row by row, projecting each weight onto
    its window (:func:`project_weights`) and spreading the rounding error over the rows not yet fixed through
    the Cholesky factor of ``(H + damping)^-1``; a column keeps the refit only where it lowers its output
    error, so the allowance is charged the error actually added (:meth:`apply` returns it).

    Windows only lose groups (a unit's window is narrowed to the groups in use before each proposal), so a
    refit never adds a segment column. Fixed weights: those outside the layer mask (zero) and, under
    ``segment-offset``, the weights at their segment's offset (u = 0 keeps the mapper's offsets).
    """

    def __init__(self, units: _Units, gram: np.ndarray, compensate: bool = True):
        q = units.quantized
        self.units, self.compensate = units, compensate
        _, parts, row_blocks, col_blocks = units.blocks
        rows, cols = units.seg_rows, units.seg_cols
        _, n, m = q.w_int.shape
        gram = np.asarray(gram, dtype=np.float64)
        if gram.shape != (parts, n, n):
            raise ValueError(f"layer {q.layer.name!r}: input second moments of shape {gram.shape}, expected "
                             f"{(parts, n, n)}")
        self.n, self.m = n, m
        self.size = parts * col_blocks
        n_pad, m_pad = row_blocks * rows, col_blocks * cols
        pad = lambda a: np.pad(a, ((0, 0), (0, n_pad - n), (0, m_pad - m)))
        self.w0 = pad(q.w_int.astype(np.int64))
        self.w = pad(units.decoded())  # the units' current weights (the quantizer's before any drop)
        self.offset = pad(units.offset_map.astype(np.int64))
        mask = pad(q.layer.mask)
        # fixed weights: outside the mask (zero) and, under segment-offset, those at their segment's offset
        self.pinned = ~mask | ((self.w0 == self.offset) if units.pins_offsets else False)
        self.scale2 = np.pad(np.broadcast_to(np.asarray(q.scale, dtype=np.float64), (parts, 1, m))[:, 0] ** 2,
                             ((0, 0), (0, m_pad - m)))
        self.gram = gram
        padded = np.zeros((parts, n_pad, n_pad))
        padded[:, :n, :n] = gram
        self.gram_padded = padded
        blocks = padded.reshape(parts, row_blocks, rows, row_blocks, rows)
        self.h_blocks = np.ascontiguousarray(blocks[:, np.arange(row_blocks), :, np.arange(row_blocks)].transpose(1, 0, 2, 3))
        self.he = np.zeros((parts, m_pad, n_pad))  # (H (w - w0))^T per part, integer units: a column per row
        self.column_error = np.zeros((parts, m_pad))  # s^2 e^T H e of each column, real units
        w0 = self.w0[:, :n].astype(np.float64)
        self.norm = float(np.einsum("pnm,pnm,pm->", w0, gram @ w0, self.scale2))  # sum_m s^2 w0^T H w0
        # slot l of a unit holds (row rb*rows + l % rows, column cb*cols + l // rows)
        slot = np.arange(rows * cols)
        self.slot_row, self.slot_col = slot % rows, slot // rows
        self.best_unit = np.zeros(self.size, dtype=np.int64)
        self.best_group = np.zeros(self.size, dtype=np.int64)
        self.stale = np.arange(self.size)
        n_units, groups = units.n_units, units.groups
        self._change = np.zeros((n_units, groups, rows * cols), dtype=np.int16)  # see _candidates
        self._quadratic = np.zeros((n_units, groups, cols))
        self._allowed = np.zeros((n_units, groups), dtype=bool)
        self._saved = np.zeros((n_units, groups), dtype=np.int64)
        self._dirty = np.ones(n_units, dtype=bool)
        self._cheapest = np.full(n_units, np.inf)  # each unit's cheapest drop at its last pricing
        self._factors: dict[int, np.ndarray] = {}
        self.undoable = not compensate  # a refit changes units beyond the dropped one: no snapshot holds them
        for part in range(parts):
            self._update_columns(part, np.arange(m))

    # -- geometry --------------------------------------------------------------------------------------

    def units_of(self, slots: np.ndarray) -> np.ndarray:
        """(k, S*RB) units of each slot (column block), sign set major."""
        n_sets, parts, row_blocks, col_blocks = self.units.blocks
        part, block = np.divmod(slots, col_blocks)
        s, rb = np.arange(n_sets)[:, None], np.arange(row_blocks)[None, :]
        units = ((s[None] * parts + part[:, None, None]) * row_blocks + rb[None]) * col_blocks + block[:, None, None]
        return units.reshape(len(slots), -1)

    def changed(self, slots: np.ndarray) -> np.ndarray:
        """(k, T) units applying each slot changes: the one it drops a group from, or with ``compensate``
        all its units (:meth:`units_of`)."""
        return self.units_of(slots) if self.compensate else self.best_unit[slots, None]

    def _where(self, units: np.ndarray) -> tuple[np.ndarray, ...]:
        """(set, part, row block, column block) of each unit, and its slots' (K, L) padded rows and columns."""
        _, _, row_blocks, col_blocks = self.units.blocks
        sets, spatial = np.divmod(units, self.units.n_spatial)
        part, rest = np.divmod(spatial, row_blocks * col_blocks)
        rb, cb = np.divmod(rest, col_blocks)
        rows = rb[:, None] * self.units.seg_rows + self.slot_row[None]
        cols = cb[:, None] * self.units.seg_cols + self.slot_col[None]
        return sets, part, rb, cb, rows, cols

    def _stored(self, units: np.ndarray) -> np.ndarray:
        """(K, L) stored values of the current weights in the units' slots (the sign scheme's encoding)."""
        sets, part, _, _, rows, cols = self._where(units)
        w = self.w[part[:, None], rows, cols]
        if len(self.units.signs) == 2:  # differential: set 0 the positive magnitudes, set 1 the negative
            return np.maximum(w * self.units.signs[sets][:, None], 0)
        return w - self.offset[part[:, None], rows, cols]

    # -- greedy problem ------------------------------------------------------------------------------

    def proposals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        slots, self.stale = self.stale, np.empty(0, dtype=np.int64)
        units_per_slot = self.units_of(np.arange(1))[0].size
        per_slot_values = units_per_slot * self.units.values.shape[1] * self.units.groups
        step = max(1, (8 * CHUNK) // max(per_slot_values, 1))
        cost, added = np.full(len(slots), np.inf), np.zeros(len(slots))
        for start in range(0, len(slots), step):
            chunk = slots[start : start + step]
            units = self.units_of(chunk)  # (k, U)
            if units.shape[1] > REFRESH:  # price the changed units, then re-price the cheapest REFRESH exactly
                flat = units.ravel()
                self._price_cached(flat[self._dirty[flat]])
                best_units = np.argpartition(self._cheapest[units], REFRESH - 1, axis=1)[:, :REFRESH]
                units = np.take_along_axis(units, best_units, axis=1)
            unit_cost, unit_added = self._price_cached(units.ravel())
            unit_cost = unit_cost.reshape(len(chunk), -1)
            best = unit_cost.argmin(axis=1)
            rows = np.arange(len(chunk))
            cost[start : start + len(chunk)] = unit_cost[rows, best]
            added[start : start + len(chunk)] = unit_added.reshape(len(chunk), -1)[rows, best]
            unit, group = np.divmod(best, self.units.groups)
            self.best_unit[chunk] = units[rows, unit]
            self.best_group[chunk] = group
        return slots, cost, added

    def _price_cached(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_price` of ``units``, remembered: a slot's other units keep the prices of their last
        pricing while its drops change the cross terms (they only rank the units to re-price)."""
        cost, added = self._price(units)
        self._cheapest[units] = cost.min(axis=1)
        return cost, added

    def _candidates(self, units: np.ndarray) -> None:
        """Cache what dropping each group from each of ``units`` (whose windows or values changed) would
        change: the (G, L) weight changes, the (G, C) quadratic terms ``e^T H_bb e`` of each segment
        column, the segment columns it frees and whether it is allowed."""
        u, G = self.units, self.units.groups
        current = np.take(u.current, units, axis=0)
        _, saved, window = u.narrow(units, current)
        sets, part, rb, _, _, _ = self._where(units)
        offset = np.take(u.offset, units % u.n_spatial, axis=0)
        masks = np.take(u.tables.mask, window)[:, None] & ~u.group_bits[None, :]  # (K, G)
        shape = (len(units), G, current.shape[1])
        candidate, bad = u.project(np.broadcast_to(current[:, None], shape).copy(),
                                   np.broadcast_to(masks[:, :, None], shape).copy(),
                                   np.broadcast_to(offset[:, None], shape).copy())
        change = (candidate.astype(np.int64) - current[:, None]) * u.signs[sets][:, None, None]  # (K, G, L)
        k, c, r = len(units), u.seg_cols, u.seg_rows
        self._change[units] = change
        change = change.reshape(k, G * c, r).astype(np.float64)
        self._quadratic[units] = ((change @ self.h_blocks[part, rb]) * change).sum(axis=2).reshape(k, G, c)
        member = _unpack(window, G)
        self._allowed[units] = member & (member.sum(axis=1, keepdims=True) > u.min_groups) & (saved > 0) & ~(bad.any(axis=2))
        self._saved[units] = saved
        self._dirty[units] = False

    def _price(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K, G) cost (output error added per segment column freed; inf: not allowed) and error added of
        dropping each group from each unit's window (the window narrowed to the groups in use first).

        ``sum_c s_c^2 (2 e_c^T (H (w - w0))_c + e_c^T H_bb e_c)``: the quadratic terms stay cached while a
        unit is unchanged (:meth:`_candidates`); the cross terms follow the column's other drops via ``he``."""
        u, G = self.units, self.units.groups
        stale = units[self._dirty[units]]
        if stale.size:
            self._candidates(np.unique(stale))
        _, part, _, _, rows, cols = self._where(units)
        change = self._change[units].reshape(len(units), G, u.seg_cols, u.seg_rows)
        he = self.he[part[:, None], cols, rows].reshape(len(units), u.seg_cols, u.seg_rows)
        per_column = 2 * np.einsum("kgcr,kcr->kgc", change, he) + self._quadratic[units]
        scale2 = self.scale2[part[:, None], cols[:, :: u.seg_rows]]  # (K, C)
        added = np.einsum("kgc,kc->kg", per_column, scale2)
        return np.where(self._allowed[units], added / np.maximum(self._saved[units], 1), np.inf), added

    def apply(self, slots: np.ndarray) -> float:
        """Drop each slot's proposed group, refit the slot's columns; returns the output error they added."""
        u = self.units
        units, groups = self.best_unit[slots], self.best_group[slots]
        before = self._slot_error(slots)
        u.window[units] &= ~(np.int32(1) << groups.astype(np.int32))
        current = np.take(u.current, units, axis=0)
        masks = np.take(u.tables.mask, u.window[units])[:, None]
        projected, _ = u.project(current, np.broadcast_to(masks, current.shape).copy(),
                                 np.take(u.offset, units % u.n_spatial, axis=0))
        sets, part, _, _, rows, cols = self._where(units)
        change = (projected.astype(np.int64) - current) * u.signs[sets][:, None]
        np.add.at(self.w, (np.broadcast_to(part[:, None], rows.shape), rows, cols), change)
        self._dirty[units] = True  # their windows narrowed
        if self.compensate:
            members = self.units_of(slots).ravel()
            values = u.current[members]
            self.refit(slots)
            self._dirty[members[(u.current[members] != values).any(axis=1)]] = True  # values a refit moved
        else:  # only the dropped units changed: update H (w - w0) by their rows alone
            self._add_changes(units, change)
            u.current[units] = self._stored(units).astype(u.current.dtype)
        self.stale = slots
        return self._slot_error(slots) - before

    def snapshot(self, slots: np.ndarray) -> tuple[np.ndarray, ...]:
        """(units, their windows, (k, L) current values, (k, L) weights in their slots) that applying
        ``slots`` changes, before it (without ``compensate``: the dropped units alone)."""
        u, units = self.units, self.best_unit[slots]
        _, part, _, _, rows, cols = self._where(units)
        return units, u.window[units], u.current[units], self.w[part[:, None], rows, cols].astype(u.current.dtype)

    def restore(self, taken: np.ndarray, units: np.ndarray, window: np.ndarray, current: np.ndarray,
                w: np.ndarray) -> None:
        """Put back the state of ``units`` (each at most once) :meth:`snapshot` took at ``taken`` (K,) (any
        increasing count of drops), and update the errors of their columns. A weight two sign sets' units
        share gets the value of the earlier snapshot (later drops of its slot are all taken back)."""
        u = self.units
        u.window[units], u.current[units] = window, current
        _, part, _, _, rows, cols = self._where(units)
        where = np.ravel_multi_index((np.broadcast_to(part[:, None], rows.shape), rows, cols), self.w.shape).ravel()
        order = np.lexsort((np.repeat(taken, rows.shape[1]), where))  # by weight, then snapshot
        first = order[_starts(where[order])]
        np.put(self.w, where[first], w.ravel()[first])
        self._dirty[units] = True
        for p in np.unique(part):
            columns = np.unique(cols[part == p])
            self._update_columns(int(p), columns[columns < self.m])

    def _add_changes(self, units: np.ndarray, change: np.ndarray) -> None:
        """Update ``he`` and the column errors for (K, L) weight changes of ``units`` (at most one unit per
        column): each column's error grows by ``s^2 (2 d^T he[rows] + d^T H_bb d)`` and ``he`` by
        ``H[:, rows] d``, over the non-zero changes only (a sparse product that reads one row of H per
        changed weight), in chunks of about ``8 * CHUNK`` values of ``he``."""
        import scipy.sparse  # here, not at import: ``sme validate`` imports the strategies and stays light

        u = self.units
        r, c = u.seg_rows, u.seg_cols
        parts, _, n_pad = self.he.shape
        _, part, rb, cb, _, _ = self._where(units)
        gram = self.gram_padded.reshape(parts * n_pad, n_pad)
        step = max(1, (8 * CHUNK) // (n_pad * c))
        for start in range(0, len(units), step):
            p, block = part[start : start + step], rb[start : start + step]
            rows = block[:, None] * r + np.arange(r)  # (k, R)
            cols = cb[start : start + step, None] * c + np.arange(c)  # (k, C)
            delta = change[start : start + step].reshape(-1, c, r).astype(np.float64)  # (k, C, R)
            before = self.he[p[:, None, None], cols[:, :, None], rows[:, None, :]]  # (k, C, R)
            quadratic = ((delta @ self.h_blocks[p, block]) * delta).sum(axis=2)
            self.column_error[p[:, None], cols] += self.scale2[p[:, None], cols] * (2 * (delta * before).sum(axis=2) + quadratic)
            unit, col, row = np.nonzero(delta)
            product = scipy.sparse.csr_matrix((delta[unit, col, row], (unit * c + col, p[unit] * n_pad + rows[unit, row])),
                                              shape=(len(p) * c, parts * n_pad)) @ gram
            self.he[p[:, None], cols] += product.reshape(len(p), c, n_pad)  # (k, C, N)

    def _slot_error(self, slots: np.ndarray) -> float:
        part, block = np.divmod(slots, self.units.blocks[3])
        cols = block[:, None] * self.units.seg_cols + np.arange(self.units.seg_cols)[None]
        return float(self.column_error[part[:, None], cols].sum())

    # -- compensation --------------------------------------------------------------------------------

    def _factor(self, part: int) -> np.ndarray:
        """Upper Cholesky factor U of ``(H + damping I)^-1`` of ``part`` (``H^-1 = U^T U``), cached."""
        if part not in self._factors:
            h = self.gram[part]
            mean = float(np.mean(np.diag(h))) if len(h) else 0.0
            damping = DAMPING * mean if mean > 0 else 1.0
            while True:
                try:
                    inverse = np.linalg.inv(h + damping * np.eye(len(h)))
                    self._factors[part] = np.linalg.cholesky((inverse + inverse.T) / 2).T
                    break
                except np.linalg.LinAlgError:
                    damping *= 10
        return self._factors[part]

    def refit(self, slots: np.ndarray) -> None:
        """Refit the columns of ``slots`` within their windows (``compensate``; a column keeps the refit only
        where it lowers its output error), then update their errors and the units' current values."""
        u = self.units
        part_of, block_of = np.divmod(slots, u.blocks[3])
        for part in np.unique(part_of):
            blocks = block_of[part_of == part]
            cols = (blocks[:, None] * u.seg_cols + np.arange(u.seg_cols)[None]).ravel()
            cols = cols[cols < self.m]
            if self.compensate and len(cols):
                self._refit_columns(int(part), cols)
            else:
                self._update_columns(int(part), cols)
        units = self.units_of(slots).ravel()
        u.current[units] = self._stored(units).astype(u.current.dtype)

    def _update_columns(self, part: int, cols: np.ndarray) -> None:
        n = self.n
        change = (self.w[part, :n, cols] - self.w0[part, :n, cols]).T.astype(np.float64)  # (N, k)
        he = self.gram[part] @ change
        self.he[part, cols, :n] = he.T
        self.column_error[part, cols] = self.scale2[part, cols] * np.einsum("nk,nk->k", change, he)

    def _refit_columns(self, part: int, cols: np.ndarray) -> None:
        """GPTQ-style pass over the rows of ``cols`` of ``part``: project each weight onto its window, spread
        the error over the rows below with the Cholesky factor of H^-1 (within a block of :data:`REFIT_ROWS`
        rows row by row, below it once per block, GPTQ's lazy batch update); keep it per column where it is
        better."""
        u, n = self.units, self.n
        n_sets, _, row_blocks, col_blocks = u.blocks
        factor = self._factor(part)
        rb, cb = np.arange(n) // u.seg_rows, cols // u.seg_cols
        spatial = (part * row_blocks + rb[:, None]) * col_blocks + cb[None, :]  # (N, k)
        masks = np.stack([np.take(u.tables.mask, u.window[s * u.n_spatial + spatial]) for s in range(n_sets)])
        masks = masks.astype(np.int64)
        offset, pinned = self.offset[part, :n][:, cols], self.pinned[part, :n][:, cols]
        w0, current = self.w0[part, :n][:, cols], self.w[part, :n][:, cols]
        target = w0.astype(np.float64)
        out = np.empty_like(current)
        for start in range(0, n, REFIT_ROWS):
            stop = min(start + REFIT_ROWS, n)
            error = np.empty((stop - start, len(cols)))  # (x - w') / U_ii of the block's rows
            for i in range(start, stop):
                x = target[i]
                weight, infeasible = project_weights(x, masks[:, i], offset[i], u.top, u.n_bits)
                out[i] = np.where(pinned[i], w0[i], np.where(infeasible, current[i], weight))
                error[i - start] = (x - out[i]) / factor[i, i]
                target[i + 1 : stop] -= np.outer(factor[i, i + 1 : stop], error[i - start])
            target[stop:] -= factor[start:stop, stop:].T @ error
        old = self.scale2[part, cols] * np.einsum("nk,nk->k", current - w0, self.gram[part] @ (current - w0))
        new = self.scale2[part, cols] * np.einsum("nk,nk->k", out - w0, self.gram[part] @ (out - w0))
        better = new < old
        self.w[part, :n, cols[better]] = out[:, better].T
        self._update_columns(part, cols)

    def weights(self) -> np.ndarray:
        """(P, N, M) int64 current weights."""
        return np.ascontiguousarray(self.w[:, : self.n, : self.m])


class WindowOrchestrator:
    """Keep a window of cell groups per (segment, sign set), in the encoded domain of the mapper's sign scheme.

    A segment is the layout's allocation unit (``layout.region``: plane-tile, plane-column of a row block
    or segment-column of an operation unit), or the ``segment`` kind given. Differential weights have two
    sign sets, each with its own window; offset schemes project ``u = w - offset`` with the layout's
    offsets (segment-offset: segments of ``layout.read_rows`` rows, whose minimum keeps u = 0, so the
    mapper re-derives the same offsets). Budget mode spends the error with the budgeted greedy engine
    (:func:`sme_plugin.greedy.spend`) that tile-empty shares: each round every segment proposes its
    cheapest group (squared error added per crossbar column freed). A column freed need not free a
    crossbar: with ``spend: crossbars`` the drops that freed none are undone afterwards (:class:`_Tracked`:
    per pool of crossbars, a region row or part of a layer, the drops after the one at which the pool first
    had its fewest crossbars), so the crossbars reached cost the least error along the greedy's order.
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
        error : {"weight", "output"}
            What ``budget`` bounds: the relative weight error, or the relative output error on the
            calibration inputs ``||X (W' - W)|| / ||X W||`` (X: each layer's im2col inputs; the run hands
            their second moments over, so it needs a dataset). ``output`` prices each drop by the output
            error it adds per crossbar column freed and refits the dropped columns' weights within their
            windows (``compensate``); in ``fixed`` mode it refits every column within the fixed windows.
        compensate : bool
            With ``error: output``: after each drop, refit the affected columns' integer weights within
            their windows (GPTQ-style, second order on the input second moments); False (default):
            plain projection. Off by default: on digits the greedy spends what compensation saves on
            further drops that free no crossbar, and accuracy falls (see the issue-6 note).
        spend : {"crossbars", "budget"}
            In ``budget`` mode: ``crossbars`` stops each pool of crossbars at its last drop that frees a
            crossbar (the crossbars of ``budget``, for less error); ``budget`` spends the whole allowance.
        damping : float
            With ``error: output``: errors are measured with ``H + damping * mean(diag H) * I`` instead of
            the calibration inputs' second moments H, adding a weight-error term, so that directions the few
            calibration inputs do not excite are not free to drop (they are, on 4 photos, and the error on
            other inputs then grows far beyond the budget). 0: the plain output error.
        """

        segment: Literal["auto", "tile", "column", "ou"] = "auto"
        mode: Literal["fixed", "budget"] = "budget"
        planes: int = Field(2, ge=1, le=16)
        budget: float = Field(0.05, ge=0, le=1)
        scope: Literal["layer", "model"] = "layer"
        error: Literal["weight", "output"] = "weight"
        compensate: bool = False
        spend: Literal["crossbars", "budget"] = "crossbars"
        damping: float = Field(0.0, ge=0, le=1e6)

    def __init__(self, params: Params):
        self.params = params

    @property
    def needs_inputs(self) -> bool:
        """Whether :meth:`orchestrate` needs the layers' input second moments (``grams``)."""
        return self.params.error == "output"

    @property
    def per_layer(self) -> bool:
        """Whether layers can be orchestrated one at a time (False: a model-wide budget)."""
        return not (self.params.mode == "budget" and self.params.scope == "model")

    def _fixed(self, units: _Units) -> None:
        groups, planes = units.groups, min(self.params.planes, units.groups)
        start = np.arange(groups - planes + 1)[:, None]
        placements = (np.arange(groups) >= start) & (np.arange(groups) < start + planes)  # (placements, G)
        units.set_windows(placements[units.errors_of_windows(placements).argmin(axis=0)])

    def orchestrate(self, layers: list[QuantizedLayer], layouts: list[Layout],
                    grams: dict[str, np.ndarray] | None = None) -> list[QuantizedLayer]:
        """Windowed weights of the layers with a sparse layout; layers with a dense one stay exact.

        grams: layer name -> (P, N, N) second moments of its im2col inputs on calibration data
        (:func:`sme_plugin.activations.input_gram`), needed with ``error: output`` for every sparse layer.
        Per-layer work (``fixed`` mode, or ``budget`` with ``scope: layer``) runs one layer at a time, so
        only one layer's working state is held; ``scope: model`` holds every sparse layer's state."""
        sparse = [i for i, layout in enumerate(layouts) if layout.sparse]
        out = [None if layout.sparse else q.with_weights(q.w_int.copy()) for q, layout in zip(layers, layouts)]
        build = lambda i: _Units.build(layers[i], layouts[i], self.params.segment)
        if self.params.error == "output":
            missing = [layers[i].layer.name for i in sparse if (grams or {}).get(layers[i].layer.name) is None]
            if missing:
                raise ConflictError(f"error: output needs the input second moments of layers {missing} "
                                    f"(calibration inputs: configure a dataset)")
            return self._orchestrate_output(layers, layouts, sparse, out, build, grams)
        problem = lambda i: _WindowDrops(build(i))
        if self.params.mode == "budget" and self.params.scope == "model":
            norm = sum(_squared_norm(q) for q in layers)
            for i, drops in zip(sparse, self._spend(sparse, problem, lambda _: norm, layouts)):
                out[i] = layers[i].with_weights(drops.units.decoded())
            return out
        for i in sparse:
            if self.params.mode == "fixed":
                units = build(i)
                self._fixed(units)
            else:
                (drops,) = self._spend([i], problem, lambda own: _squared_norm(own[0].units.quantized), layouts)
                units = drops.units
            out[i] = layers[i].with_weights(units.decoded())
            del units
        return out

    def _spend(self, indices: list[int], problem, norm, layouts: list[Layout]) -> list:
        """The greedy problems ``problem(index)`` of layers ``indices`` after spending ``budget**2 *
        norm(problems)`` on them (:func:`sme_plugin.greedy.spend`). With ``spend: crossbars`` the drops that
        freed no crossbar are then undone: in place where the problem took snapshots (:meth:`_Tracked.undo`),
        else a layer that made some is built afresh and carries out only the drops it keeps
        (:func:`sme_plugin.greedy.replay`)."""
        problems = [problem(i) for i in indices]
        allowance = self.params.budget**2 * norm(problems)
        if self.params.spend == "budget":
            spend(problems, allowance)
            return problems
        tracked = [_Tracked(drops, layouts[i]) for i, drops in zip(indices, problems)]
        del problems
        spend(tracked, allowance)
        final = []
        for j, i in enumerate(indices):
            made, keep = tracked[j].kept()
            if (keep == made).all():
                final.append(tracked[j].problem)
            elif tracked[j].undoable:
                tracked[j].undo(keep)
                final.append(tracked[j].problem)
            else:
                tracked[j] = None  # release this layer's state before building it again
                final.append(problem(i))
                replay(final[-1], keep)
        return final

    def _orchestrate_output(self, layers, layouts, sparse, out, build, grams):
        """``error: output``: budget mode spends the output-error allowance (per layer or model-wide) on
        group drops priced per column freed, refitting as it goes; fixed mode refits within its windows."""
        problem = lambda i, units: _OutputDrops(units, damped(grams[layers[i].layer.name], self.params.damping),
                                                self.params.compensate)
        fresh = lambda i: problem(i, build(i))
        norm = lambda problems: sum(drops.norm for drops in problems)
        if self.params.mode == "budget" and self.params.scope == "model":
            for i, drops in zip(sparse, self._spend(sparse, fresh, norm, layouts)):
                out[i] = layers[i].with_weights(drops.weights())
            return out
        for i in sparse:
            if self.params.mode == "fixed":
                units = build(i)
                self._fixed(units)
                drops = problem(i, units)
                everything = np.arange(units.n_units)
                units.narrow(everything, units.current)  # the refit keeps to the groups the windows use
                drops.refit(np.arange(drops.size))
                del units
            else:
                (drops,) = self._spend([i], fresh, norm, layouts)
            out[i] = layers[i].with_weights(drops.weights())
            del drops
        return out


@hookimpl
def sme_register_orchestrators(register):
    register("none", NoOrchestrator)
    register("kbits", KBitsOrchestrator)
    register("window", WindowOrchestrator)
