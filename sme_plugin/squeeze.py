"""Squeeze-out: empty sparse regions and compact the rows of a mapped layer.

Interface: ``squeeze(mapped, mapper) -> MappedLayer``, ``mapper`` being the configured mapper (its
``place`` re-places the layer under its layout after levels change). Every squeezer returns a new
placement of ``quantized.w_int`` (``encoding.decode() == quantized.w_int``) and never increases the
crossbar count. Dense layouts (``isaac``, ``bitplane``, or ``hybrid`` where it chose ``isaac``) are returned
unchanged. ``details["squeeze"]`` lists the steps applied.

- ``none``: identity.
- ``row-compact`` (SRE-like): rows of a plane-tile whose levels are all zero are dropped; the surviving
  rows of all plane-tiles of one (part, column block) share crossbars, read one (sign set, cell group)
  at a time. Costs ``ceil(log2 N)`` index bits per surviving row. Applied only where it needs fewer
  crossbars than the mapping it gets.
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
from .params import StrategyParams
from .placement import assemble, ceil_div, index_bits_for
from .signs import split_levels
from .types import MappedLayer


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


def density_order(levels: np.ndarray) -> np.ndarray:
    """(P, M) int64 columns of each part sorted by their count of non-zero cells (densest first)."""
    return np.argsort(-(levels != 0).sum(axis=(0, 1, 3)), axis=1, kind="stable")


def row_compact(mapped: MappedLayer, column_order: np.ndarray | None = None) -> MappedLayer:
    """``mapped`` re-placed with the all-zero rows of every plane-tile dropped and the rest packed.

    Column blocks of ``cols`` columns (in ``column_order``, (P, M), default: natural order) keep their
    columns; the surviving rows (s, g, n) of all plane-tiles of one (part, column block) are stacked,
    sorted by (s, g), ``rows`` to a crossbar. A read drives rows of one (s, g) only, at most the layout's
    read height, within one band of that height: rows of different cell groups or sign sets are read
    separately. Each surviving row selects its input (``ceil(log2 N)`` index bits); reordered columns
    add an output tag per column (``ceil(log2 M)`` bits).
    """
    encoding, layout = mapped.encoding, mapped.layout
    rows, cols, height = layout.geometry.rows, layout.geometry.cols, layout.read_rows
    n_sets, n_groups, parts, n_rows, n_cols = encoding.levels.shape
    order = np.tile(np.arange(n_cols), (parts, 1)) if column_order is None else column_order
    blocks = ceil_div(n_cols, cols)
    padded = np.full((parts, blocks * cols), -1, dtype=np.int64)
    padded[:, :n_cols] = order
    block_columns = padded.reshape(parts, blocks, cols)  # (P, CB, cols) logical column of each position
    nonzero = np.take_along_axis(encoding.levels != 0, np.maximum(padded, 0)[None, None, :, None, :], axis=-1)
    nonzero &= padded[None, None, :, None, :] >= 0
    surviving = nonzero.reshape(n_sets, n_groups, parts, n_rows, blocks, cols).any(axis=-1)  # (S, G, P, N, CB)
    p, cb, s, g, n = np.nonzero(surviving.transpose(2, 4, 0, 1, 3))  # ordered by (p, cb, s, g, n)
    key = p * blocks + cb
    counts = np.bincount(key, minlength=parts * blocks)
    rank = np.arange(len(key)) - (np.cumsum(counts) - counts)[key]
    per_key = ceil_div(counts, rows)
    crossbar = (np.cumsum(per_key) - per_key)[key] + rank // rows
    physical = rank % rows
    new_read = np.ones(len(key), dtype=bool)
    new_read[1:] = ((crossbar[1:] != crossbar[:-1]) | (s[1:] != s[:-1]) | (g[1:] != g[:-1])
                    | (physical[1:] // height != physical[:-1] // height))
    read = np.cumsum(new_read) - 1
    first = np.flatnonzero(new_read)
    logical_rows = np.full((len(first), height), -1, dtype=np.int64)
    physical_rows = np.full((len(first), height), -1, dtype=np.int64)
    logical_rows[read, physical % height] = n
    physical_rows[read, physical % height] = physical
    column = block_columns[p[first], cb[first]]  # (R, cols)
    reads = dict(part=p[first], logical_rows=logical_rows, physical_rows=physical_rows, crossbar=crossbar[first],
                 crossbars=int(per_key.sum()), column=column,
                 sign_set=np.broadcast_to(s[first, None], column.shape), group=np.broadcast_to(g[first, None], column.shape))
    index_bits = len(key) * index_bits_for(n_rows) + (0 if column_order is None else parts * n_cols * index_bits_for(n_cols))
    placement = assemble(encoding, rows=rows, cols=cols, segment_rows=height, index_bits=index_bits, **reads)
    return replace(mapped, placement=placement, details={
        **mapped.details, "squeeze": _steps(mapped.details, "row-compact"), "surviving_rows": len(key),
        "reordered_columns": column_order is not None,
    })


class RowCompact:
    """SRE-like row compaction of plane-tiles, optionally after sorting columns by density."""

    class Params(StrategyParams):
        """reorder: also try columns sorted by density (kept only if it needs fewer crossbars)."""

        reorder: bool = False

    def __init__(self, params: Params):
        self.params = params

    def squeeze(self, mapped: MappedLayer, mapper) -> MappedLayer:
        if not mapped.layout.sparse:
            return mapped
        options = [row_compact(mapped)]
        if self.params.reorder:
            options.append(row_compact(mapped, density_order(mapped.encoding.levels)))
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
        if not mapped.layout.sparse or self.params.budget == 0:
            return mapped
        encoding, layout, quantized = mapped.encoding, mapped.layout, mapped.quantized
        scale = np.broadcast_to(quantized.scale, (quantized.w_int.shape[0], 1, quantized.w_int.shape[2]))
        original = encoding.decode()
        norm = float(((scale * original) ** 2).sum())
        allowed = np.inf if self.params.budget is None else self.params.budget**2 * norm
        state = _Emptying(encoding, original, scale, quantized.bits, layout.region, layout.capacity)
        while state.round(self.params.threshold, allowed):
            pass
        if state.emptied == 0:
            return mapped
        new_encoding = replace(encoding, levels=state.levels())
        weights = state.weights()
        placed = mapper.place(quantized.with_weights(weights), new_encoding, layout)
        if placed.crossbars >= mapped.crossbars:  # emptied regions freed no whole crossbar: keep the weights
            return mapped
        error = float(np.sqrt(((scale * (weights - original)) ** 2).sum() / norm)) if norm else 0.0
        return replace(
            placed,
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
