"""Crossbar mappers: count formulas on hand-made layers and invariants over random layers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sme_plugin import mapping
from sme_plugin.checker import check_placement
from sme_plugin.errors import ConflictError
from sme_plugin.mapping import BitplaneMapper, HybridMapper, IsaacMapper, SmeMapper
from sme_plugin.types import Geometry, Layer, QuantizedLayer


def quantized(w_int, bits=8, mask=None, scale=None):
    w_int = np.asarray(w_int, dtype=np.int64)
    mask = np.ones(w_int.shape, dtype=bool) if mask is None else mask
    scale = np.ones((w_int.shape[0], 1, w_int.shape[2])) if scale is None else scale
    layer = Layer("fc", "linear", w_int.astype(np.float32), mask, None, w_int.shape[2])
    return QuantizedLayer(layer, w_int, scale, bits)


def sme(packing, sign="differential"):
    return SmeMapper(SmeMapper.Params(packing=packing, sign=sign))


GEOMETRY = Geometry(rows=64, cols=32, ou_rows=16, cell_bits=1)


def test_registered_names():
    names = {}
    mapping.sme_register_mappers(register=names.__setitem__)
    assert names == {"isaac": IsaacMapper, "bitplane": BitplaneMapper, "sme": SmeMapper, "hybrid": HybridMapper}


def test_isaac_count_formula():
    q = quantized(np.ones((2, 300, 70)))
    # differential 8-bit on SLC: 2 sets x 7 planes = 14 cells per weight, 2 weights per 32-column row
    mapped = IsaacMapper(IsaacMapper.Params(sign="differential")).map(q, GEOMETRY)
    assert mapped.crossbars == 2 * 5 * 35
    # original ISAAC: 16-bit offset weights on 2-bit cells = 8 cells, 4 weights per row
    isaac16 = IsaacMapper(IsaacMapper.Params(weight_bits=16, cell_bits=2)).map(q, GEOMETRY)
    assert isaac16.encoding.levels.shape[:2] == (1, 8) and isaac16.encoding.cell_bits == 2
    assert isaac16.crossbars == 2 * 5 * 18
    placement = isaac16.placement
    assert placement.present().sum() == 2 * 300 * 70 * 8 and placement.reads == 180 and placement.row.shape[1] == 64
    assert (placement.col >= 0).sum(axis=1).max() == 32  # 4 weights x 8 cells fill the row
    assert (isaac16.encoding.decode() == q.w_int).all() and (placement.weights() == q.w_int).all()
    assert not isaac16.layout.sparse and isaac16.details["packing"] == "dense"


def test_isaac_rejects_bad_settings():
    q = quantized(np.ones((1, 4, 4)), bits=8)
    with pytest.raises(ConflictError, match="weight_bits=6"):
        IsaacMapper(IsaacMapper.Params(weight_bits=6)).map(q, GEOMETRY)
    with pytest.raises(ConflictError, match="needs 8 cells"):
        IsaacMapper(IsaacMapper.Params()).map(q, Geometry(rows=8, cols=4))
    with pytest.raises(ValidationError):
        IsaacMapper.Params(cell_bit=2)


def test_bitplane_count_formula():
    mapped = BitplaneMapper(BitplaneMapper.Params()).map(quantized(np.zeros((2, 300, 70))), GEOMETRY)
    assert mapped.crossbars == mapped.placement.reads == 2 * 7 * 2 * 5 * 3
    assert not mapped.layout.sparse


@pytest.mark.parametrize("packing", ["tile", "column", "ou"])
def test_all_zero_layer_needs_no_crossbar(packing):
    mapped = sme(packing).map(quantized(np.zeros((1, 100, 40))), GEOMETRY)
    assert mapped.crossbars == 0 and mapped.placement.reads == 0 and mapped.placement.index_bits == 0


@pytest.mark.parametrize(
    "packing, cell_bits, crossbars, present_cells",
    [
        # the weight sits in the last (partial) tile: rows 64..99, columns 32..39
        ("tile", 1, 2, 2 * 36 * 8),  # 5 = 0b101: planes 0 and 2, one plane-tile each
        ("column", 1, 1, 2 * 36),  # two plane-columns share a crossbar
        ("ou", 1, 1, 2 * 16),
        ("tile", 2, 2, 2 * 36 * 8),  # 5 = 0b01_01 on 2-bit cells: groups 0 and 1
        ("tile", 3, 1, 36 * 8),  # 5 fits in one 3-bit cell
    ],
)
def test_one_nonzero_weight(packing, cell_bits, crossbars, present_cells):
    w = np.zeros((1, 100, 40), dtype=np.int64)
    w[0, 70, 33] = -5
    geometry = Geometry(rows=64, cols=32, ou_rows=16, cell_bits=cell_bits)
    mapped = sme(packing).map(quantized(w), geometry)
    placement = mapped.placement
    assert mapped.crossbars == crossbars
    assert placement.present().sum() == present_cells
    assert (placement.sign_set[placement.col >= 0] == 1).all()  # the weight is negative: only the minus set
    assert placement.row.shape[1] == mapped.layout.read_rows == (16 if packing == "ou" else 64)
    assert (placement.weights() == w).all()


def test_index_bits():
    w = np.zeros((1, 100, 40), dtype=np.int64)
    w[0, 70, 33] = -5
    tag = 6 + 3 + 1  # output column of 40, shift among 7 planes, sign among 2 sets
    assert sme("tile").map(quantized(w), GEOMETRY).placement.index_bits == 0
    assert sme("column").map(quantized(w), GEOMETRY).placement.index_bits == 2 * tag
    assert sme("ou").map(quantized(w), GEOMETRY).placement.index_bits == 2 * tag + 1 * 16 * 7  # one band of 16 rows


def test_ou_packs_bands_of_all_segments():
    # every segment-column of plane 0 non-empty: 8 segments x 32 columns = 8 bands of 32, 4 slots per crossbar
    w = np.ones((1, 128, 32), dtype=np.int64)
    mapped = sme("ou").map(quantized(w), GEOMETRY)
    assert mapped.crossbars == 2 and mapped.placement.reads == 8
    assert mapped.placement.reads_per_crossbar().tolist() == [4, 4]
    rows = mapped.placement.row
    assert sorted(rows[mapped.placement.crossbar == 0, 0].tolist()) == [0, 16, 32, 48]  # bands stacked
    with pytest.raises(ConflictError, match="ou_rows=24"):
        sme("ou").map(quantized(w), Geometry(rows=64, cols=32, ou_rows=24))


def test_dense_column_packing_equals_bitplane():
    rng = np.random.default_rng(1)
    q = quantized(rng.integers(-127, 128, (1, 256, 64)))
    bitplane = BitplaneMapper(BitplaneMapper.Params()).map(q, GEOMETRY).crossbars
    assert sme("column").map(q, GEOMETRY).crossbars == bitplane == 2 * 7 * 4 * 2


def test_segment_offsets_follow_the_read_segments():
    w = np.arange(-64, 64, dtype=np.int64).reshape(1, 128, 1).repeat(3, axis=2)
    mapped = sme("ou", sign="segment-offset").map(quantized(w), GEOMETRY)
    placement = mapped.placement
    assert placement.offset_segment[0].tolist() == (np.arange(128) // 16).tolist()
    assert (placement.offset[0, ::16] == w[0, ::16]).all()  # each segment's minimum
    assert mapped.encoding.levels.max() <= 1 and mapped.encoding.levels.shape[1] == 8
    assert not sme("column", sign="differential").map(quantized(w), GEOMETRY).placement.offset.any()


def test_hybrid_picks_the_cheaper_mapping():
    hybrid = HybridMapper(HybridMapper.Params())
    sparse = np.zeros((1, 128, 64), dtype=np.int64)
    sparse[0, :, 0] = 1
    chosen = hybrid.map(quantized(sparse), GEOMETRY)
    assert chosen.details["chosen"] == "sme" and chosen.label == "hybrid"
    assert chosen.crossbars == sme("column").map(quantized(sparse), GEOMETRY).crossbars
    rng = np.random.default_rng(2)
    dense = quantized(rng.integers(-127, 128, (1, 128, 64)))
    chosen = hybrid.map(dense, GEOMETRY)
    assert chosen.details["chosen"] == "isaac" and not chosen.layout.sparse
    assert chosen.crossbars == IsaacMapper(IsaacMapper.Params()).map(dense, GEOMETRY).crossbars


SIGNS = st.sampled_from(["differential", "offset", "segment-offset"])


@st.composite
def layers(draw):
    """A random quantized layer and a crossbar geometry."""
    parts, rows, cols = draw(st.integers(1, 2)), draw(st.integers(1, 40)), draw(st.integers(1, 20))
    bits = draw(st.integers(2, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    limit = (1 << (bits - 1)) - 1
    w = rng.integers(-limit, limit + 1, (parts, rows, cols))
    mask = rng.random(w.shape) < draw(st.floats(0.05, 1.0))
    w = np.where(mask & (rng.random(w.shape) < draw(st.floats(0.0, 1.0))), w, 0)
    scale = rng.random((parts, 1, cols)) + 0.01
    xbar_rows = draw(st.sampled_from([4, 8, 16]))
    geometry = Geometry(
        rows=xbar_rows,
        cols=draw(st.sampled_from([3, 8, 32])),
        ou_rows=draw(st.sampled_from([d for d in (1, 2, 4, 8) if xbar_rows % d == 0])),
        cell_bits=draw(st.integers(1, 4)),
    )
    return quantized(w, bits, mask, scale), geometry


def check_mapping(mapped, q):
    """Invariants of every MappedLayer: exact decode, a valid placement of every non-zero cell."""
    assert (mapped.encoding.decode() == q.w_int).all()
    check_placement(mapped.placement, q, mapped.encoding)
    levels = mapped.encoding.levels
    rows, cols = mapped.placement.rows, mapped.placement.cols
    assert mapped.crossbars >= -(-int((levels != 0).sum()) // (rows * cols))


@settings(max_examples=60, deadline=None)
@given(layers(), SIGNS)
def test_bit_slice_mappers_invariants(layer_and_geometry, sign):
    q, geometry = layer_and_geometry
    bitplane = BitplaneMapper(BitplaneMapper.Params(sign=sign)).map(q, geometry)
    check_mapping(bitplane, q)
    counts = {}
    for packing in ("tile", "column", "ou"):
        mapped = sme(packing, sign).map(q, geometry)
        check_mapping(mapped, q)
        assert mapped.crossbars <= bitplane.crossbars
        counts[packing] = mapped.crossbars
    assert counts["column"] <= counts["tile"]


@settings(max_examples=40, deadline=None)
@given(layers(), SIGNS, st.sampled_from([None, 9, 16]), st.sampled_from([None, 1, 2]))
def test_isaac_and_hybrid_invariants(layer_and_geometry, sign, weight_bits, cell_bits):
    q, geometry = layer_and_geometry
    geometry = Geometry(rows=geometry.rows, cols=64, ou_rows=geometry.ou_rows, cell_bits=geometry.cell_bits)
    isaac = IsaacMapper(IsaacMapper.Params(sign=sign, weight_bits=weight_bits, cell_bits=cell_bits))
    if weight_bits is not None and weight_bits < q.bits:
        with pytest.raises(ConflictError):
            isaac.map(q, geometry)
        return
    check_mapping(isaac.map(q, geometry), q)
    hybrid = HybridMapper(HybridMapper.Params(isaac_sign=sign)).map(q, geometry)
    check_mapping(hybrid, q)
    dense = IsaacMapper(IsaacMapper.Params(sign=sign)).map(q, geometry).crossbars
    assert hybrid.crossbars == min(dense, sme("column").map(q, geometry).crossbars)
