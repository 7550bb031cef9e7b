import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sme_plugin import greedy, orchestrate
from sme_plugin.errors import ConflictError
from sme_plugin.mapping import BitplaneMapper, HybridMapper, IsaacMapper, SmeMapper
from sme_plugin.orchestrate import KBitsOrchestrator, NoOrchestrator, WindowOrchestrator, output_error, relative_error
from sme_plugin.plugins import registry_of
from sme_plugin.signs import encode, encoded_bits, scheme_offsets
from sme_plugin.types import Geometry, Layer, Layout, QuantizedLayer

SCHEMES = ["differential", "offset", "segment-offset"]
SMALL = Geometry(rows=8, cols=4, ou_rows=4, cell_bits=1)


def layer_cases(rows: int, cols: int, bits: tuple[int, int], cell_bits: int) -> dict:
    """Hypothesis strategies of one layer and its mapping: shape (parts <= 2, rows, cols), weight bits,
    cell bits, sign scheme, packing, window segment and weight seed."""
    return {
        "shape": st.tuples(st.integers(1, 2), st.integers(1, rows), st.integers(1, cols)),
        "bits": st.integers(*bits),
        "cell_bits": st.integers(1, cell_bits),
        "sign": st.sampled_from(SCHEMES),
        "packing": st.sampled_from(["tile", "column", "ou"]),
        "segment": st.sampled_from(["auto", "tile", "column", "ou"]),
        "seed": st.integers(0, 100),
    }


def make_q(shape=(2, 20, 6), bits=8, seed=0, density=0.8, exact=False):
    """A quantized layer with heavy-tailed integer weights; ``exact``: power-of-two scales."""
    rng = np.random.default_rng(seed)
    top = (1 << (bits - 1)) - 1
    w_int = np.clip(np.rint(rng.standard_t(4, size=shape) * top / 4), -top, top).astype(np.int64)
    mask = rng.random(shape) < density
    w_int = np.where(mask, w_int, 0)
    if exact:
        scale = 2.0 ** rng.integers(-2, 2, size=(shape[0], 1, shape[2]))
    else:
        scale = rng.uniform(0.5, 2.0, size=(shape[0], 1, shape[2]))
    layer = Layer("layer", "conv", (scale * w_int).astype(np.float32), mask, None, shape[2])
    return QuantizedLayer(layer, w_int, scale, bits)


def random_gram(shape, seed=0, samples=300):
    """(P, N, N) second moments of correlated inputs with a non-zero mean."""
    rng = np.random.default_rng(seed)
    parts, rows, _ = shape
    mix = rng.standard_normal((rows, rows)) / np.sqrt(rows)
    x = rng.standard_normal((samples, parts, rows)) @ (np.eye(rows) + mix) + 0.5
    return np.einsum("rpn,rpk->pnk", x, x)


def window(**params):
    return WindowOrchestrator(WindowOrchestrator.Params(**params))


def layout(q, geometry=SMALL, sign="differential", packing="column"):
    """The layout the ``sme`` mapper gives ``q``: what orchestrators get from the pipeline."""
    return SmeMapper(SmeMapper.Params(sign=sign, packing=packing)).layout(q, geometry)


def layouts(layers, geometry=SMALL, **params):
    return [layout(q, geometry, **params) for q in layers]


