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
  stored values onto the cell groups still allocated there; it buys whole crossbars (or OU bands) only,
  with the budgeted greedy engine the window orchestrator uses (:mod:`sme_plugin.greedy`).
- ``sme``: ``tile-empty`` then ``row-compact``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from pydantic import Field, model_validator

from .greedy import spend
from .hookspecs import hookimpl
from .orchestrate import _Units, _unpack
from .params import StrategyParams
from .placement import assemble, ceil_div, index_bits_for
from .signs import cell_levels, stored_values
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
    nonzero = encoding.levels != 0
    if column_order is not None:
        nonzero = np.take_along_axis(nonzero, order[None, None, :, None, :], axis=-1)
    nonzero = np.pad(nonzero, [(0, 0)] * 4 + [(0, blocks * cols - n_cols)])  # padded positions hold nothing
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

    Regions are the layout's allocation units (``layout.region``): plane-tiles (``tile``), plane-columns
    of a row block (``column``) or segment-columns (``ou``). Emptying group g of sign set s in a region
    re-projects the region's stored values (as the mapping got them) to the nearest value
    (``|w| <= 2**(bits-1) - 1``) whose bits lie in the groups still allocated there, so no new region is
    ever allocated; the offsets are the encoding's, unchanged. Greedy in rounds
    (:func:`sme_plugin.greedy.spend`): per (sign set, region) the cheapest group is proposed; proposals are
    bought a crossbar at a time (tile packing: one region; column/OU packing: the cheapest plane-columns
    of one row block or band that bring it below the next multiple of ``layout.capacity``), cheapest
    crossbar first, while the layer's error stays within the budget; stops when a round accepts nothing.
    If the result still frees no crossbar (e.g. ``bitplane`` allocates every region anyway) the layer is
    returned unchanged: error is only spent for savings.
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
        n_groups = encoding.levels.shape[1]
        stored, signs = stored_values(layout.sign, quantized.w_int, encoding.offset)  # what the cells store
        units = _Units(quantized, np.where(quantized.layer.mask[None], stored, 0), signs, encoding.offset,
                       layout.region, encoding.cell_bits, n_groups, min_groups=0)
        del stored
        norm = float(np.square(quantized.dequantized()).sum())
        allowed = np.inf if self.params.budget is None else self.params.budget**2 * norm
        problem = _Emptying(units, layout.capacity, self.params.threshold, whole=np.isfinite(allowed))
        spend([problem], allowed)
        if problem.emptied == 0:
            return mapped
        stored = units.stored()
        new_encoding = replace(encoding, levels=cell_levels(stored, n_groups, encoding.cell_bits))
        weights, emptied = units.decoded(stored), problem.emptied
        del units, problem, stored
        placed = mapper.place(quantized.with_weights(weights), new_encoding, layout)
        if placed.crossbars >= mapped.crossbars:  # emptied regions freed no whole crossbar: keep the weights
            return mapped
        change = float(np.square(quantized.scale * (weights - quantized.w_int)).sum())
        return replace(
            placed,
            details={
                **placed.details,
                "squeeze": _steps(mapped.details, "tile-empty"),
                "emptied_regions": emptied,
                "weight_error": float(np.sqrt(change / norm)) if norm else 0.0,
            },
        )


class _Emptying:
    """tile-empty's greedy problem (:class:`sme_plugin.greedy.Problem`) over a layer's regions.

    Each unit (sign set, region) of ``units`` offers its cheapest candidate group (the squared error of
    emptying it; infeasible or, with a ``threshold``, too full regions are no candidates). With ``whole``
    and packed plane-columns (``capacity``: plane-columns per crossbar or OU band) a slot is a (part, row
    block): its proposal is the cheapest proposals of its units that empty enough plane-columns to drop
    below the next multiple of ``capacity``, costing their sum. Otherwise (tile packing: a region is a
    crossbar; or no budget: the threshold rule alone decides) a slot is a unit.
    """

    def __init__(self, units: _Units, capacity: int | None, threshold: int, whole: bool):
        self.units, self.capacity, self.threshold = units, capacity, threshold
        _, parts, row_blocks, _ = units.blocks
        self.whole = whole and capacity is not None
        self.size = parts * row_blocks if self.whole else units.n_units
        self.cost = np.full(units.n_units, np.inf)
        self.group = np.zeros(units.n_units, dtype=np.int64)
        self.stale = np.flatnonzero(units.window)  # units to evaluate
        self.keys = np.arange(self.size)  # slots to propose
        self.emptied = 0

    def _evaluate(self, units: np.ndarray) -> None:
        _, added, cells, infeasible = self.units.drops(units, count_cells=self.threshold > 0)
        candidate = _unpack(self.units.window[units], self.units.groups) & ~infeasible
        if self.threshold:
            candidate &= cells <= self.threshold
        cost = np.where(candidate, added, np.inf)
        self.group[units] = cost.argmin(axis=1)
        self.cost[units] = cost.min(axis=1)

    def _members(self, keys: np.ndarray) -> np.ndarray:
        """(K, S*CB) units of each (part, row block) ``keys``, in unit order."""
        n_sets, parts, row_blocks, col_blocks = self.units.blocks
        sets = np.arange(n_sets) * (parts * row_blocks * col_blocks)
        return (keys[:, None, None] * col_blocks + sets[None, :, None] + np.arange(col_blocks)).reshape(len(keys), -1)

    def _selection(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K,) cost of freeing one crossbar / band in each of ``keys`` (inf: impossible) and the units it empties."""
        members = self._members(keys)
        cost = self.cost[members]
        in_use = np.bitwise_count(self.units.window[members]).sum(axis=1, dtype=np.int64)  # occupied plane-columns
        need = in_use - (ceil_div(in_use, self.capacity) - 1) * self.capacity
        order = np.argsort(cost, axis=1, kind="stable")
        ranked = np.take_along_axis(cost, order, axis=1)
        chosen = (np.arange(members.shape[1]) < need[:, None]) & np.isfinite(ranked)
        complete = (chosen.sum(axis=1) == need) & (need > 0)
        total = np.where(complete, np.where(chosen, ranked, 0.0).sum(axis=1), np.inf)
        units = np.take_along_axis(members, order, axis=1)[chosen & complete[:, None]]
        return total, np.sort(units)

    def proposals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(self.stale):
            self._evaluate(self.stale)
        if not self.whole:
            units, self.stale = self.stale, np.empty(0, dtype=np.int64)
            return units, self.cost[units], self.cost[units]
        self.stale = np.empty(0, dtype=np.int64)
        cost, _ = self._selection(self.keys)
        return self.keys, cost, cost

    def apply(self, slots: np.ndarray) -> None:
        units = self._selection(slots)[1] if self.whole else slots
        self.units.drop(units, self.group[units])
        self.emptied += len(units)
        self.stale, self.keys = units, slots


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
