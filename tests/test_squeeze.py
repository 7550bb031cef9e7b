"""Squeeze-out: hand-made counts, budget and threshold rules, and invariants for every mapper x squeezer."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_mapping import SIGNS, check_mapping, layers, quantized

from sme_plugin import squeeze
from sme_plugin.mapping import BitplaneMapper, HybridMapper, IsaacMapper, SmeMapper
from sme_plugin.squeeze import NoSqueeze, RowCompact, SmeSqueezer, TileEmpty, permute
from sme_plugin.types import Geometry

GEOMETRY = Geometry(rows=64, cols=32, ou_rows=16, cell_bits=1)


def sme(packing="column", sign="differential"):
    return SmeMapper(SmeMapper.Params(packing=packing, sign=sign))


def physical_weights(mapped):
    return permute(mapped.quantized.w_int, mapped.row_order, mapped.col_order)


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
    for mapper in (IsaacMapper(IsaacMapper.Params()), HybridMapper(HybridMapper.Params())):
        mapped = mapper.map(q, GEOMETRY)
        assert "packing" not in mapped.details
        for squeezer in (RowCompact(RowCompact.Params()), TileEmpty(TileEmpty.Params(budget=None, threshold=99))):
            assert squeezer.squeeze(mapped, mapper) is mapped


def test_row_compact_counts_surviving_rows():
    # plane 0 of 100 rows in one column block: bitplane allocates 2 sets x 7 planes x 2 row blocks
    w = np.zeros((1, 128, 32), dtype=np.int64)
    w[0, :100:2, 5] = 1
    mapper = BitplaneMapper(BitplaneMapper.Params())
    mapped = mapper.map(quantized(w), GEOMETRY)
    assert mapped.crossbars == 28
    compact = RowCompact(RowCompact.Params()).squeeze(mapped, mapper)
    assert compact.crossbars == 1  # 50 surviving rows fit one 64-row crossbar
    assert compact.present.sum() == 50 * 32
    assert compact.index_bits == 50 * 7
    assert compact.read_rows == 64 and compact.details["squeeze"] == ["row-compact"]
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
    mapper = BitplaneMapper(BitplaneMapper.Params())
    mapped = mapper.map(q, GEOMETRY)
    plain = RowCompact(RowCompact.Params()).squeeze(mapped, mapper)
    reordered = RowCompact(RowCompact.Params(reorder=True)).squeeze(mapped, mapper)
    assert reordered.crossbars < plain.crossbars
    assert set(reordered.col_order[0, :32] % 2) == {0}
    assert (reordered.quantized.w_int == q.w_int).all()  # original order kept in quantized
    assert (reordered.encoding.decode() == physical_weights(reordered)).all()


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
    assert squeezed.index_bits < mapped.index_bits  # one plane-column fewer to tag


def test_tile_empty_threshold_rule():
    rng = np.random.default_rng(5)
    w = rng.integers(-127, 128, (2, 100, 50))
    w[rng.random(w.shape) < 0.8] = 0
    mapper = sme("column")
    mapped = mapper.map(quantized(w), GEOMETRY)
    squeezed = TileEmpty(TileEmpty.Params(threshold=3, budget=None)).squeeze(mapped, mapper)
    cells = squeeze.block_reduce(squeezed.encoding.levels != 0, 64, 1, np.sum)
    assert cells[cells > 0].min() > 3  # every region left holds more than the threshold
    assert squeezed.crossbars < mapped.crossbars


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
    assert (squeezed.encoding.decode() == physical_weights(squeezed)).all()
    assert np.abs(squeezed.quantized.w_int).max(initial=0) <= (1 << (q.bits - 1)) - 1
    assert not (squeezed.quantized.w_int[~q.layer.mask]).any()
    levels = squeezed.encoding.levels
    assert not ((levels != 0) & ~squeezed.present).any()
    assert squeezed.present.sum() <= squeezed.crossbars * geometry.rows * geometry.cols
    assert squeezed.crossbars <= mapped.crossbars
    budget = getattr(squeezer.params, "budget", None)
    if budget is not None:
        assert relative_error(mapped, squeezed) <= budget + 1e-9
    if not hasattr(squeezer.params, "budget"):
        assert (squeezed.quantized.w_int == q.w_int).all()  # row compaction is lossless


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