def segment_usage(q, lay, segment):
    """(S, G, P, row blocks, col blocks) bool: cell group g of sign set s non-zero somewhere in the segment,
    under the encoding the mapper derives (signs.encode with the layout's read rows)."""
    g = lay.geometry
    levels = encode(q.w_int, q.layer.mask, q.bits, g.cell_bits, lay.sign, lay.read_rows).levels
    rows = g.ou_rows if segment == "ou" else g.rows
    cols = g.cols if segment == "tile" else 1
    s, groups, parts, n, m = levels.shape
    blocks, col_blocks = -(-n // rows), -(-m // cols)
    padded = np.zeros((s, groups, parts, blocks * rows, col_blocks * cols), dtype=bool)
    padded[..., :n, :m] = levels != 0
    return padded.reshape(s, groups, parts, blocks, rows, col_blocks, cols).any(axis=(4, 6))


def window_span(usage):
    """Groups from the lowest to the highest used one, per (set, segment); 0 where none is used."""
    g = np.arange(usage.shape[1]).reshape(1, -1, 1, 1, 1)
    high = np.where(usage, g, -1).max(axis=1)
    low = np.where(usage, g, usage.shape[1]).min(axis=1)
    return np.maximum(high - low + 1, 0)


def plane_columns(q, lay):
    """Non-empty (set, group, part, row block, column) plane-columns: the crossbar columns a column packing uses."""
    return int(segment_usage(q, lay, "column").sum())


def check_valid(before, after):
    top = (1 << (before.bits - 1)) - 1
    assert after.w_int.dtype == np.int64 and after.w_int.shape == before.w_int.shape
    assert np.abs(after.w_int).max(initial=0) <= top
    assert (after.w_int[~before.layer.mask] == 0).all()
    assert after.scale is before.scale and after.bits == before.bits


def test_registered_through_pluggy():
    found = {name: entry.factory for name, entry in registry_of(orchestrate).entries["orchestrator"].items()}
    assert found == {"none": NoOrchestrator, "kbits": KBitsOrchestrator, "window": WindowOrchestrator}


def test_relative_error():
    q = make_q()
    assert relative_error(q, q) == 0.0
    w = q.w_int.copy()
    w[0, 0, 1] += 1
    expected = q.scale[0, 0, 1] / np.linalg.norm(q.scale * q.w_int)
    assert relative_error(q, q.with_weights(w)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(q, q.with_weights(w[:, :3]))


def test_none_is_identity():
    q = make_q()
    (out,) = NoOrchestrator(NoOrchestrator.Params()).orchestrate([q], [layout(q)])
    assert np.array_equal(out.w_int, q.w_int) and out is not q


def dense_layers():
    """(layer, layout) pairs of every dense mapping: isaac, bitplane, and hybrid where it goes dense."""
    q = make_q()
    rng = np.random.default_rng(2)
    w = rng.integers(-100, 101, (1, 64, 32))
    dense = QuantizedLayer(Layer("dense", "linear", w.astype(np.float32), np.ones(w.shape, bool), None, 32), w,
                           np.ones((1, 1, 32)), 8)
    wide = Geometry(rows=16, cols=32, ou_rows=4)
    return [(q, IsaacMapper(IsaacMapper.Params()).layout(q, SMALL)),
            (q, BitplaneMapper(BitplaneMapper.Params()).layout(q, SMALL)),
            (dense, HybridMapper(HybridMapper.Params(packing="ou")).layout(dense, wide))]


@pytest.mark.parametrize(
    "orchestrator",
    [window(budget=0.5), window(budget=0.5, scope="model"), window(mode="fixed", planes=1),
     KBitsOrchestrator(KBitsOrchestrator.Params(k=1))],
    ids=["budget", "model-budget", "fixed", "kbits"],
)
def test_dense_layouts_keep_the_weights_exact(orchestrator):
    """A dense mapping allocates every cell: bit windows would cost accuracy and save nothing."""
    pairs = dense_layers()
    for q, lay in pairs:
        assert not lay.sparse
        (out,) = orchestrator.orchestrate([q], [lay])
        assert np.array_equal(out.w_int, q.w_int)
    sparse, (dense, lay) = make_q(seed=1), pairs[0]
    outs = orchestrator.orchestrate([sparse, dense], [layout(sparse), lay])
    assert not np.array_equal(outs[0].w_int, sparse.w_int) and np.array_equal(outs[1].w_int, dense.w_int)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_kbits_nearest_with_at_most_k_bits(k):
    q = make_q(bits=8)
    (out,) = KBitsOrchestrator(KBitsOrchestrator.Params(k=k)).orchestrate([q], [layout(q)])
    check_valid(q, out)
    magnitude = np.abs(out.w_int)
    assert (np.bitwise_count(magnitude) <= k).all()
    assert (np.sign(out.w_int) * np.sign(q.w_int) >= 0).all()
    allowed = np.array([v for v in range(128) if (v).bit_count() <= k])
    distance = np.abs(np.abs(q.w_int)[..., None] - allowed).min(axis=-1)
    assert np.array_equal(np.abs(magnitude - np.abs(q.w_int)), distance)


def test_kbits_rounding_direction_and_errors():
    q = make_q(bits=6)
    context = [layout(q)]
    (floor,) = KBitsOrchestrator(KBitsOrchestrator.Params(k=1, rounding="floor")).orchestrate([q], context)
    (ceil,) = KBitsOrchestrator(KBitsOrchestrator.Params(k=1, rounding="ceil")).orchestrate([q], context)
    assert (np.abs(floor.w_int) <= np.abs(q.w_int)).all()
    above_top = np.abs(q.w_int) > 16  # no 1-bit magnitude above: ceil falls back to the largest, 16
    assert (np.abs(ceil.w_int) >= np.abs(q.w_int))[~above_top].all()
    assert (np.abs(ceil.w_int)[above_top] == 16).all() and above_top.any()
    with pytest.raises(ConflictError, match="k=6"):
        KBitsOrchestrator(KBitsOrchestrator.Params(k=6)).orchestrate([q], context)
    with pytest.raises(ValidationError):
        KBitsOrchestrator.Params(rounding="up")
    with pytest.raises(ValidationError):
        KBitsOrchestrator.Params(k=0)


@pytest.mark.parametrize("sign", SCHEMES)
@pytest.mark.parametrize("segment", ["tile", "column", "ou"])
def test_fixed_windows_hold_per_segment(sign, segment):
    q = make_q(shape=(2, 20, 10))
    lay = layout(q, sign=sign, packing="column")
    (out,) = window(mode="fixed", planes=2, segment=segment).orchestrate([q], [lay])
    check_valid(q, out)
    assert (window_span(segment_usage(out, lay, segment)) <= 2).all()
    assert window_span(segment_usage(q, lay, segment)).max() > 2


def stored_sets(q, sign, rows):
    """[(values, offset)] per sign set of a one-segment layer: the values a window acts on."""
    if sign == "differential":
        return [(np.maximum(q.w_int, 0), 0), (np.maximum(-q.w_int, 0), 0)]
    offset = scheme_offsets(sign, q.w_int, q.layer.mask, q.bits, rows)
    return [(q.w_int - offset, offset)]


@pytest.mark.parametrize("sign", SCHEMES)
def test_fixed_window_is_the_best_placement(sign):
    q = make_q(shape=(1, 8, 1), bits=6, seed=3, density=1.0)  # one column segment of SMALL
    (out,) = window(mode="fixed", planes=2).orchestrate([q], [layout(q, sign=sign, packing="column")])
    n_bits, top = encoded_bits(sign, 6), 31
    best = 0
    for values, offset in stored_sets(q, sign, 8):
        errors = []
        for start in range(n_bits - 1):
            fits = np.array([u for u in range(1 << n_bits) if u & ~(3 << start) == 0])
            fits = np.where(np.abs(fits + np.asarray(offset)[..., None]) <= top, fits, 10**6)  # in range only
            errors.append(np.square(np.abs(values[..., None] - fits).min(axis=-1)).sum())
        best += min(errors)
    assert np.square(out.w_int - q.w_int).sum() == best


@pytest.mark.parametrize("sign", SCHEMES)
@pytest.mark.parametrize("packing", ["tile", "column", "ou"])
def test_budget_per_layer(sign, packing):
    layers = [make_q(shape=(2, 24, 10), seed=s) for s in range(2)]
    lays = layouts(layers, sign=sign, packing=packing)
    outs = window(budget=0.1).orchestrate(layers, lays)
    for q, out, lay in zip(layers, outs, lays):
        check_valid(q, out)
        assert 0 < relative_error(q, out) <= 0.1 + 1e-12
        before, after = segment_usage(q, lay, packing), segment_usage(out, lay, packing)
        assert not (after & ~before).any()
        assert plane_columns(out, lay) < plane_columns(q, lay)


def total_error(befores, afters):
    change = sum(np.square(b.scale * (a.w_int - b.w_int)).sum() for b, a in zip(befores, afters))
    return np.sqrt(change / sum(np.square(b.dequantized()).sum() for b in befores))


def test_budget_model_scope_shares_the_budget():
    layers = [make_q(shape=(1, 24, 8), seed=0), make_q(shape=(1, 40, 12), seed=1)]
    layers[1] = QuantizedLayer(layers[1].layer, layers[1].w_int, layers[1].scale * 10, 8)  # dominates the norm
    lays = layouts(layers)
    outs = window(budget=0.1, scope="model").orchestrate(layers, lays)
    assert total_error(layers, outs) <= 0.1 + 1e-12
    assert relative_error(layers[0], outs[0]) > 0.1  # the small layer spends more than its share
    per_layer = window(budget=0.1).orchestrate(layers, lays)
    assert max(relative_error(q, o) for q, o in zip(layers, per_layer)) <= 0.1 + 1e-12


@pytest.mark.parametrize("sign", SCHEMES)
def test_zero_budget_changes_nothing(sign):
    q = make_q()
    (out,) = window(budget=0.0).orchestrate([q], [layout(q, sign=sign)])
    assert np.array_equal(out.w_int, q.w_int)


@pytest.mark.parametrize("packing", ["column", "ou"])
def test_segment_offset_windows_keep_the_offsets(packing):
    q = make_q(shape=(2, 30, 7))
    lay = layout(q, sign="segment-offset", packing=packing)
    assert lay.read_rows == (SMALL.ou_rows if packing == "ou" else SMALL.rows)
    for params in ({"budget": 0.2}, {"mode": "fixed", "planes": 1}):
        (out,) = window(**params).orchestrate([q], [lay])
        rows = lay.read_rows
        assert np.array_equal(
            scheme_offsets("segment-offset", out.w_int, q.layer.mask, 8, rows),
            scheme_offsets("segment-offset", q.w_int, q.layer.mask, 8, rows),
        )


@pytest.mark.parametrize("seed", range(3))
def test_offset_windows_never_empty(seed):
    """u = 0 would be w = -2**(bits-1): a column of -top weights (u = 1) must keep its last group."""
    q = make_q(shape=(1, 8, 6), bits=4, seed=seed, density=1.0, exact=True)
    q = q.with_weights(np.where(np.arange(6) < 2, -7, q.w_int))
    lay = layout(q, sign="offset", packing="column")
    for budget in (0.2, 0.3, 0.5):
        (out,) = window(budget=budget, spend="budget").orchestrate([q], [lay])
        check_valid(q, out)
        assert np.array_equal(out.w_int, reference_budget([q], [lay], budget, "column")[0])


def reference_budget(layers, lays, budget, segment):
    """The greedy of the window orchestrator (``spend: budget``) written naively: loops and brute-force
    nearest values.
    segment: the segment kind; its shape is taken plainly from the geometry."""
    g = lays[0].geometry
    sign = lays[0].sign
    rows = g.ou_rows if segment == "ou" else g.rows
    cols = g.cols if segment == "tile" else 1
    group_mask = (1 << g.cell_bits) - 1
    units, outs = [], []
    for q, lay in zip(layers, lays):
        parts, n_rows, n_cols = q.w_int.shape
        groups = -(-encoded_bits(sign, q.bits) // g.cell_bits)
        offsets = scheme_offsets(sign, q.w_int, q.layer.mask, q.bits, lay.read_rows)
        outs.append(offsets.copy())
        for sign_set in ([1, -1] if sign == "differential" else [0]):
            for p in range(parts):
                for rb in range(-(-n_rows // rows)):
                    for cb in range(-(-n_cols // cols)):
                        cells = []
                        for n in range(rb * rows, min(rb * rows + rows, n_rows)):
                            for m in range(cb * cols, min(cb * cols + cols, n_cols)):
                                w, o = int(q.w_int[p, n, m]), int(offsets[p, n, m])
                                value = max(sign_set * w, 0) if sign_set else w - o
                                if q.layer.mask[p, n, m] and value:
                                    cells.append((p, n, m, value, o, float(q.scale[p, 0, m]) ** 2))
                        units.append({"out": outs[-1], "sign": sign_set, "cells": cells, "window": set(range(groups)),
                                          "top": (1 << (q.bits - 1)) - 1, "bits": groups * g.cell_bits})

    def project(unit, window):
        mask = sum(group_mask << (g.cell_bits * k) for k in window)
        projected = []
        for _, _, _, value, offset, _ in unit["cells"]:
            fits = [x for x in range(1 << unit["bits"]) if x & ~mask == 0 and abs(x + offset) <= unit["top"]]
            projected.append(min(fits, key=lambda x: (abs(x - value), x)))
        return projected

    def error(unit, window):
        return sum(c[5] * (x - c[3]) ** 2 for c, x in zip(unit["cells"], project(unit, window)))

    def columns(unit, k):
        current = project(unit, unit["window"])
        return len({c[2] for c, x in zip(unit["cells"], current) if (x >> (g.cell_bits * k)) & group_mask})

    norms = [np.square(q.dequantized()).sum() for q in layers]
    allowance = budget**2 * (sum(norms) if len(layers) > 1 else norms[0])
    while True:
        candidates = []
        for unit in units:
            unit["window"] = {k for k in unit["window"] if columns(unit, k)}
            if len(unit["window"]) <= (1 if sign == "offset" else 0):
                continue
            base = error(unit, unit["window"])
            added = {k: error(unit, unit["window"] - {k}) - base for k in sorted(unit["window"])}
            cost, k = min(((added[k] / columns(unit, k), k) for k in added), key=lambda o: o[0])  # first, as argmin
            candidates.append((cost, added[k], k, unit))
        spent, accepted = 0.0, []
        for cost, added, k, unit in sorted(candidates, key=lambda c: c[0]):
            if spent + added > allowance:
                break
            spent += added
            accepted.append((unit, k))
        if not accepted:
            break
        allowance -= spent
        for unit, k in accepted:
            unit["window"] = unit["window"] - {k}
    for unit in units:
        for (p, n, m, _, offset, _), x in zip(unit["cells"], project(unit, unit["window"])):
            unit["out"][p, n, m] = unit["sign"] * x if unit["sign"] else offset + x
    return outs


@pytest.mark.parametrize(
    "sign,packing,segment,cell_bits,scope",
    [
        ("differential", "column", "auto", 1, "layer"),
        ("differential", "tile", "auto", 2, "model"),
        ("offset", "column", "auto", 1, "layer"),
        ("offset", "ou", "auto", 3, "layer"),
        ("segment-offset", "ou", "auto", 1, "model"),
        ("segment-offset", "column", "tile", 2, "layer"),
    ],
)
def test_budget_greedy_matches_a_naive_reference(sign, packing, segment, cell_bits, scope):
    geometry = Geometry(rows=8, cols=3, ou_rows=4, cell_bits=cell_bits)
    layers = [make_q(shape=(1, 12, 5), bits=6, seed=7, exact=True), make_q(shape=(2, 9, 4), bits=6, seed=8, exact=True)]
    if scope == "layer":
        layers = layers[:1]
    lays = layouts(layers, geometry, sign=sign, packing=packing)
    outs = window(budget=0.15, scope=scope, segment=segment, spend="budget").orchestrate(layers, lays)
    expected = reference_budget(layers, lays, 0.15, packing if segment == "auto" else segment)
    for out, w in zip(outs, expected):
        assert np.array_equal(out.w_int, w)


@settings(max_examples=60, deadline=None)
@given(
    **layer_cases(rows=30, cols=9, bits=(2, 10), cell_bits=3),
    mode=st.sampled_from(["fixed", "budget"]),
    planes=st.integers(1, 4),
    budget=st.floats(0, 1),
)
def test_window_invariants(shape, bits, cell_bits, sign, packing, segment, mode, planes, budget, seed):
    q = make_q(shape, bits, seed)
    lay = layout(q, Geometry(rows=8, cols=4, ou_rows=4, cell_bits=cell_bits), sign=sign, packing=packing)
    params = {"segment": segment, "mode": mode, "planes": planes, "budget": budget}
    (out,) = window(**params).orchestrate([q], [lay])
    check_valid(q, out)
    where = packing if segment == "auto" else segment
    usage = segment_usage(out, lay, where)
    if mode == "fixed":
        assert (window_span(usage) <= planes).all()
    else:
        assert relative_error(q, out) <= budget + 1e-9
        assert not (usage & ~segment_usage(q, lay, where)).any()
    if sign == "segment-offset":
        after = scheme_offsets(sign, out.w_int, q.layer.mask, bits, lay.read_rows)
        assert np.array_equal(after, scheme_offsets(sign, q.w_int, q.layer.mask, bits, lay.read_rows))
    encoding = encode(out.w_int, q.layer.mask, bits, cell_bits, sign, lay.read_rows)
    assert np.array_equal(encoding.decode(), out.w_int)


def test_bad_input_is_rejected():
    with pytest.raises(ValidationError):
        WindowOrchestrator.Params(budget=1.5)
    with pytest.raises(ValidationError):
        WindowOrchestrator.Params(planes=0)
    with pytest.raises(ValidationError):
        WindowOrchestrator.Params(threshold=3)
    with pytest.raises(ValidationError):
        WindowOrchestrator.Params(segment="rows")
    q = make_q()
    twos = Layout(sign="twos", packing="column", geometry=SMALL, read_rows=8, region=(8, 1), capacity=4)
    with pytest.raises(ValueError, match="unknown sign scheme"):
        window().orchestrate([q], [twos])
    wide = q.with_weights(q.w_int * 4)
    with pytest.raises(ValueError, match="exceed"):
        window().orchestrate([wide], [layout(q)])


def test_resnet50_sized_layer_is_fast():
    rng = np.random.default_rng(0)
    w_int = np.clip(np.rint(rng.standard_t(5, size=(1, 4608, 512)) * 12), -127, 127).astype(np.int64)
    mask = np.ones(w_int.shape, dtype=bool)
    scale = rng.uniform(0.5, 2, size=(1, 1, 512))
    q = QuantizedLayer(Layer("big", "conv", (scale * w_int).astype(np.float32), mask, None, 512), w_int, scale, 8)
    for sign, packing, budget in (("differential", "column", 0.05), ("segment-offset", "ou", 0.1)):
        lay = layout(q, Geometry(), sign=sign, packing=packing)
        start = time.perf_counter()
        (out,) = window(budget=budget).orchestrate([q], [lay])
        assert time.perf_counter() - start < 6  # about 1 s on one idle core
        assert relative_error(q, out) <= budget + 1e-12
        assert plane_columns(out, lay) < 0.8 * plane_columns(q, lay)


# -- the budgeted-greedy engine shared with tile-empty ---------------------------------------------------


class Chains:
    """A toy greedy problem: slot i offers the proposals ``chains[i][0]``, ``chains[i][1]``, ... in turn
    (each a (cost, added) pair; None: nothing to offer)."""

    def __init__(self, chains):
        self.chains, self.size = chains, len(chains)
        self.position = [0] * self.size
        self.asked, self.applied = [], None

    def offer(self, slot):
        chain, at = self.chains[slot], self.position[slot]
        return chain[at] if at < len(chain) and chain[at] is not None else (np.inf, 0.0)

    def proposals(self):
        slots = np.arange(self.size) if self.applied is None else self.applied
        self.asked.append(slots.tolist())
        offers = [self.offer(int(s)) for s in slots]
        return slots, np.array([c for c, _ in offers]), np.array([a for _, a in offers])

    def apply(self, slots):
        assert (np.diff(slots) > 0).all()
        for s in slots:
            self.position[int(s)] += 1
        self.applied = slots


def naive_spend(problems, allowance):
    """Rounds written plainly: every open proposal, sorted by (cost, problem, slot); the longest prefix that
    fits is accepted."""
    rounds = accepted = 0
    while True:
        rounds += 1
        offers = [(p.offer(s), i, s) for i, p in enumerate(problems) for s in range(p.size)]
        offers = sorted(((c, i, s, a) for (c, a), i, s in offers if np.isfinite(c)), key=lambda o: o[:3])
        spent, taken = 0.0, []
        for cost, i, s, added in offers:
            if spent + added > allowance:
                break
            spent += added
            taken.append((i, s))
        if not taken:
            return rounds, accepted
        allowance -= spent
        accepted += len(taken)
        for i, s in taken:
            problems[i].position[s] += 1


proposal = st.one_of(st.none(), st.tuples(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]),
                                          st.sampled_from([-0.25, 0.0, 0.25, 1.0, 2.0])))


@settings(max_examples=150, deadline=None)
@given(
    chains=st.lists(st.lists(st.lists(proposal, max_size=4), min_size=1, max_size=6), min_size=1, max_size=3),
    allowance=st.one_of(st.sampled_from([0.0, 0.5, 2.0, 5.0, 50.0, np.inf])),
)
def test_greedy_engine_matches_plain_rounds(chains, allowance):
    """Ties go to the lower slot (earlier problem first); a round stops at the first proposal that does not
    fit; rounds go on until one accepts nothing; only the slots a round changed are asked again."""
    engine, plain = [Chains(c) for c in chains], [Chains(c) for c in chains]
    result = greedy.spend(engine, allowance)
    rounds, accepted = naive_spend(plain, allowance)
    assert [p.position for p in engine] == [p.position for p in plain]
    assert (result.rounds, result.accepted) == (rounds, accepted)
    for problem in engine:
        assert problem.asked[0] == list(range(problem.size))
        assert sum(len(a) for a in problem.asked[1:]) == sum(problem.position)  # each accepted slot asked once


def test_greedy_engine_spends_cheapest_per_saving_first():
    problem = Chains([[(3.0, 3.0)], [(1.0, 2.0), (1.0, 2.0)], [(2.0, 2.0)]])
    result = greedy.spend([problem], 5.0)
    # round 1: slot 1 (cost 1, adds 2), then slot 2 (adds 2; 4 spent), slot 0 does not fit (7 > 5): stop
    # round 2: slot 1's next proposal (cost 1) adds 2 more: 6 > 5, nothing fits: stop
    assert problem.position == [0, 1, 1] and result.accepted == 2 and result.spent == 4.0
    assert result.rounds == 2


def test_replay_carries_out_the_first_proposals_of_each_slot_whatever_they_cost():
    problem = Chains([[(3.0, 3.0)], [(1.0, 2.0), (9.0, 2.0), (0.5, 1.0)], [(2.0, 2.0)], [None]])
    assert greedy.replay(problem, np.array([1, 2, 0, 1])) == 2  # slot 3 has nothing to offer
    assert problem.position == [1, 2, 0, 0]


def test_window_problem_asks_only_changed_units(monkeypatch):
    """Per-round work follows what changed: after the first round only the units just changed are
    re-evaluated, never the whole layer."""
    q = make_q(shape=(1, 64, 40), seed=5)
    lay = layout(q, sign="segment-offset", packing="ou")
    evaluated = []
    drops = orchestrate._Units.drops

    def counting(self, units, **kwargs):
        evaluated.append(len(units))
        return drops(self, units, **kwargs)

    monkeypatch.setattr(orchestrate._Units, "drops", counting)
    units = orchestrate._Units.build(q, lay)
    problem = orchestrate._WindowDrops(units)
    result = greedy.spend([problem], 0.2**2 * float(np.square(q.dequantized()).sum()))
    assert evaluated[0] == np.count_nonzero(units.values.any(axis=1))
    assert sum(evaluated[1:]) == result.accepted
    assert units.values.dtype == np.int16 and units.current.dtype == np.int16  # narrow per-weight state


def test_segments_and_offsets_come_from_the_layout():
    """The orchestrator asks the layout (its region and read height), not the geometry, for segments and
    segment offsets: a layout with 2-row regions and 2-row offset segments on an 8-row crossbar."""
    q = make_q(shape=(1, 12, 5), bits=6, density=1.0)
    lay = Layout(sign="segment-offset", packing="ou", geometry=SMALL, read_rows=2, region=(2, 1), capacity=4)
    (out,) = window(mode="fixed", planes=1).orchestrate([q], [lay])
    levels = encode(out.w_int, q.layer.mask, 6, 1, "segment-offset", 2).levels  # (1, G, 1, 12, 5)
    used = (levels != 0).reshape(1, -1, 1, 6, 2, 5).any(axis=4)
    assert (used.sum(axis=1) <= 1).all()  # one cell group per 2-row segment-column
    assert np.array_equal(scheme_offsets("segment-offset", out.w_int, q.layer.mask, 6, 2),
                          scheme_offsets("segment-offset", q.w_int, q.layer.mask, 6, 2))


# -- spend: crossbars ------------------------------------------------------------------------------------


def mapped_crossbars(q, lay):
    """Crossbars the ``sme`` mapper places ``q`` on under ``lay``."""
    return SmeMapper(SmeMapper.Params(sign=lay.sign, packing=lay.packing)).map(q, lay.geometry, lay).crossbars


@settings(max_examples=60, deadline=None)
@given(
    **layer_cases(rows=30, cols=11, bits=(2, 8), cell_bits=3),
    budget=st.floats(0, 1),
)
def test_crossbar_count_follows_the_mapper_through_the_drops(shape, bits, cell_bits, sign, packing, segment, budget,
                                                             seed):
    """The count the orchestrator tracks is the mapper's, before and after a greedy run, and the changes it
    records per drop add up to the occupancy the run ends with."""
    q = make_q(shape, bits, seed)
    lay = layout(q, Geometry(rows=8, cols=3, ou_rows=2, cell_bits=cell_bits), sign=sign, packing=packing)
    units = orchestrate._Units.build(q, lay, segment)
    tracked = orchestrate._Tracked(orchestrate._WindowDrops(units), lay)
    start = tracked.crossbars.base.copy()
    assert tracked.crossbars.crossbars() == mapped_crossbars(q, lay)
    greedy.spend([tracked], budget**2 * float(np.square(q.dequantized()).sum()))
    after = q.with_weights(units.decoded())
    end = orchestrate._Crossbars(units, lay)
    assert end.crossbars() == mapped_crossbars(after, lay)
    changes = [np.concatenate(part) for part in zip(*tracked.changes)] if tracked.changes else [np.zeros(0, int)] * 3
    np.testing.assert_array_equal(start + np.bincount(changes[1], changes[2], minlength=start.size), end.base)
    made, keep = tracked.kept()
    assert (keep <= made).all() and made.sum() == sum(len(slots) for slots, _ in tracked.drops)


def crossbars_and_errors(layers, lays, outs, grams):
    """Per layer: (mapped crossbars, squared error in the budget's units: weight or, with grams, output)."""
    errors = [output_error(q, o, grams[q.layer.name])[0] if grams else float(np.square(q.scale * (o.w_int - q.w_int)).sum())
              for q, o in zip(layers, outs)]
    return [mapped_crossbars(o, lay) for o, lay in zip(outs, lays)], errors


def named(layers):
    return [QuantizedLayer(Layer(f"l{i}", "conv", q.layer.weight, q.layer.mask, None, q.w_int.shape[2]), q.w_int,
                           q.scale, q.bits) for i, q in enumerate(layers)]


@pytest.mark.parametrize("packing", ["column", "ou", "tile"])
@pytest.mark.parametrize("error,compensate", [("weight", False), ("output", False), ("output", True)])
@pytest.mark.parametrize("scope", ["layer", "model"])
def test_crossbars_mode_reaches_the_budget_modes_crossbars_with_less_error(packing, error, compensate, scope):
    layers = named([make_q(shape=(2, 40, 14), seed=s) for s in range(2)])
    lays = layouts(layers, Geometry(rows=16, cols=4, ou_rows=4), sign="segment-offset", packing=packing)
    grams = {q.layer.name: random_gram(q.w_int.shape, seed) for seed, q in enumerate(layers)} if error == "output" else None
    for budget in (0.1, 0.3):
        params = {"budget": budget, "error": error, "compensate": compensate, "scope": scope}
        spent = window(spend="budget", **params).orchestrate(layers, lays, grams=grams)
        kept = window(**params).orchestrate(layers, lays, grams=grams)
        (crossbars, errors), (fewer, least) = (crossbars_and_errors(layers, lays, o, grams) for o in (spent, kept))
        assert fewer == crossbars and sum(crossbars) < sum(mapped_crossbars(q, lay) for q, lay in zip(layers, lays))
        assert sum(least) <= sum(errors) * (1 + 1e-9)
        if packing == "tile" and not compensate:  # every drop empties a plane-tile: nothing to undo
            assert all(np.array_equal(a.w_int, b.w_int) for a, b in zip(spent, kept))


@pytest.mark.parametrize("packing", ["column", "ou"])
@pytest.mark.parametrize("error", ["weight", "output"])
@pytest.mark.parametrize("scope", ["layer", "model"])
def test_crossbars_mode_spends_nothing_that_frees_no_crossbar(packing, error, scope):
    """Positive weights of one column use three plane-columns of one crossbar (four fit): the budget mode
    drops the cheap low bits, which frees columns but no crossbar; the crossbars mode undoes them all."""
    w = np.array([[[7], [5], [6], [7], [3], [7], [6], [5]]])
    layers = named([QuantizedLayer(Layer("l", "conv", w.astype(np.float32), np.ones(w.shape, bool), None, 1), w,
                                   np.ones((1, 1, 1)), 4)] * 2)
    lays = layouts(layers, Geometry(rows=8, cols=4, ou_rows=4), packing=packing)
    grams = {q.layer.name: random_gram(q.w_int.shape, seed) for seed, q in enumerate(layers)} if error == "output" else None
    params = {"budget": 0.3, "error": error, "scope": scope}
    spent = window(spend="budget", **params).orchestrate(layers, lays, grams=grams)
    kept = window(**params).orchestrate(layers, lays, grams=grams)
    (crossbars, errors), (fewer, least) = (crossbars_and_errors(layers, lays, o, grams) for o in (spent, kept))
    assert crossbars == fewer == [1, 1] and min(errors) > 0 == max(least)
    assert all(np.array_equal(o.w_int, q.w_int) for q, o in zip(layers, kept))


@settings(max_examples=30, deadline=None)
@given(
    **layer_cases(rows=40, cols=11, bits=(3, 8), cell_bits=2),
    error=st.sampled_from(["weight", "output", "compensated"]),
    scope=st.sampled_from(["layer", "model"]),
    budget=st.floats(0, 0.6),
)
def test_crossbars_mode_never_costs_a_crossbar(shape, bits, cell_bits, sign, packing, segment, error, scope, budget,
                                               seed):
    """Any segment (also one spanning several regions, where a drop may occupy a free region) and any error
    mode: the budget mode's crossbars, for no more error."""
    layers = named([make_q(shape, bits, seed), make_q(shape, bits, seed + 1)])
    lays = layouts(layers, Geometry(rows=8, cols=3, ou_rows=2, cell_bits=cell_bits), sign=sign, packing=packing)
    grams = {q.layer.name: random_gram(shape, i) for i, q in enumerate(layers)} if error != "weight" else None
    params = {"budget": budget, "error": "weight" if error == "weight" else "output",
              "compensate": error == "compensated", "segment": segment, "scope": scope}
    spent = window(spend="budget", **params).orchestrate(layers, lays, grams=grams)
    kept = window(**params).orchestrate(layers, lays, grams=grams)
    (crossbars, errors), (fewer, least) = (crossbars_and_errors(layers, lays, o, grams) for o in (spent, kept))
    assert fewer == crossbars and sum(least) <= sum(errors) * (1 + 1e-9)


@settings(max_examples=40, deadline=None)
@given(
    **layer_cases(rows=40, cols=11, bits=(3, 8), cell_bits=2),
    error=st.sampled_from(["weight", "output"]),
    budget=st.floats(0, 0.6),
)
def test_undo_in_place_equals_replay_on_a_fresh_problem(shape, bits, cell_bits, sign, packing, segment, error, budget,
                                                        seed):
    """Taking back the drops after each slot's kept ones (from the snapshots taken before each drop) leaves
    the weights, windows and values a fresh problem has after replaying the kept ones."""
    q = make_q(shape, bits, seed)
    lay = layout(q, Geometry(rows=8, cols=3, ou_rows=2, cell_bits=cell_bits), sign=sign, packing=packing)
    gram = random_gram(shape, seed)

    def fresh():
        units = orchestrate._Units.build(q, lay, segment)
        return orchestrate._WindowDrops(units) if error == "weight" else \
            orchestrate._OutputDrops(units, orchestrate.damped(gram, 0.1), compensate=False)

    tracked = orchestrate._Tracked(fresh(), lay)
    norm = np.square(q.dequantized()).sum() if error == "weight" else tracked.problem.norm
    greedy.spend([tracked], budget**2 * norm)
    made, keep = tracked.kept()
    tracked.undo(keep)
    replayed = fresh()
    greedy.replay(replayed, keep)
    undone = tracked.problem
    np.testing.assert_array_equal(undone.units.current, replayed.units.current)
    np.testing.assert_array_equal(undone.units.window, replayed.units.window)
    if error == "output":
        np.testing.assert_array_equal(undone.weights(), replayed.weights())
        np.testing.assert_allclose(undone.column_error, replayed.column_error, rtol=1e-9, atol=1e-9 * norm)
