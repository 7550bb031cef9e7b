"""Placement checker: the physical rules every mapping must obey, and a plain reference simulator.

:func:`check_placement` is what the tests run on every mapper x squeezer combination. It checks a
:class:`~sme_plugin.types.Placement` against the physics (see ``design.md``, "The placement is the
physical truth"):

- offset correction segments stay within one part;
- every used slot fits its crossbar (row < rows, col < cols, crossbar id in ``[0, crossbars)``) and
  every counted crossbar holds at least one cell;
- no two cells share a physical (crossbar, row, col);
- a physical row is driven by one input: every read of a crossbar that uses the row drives it from
  the same logical input;
- every cell stores exactly one (sign set, cell group, part, row, column), within its own part;
- a column sum never mixes cell groups or sign sets (one group and one sign set per column slot, by
  construction), unused slots carry no levels and levels fit in ``cell_bits``;
- with ``encoding``: the cells hold exactly its non-zero levels (and its signs and offsets);
- with ``quantized``: a reference simulator, written with plain loops over reads and independent of
  ``Placement.weights`` and the host, reproduces ``x @ w_int`` exactly for random integer inputs.

Violations raise :class:`PlacementError` naming the rule and the read / slot where it breaks.
"""

from __future__ import annotations

import numpy as np

from .types import Encoding, Placement, QuantizedLayer


class PlacementError(AssertionError):
    """A placement breaks a physical or logical rule; the message says which and where."""


def _fail(message: str) -> None:
    raise PlacementError(message)


def _first_duplicate(keys: np.ndarray) -> tuple[int, int] | None:
    """Indices (i, j), i < j, of the first two equal rows of (n, d) int64 ``keys``, or None."""
    if len(keys) < 2:
        return None
    order = np.lexsort(keys.T[::-1])
    same = (keys[order[1:]] == keys[order[:-1]]).all(axis=1)
    if not same.any():
        return None
    first = int(np.argmax(same))
    i, j = sorted((int(order[first]), int(order[first + 1])))
    return i, j


def _check_shapes(p: Placement) -> None:
    reads = len(p.crossbar)
    slots_k, slots_j = p.row.shape[1], p.col.shape[1]
    expected = {
        "crossbar": (reads,), "row": (reads, slots_k), "input": (reads, slots_k),
        "col": (reads, slots_j), "output": (reads, slots_j), "sign_set": (reads, slots_j),
        "group": (reads, slots_j), "levels": (reads, slots_k, slots_j),
        "offset": tuple(p.shape), "offset_segment": tuple(p.shape[:2]),
    }
    for name, shape in expected.items():
        if getattr(p, name).shape != shape:
            _fail(f"placement.{name} has shape {getattr(p, name).shape}, expected {shape}")
    if not np.isin(p.signs, (-1, 1)).all():
        _fail(f"placement.signs must be +1/-1, got {p.signs.tolist()}")


def _check_segments(p: Placement) -> None:
    """Offset correction segments are ids >= 0, each within one part."""
    segment = p.offset_segment
    part_of = np.broadcast_to(np.arange(p.shape[0])[:, None], segment.shape)
    if (segment < 0).any():
        _fail(f"offset segment ids must be >= 0, got {int(segment.min())}")
    pairs = np.unique(np.stack([segment.ravel(), part_of.ravel()], axis=1), axis=0)
    dup = _first_duplicate(pairs[:, :1])
    if dup is not None:  # its correction o * sum(x over the segment) would add another part's inputs
        _fail(f"offset segment {pairs[dup[0], 0]} spans parts {pairs[dup[0], 1]} and {pairs[dup[1], 1]}")


def _check_slots(p: Placement) -> None:
    """Bounds, used/unused consistency and logical ranges of every slot."""
    parts, n_rows, n_cols = p.shape
    outside = (p.crossbar < 0) | (p.crossbar >= p.crossbars)
    if outside.any():
        r = int(np.argmax(outside))
        _fail(f"read {r}: crossbar id {p.crossbar[r]} outside [0, {p.crossbars})")
    checks = [
        ("row", p.row, p.input, p.rows, parts * n_rows),
        ("column", p.col, p.output, p.cols, parts * n_cols),
    ]
    for what, physical, logical, size, logical_size in checks:
        bad = (physical >= size) | (physical < -1)
        bad |= (physical >= 0) != (logical >= 0)
        bad |= (logical >= logical_size) | (logical < -1)
        if bad.any():
            r, slot = np.argwhere(bad)[0]
            _fail(f"read {r}, {what} slot {slot}: physical {what} {physical[r, slot]} (crossbar has {size}), "
                  f"logical index {logical[r, slot]} (layer has {logical_size}); "
                  f"both must be used (>= 0 and in range) or both -1")
    used_col = p.col >= 0
    groups = p.group.astype(np.int64)
    bad = used_col & ((p.sign_set < 0) | (p.sign_set >= len(p.signs)) | (groups < 0) | (p.cell_bits * groups > 62))
    if bad.any():
        r, j = np.argwhere(bad)[0]
        _fail(f"read {r}, column slot {j}: sign set {p.sign_set[r, j]} / cell group {p.group[r, j]} "
              f"out of range ({len(p.signs)} sign sets)")


