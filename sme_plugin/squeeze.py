"""Squeeze-out: empty sparse regions and compact the rows of a mapped layer.

Interface: ``squeeze(mapped, mapper) -> MappedLayer``, ``mapper`` being the configured mapper (its
``place`` recounts crossbars after levels change). Every squeezer keeps the invariant of
:class:`~sme_plugin.types.MappedLayer` (the encoding decodes, in physical order, to ``quantized.w_int``)
and never increases the crossbar count. Dense mappings (no ``details["packing"]``: ``isaac``, or
``hybrid`` when it chose ``isaac``) are returned unchanged. ``details["squeeze"]`` lists the steps applied.

- ``none``: identity.
- ``row-compact`` (SRE-like): rows of a plane-tile whose levels are all zero are dropped; the surviving
  rows of all plane-tiles of one (part, column block) share crossbars. Costs ``ceil(log2 N)`` index bits
  per surviving row. Applied only where it needs fewer crossbars than the mapping it gets.
- ``tile-empty`` (Bit-Transformer-like): greedily empties the regions of the mapper's packing (plane-tile,
  plane-column of a row block, segment-column) that cost least weight error, re-projecting the region's
  stored values onto the cell groups still allocated there.
- ``sme``: ``tile-empty`` then ``row-compact``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from pydantic import Field, model_validator

from .bitsets import group_bitmask, project_to_mask
from .hookspecs import hookimpl
from .mapping import block_expand, block_reduce, ceil_div, digital_ops, index_bits_for, region_shape
from .params import StrategyParams
from .signs import split_levels
from .types import MappedLayer


def permute(array: np.ndarray, row_perm: np.ndarray | None, col_perm: np.ndarray | None) -> np.ndarray:
    """(..., P, N, M) -> ``out[..., p, i, j] = array[..., p, row_perm[p, i], col_perm[p, j]]`` (None: keep)."""
    lead = (1,) * (array.ndim - 3)
    if row_perm is not None:
        array = np.take_along_axis(array, row_perm.reshape(lead + row_perm.shape + (1,)), axis=-2)
    if col_perm is not None:
        parts, cols = col_perm.shape
        array = np.take_along_axis(array, col_perm.reshape(lead + (parts, 1, cols)), axis=-1)
    return array


def _inverse(order: np.ndarray | None) -> np.ndarray | None:
    return None if order is None else np.argsort(order, axis=1)


def _compose(order: np.ndarray | None, perm: np.ndarray) -> np.ndarray:
    """Original index of each new physical position, after permuting positions by ``perm`` (P, K)."""
    if order is None:
        return perm
    return np.take_along_axis(order, perm, axis=1)


def _steps(details: dict, step: str) -> list:
    """The squeeze steps recorded in ``details`` followed by ``step``."""
    return [*details.get("squeeze", []), step]


class NoSqueeze:
    """Identity: the mapping as the mapper made it."""

    class Params(StrategyParams):
        """No parameters."""

    def __init__(self, params: Params):
        self.params = params

    def squeeze(self, mapped: MappedLayer, mapper) -> MappedLayer:
        return mapped


def row_compact(mapped: MappedLayer) -> MappedLayer:
    """``mapped`` with the all-zero rows of every plane-tile dropped and the rest packed.

    crossbars = sum over (part, column block) of ``ceil(surviving rows / rows)``; present = cells of the
    surviving tile rows; index_bits = ``ceil(log2 N)`` per surviving row; read groups are unchanged.
    """
    levels = mapped.encoding.levels
    rows, cols = mapped.geometry.rows, mapped.geometry.cols
    surviving = block_reduce(levels != 0, 1, cols)  # (S, G, P, N, MB)
    n_surviving = int(surviving.sum())
    return replace(
        mapped,
        present=block_expand(surviving, 1, cols, levels.shape[-2], levels.shape[-1]),
        crossbars=int(ceil_div(surviving.sum(axis=(0, 1, 3)), rows).sum()),
        index_bits=n_surviving * index_bits_for(levels.shape[-2]),
        digital_ops=digital_ops(mapped.encoding.offset, mapped.read_rows),
        details={**mapped.details, "squeeze": _steps(mapped.details, "row-compact"), "surviving_rows": n_surviving},
    )


def reorder(mapped: MappedLayer) -> MappedLayer:
    """``mapped`` with rows and columns of each part sorted by their count of non-zero cells (densest first).

    Columns of similar density then share column blocks, so sparse blocks keep fewer surviving rows.
    Levels, present and offset are permuted; ``row_order``/``col_order`` record the physical order.
    """
    nonzero = mapped.encoding.levels != 0
    row_perm = np.argsort(-nonzero.sum(axis=(0, 1, 4)), axis=1, kind="stable")  # (P, N)
    col_perm = np.argsort(-nonzero.sum(axis=(0, 1, 3)), axis=1, kind="stable")  # (P, M)
    encoding = replace(
        mapped.encoding,
        levels=permute(mapped.encoding.levels, row_perm, col_perm),
        offset=permute(mapped.encoding.offset, row_perm, col_perm),
    )
    return replace(
        mapped,
        encoding=encoding,
        present=permute(mapped.present, row_perm, col_perm),
        row_order=_compose(mapped.row_order, row_perm),
        col_order=_compose(mapped.col_order, col_perm),
        digital_ops=digital_ops(encoding.offset, mapped.read_rows),
    )


class RowCompact:
    """SRE-like row compaction of plane-tiles, optionally after reordering rows and columns."""

    class Params(StrategyParams):
        """reorder: also try rows/columns sorted by density (kept only if it needs fewer crossbars)."""

        reorder: bool = False

    def __init__(self, params: Params):
        self.params = params

    def squeeze(self, mapped: MappedLayer, mapper) -> MappedLayer:
        if "packing" not in mapped.details:
            return mapped
        options = [row_compact(mapped)]
        if self.params.reorder:
            options.append(row_compact(reorder(mapped)))
        best = min(options, key=lambda option: option.crossbars)
        return best if best.crossbars < mapped.crossbars else mapped


class TileEmpty:
    """Empty the allocation regions whose removal costs least weight error, within a budget.

    Regions are those of ``mapped.details["packing"]``: plane-tiles (``tile``), plane-columns of a row
    block (``column``) or segment-columns (``ou``). Emptying group g of sign set s in a region re-projects
    the region's stored values to the nearest value (``|w| <= 2**(bits-1) - 1``) whose bits lie in the
    groups still allocated there, so no new region is ever allocated; the offset is unchanged.
    Greedy in rounds: per (sign set, region) the cheapest group is proposed; proposals are bought a
    crossbar at a time (tile packing: one region; column/OU packing: the cheapest plane-columns of one
    row block that bring it below the next multiple of the crossbar width), cheapest crossbar first,
    while the layer's error stays within the budget; stops when a round accepts nothing. If the result
    still frees no crossbar (e.g. ``bitplane`` allocates every region anyway) the layer is returned
    unchanged: error is only spent for savings.
    """

    class Params(StrategyParams):
        """threshold: only regions holding <= threshold non-zero cells are candidates (0: no such rule).
        budget: relative weight error ``||scale*(w'-w)|| / ||scale*w||`` allowed per layer
        (0: lossless removals only; None: unlimited, the threshold rule alone decides)."""

        threshold: int = Field(0, ge=0)
        budget: float | None = Field(0.0, ge=0.0)

        @model_validator(mode="after")
        def _bounded(self):
            if self.budget is None and self.threshold == 0:
                raise ValueError("budget: null needs a threshold > 0, otherwise every region would be emptied")
            return self

    def __init__(self, params: Params):
        self.params = params

    def squeeze(self, mapped: MappedLayer, mapper) -> MappedLayer:
        # A value's cell levels are its unique base-2**c digits, so emptying an occupied group always
        # costs error: with no error allowed there is nothing to do.
        if "packing" not in mapped.details or self.params.budget == 0:
            return mapped
        encoding, geometry, quantized = mapped.encoding, mapped.geometry, mapped.quantized
        parts, _, cols = quantized.w_int.shape
        scale = permute(np.broadcast_to(quantized.scale, (parts, 1, cols)), None, mapped.col_order)
        original = encoding.decode()
        norm = float(((scale * original) ** 2).sum())
        allowed = np.inf if self.params.budget is None else self.params.budget**2 * norm
        packing = mapped.details["packing"]
        capacity = None if packing == "tile" else geometry.cols  # plane-columns per crossbar (column) or band (ou)
        state = _Emptying(encoding, original, scale, quantized.bits, region_shape(packing, geometry), capacity)
        while state.round(self.params.threshold, allowed):
            pass
        if state.emptied == 0:
            return mapped
        new_encoding = replace(encoding, levels=state.levels())
        weights = state.weights()
        new_quantized = quantized.with_weights(
            permute(weights, _inverse(mapped.row_order), _inverse(mapped.col_order))
        )
        placed = mapper.place(new_quantized, new_encoding, geometry)
        if placed.crossbars >= mapped.crossbars:  # emptied regions freed no whole crossbar: keep the weights
            return mapped
        error = float(np.sqrt(((scale * (weights - original)) ** 2).sum() / norm)) if norm else 0.0
        return replace(
            placed,
            row_order=mapped.row_order,
            col_order=mapped.col_order,
            details={
                **placed.details,
                "squeeze": _steps(mapped.details, "tile-empty"),
                "emptied_regions": state.emptied,
                "weight_error": error,
            },
        )


class _Emptying:
    """Greedy state of :class:`TileEmpty`: stored values (S, P, N, M) being projected region by region.

    Each round works on the non-zero cells only (a removal changes nothing else) and sums their
    error changes per region (s, g, part, row block, column block) with ``bincount``. With packed
    plane-columns (``capacity`` = crossbar columns) removals are accepted a whole crossbar (or OU band)
    at a time: in each (part, row block) the cheapest proposals that empty enough plane-columns to drop
    below the next multiple of ``capacity``; ``capacity`` None (tile packing) frees a crossbar per region.
    """

    def __init__(self, encoding, original, scale, bits, region, capacity=None):
        self.values = encoding.stored()
        self.groups, self.cell_bits, self.signs = encoding.levels.shape[1], encoding.cell_bits, encoding.signs
        self.offset, self.original = encoding.offset, original
        self.scale = np.broadcast_to(scale, original.shape)
        self.limit = (1 << (bits - 1)) - 1
        self.region, self.capacity = region, capacity
        self.emptied = 0

    def weights(self) -> np.ndarray:
        """(P, N, M) int64 weights the current values represent (physical order)."""
        return self.offset + np.tensordot(self.signs, self.values, axes=1)

    def levels(self) -> np.ndarray:
        """(S, G, P, N, M) uint8 cell levels of the current values."""
        levels = split_levels(self.values, self.groups * self.cell_bits, self.cell_bits)
        return np.ascontiguousarray(levels.swapaxes(0, 1))

    def round(self, threshold: int, allowed: float) -> bool:
        """Accept the cheapest removals (one per sign set and region) that fit ``allowed``; False if none."""
        levels = self.levels()
        region_rows, region_cols = self.region
        n_sets, n_groups, parts, rows, cols = levels.shape
        shape = (n_sets, n_groups, parts, ceil_div(rows, region_rows), ceil_div(cols, region_cols))
        s, g, p, n, m = np.nonzero(levels)
        block_r, block_c = n // region_rows, m // region_cols
        region = np.ravel_multi_index((s, g, p, block_r, block_c), shape)
        size = int(np.prod(shape))
        cells = np.bincount(region, minlength=size).reshape(shape)  # non-zero cells per region
        kept = group_bitmask(np.moveaxis(cells > 0, 1, -1), self.cell_bits)  # (S, P, NB, MB) groups in use
        group_bits = group_bitmask(np.eye(n_groups, dtype=bool), self.cell_bits)  # (G,)
        mask = kept[s, p, block_r, block_c] & ~group_bits[g]
        value = self.values[s, p, n, m]
        weights = self.weights()
        current = weights[p, n, m]
        floor = project_to_mask(value, mask, "floor")
        ceil = project_to_mask(value, mask, "ceil")
        w_floor = current + self.signs[s] * (floor - value)
        w_ceil = current + self.signs[s] * (ceil - value)
        floor_ok, ceil_ok = np.abs(w_floor) <= self.limit, np.abs(w_ceil) <= self.limit
        use_ceil = ceil_ok & (~floor_ok | (ceil - value < value - floor))
        scale, original = self.scale[p, n, m], self.original[p, n, m]
        before = (scale * (current - original)) ** 2
        after = (scale * (np.where(use_ceil, w_ceil, w_floor) - original)) ** 2
        cost = np.bincount(region, after - before, minlength=size).reshape(shape)
        infeasible = np.bincount(region, ~(floor_ok | ceil_ok), minlength=size).reshape(shape) > 0
        candidate = (cells > 0) & ~infeasible
        if threshold:
            candidate &= cells <= threshold
        cost = np.where(candidate, cost, np.inf)
        best_group = cost.argmin(axis=1)  # (S, P, NB, MB): one proposal per sign set and region
        best_cost = cost.min(axis=1)
        error = float(((self.scale * (weights - self.original)) ** 2).sum())
        accepted = self._accept(best_cost, cells, allowed - error)
        accepted_count = int(accepted.sum())
        if accepted_count == 0:
            return False
        chosen = accepted[:, None] & (best_group[:, None] == np.arange(n_groups).reshape(-1, 1, 1, 1))
        take = chosen.ravel()[region]
        self.values[s[take], p[take], n[take], m[take]] = np.where(use_ceil, ceil, floor)[take]
        self.emptied += accepted_count
        return True


    def _accept(self, cost: np.ndarray, cells: np.ndarray, allowance: float) -> np.ndarray:
        """(S, P, NB, MB) bool proposals to carry out: whole savings, cheapest first, within ``allowance``.

        cost: (S, P, NB, MB) error of each region's proposal (inf: none); cells: non-zero cells per region.
        An unlimited allowance (no budget) takes every proposal: the threshold rule alone decides.
        """
        if not np.isfinite(allowance):  # threshold rule alone: empty every candidate region
            return np.isfinite(cost)
        n_sets, parts, row_blocks, col_blocks = cost.shape
        if self.capacity is None:  # every region is a crossbar of its own
            unit = np.arange(cost.size).reshape(cost.shape)
            need = np.ones(cost.size, dtype=np.int64)
        else:  # a saving = enough plane-columns of one (part, row block) to drop one crossbar / band
            unit = np.broadcast_to((np.arange(parts)[:, None] * row_blocks + np.arange(row_blocks))[None, :, :, None],
                                   cost.shape)
            in_use = (cells > 0).sum(axis=(0, 1, 4)).ravel()  # occupied plane-columns per (part, row block)
            need = in_use - (ceil_div(in_use, self.capacity) - 1) * self.capacity
        flat_cost, flat_unit = cost.ravel(), unit.ravel()
        order = np.lexsort((flat_cost, flat_unit))  # by unit, then cheapest first
        sorted_unit = flat_unit[order]
        first = np.searchsorted(sorted_unit, sorted_unit)  # index where each unit's run starts
        rank = np.arange(order.size) - first
        chosen = (rank < need[sorted_unit]) & np.isfinite(flat_cost[order])
        n_units = need.size
        unit_cost = np.bincount(sorted_unit[chosen], flat_cost[order][chosen], minlength=n_units)
        complete = np.bincount(sorted_unit[chosen], minlength=n_units) == need
        unit_cost = np.where(complete & (need > 0), unit_cost, np.inf)
        unit_order = np.argsort(unit_cost, kind="stable")
        fits = np.isfinite(unit_cost[unit_order]) & (np.cumsum(unit_cost[unit_order]) <= allowance)
        taken_units = np.zeros(n_units, dtype=bool)
        taken_units[unit_order[: int(fits.size if fits.all() else fits.argmin())]] = True
        accepted = np.zeros(cost.size, dtype=bool)
        accepted[order[chosen & taken_units[sorted_unit]]] = True
        return accepted.reshape(cost.shape)


class SmeSqueezer:
    """``tile-empty`` then ``row-compact``; parameters are the union of theirs (flat)."""

    class Params(TileEmpty.Params):
        """threshold, budget: of ``tile-empty``. reorder: of ``row-compact``."""

        reorder: bool = False

    def __init__(self, params: Params):
        self.params = params
        self.empty = TileEmpty(TileEmpty.Params(threshold=params.threshold, budget=params.budget))
        self.compact = RowCompact(RowCompact.Params(reorder=params.reorder))

    def squeeze(self, mapped: MappedLayer, mapper) -> MappedLayer:
        return self.compact.squeeze(self.empty.squeeze(mapped, mapper), mapper)


@hookimpl
def sme_register_squeezers(register):
    register("none", NoSqueeze)
    register("row-compact", RowCompact)
    register("tile-empty", TileEmpty)
    register("sme", SmeSqueezer)
