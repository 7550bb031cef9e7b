"""Bit orchestrators: rewrite integer weights so their bit patterns are sparser where it saves crossbars.

- ``none`` keeps the weights.
- ``kbits`` limits every magnitude to at most k non-zero bits.
- ``window`` keeps, per segment of the configured mapping and per sign set, only a window of cell groups
  (a group = ``cell_bits`` bits, one crossbar column per weight column), either a fixed number of
  contiguous groups or as many dropped groups as a relative weight-error budget allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from .bitsets import group_bitmask, project_to_mask, project_to_set, values_with_k_bits
from .hookspecs import hookimpl
from .params import StrategyParams
from .signs import encoded_bits, scheme_offsets, stored_values
from .mapping import region_shape
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
                raise ValueError(
                    f"kbits: k={self.params.k} exceeds the {q.bits - 1} magnitude bits of layer {q.layer.name!r}"
                )
            allowed = values_with_k_bits(self.params.k, q.bits - 1)
            magnitude = project_to_set(np.abs(q.w_int), allowed, self.params.rounding)
            out.append(q.with_weights(np.sign(q.w_int) * magnitude))
        return out


@dataclass
class _Units:
    """The non-zero stored values of one layer, grouped into units = (sign set, segment).

    A unit's window is the set of cell groups its values may use; its stored values are projected onto the
    window's bits (:func:`bitsets.project_to_mask`), within the range that keeps ``|w'| <= 2**(bits-1) - 1``.
    Equal values of one crossbar column with one offset project alike, so the work runs over entries =
    distinct (column, offset, value) triples. Arrays of length E run over entries, of length U over units.

    Attributes
    ----------
    top : largest weight magnitude, 2**(bits-1) - 1.
    offset_map : (P, N, M) int64 digital offsets of the sign scheme; signs : (S,) sign of each set.
    position, entry : (V,) flat index of each non-zero value in the (S, P, N, M) stored values, and its entry.
    values, offset : (E,) int64 stored value and digital offset of each entry.
    column, unit : (E,) crossbar column (unit * seg_cols + column inside the segment) and unit of each entry.
    weight : (E,) float64 squared scale times the number of values the entry stands for (real-unit errors).
    groups, cell_bits : G cell groups of ``cell_bits`` bits; min_groups : groups a window keeps at least.
    window : (U, G) bool groups each unit may use; current : (E,) values projected onto ``window``.
    saved, added : (U, G) crossbar columns freed by dropping each group and the squared real error it adds.
    stale : (U,) bool units whose ``saved`` / ``added`` are out of date.
    """

    quantized: QuantizedLayer
    top: int
    offset_map: np.ndarray
    signs: np.ndarray
    stored_shape: tuple
    position: np.ndarray
    entry: np.ndarray
    values: np.ndarray
    column: np.ndarray
    unit: np.ndarray
    offset: np.ndarray
    weight: np.ndarray
    n_units: int
    seg_cols: int
    groups: int
    cell_bits: int
    min_groups: int
    window: np.ndarray
    current: np.ndarray
    saved: np.ndarray
    added: np.ndarray
    stale: np.ndarray

    @classmethod
    def build(cls, q: QuantizedLayer, layout: Layout, segment: str) -> "_Units":
        """Units of ``q`` for ``segment`` (``auto``: the layout's allocation unit); offsets are the layout's."""
        geometry, mask, top = layout.geometry, q.layer.mask, _top(q)
        offsets = scheme_offsets(layout.sign, q.w_int, mask, q.bits, layout.read_rows)
        stored, signs = stored_values(layout.sign, q.w_int, offsets)
        stored = np.where(mask[None], stored, 0)
        seg_rows, seg_cols = layout.region if segment == "auto" else region_shape(segment, geometry)
        parts, rows, cols = q.w_int.shape
        row_blocks, col_blocks = -(-rows // seg_rows), -(-cols // seg_cols)
        s, p, n, m = np.nonzero(stored)
        unit = ((s * parts + p) * row_blocks + n // seg_rows) * col_blocks + m // seg_cols
        span = 1 << q.bits  # stored values and shifted offsets lie in [0, span]
        column = unit * seg_cols + m % seg_cols
        key = (column * (span + 1) + offsets[p, n, m] + span // 2) * span + stored[s, p, n, m]
        key, first, entry, count = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
        rest, values = np.divmod(key, span)
        column, offset = np.divmod(rest, span + 1)
        scale = np.broadcast_to(q.scale, q.w_int.shape)[p[first], n[first], m[first]].astype(np.float64)
        n_units = len(signs) * parts * row_blocks * col_blocks
        groups = -(-encoded_bits(layout.sign, q.bits) // geometry.cell_bits)
        return cls(
            quantized=q,
            top=top,
            offset_map=offsets,
            signs=signs,
            stored_shape=stored.shape,
            position=np.ravel_multi_index((s, p, n, m), stored.shape),
            entry=entry,
            values=values,
            column=column,
            unit=column // seg_cols,
            offset=offset - span // 2,
            weight=scale**2 * count,
            n_units=n_units,
            seg_cols=seg_cols,
            groups=groups,
            cell_bits=geometry.cell_bits,
            # under the ISAAC offset u = 0 means w = -2**(bits-1): a window may never become empty
            min_groups=1 if layout.sign == "offset" else 0,
            window=np.ones((n_units, groups), dtype=bool),
            current=values,
            saved=np.zeros((n_units, groups), dtype=np.int64),
            added=np.zeros((n_units, groups)),
            stale=np.ones(n_units, dtype=bool),
        )

    def project(self, masks: np.ndarray, index) -> np.ndarray:
        """Values ``values[index]`` projected onto the int64 bit ``masks`` (broadcast), kept in range."""
        values = np.broadcast_to(self.values[index], masks.shape)
        offset = self.offset[index]
        out = project_to_mask(values, masks)
        low = out < -self.top - offset
        out[low] = project_to_mask(values[low], masks[low], "ceil")
        high = out > self.top - offset
        out[high] = project_to_mask(values[high], masks[high], "floor")
        return out

    def errors(self, projected: np.ndarray) -> np.ndarray:
        """(K, E) projected values -> (K, U) squared real error of each unit."""
        count = projected.shape[0]
        squared = self.weight * ((projected - self.values) ** 2).astype(np.float64)
        keys = (np.arange(count)[:, None] * self.n_units + self.unit).ravel()
        return np.bincount(keys, squared.ravel(), minlength=count * self.n_units).reshape(count, self.n_units)

    def set_window(self, window: np.ndarray, changed: np.ndarray) -> None:
        """Take the (U, G) bool ``window``; project the values of the (U,) bool ``changed`` units onto it."""
        self.window = window
        index = np.flatnonzero(changed[self.unit])
        current = self.current.copy()
        current[index] = self.project(group_bitmask(window, self.cell_bits)[self.unit[index]], index)
        self.current = current
        self.stale |= changed

    def best_drops(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cheapest group to drop from each unit's window: (U,) error per column saved, added error, group.

        Dropping group g changes only the values whose current projection uses g, so only those are
        re-projected, and only for stale units. Groups that became empty leave the window for free;
        units with nothing to drop get an infinite cost.
        """
        index = np.flatnonzero(self.stale[self.unit])
        shifts = self.cell_bits * np.arange(self.groups, dtype=np.int64)[:, None]
        group, k = np.nonzero((self.current[index] >> shifts) & ((1 << self.cell_bits) - 1) != 0)
        index = index[k]  # (value, group) pairs: group is non-zero in the value's current projection
        n_columns = self.n_units * self.seg_cols
        used = np.bincount(group * n_columns + self.column[index], minlength=self.groups * n_columns) > 0
        stale = np.flatnonzero(self.stale)
        self.saved[stale] = used.reshape(self.groups, self.n_units, self.seg_cols).sum(axis=2).T[stale]
        self.window &= self.saved > 0
        unit, values = self.unit[index], self.values[index]
        group_bits = group_bitmask(np.eye(self.groups, dtype=bool), self.cell_bits)
        kept = group_bitmask(self.window, self.cell_bits)[unit] & ~group_bits[group]
        change = self.weight[index] * ((self.project(kept, index) - values) ** 2 - (self.current[index] - values) ** 2)
        added = np.bincount(unit * self.groups + group, change, minlength=self.n_units * self.groups)
        self.added[stale] = added.reshape(self.n_units, self.groups)[stale]
        self.stale[:] = False
        allowed = self.window & (self.window.sum(axis=1, keepdims=True) > self.min_groups)
        cost = np.where(allowed, self.added / np.maximum(self.saved, 1), np.inf)
        best = cost.argmin(axis=1)
        rows = np.arange(self.n_units)
        return cost[rows, best], self.added[rows, best], best

    def decoded(self) -> np.ndarray:
        """(P, N, M) int64 weights of the current values, clipped to the sign-magnitude range."""
        stored = np.zeros(self.stored_shape, dtype=np.int64)
        stored.flat[self.position] = self.current[self.entry]
        w_int = self.offset_map + np.tensordot(self.signs, stored, axes=([0], [0]))
        return np.where(self.quantized.layer.mask, np.clip(w_int, -self.top, self.top), 0)


def _drop_within_budget(problems: list[_Units], allowance: float) -> None:
    """Greedy rounds: drop at most one group per unit per round, cheapest cost first, within ``allowance``.

    allowance: squared real error the drops may add, summed over ``problems``. Stops when a round
    accepts nothing.
    """
    while True:
        cost, added, group = (np.concatenate(a) for a in zip(*(u.best_drops() for u in problems)))
        order = np.argsort(cost, kind="stable")
        order = order[np.isfinite(cost[order])]
        spent = np.cumsum(added[order])
        accepted = np.searchsorted(spent, allowance, side="right")
        if accepted == 0:
            return
        allowance -= spent[accepted - 1]
        chosen = np.zeros(cost.size, dtype=bool)
        chosen[order[:accepted]] = True
        start = 0
        for units in problems:
            changed = chosen[start : start + units.n_units]
            window = units.window.copy()
            window[changed, group[start : start + units.n_units][changed]] = False
            units.set_window(window, changed)
            start += units.n_units


class WindowOrchestrator:
    """Keep a window of cell groups per (segment, sign set), in the encoded domain of the mapper's sign scheme.

    A segment is a plane-tile (geometry.rows x geometry.cols of a part), a column (geometry.rows x 1) or an
    operation unit (geometry.ou_rows x 1). Differential weights have two sign sets, each with its own window;
    offset schemes project ``u = w - offset`` (segment-offset: the segment minimum keeps u = 0, so the mapper
    re-derives the same offsets).
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
        masks = np.broadcast_to(group_bitmask(placements, units.cell_bits)[:, None], (len(start), units.values.size))
        best = units.errors(units.project(masks, slice(None))).argmin(axis=0)
        units.set_window(placements[best], np.ones(units.n_units, dtype=bool))

    def orchestrate(self, layers: list[QuantizedLayer], layouts: list[Layout]) -> list[QuantizedLayer]:
        """Windowed weights of the layers with a sparse layout; layers with a dense one stay exact.

        Per-layer work (``fixed`` mode, or ``budget`` with ``scope: layer``) runs one layer at a time, so
        only one layer's working state is held; ``scope: model`` holds every sparse layer's state."""
        out = [q.with_weights(q.w_int.copy()) for q in layers]
        sparse = [i for i, layout in enumerate(layouts) if layout.sparse]
        build = lambda i: _Units.build(layers[i], layouts[i], self.params.segment)  # noqa: E731
        if self.params.mode == "budget" and self.params.scope == "model":
            problems = [build(i) for i in sparse]
            norm = sum(float(np.square(q.dequantized()).sum()) for q in layers)
            _drop_within_budget(problems, self.params.budget**2 * norm)
            for i, units in zip(sparse, problems):
                out[i] = layers[i].with_weights(units.decoded())
            return out
        for i in sparse:
            units = build(i)
            if self.params.mode == "fixed":
                self._fixed(units)
            else:
                _drop_within_budget([units], self.params.budget**2 * float(np.square(layers[i].dequantized()).sum()))
            out[i] = layers[i].with_weights(units.decoded())
        return out


@hookimpl
def sme_register_orchestrators(register):
    register("none", NoOrchestrator)
    register("kbits", KBitsOrchestrator)
    register("window", WindowOrchestrator)