def _check_counted(p: Placement) -> None:
    """Every counted crossbar holds at least one cell."""
    holds_cells = np.zeros(p.crossbars, dtype=bool)
    holds_cells[p.crossbar[p.present().any(axis=(1, 2))]] = True
    if not holds_cells.all():
        _fail(f"crossbar {int(np.argmin(holds_cells))} is counted but no read has a cell on it")


def _check_levels(p: Placement) -> None:
    present = p.present()
    stray = (p.levels != 0) & ~present
    if stray.any():
        r, k, j = np.argwhere(stray)[0]
        _fail(f"read {r}, row slot {k}, column slot {j}: level {p.levels[r, k, j]} in an unused slot")
    top = (1 << p.cell_bits) - 1
    if (p.levels > top).any():
        r, k, j = np.argwhere(p.levels > top)[0]
        _fail(f"read {r}, row slot {k}, column slot {j}: level {p.levels[r, k, j]} > {top} "
              f"({p.cell_bits}-bit cells)")


def _cells(p: Placement) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C,) read, row slot and column slot of every present cell."""
    return np.nonzero(p.present())


def _check_physical(p: Placement) -> None:
    """One cell per physical (crossbar, row, col); one input per physical row of a crossbar."""
    r, k, j = _cells(p)
    where = np.stack([p.crossbar[r], p.row[r, k], p.col[r, j]], axis=1).astype(np.int64)
    dup = _first_duplicate(where)
    if dup is not None:
        a, b = dup
        _fail(f"read {r[a]} (row slot {k[a]}, column slot {j[a]}) and read {r[b]} (row slot {k[b]}, "
              f"column slot {j[b]}) both place a cell at crossbar {where[a, 0]}, row {where[a, 1]}, "
              f"col {where[a, 2]}")
    rr, kk = np.nonzero(p.row >= 0)
    driven = np.unique(np.stack([p.crossbar[rr], p.row[rr, kk], p.input[rr, kk]], axis=1).astype(np.int64), axis=0)
    dup = _first_duplicate(driven[:, :2])
    if dup is not None:
        xbar, row = driven[dup[0], :2]
        inputs = driven[list(dup), 2].tolist()
        slots = [(int(a), int(b)) for a, b in zip(rr, kk) if p.crossbar[a] == xbar and p.row[a, b] == row]
        _fail(f"crossbar {xbar}, row {row} is driven by inputs {inputs} in different reads "
              f"(read, row slot): {slots}")


def _check_logical(p: Placement) -> np.ndarray:
    """Each cell stores one (sign set, group, part, n, m) of its own part. Returns those keys, (C, 5)."""
    parts, n_rows, n_cols = p.shape
    r, k, j = _cells(p)
    part_in, n = np.divmod(p.input[r, k].astype(np.int64), n_rows)
    part_out, m = np.divmod(p.output[r, j].astype(np.int64), n_cols)
    crossed = part_in != part_out
    if crossed.any():
        c = int(np.argmax(crossed))
        _fail(f"read {r[c]}, row slot {k[c]}, column slot {j[c]}: cell joins input {p.input[r[c], k[c]]} "
              f"of part {part_in[c]} to output {p.output[r[c], j[c]]} of part {part_out[c]}")
    keys = np.stack([p.sign_set[r, j], p.group[r, j], part_in, n, m], axis=1).astype(np.int64)
    dup = _first_duplicate(keys)
    if dup is not None:
        a, b = dup
        _fail(f"read {r[a]} (row slot {k[a]}, column slot {j[a]}) and read {r[b]} (row slot {k[b]}, "
              f"column slot {j[b]}) both store (sign set, group, part, row, col) = {tuple(keys[a].tolist())}")
    return keys


def _check_encoding(p: Placement, keys: np.ndarray, encoding: Encoding) -> None:
    """The cells hold exactly the encoding's levels, signs and offsets."""
    groups = encoding.levels.shape[1]
    if encoding.levels.shape[2:] != tuple(p.shape):
        _fail(f"encoding levels shape {encoding.levels.shape} does not match placement shape {p.shape}")
    if encoding.cell_bits != p.cell_bits or not np.array_equal(encoding.signs, p.signs):
        _fail(f"placement cell_bits {p.cell_bits} / signs {p.signs.tolist()} differ from the encoding's "
              f"{encoding.cell_bits} / {encoding.signs.tolist()}")
    if not np.array_equal(encoding.offset, p.offset):
        where = tuple(np.argwhere(encoding.offset != p.offset)[0].tolist())
        _fail(f"placement offset {p.offset[where]} differs from the encoding's {encoding.offset[where]} "
              f"at (part, row, col) {where}")
    r, k, j = _cells(p)
    out_of_range = keys[:, 1] >= groups
    if out_of_range.any():
        c = int(np.argmax(out_of_range))
        _fail(f"read {r[c]}, column slot {j[c]}: cell group {keys[c, 1]} but the encoding has only {groups} group(s)")
    stored = np.zeros(encoding.levels.shape, dtype=np.int64)
    stored[tuple(keys.T)] = p.levels[r, k, j]
    missing = (stored != encoding.levels) & (stored == 0)
    if missing.any():
        where = tuple(np.argwhere(missing)[0].tolist())
        _fail(f"encoding level {encoding.levels[where]} at (sign set, group, part, row, col) {where} "
              f"is stored by no cell")
    wrong = stored != encoding.levels
    if wrong.any():
        where = np.argwhere(wrong)[0]
        c = int(np.argmax((keys == where).all(axis=1)))
        _fail(f"read {r[c]}, row slot {k[c]}, column slot {j[c]}: level {stored[tuple(where)]} but the "
              f"encoding has {encoding.levels[tuple(where)]} at (sign set, group, part, row, col) "
              f"{tuple(where.tolist())}")


