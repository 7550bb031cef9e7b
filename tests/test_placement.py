"""Placement checker: each rule caught on hand-made placements, and every registered strategy passes it."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sme_plugin.checker import PlacementError, check_placement, represented_weights, simulate
from sme_plugin.errors import SMEError
from sme_plugin.plugins import build_registry, plugin_manager
from sme_plugin.signs import SIGN_SCHEMES, encode
from sme_plugin.types import Geometry, Layer, Placement, QuantizedLayer


def quantized(w_int, bits, mask=None):
    w_int = np.asarray(w_int, dtype=np.int64)
    mask = np.ones(w_int.shape, dtype=bool) if mask is None else mask
    layer = Layer("fc", "linear", w_int.astype(np.float32), mask, None, w_int.shape[2])
    return QuantizedLayer(layer, w_int, np.ones((w_int.shape[0], 1, w_int.shape[2])), bits)


def hand_made():
    """w = [[1, -2], [3, 0]], 3-bit differential on SLC cells, two 4x3 crossbars, three reads.

    Non-zero (sign set, group, column) level columns: (0, 0, 0) = [1, 1], (0, 1, 0) = [0, 1],
    (1, 1, 1) = [1, 0]. Read 0 and read 1 drive rows 0-1 of crossbar 0 (inputs 0, 1) into columns 0
    and 2; read 2 drives row 3 of crossbar 1 (input 1) into column 0 (the lone group-1 bit of w[1, 0]).
    """
    q = quantized([[[1, -2], [3, 0]]], bits=3)
    enc = encode(q.w_int, q.layer.mask, 3, 1, "differential")
    placement = Placement(
        shape=(1, 2, 2), rows=4, cols=3, crossbars=2,
        crossbar=np.array([0, 0, 1]),
        row=np.array([[0, 1], [0, 1], [3, -1]], dtype=np.int32),
        col=np.array([[0, -1], [2, -1], [0, -1]], dtype=np.int32),
        input=np.array([[0, 1], [0, 1], [1, -1]]),
        output=np.array([[0, -1], [1, -1], [0, -1]]),
        sign_set=np.array([[0, 0], [1, 0], [0, 0]], dtype=np.int8),
        group=np.array([[0, 0], [1, 0], [1, 0]], dtype=np.int8),
        levels=np.array([[[1, 0], [1, 0]], [[1, 0], [0, 0]], [[1, 0], [0, 0]]], dtype=np.uint8),
        signs=np.array([1, -1]), cell_bits=1,
        offset=np.zeros((1, 2, 2), dtype=np.int64), offset_segment=np.zeros((1, 2), dtype=np.int64),
    )
    return placement, q, enc


def edited(placement, **edits):
    """A copy of ``placement`` with ``field={index: value}`` array edits or plain field values."""
    changes = {}
    for name, edit in edits.items():
        if isinstance(edit, dict):
            array = getattr(placement, name).copy()
            for index, value in edit.items():
                array[index] = value
            changes[name] = array
        else:
            changes[name] = edit
    return replace(placement, **changes)


def test_hand_made_placement_is_valid():
    placement, q, enc = hand_made()
    check_placement(placement, q, enc)
    assert (represented_weights(placement) == q.w_int).all()
    x = np.array([[[2, -5]]])
    assert (simulate(placement, x) == [[[2 - 15, -4]]]).all()


@pytest.mark.parametrize(
    "edits, message",
    [
        (dict(row={(2, 0): 4}), r"read 2, row slot 0: physical row 4 \(crossbar has 4\)"),
        (dict(col={(1, 0): 3}), r"read 1, column slot 0: physical column 3 \(crossbar has 3\)"),
        (dict(input={(0, 1): -1}), r"read 0, row slot 1: .*both must be used"),
        (dict(output={(0, 0): 4}), r"read 0, column slot 0: .*logical index 4 \(layer has 2\)"),
        (dict(crossbar={2: 2}), r"read 2: crossbar id 2 outside \[0, 2\)"),
        (dict(crossbars=3), r"crossbar 2 is counted but no read has a cell on it"),
        (dict(sign_set={(1, 0): 2}), r"read 1, column slot 0: sign set 2 .* out of range \(2 sign sets\)"),
        (dict(levels={(2, 1, 0): 1}), r"read 2, row slot 1, column slot 0: level 1 in an unused slot"),
        (dict(levels={(0, 0, 0): 2}), r"read 0, row slot 0, column slot 0: level 2 > 1 \(1-bit cells\)"),
        # read 2 moved onto crossbar 0, row 1, column 0: the cell of read 0 (row slot 1, column slot 0)
        (dict(crossbar={2: 0}, row={(2, 0): 1}, crossbars=1),
         r"read 0 \(row slot 1, column slot 0\) and read 2 \(row slot 0, column slot 0\) both place a cell "
         r"at crossbar 0, row 1, col 0"),
        # read 1 drives row 0 from input 1 while read 0 drives it from input 0
        (dict(input={(1, 0): 1, (1, 1): 0}),
         r"crossbar 0, row 0 is driven by inputs \[0, 1\] in different reads "
         r"\(read, row slot\): \[\(0, 0\), \(1, 0\)\]"),
        # read 2 stores group 0 of w[1, 0] again (read 0 row slot 1 holds it)
        (dict(group={(2, 0): 0}),
         r"read 0 \(row slot 1, column slot 0\) and read 2 \(row slot 0, column slot 0\) both store "
         r"\(sign set, group, part, row, col\) = \(0, 0, 0, 1, 0\)"),
        (dict(signs=np.array([1, 2])), r"placement.signs must be \+1/-1"),
        (dict(levels=np.zeros((3, 2, 1), dtype=np.uint8)),
         r"placement.levels has shape \(3, 2, 1\), expected \(3, 2, 2\)"),
    ],
)
def test_each_rule_is_caught(edits, message):
    placement, q, enc = hand_made()
    with pytest.raises(PlacementError, match=message):
        check_placement(edited(placement, **edits), q, enc)


def test_cell_joining_two_parts_is_caught():
    placement, q, enc = hand_made()
    two = replace(placement, shape=(2, 2, 2), offset=np.zeros((2, 2, 2), dtype=np.int64),
                  offset_segment=np.array([[0, 0], [1, 1]]))
    with pytest.raises(PlacementError, match=r"read 2, row slot 0, column slot 0: cell joins input 3 of part 1 "
                                             r"to output 0 of part 0"):
        check_placement(edited(two, input={(2, 0): 3}))


def test_offset_segment_spanning_parts_is_caught():
    placement, q, enc = hand_made()
    two = replace(placement, shape=(2, 2, 2), offset=np.zeros((2, 2, 2), dtype=np.int64),
                  offset_segment=np.array([[0, 0], [1, 1]]))
    check_placement(two)
    with pytest.raises(PlacementError, match=r"offset segment 1 spans parts 0 and 1"):
        check_placement(replace(two, offset_segment=np.array([[0, 1], [1, 2]])))


def test_encoding_mismatches_are_caught():
    placement, q, enc = hand_made()
    with pytest.raises(PlacementError, match=r"encoding level 1 at \(sign set, group, part, row, col\) "
                                             r"\(0, 1, 0, 1, 0\) is stored by no cell"):
        check_placement(edited(placement, levels={(2, 0, 0): 0}), encoding=enc)
    wrong = replace(enc, levels=enc.levels.copy())
    wrong.levels[1, 1, 0, 0, 1] = 0  # the placement still stores the -2
    with pytest.raises(PlacementError, match=r"read 1, row slot 0, column slot 0: level 1 but the encoding has 0"):
        check_placement(placement, encoding=wrong)
    with pytest.raises(PlacementError, match=r"placement offset 0 differs from the encoding's 5 at"):
        check_placement(placement, encoding=replace(enc, offset=enc.offset + 5))
    with pytest.raises(PlacementError, match=r"cell_bits 1 / signs \[1, -1\] differ"):
        check_placement(placement, encoding=replace(enc, cell_bits=2))
    with pytest.raises(PlacementError, match=r"read 1, column slot 0: cell group 1 but the encoding has only 1 group"):
        check_placement(placement, encoding=replace(enc, levels=enc.levels[:, :1]))


def test_wrong_weights_fail_the_simulation():
    placement, q, enc = hand_made()
    with pytest.raises(PlacementError, match=r"represents wrong weights at 1 \(part, row, col\), first \(0, 1, 1\)"):
        check_placement(placement, q.with_weights(q.w_int + [[[0, 0], [0, 1]]]))
    # a digital offset the weights do not carry
    with pytest.raises(PlacementError, match=r"simulated output .* != x @ w_int"):
        check_placement(edited(placement, offset={(0, 0, 1): 1}), q)


def column_layout(enc, rows, cols):
    """A plain valid placement of an encoding: per (part, block of ``rows`` rows), every non-zero
    (sign set, group, column) level column on its own crossbar column, ``cols`` to a crossbar, one read
    per crossbar."""
    sets, groups, parts, n_rows, n_cols = enc.levels.shape
    reads = []
    for p in range(parts):
        for start in range(0, n_rows, rows):
            block = enc.levels[:, :, p, start:start + rows]  # (S, G, k, M)
            columns = [(s, g, m) for s in range(sets) for g in range(groups) for m in range(n_cols)
                       if block[s, g, :, m].any()]
            for first in range(0, len(columns), cols):
                reads.append((p, start, columns[first:first + cols]))
    k, j, r = rows, cols, len(reads)
    row, col, inp, out = (np.full((r, width), -1) for width in (k, j, k, j))
    sign_set, group = np.zeros((r, j), np.int8), np.zeros((r, j), np.int8)
    levels = np.zeros((r, k, j), np.uint8)
    for i, (p, start, columns) in enumerate(reads):
        height = min(rows, n_rows - start)
        row[i, :height], inp[i, :height] = np.arange(height), p * n_rows + start + np.arange(height)
        for slot, (s, g, m) in enumerate(columns):
            col[i, slot], out[i, slot], sign_set[i, slot], group[i, slot] = slot, p * n_cols + m, s, g
            levels[i, :height, slot] = enc.levels[s, g, p, start:start + height, m]
    return Placement(shape=(parts, n_rows, n_cols), rows=rows, cols=cols, crossbars=r, crossbar=np.arange(r),
                     row=row, col=col, input=inp, output=out, sign_set=sign_set, group=group, levels=levels,
                     signs=enc.signs, cell_bits=enc.cell_bits, offset=enc.offset,
                     offset_segment=np.repeat(np.arange(parts)[:, None], n_rows, axis=1))


def test_empty_placement_of_a_zero_layer_is_valid():
    q = quantized(np.zeros((2, 5, 3)), bits=4)
    enc = encode(q.w_int, q.layer.mask, 4, 2, "differential")
    placement = column_layout(enc, rows=8, cols=4)
    assert placement.reads == 0 and placement.crossbars == 0
    check_placement(placement, q, enc)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 2), st.integers(1, 30), st.integers(1, 9), st.integers(2, 8), st.integers(1, 4),
       st.sampled_from(SIGN_SCHEMES), st.integers(0, 2**32 - 1))
def test_plain_column_layout_passes_for_every_sign_scheme(parts, n_rows, n_cols, bits, cell_bits, scheme, seed):
    rng = np.random.default_rng(seed)
    limit = (1 << (bits - 1)) - 1
    mask = rng.random((parts, n_rows, n_cols)) < 0.7
    q = quantized(np.where(mask, rng.integers(-limit, limit + 1, mask.shape), 0), bits, mask)
    enc = encode(q.w_int, mask, bits, cell_bits, scheme, segment_rows=4)
    check_placement(column_layout(enc, rows=8, cols=4), q, enc)


def test_corrupted_mapper_placements_are_caught():
    rng = np.random.default_rng(3)
    q = quantized(np.where(rng.random((1, 40, 20)) < 0.3, rng.integers(-127, 128, (1, 40, 20)), 0), bits=8)
    mapped = build("mapper", "sme", packing="column").map(q, Geometry(rows=16, cols=8))
    placement = mapped.placement
    check_placement(placement, q, mapped.encoding)
    r, k, j = np.argwhere(placement.levels == 1)[0]
    corruptions = [
        (dict(crossbar={0: placement.crossbar[1]}), r"both place a cell|driven by inputs"),  # read 0 moved
        (dict(levels={(r, k, j): 0}), r"simulated output"),
        (dict(group={(r, j): placement.group[r, j] + 1}), r"simulated output|both store"),
        (dict(input={(r, k): (placement.input[r, k] + 1) % 40}), r"simulated output|driven by inputs|both store"),
    ]
    for edits, message in corruptions:
        with pytest.raises(PlacementError, match=message):
            check_placement(edited(placement, **edits), q)


# --- every registered strategy combination passes the checker --------------------------------------------

REGISTRY = build_registry(plugin_manager(load_entrypoints=False))


def build(kind, name, **params):
    """A registered strategy from its name and the given parameters (those its Params has)."""
    factory = REGISTRY.get(kind, name).factory
    fields = factory.Params.model_fields
    return factory(factory.Params(**{key: value for key, value in params.items() if key in fields}))


@st.composite
def pipelines(draw, mapper_name, squeezer_name, orchestrator_name):
    """(quantized layer, geometry, orchestrator, mapper, squeezer) of the named strategies, with drawn
    weights, sizes, sign scheme, cell bits and strategy parameters (those a strategy's Params has)."""
    parts = draw(st.integers(1, 2))
    n_rows = draw(st.one_of(st.integers(1, 40), st.integers(1, 300)))
    n_cols = draw(st.one_of(st.integers(1, 12), st.integers(1, 70)))
    bits = draw(st.integers(2, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    top = (1 << (bits - 1)) - 1
    limit = draw(st.sampled_from([top, min(top, 3), 1]))  # small magnitudes leave high planes empty
    mask = rng.random((parts, n_rows, n_cols)) < draw(st.sampled_from([1.0, 0.7, 0.2]))
    density = draw(st.sampled_from([1.0, 0.5, 0.05, 0.0]))  # sparse weights, down to all zero
    w_int = np.where(mask & (rng.random(mask.shape) < density), rng.integers(-limit, limit + 1, mask.shape), 0)
    xbar_rows = draw(st.sampled_from([8, 16, 32, 64]))
    geometry = Geometry(rows=xbar_rows, cols=draw(st.sampled_from([8, 16, 32, 64])),
                        ou_rows=draw(st.sampled_from([d for d in (1, 2, 4, 8, 16) if xbar_rows % d == 0])),
                        cell_bits=draw(st.integers(1, 4)))
    sign = draw(st.sampled_from(SIGN_SCHEMES))
    mapper = build("mapper", mapper_name, sign=sign, isaac_sign=sign,
                   packing=draw(st.sampled_from(["tile", "column", "ou"])),
                   weight_bits=draw(st.sampled_from([None, 8, 12])), cell_bits=draw(st.sampled_from([None, 2])))
    orchestrator = build("orchestrator", orchestrator_name,
                         k=draw(st.integers(1, max(1, bits - 1))), rounding=draw(st.sampled_from(["nearest", "ceil"])),
                         mode=draw(st.sampled_from(["fixed", "budget"])), planes=draw(st.integers(1, 3)),
                         budget=draw(st.sampled_from([0.0, 0.05, 0.3, 0.6])),
                         segment=draw(st.sampled_from(["auto", "tile", "column", "ou"])))
    budget, threshold = draw(st.sampled_from([(0.0, 0), (0.05, 0), (0.3, 4), (0.6, 0), (None, 4), (None, 16)]))
    squeezer = build("squeezer", squeezer_name, budget=budget, threshold=threshold, reorder=draw(st.booleans()))
    return quantized(w_int, bits, mask), geometry, orchestrator, mapper, squeezer


def orchestrate_and_map(q, geometry, orchestrator, mapper):
    """The pipeline's order: the mapper's layout on the quantizer's weights, orchestration, placement."""
    layout = mapper.layout(q, geometry)
    [orchestrated] = orchestrator.orchestrate([q], [layout])
    return orchestrated, mapper.map(orchestrated, geometry, layout)


@pytest.mark.parametrize("orchestrator_name", REGISTRY.names("orchestrator"))
@pytest.mark.parametrize("squeezer_name", REGISTRY.names("squeezer"))
@pytest.mark.parametrize("mapper_name", REGISTRY.names("mapper"))
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_every_strategy_combination_places_valid_cells(mapper_name, squeezer_name, orchestrator_name, data):
    pipeline = data.draw(pipelines(mapper_name, squeezer_name, orchestrator_name))
    q, geometry, orchestrator, mapper, squeezer = pipeline
    try:
        orchestrated, mapped = orchestrate_and_map(q, geometry, orchestrator, mapper)
    except (ValueError, SMEError) as error:  # isaac: a weight's S*G cells must fit one crossbar row
        assert "more than the" in str(error)
        orchestrated, mapped = orchestrate_and_map(q, replace(geometry, cols=64), orchestrator, mapper)
    check_placement(mapped.placement, orchestrated, mapped.encoding)
    squeezed = squeezer.squeeze(mapped, mapper)
    check_placement(squeezed.placement, squeezed.quantized, squeezed.encoding)
