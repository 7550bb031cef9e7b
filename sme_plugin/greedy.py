"""Budgeted greedy: spend an error allowance on savings, cheapest first, in rounds.

One engine serves the window orchestrator (drop a cell group from a segment's window, priced per
crossbar column it frees) and tile-empty (buy a whole crossbar or OU band by emptying regions).

A *problem* holds slots (e.g. segments, or the row blocks whose crossbars tile-empty buys); each slot
offers at most one proposal at a time: its cost per saving (the sort key) and the error it adds. A round
sorts every open proposal by (cost, slot) and accepts the longest prefix whose added errors fit the
allowance; the accepted proposals are carried out and their slots offer fresh proposals next round.
The engine stops when a round accepts nothing. A problem may report that the proposals it carried out
added another error than they proposed (a compensated change): the allowance is charged what they added.

Proposals a round does not accept stay open, unchanged, so a round only asks the problem for the
proposals of the slots it changed and merges them into the sorted list of open ones: the work per round
follows what changed, not the size of the problem.

:func:`replay` carries out again, on a fresh problem, the first proposals of each slot (a part of what
:func:`spend` accepted, e.g. to undo the drops that freed no crossbar).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Problem(Protocol):
    """What the engine needs from a problem.

    size: number of slots; slot ids are ``0 .. size-1``.
    """

    size: int

    def proposals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(slots, cost, added): the fresh proposals, one per slot at most.

        The first call covers every slot that has one; later calls cover (a subset of) the slots applied
        since the previous call, whose earlier proposals are spent. cost: error per saving, the sort key
        (inf or nan: no proposal); added: the error it adds, charged to the allowance.
        """

    def apply(self, slots: np.ndarray) -> float | None:
        """Carry out the current proposals of ``slots`` (int64, ascending).

        Returns None (the proposals added what they proposed), or the error they actually added together,
        charged to the allowance instead (e.g. lower, where the problem compensates what it changed; a
        problem whose accepted proposals interact must return their joint error)."""


@dataclass
class Spent:
    """Outcome of :func:`spend`: rounds run (the last one accepted nothing), proposals accepted, error spent."""

    rounds: int = 0
    accepted: int = 0
    spent: float = 0.0


class _Open:
    """The open proposals of all problems, sorted by (cost, global slot)."""

    def __init__(self):
        self.cost = np.empty(0)
        self.slot = np.empty(0, dtype=np.int64)
        self.added = np.empty(0)

    def merge(self, cost: np.ndarray, slot: np.ndarray, added: np.ndarray) -> None:
        """Add proposals (finite costs) to the sorted open ones."""
        if not cost.size:
            return
        ascending = slot.size < 2 or bool((slot[1:] > slot[:-1]).all())
        order = np.argsort(cost, kind="stable") if ascending else np.lexsort((slot, cost))
        cost, slot, added = cost[order], slot[order], added[order]
        position = np.searchsorted(self.cost, cost, side="left")
        tie = np.flatnonzero(np.searchsorted(self.cost, cost, side="right") > position)
        if tie.size:  # equal costs are ordered by slot: search (first index of the cost run, slot) keys
            first = np.ones(self.cost.size, dtype=bool)
            first[1:] = self.cost[1:] != self.cost[:-1]
            run_start = np.maximum.accumulate(np.where(first, np.arange(self.cost.size), 0))
            width = int(max(self.slot.max(), slot.max())) + 1
            position[tie] = np.searchsorted(run_start * width + self.slot, position[tie] * width + slot[tie])
        self.cost = np.insert(self.cost, position, cost)
        self.slot = np.insert(self.slot, position, slot)
        self.added = np.insert(self.added, position, added)

    def prefix(self, allowance: float) -> tuple[int, float]:
        """Length and total added error of the longest prefix whose running total stays within ``allowance``."""
        length = min(1024, self.cost.size)
        while True:
            total = np.cumsum(self.added[:length])
            over = total > allowance
            if over.any():
                count = int(over.argmax())
                break
            if length == self.cost.size:
                count = length
                break
            length = min(4 * length, self.cost.size)
        return count, (float(total[count - 1]) if count else 0.0)

    def pop(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(slots, added) of the first ``count`` proposals, removed."""
        taken, added = self.slot[:count], self.added[:count]
        self.cost, self.slot, self.added = self.cost[count:], self.slot[count:], self.added[count:]
        return taken, added


def spend(problems: Sequence[Problem], allowance: float) -> Spent:
    """Spend ``allowance`` (error, in the problems' units) on the problems' proposals, cheapest first.

    Each round takes the open proposals in (cost, slot) order, slots of ``problems[0]`` before those
    of ``problems[1]`` and so on at equal cost, and accepts the longest prefix whose added errors fit
    what is left of the allowance; stops when a round accepts nothing. An infinite allowance accepts
    every proposal each round (until no problem proposes anything). A round whose open proposals all
    fit together (none adding a negative error) accepts them all without sorting.
    """
    bases = np.concatenate([[0], np.cumsum([p.size for p in problems])]).astype(np.int64)
    fresh = [True] * len(problems)  # problems asked for proposals this round
    pending = _Open()
    result = Spent()
    while True:
        result.rounds += 1
        new = [[], [], []]
        for index, problem in enumerate(problems):
            if fresh[index]:
                slots, cost, added = problem.proposals()
                cost = np.asarray(cost, dtype=np.float64)
                keep = np.isfinite(cost)  # nan / inf: nothing proposed
                new[0].append(cost[keep])
                new[1].append(np.asarray(slots, dtype=np.int64)[keep] + bases[index])
                new[2].append(np.asarray(added, dtype=np.float64)[keep])
        cost, slot, added = (np.concatenate(part) if part else np.empty(0) for part in new)
        total = float(pending.added.sum() + added.sum())
        if (added >= 0).all() and (pending.added >= 0).all() and total <= allowance:  # everything fits
            taken, count = np.concatenate([pending.slot, slot.astype(np.int64)]), pending.cost.size + cost.size
            charged = np.concatenate([pending.added, added])
            pending = _Open()
        else:
            pending.merge(cost, slot.astype(np.int64), added)
            count, total = pending.prefix(allowance)
            taken, charged = pending.pop(count)
        if count == 0:
            return result
        order = np.argsort(taken, kind="stable")
        taken, charged = taken[order], charged[order]
        split = np.searchsorted(taken, bases)
        correction = 0.0  # what the problems report they added beyond (or below) what was charged
        for index, problem in enumerate(problems):
            local = taken[split[index] : split[index + 1]] - bases[index]
            fresh[index] = local.size > 0
            if fresh[index]:
                actual = problem.apply(local)
                if actual is not None:
                    correction += float(actual) - float(charged[split[index] : split[index + 1]].sum())
        total += correction
        allowance -= total
        result.accepted += count
        result.spent += total


def replay(problem: Problem, counts: np.ndarray) -> int:
    """Carry out the first ``counts[slot]`` proposals of each slot of a fresh ``problem``, whatever they cost.

    Faithful to an earlier run where a slot's proposals depend on that slot's own history only (the window
    problems'): each round every slot below its count takes its proposal. Returns the rounds run."""
    done = np.zeros(problem.size, dtype=np.int64)
    rounds = 0
    while True:
        slots, cost, _ = problem.proposals()
        slots = np.asarray(slots, dtype=np.int64)
        slots = np.sort(slots[np.isfinite(cost) & (done[slots] < counts[slots])])
        if not slots.size:
            return rounds
        rounds += 1
        problem.apply(slots)
        done[slots] += 1
