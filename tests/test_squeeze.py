"""Squeeze-out: hand-made counts, budget and threshold rules, and invariants for every mapper x squeezer."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_mapping import SIGNS, check_mapping, layers, quantized

from sme_plugin import greedy, squeeze
from sme_plugin.mapping import BitplaneMapper, HybridMapper, IsaacMapper, SmeMapper
from sme_plugin.squeeze import NoSqueeze, RowCompact, SmeSqueezer, TileEmpty
from sme_plugin.types import Geometry, Layout

GEOMETRY = Geometry(rows=64, cols=32, ou_rows=16, cell_bits=1)


def sme(packing="column", sign="differential"):
    return SmeMapper(SmeMapper.Params(packing=packing, sign=sign))


def region_cells(levels, rows, cols):
    """(S, G, P, N, M) levels -> non-zero cells per (S, G, P, row block, column block) region."""
    n_sets, groups, parts, n_rows, n_cols = levels.shape
    padded = np.zeros((n_sets, groups, parts, -(-n_rows // rows) * rows, -(-n_cols // cols) * cols), dtype=int)
    padded[..., :n_rows, :n_cols] = levels != 0
    return padded.reshape(n_sets, groups, parts, padded.shape[3] // rows, rows, -1, cols).sum(axis=(4, 6))


def relative_error(before, after):
    parts, _, cols = before.quantized.w_int.shape
    scale = np.broadcast_to(before.quantized.scale, (parts, 1, cols))
    error = ((scale * (after.quantized.w_int - before.quantized.w_int)) ** 2).sum()
    norm = ((scale * before.quantized.w_int) ** 2).sum()
    return np.sqrt(error / norm) if norm else (np.inf if error else 0.0)


def test_registered_names():
    names = {}
    squeeze.sme_register_squeezers(register=names.__setitem__)
    assert names == {"none": NoSqueeze, "row-compact": RowCompact, "tile-empty": TileEmpty, "sme": SmeSqueezer}


def test_dense_mappings_are_left_alone():
    rng = np.random.default_rng(0)
    q = quantized(rng.integers(-127, 128, (1, 64, 32)))
    dense = (IsaacMapper(IsaacMapper.Params()), HybridMapper(HybridMapper.Params()), BitplaneMapper(BitplaneMapper.Params()))
    for mapper in dense:
        mapped = mapper.map(q, GEOMETRY)
        assert not mapped.layout.sparse
        for squeezer in (RowCompact(RowCompact.Params()), TileEmpty(TileEmpty.Params(budget=None, threshold=99))):
            assert squeezer.squeeze(mapped, mapper) is mapped


def test_row_compact_counts_surviving_rows():
    # plane 0 of 100 rows in one column block: tile packing allocates its two plane-tiles (two row blocks)
    w = np.zeros((1, 128, 32), dtype=np.int64)
    w[0, :100:2, 5] = 1
    mapper = sme("tile")
    mapped = mapper.map(quantized(w), GEOMETRY)
    assert mapped.crossbars == 2
    compact = RowCompact(RowCompact.Params()).squeeze(mapped, mapper)
    assert compact.crossbars == 1  # 50 surviving rows fit one 64-row crossbar
    assert compact.placement.present().sum() == 50 * 32
    assert compact.placement.index_bits == 50 * 7
    assert compact.placement.reads == 1 and compact.details["squeeze"] == ["row-compact"]
    check_mapping(compact, mapped.quantized)


def test_row_compact_keeps_a_better_mapping():
    w = np.zeros((1, 64, 64), dtype=np.int64)
    w[0, :, ::32] = 1  # two dense plane-columns, one per column block
    mapper = sme("column")
    mapped = mapper.map(quantized(w), GEOMETRY)
    assert mapped.crossbars == 1
    assert RowCompact(RowCompact.Params()).squeeze(mapped, mapper) is mapped  # row-compact would need 2


def test_reorder_clusters_dense_columns():
    rng = np.random.default_rng(3)
    w = np.zeros((1, 64, 64), dtype=np.int64)
    w[0, :, ::2] = rng.integers(1, 128, (64, 32))  # dense even columns, empty odd columns
    q = quantized(w)
    mapper = sme("tile")
    mapped = mapper.map(q, GEOMETRY)
    plain = RowCompact(RowCompact.Params()).squeeze(mapped, mapper)
    reordered = RowCompact(RowCompact.Params(reorder=True)).squeeze(mapped, mapper)
    assert plain is mapped  # compacting in the natural column order frees nothing
    assert reordered.crossbars < plain.crossbars
    placement = reordered.placement
    first = placement.output[placement.crossbar == 0]
    assert set((first[first >= 0] % 2).tolist()) == {0}  # the first crossbar holds the dense even columns
    assert (reordered.quantized.w_int == q.w_int).all()
    check_mapping(reordered, q)


def test_tile_empty_zero_budget_is_lossless():
    rng = np.random.default_rng(4)
    w = rng.integers(-127, 128, (1, 64, 32))
    w[rng.random(w.shape) < 0.9] = 0
    mapper = sme("tile")
    mapped = mapper.map(quantized(w, scale=rng.random((1, 1, 32)) + 0.1), GEOMETRY)
    assert TileEmpty(TileEmpty.Params()).squeeze(mapped, mapper) is mapped


def test_tile_empty_compensates_in_kept_planes():
    # 32 plane-columns of plane 1 fill a crossbar; a 33rd holds a lone bit 0 (weight 3 = 0b11 next to
    # 2 = 0b10): emptying it turns 3 into 2 and frees the second crossbar
    w = np.full((1, 64, 32), 2, dtype=np.int64)
    w[0, 7, 0] = 3
    q = quantized(w)
    mapper = sme("column")
    mapped = mapper.map(q, GEOMETRY)
    squeezed = TileEmpty(TileEmpty.Params(budget=0.1)).squeeze(mapped, mapper)
    assert squeezed.quantized.w_int[0, 7, 0] == 2 and (squeezed.encoding.levels[:, 0] == 0).all()
    assert (mapped.crossbars, squeezed.crossbars) == (2, 1)
    assert squeezed.details["emptied_regions"] == 1
    assert squeezed.details["weight_error"] == pytest.approx(relative_error(mapped, squeezed))
    assert squeezed.placement.index_bits < mapped.placement.index_bits  # one plane-column fewer to tag
    check_mapping(squeezed, squeezed.quantized)


def test_tile_empty_threshold_rule():
    rng = np.random.default_rng(5)
    w = rng.integers(-127, 128, (2, 100, 50))
    w[rng.random(w.shape) < 0.8] = 0
    mapper = sme("column")
    mapped = mapper.map(quantized(w), GEOMETRY)
    squeezed = TileEmpty(TileEmpty.Params(threshold=3, budget=None)).squeeze(mapped, mapper)
    cells = region_cells(squeezed.encoding.levels, 64, 1)
    assert cells[cells > 0].min() > 3  # every region left holds more than the threshold
    assert squeezed.crossbars < mapped.crossbars
    assert (region_cells(mapped.encoding.levels, 64, 1) <= 3).any()


def test_offset_scheme_stays_in_range():
    # offset u = w + 128: emptying may never produce w = -128
    w = np.full((1, 16, 4), -127, dtype=np.int64)
    mapper = sme("column", sign="offset")
    mapped = mapper.map(quantized(w), Geometry(rows=16, cols=4, ou_rows=4))
    squeezed = TileEmpty(TileEmpty.Params(budget=None, threshold=16)).squeeze(mapped, mapper)
    assert np.abs(squeezed.quantized.w_int).max() <= 127


SQUEEZERS = [
    NoSqueeze(NoSqueeze.Params()),
    RowCompact(RowCompact.Params()),
    RowCompact(RowCompact.Params(reorder=True)),
    TileEmpty(TileEmpty.Params(budget=0.05)),
    TileEmpty(TileEmpty.Params(threshold=2, budget=None)),
    SmeSqueezer(SmeSqueezer.Params(budget=0.2, threshold=5, reorder=True)),
]
MAPPERS = [
    lambda sign: BitplaneMapper(BitplaneMapper.Params(sign=sign)),
    lambda sign: sme("tile", sign),
    lambda sign: sme("column", sign),
    lambda sign: sme("ou", sign),
    lambda sign: HybridMapper(HybridMapper.Params(sign=sign, packing="ou", isaac_sign=sign)),
]


@settings(max_examples=60, deadline=None)
@given(layers(), SIGNS, st.sampled_from(MAPPERS), st.sampled_from(SQUEEZERS))
def test_squeezer_invariants(layer_and_geometry, sign, make_mapper, squeezer):
    q, geometry = layer_and_geometry
    geometry = Geometry(geometry.rows, max(geometry.cols, 18), geometry.ou_rows, geometry.cell_bits)
    mapper = make_mapper(sign)
    mapped = mapper.map(q, geometry)
    squeezed = squeezer.squeeze(mapped, mapper)
    check_mapping(squeezed, squeezed.quantized)  # a valid placement reproducing the squeezed weights
    assert np.abs(squeezed.quantized.w_int).max(initial=0) <= (1 << (q.bits - 1)) - 1
    assert not (squeezed.quantized.w_int[~q.layer.mask]).any()
    assert squeezed.layout == mapped.layout
    assert squeezed.crossbars <= mapped.crossbars
    budget = getattr(squeezer.params, "budget", None)
    if budget is not None:
        assert relative_error(mapped, squeezed) <= budget + 1e-9
    if not hasattr(squeezer.params, "budget"):
        assert (squeezed.quantized.w_int == q.w_int).all()  # row compaction is lossless
    if squeezed.crossbars == mapped.crossbars and isinstance(squeezer, TileEmpty):
        assert squeezed is mapped  # error is only spent where whole crossbars are freed


def test_tile_empty_spends_no_error_without_saving_a_crossbar():
    # the lone bit-0 plane-column shares its crossbar with the plane-1 column: emptying it saves nothing
    w = np.zeros((1, 64, 32), dtype=np.int64)
    w[0, :, 0] = 2
    w[0, 7, 0] = 3
    mapper = sme("column")
    mapped = mapper.map(quantized(w), GEOMETRY)
    assert TileEmpty(TileEmpty.Params(budget=0.1)).squeeze(mapped, mapper) is mapped


def test_tile_empty_spends_its_budget_on_whole_crossbars():
    # two row blocks of 64 rows, each with 32 plane-1 columns plus two lone bit-0 columns (34 > 32: two
    # crossbars each). Emptying one lone column costs 1 (column 0) or 1.21 (column 1, scale 1.1); the
    # budget pays for one block's pair (2.21), not the two cheapest singles spread over both blocks.
    w = np.full((1, 128, 32), 2, dtype=np.int64)
    w[0, [5, 70], 0] = 3
    w[0, [6, 71], 1] = 3
    scale = np.ones((1, 1, 32))
    scale[0, 0, 1] = 1.1
    q = quantized(w, scale=scale)
    mapper = sme("column")
    mapped = mapper.map(q, GEOMETRY)
    norm = float(((scale * w) ** 2).sum())
    squeezed = TileEmpty(TileEmpty.Params(budget=(2.5 / norm) ** 0.5)).squeeze(mapped, mapper)
    assert (mapped.crossbars, squeezed.crossbars) == (4, 3)
    assert squeezed.details["emptied_regions"] == 2
    assert np.count_nonzero(squeezed.quantized.w_int != w) == 2


def test_tile_empty_buys_whole_ou_bands():
    # OU packing: segment-columns of 16 rows, 32 to a band. Every band holds its 32 plane-1 columns; the
    # first band also holds two lone bit-0 columns (34 > 32: a second band). Emptying one of them is not
    # enough; the budget buys both (a whole band), not a lone column of each of two bands.
    w = np.full((1, 64, 32), 2, dtype=np.int64)
    w[0, [1, 2], [0, 1]] = 3
    mapper = sme("ou")
    q = quantized(w)
    mapped = mapper.map(q, GEOMETRY)
    assert mapped.crossbars == 2  # 5 bands, 4 to a 64-row crossbar
    norm = float((w**2).sum())
    squeezed = TileEmpty(TileEmpty.Params(budget=(2.0 / norm) ** 0.5)).squeeze(mapped, mapper)
    assert squeezed.crossbars == 1 and squeezed.details["emptied_regions"] == 2
    assert squeezed.quantized.w_int[0, 1, 0] == 2 and squeezed.quantized.w_int[0, 2, 1] == 2
    check_mapping(squeezed, squeezed.quantized)
    short = TileEmpty(TileEmpty.Params(budget=(1.5 / norm) ** 0.5)).squeeze(mapped, mapper)
    assert short is mapped  # one column alone frees no band: nothing is spent


def test_tile_empty_frees_plane_tiles():
    # tile packing: a plane-tile is a crossbar; the lone bit 0 of one weight costs one plane-tile
    w = np.full((1, 64, 32), 2, dtype=np.int64)
    w[0, 3, 4] = 3
    mapper = sme("tile")
    mapped = mapper.map(quantized(w), GEOMETRY)
    assert mapped.crossbars == 2
    squeezed = TileEmpty(TileEmpty.Params(budget=0.02)).squeeze(mapped, mapper)
    assert squeezed.crossbars == 1 and squeezed.quantized.w_int[0, 3, 4] == 2
    check_mapping(squeezed, squeezed.quantized)


def test_tile_empty_follows_the_layout_capacity():
    """Savings are counted in the layout's allocation units and capacity, not re-derived from the geometry:
    two plane-1 columns and a lone bit-0 column need two crossbars of capacity 2, one of capacity 4."""
    w = np.zeros((1, 8, 3), dtype=np.int64)
    w[0, :, :2] = 2
    w[0, 5, 2] = 1
    q = quantized(w)
    mapper = sme("column")
    geometry = Geometry(rows=8, cols=4, ou_rows=4, cell_bits=1)
    squeezer = TileEmpty(TileEmpty.Params(budget=0.2))
    narrow = Layout(sign="differential", packing="column", geometry=geometry, read_rows=8, region=(8, 1), capacity=2)
    mapped = mapper.map(q, geometry, narrow)
    assert mapped.crossbars == 2
    squeezed = squeezer.squeeze(mapped, mapper)
    assert squeezed.crossbars == 1 and squeezed.layout is narrow and not squeezed.quantized.w_int[0, 5, 2]
    wide = mapper.map(q, geometry)
    assert wide.layout.capacity == 4 and wide.crossbars == 1
    assert squeezer.squeeze(wide, mapper) is wide


def test_tile_empty_uses_the_shared_greedy_engine(monkeypatch):
    calls = []
    spend = greedy.spend

    def recording(problems, allowance):
        calls.append(allowance)
        return spend(problems, allowance)

    monkeypatch.setattr(squeeze, "spend", recording)
    test_tile_empty_compensates_in_kept_planes()
    assert len(calls) == 1