def simulate(p: Placement, x: np.ndarray) -> np.ndarray:
    """Reference crossbar simulation, read by read, with ideal cells and exact column sums.

    Parameters
    ----------
    p : the placement.
    x : (B, P, N) int64 logical inputs.

    Returns
    -------
    (B, P, M) int64 outputs: for each read, every converted column's sum over the driven rows of
    ``input * level``, spliced with ``sign * 2**(cell_bits*group)`` into its logical output, plus the
    digital offset correction ``x @ offset``.
    """
    parts, n_rows, n_cols = p.shape
    batch = x.shape[0]
    x_flat = x.reshape(batch, parts * n_rows).astype(np.int64)
    y = np.zeros((parts * n_cols, batch), dtype=np.int64)  # output-major, for np.add.at
    for r in range(p.reads):
        rows, cols = p.row[r] >= 0, p.col[r] >= 0
        driven = x_flat[:, p.input[r, rows]]  # (B, k) inputs on the driven wordlines
        column_sums = driven @ p.levels[r][np.ix_(rows, cols)].astype(np.int64)  # (B, j), one per ADC
        shift = p.cell_bits * p.group[r, cols].astype(np.int64)
        coefficient = p.signs[p.sign_set[r, cols]].astype(np.int64) << shift  # sign * 2**(cell_bits*group)
        np.add.at(y, p.output[r, cols], (column_sums * coefficient).T)  # shift-and-add splice
    y = y.T.reshape(batch, parts, n_cols)
    for part in range(parts):  # digital offset correction
        y[:, part] += x[:, part].astype(np.int64) @ p.offset[part].astype(np.int64)
    return y


def represented_weights(p: Placement) -> np.ndarray:
    """(P, N, M) int64 weights the placement represents: :func:`simulate` on one-hot inputs."""
    parts, n_rows, _ = p.shape
    one_hot = np.eye(parts * n_rows, dtype=np.int64).reshape(parts * n_rows, parts, n_rows)
    y = simulate(p, one_hot)  # (P*N, P, M)
    return np.stack([y[part * n_rows:(part + 1) * n_rows, part] for part in range(parts)])


def check_placement(
    placement: Placement,
    quantized: QuantizedLayer | None = None,
    encoding: Encoding | None = None,
    samples: int = 3,
    seed: int = 0,
) -> None:
    """Raise :class:`PlacementError` if ``placement`` breaks a rule (see the module docstring).

    Parameters
    ----------
    placement : the placement to check.
    quantized : when given, its (P, N, M) ``w_int`` must be what :func:`simulate` reproduces for
        ``samples`` random inputs in [-255, 255] (seeded with ``seed``).
    encoding : when given, its (S, G, P, N, M) levels, signs and offsets must be what the cells store.
    """
    p = placement
    _check_shapes(p)
    _check_segments(p)
    _check_slots(p)
    _check_levels(p)
    _check_physical(p)
    keys = _check_logical(p)
    _check_counted(p)
    if encoding is not None:
        _check_encoding(p, keys, encoding)
    if quantized is not None:
        if quantized.w_int.shape != tuple(p.shape):
            _fail(f"quantized weights {quantized.w_int.shape} do not match placement shape {p.shape}")
        x = np.random.default_rng(seed).integers(-255, 256, (samples,) + tuple(p.shape[:2]))
        expected = np.einsum("bpn,pnm->bpm", x, quantized.w_int.astype(np.int64))
        got = simulate(p, x)
        if not np.array_equal(got, expected):
            b, part, m = np.argwhere(got != expected)[0]
            wrong = np.argwhere(represented_weights(p) != quantized.w_int)
            _fail(f"simulated output {got[b, part, m]} != x @ w_int = {expected[b, part, m]} "
                  f"(sample {b}, part {part}, column {m}); the placement represents wrong weights at "
                  f"{len(wrong)} (part, row, col), first {tuple(wrong[0].tolist()) if len(wrong) else None}")
