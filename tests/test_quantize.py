import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sme_plugin import quantize
from sme_plugin.errors import WeightsError
from sme_plugin.plugins import registry_of
from sme_plugin.quantize import (
    APoTQuantizer,
    KMeansQuantizer,
    Pow2Quantizer,
    UniformQuantizer,
    apot_levels,
    nearest_level,
)
from sme_plugin.types import Layer

LEVEL_QUANTIZERS = [UniformQuantizer, Pow2Quantizer, APoTQuantizer]


def make_layer(shape=(2, 40, 6), seed=0, density=0.8, zero_channel=True):
    rng = np.random.default_rng(seed)
    weight = (rng.standard_t(4, size=shape) * 0.05).astype(np.float32)
    mask = rng.random(shape) < density
    if zero_channel:
        weight[0, :, 0] = 0
    return Layer("layer", "conv", weight, mask, None, shape[2])


def build(cls, **params):
    return cls(cls.Params(**params))


def quantizer_levels(quantizer):
    if isinstance(quantizer, KMeansQuantizer):
        return np.arange(1 << (quantizer.params.bits - 1))
    return quantizer.levels()


def test_registered_through_pluggy():
    found = {name: entry.factory for name, entry in registry_of(quantize).entries["quantizer"].items()}
    assert found == {
        "uniform": UniformQuantizer,
        "pow2": Pow2Quantizer,
        "apot": APoTQuantizer,
        "kmeans": KMeansQuantizer,
    }


def test_level_sets():
    assert list(build(UniformQuantizer, bits=4).levels()) == list(range(8))
    assert list(build(Pow2Quantizer, bits=6).levels()) == [0, 1, 2, 4, 8, 16]
    assert list(apot_levels(5, 2)) == [0, 1, 2, 3, 4, 6, 8, 9, 12]


@pytest.mark.parametrize("bits", [2, 5, 8])
@pytest.mark.parametrize("terms", [1, 2, 3])
def test_apot_levels_are_sums_of_additive_sets(bits, terms):
    sets = [[0] + [2**e for e in range(bits - 1) if e % terms == i] for i in range(terms)]
    expected = sorted({sum(choice) for choice in itertools.product(*sets)})
    levels = apot_levels(bits, terms)
    assert list(levels) == expected
    assert levels[-1] <= 2 ** (bits - 1) - 1


def test_nearest_level_rounds_real_values():
    levels = np.array([0, 3, 8])
    x = np.array([0.0, 1.4, 1.5, 1.6, 5.4, 5.6, 7.9, 20.0])
    assert list(nearest_level(x, levels)) == [0, 0, 0, 3, 3, 8, 8, 8]


@pytest.mark.parametrize("cls", LEVEL_QUANTIZERS + [KMeansQuantizer])
@pytest.mark.parametrize("granularity", ["channel", "layer"])
def test_shapes_range_mask_and_zero_channel(cls, granularity):
    layer = make_layer()
    q = build(cls, bits=6, granularity=granularity).quantize(layer)
    assert q.w_int.dtype == np.int64 and q.w_int.shape == layer.weight.shape
    assert q.scale.shape == ((2, 1, 6) if granularity == "channel" else (1, 1, 1))
    assert np.isfinite(q.scale).all() and (q.scale > 0).all()
    assert np.abs(q.w_int).max() <= 31
    assert (q.w_int[~layer.mask] == 0).all()
    assert (q.w_int[0, :, 0] == 0).all()
    if granularity == "channel":
        assert q.scale[0, 0, 0] == 1.0


def test_masked_weights_do_not_set_the_scale():
    layer = make_layer(zero_channel=False)
    layer.weight[~layer.mask] = 1e6
    q = build(UniformQuantizer, bits=8, granularity="layer").quantize(layer)
    assert q.scale.item() == pytest.approx(np.abs(layer.weight[layer.mask]).max() / 127)


def test_uniform_error_within_half_step():
    layer = make_layer()
    q = build(UniformQuantizer, bits=8).quantize(layer)
    error = np.abs(q.dequantized() - layer.weight)[layer.mask]
    assert (error <= np.broadcast_to(q.scale, layer.weight.shape)[layer.mask] / 2 + 1e-7).all()
    peak = np.abs(np.where(layer.mask, layer.weight, 0)).max(axis=1)
    assert (np.abs(q.w_int).max(axis=1)[peak > 0] == 127).all()


@settings(max_examples=40, deadline=None)
@given(
    cls=st.sampled_from(LEVEL_QUANTIZERS),
    bits=st.integers(2, 12),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 20), st.integers(1, 5)),
    granularity=st.sampled_from(["channel", "layer"]),
    seed=st.integers(0, 1000),
)
def test_level_quantizers_pick_the_nearest_level(cls, bits, shape, granularity, seed):
    layer = make_layer(shape, seed, zero_channel=False)
    quantizer = build(cls, bits=bits, granularity=granularity)
    q = quantizer.quantize(layer)
    levels = quantizer.levels()
    magnitude = np.abs(q.w_int)
    assert np.isin(magnitude, levels).all()
    assert (q.w_int[~layer.mask] == 0).all()
    assert (np.sign(q.w_int) * np.sign(layer.weight) >= 0).all()
    x = np.abs(layer.weight[layer.mask]) / np.broadcast_to(q.scale, shape)[layer.mask]
    best = np.abs(x[:, None] - levels[None]).min(axis=1)
    assert np.allclose(np.abs(x - magnitude[layer.mask]), best, atol=1e-6)


def test_pow2_and_apot_top_level_maps_the_largest_weight():
    layer = make_layer(zero_channel=False)
    for quantizer in (build(Pow2Quantizer, bits=8), build(APoTQuantizer, bits=8, terms=2)):
        q = quantizer.quantize(layer)
        assert (np.abs(q.w_int).max(axis=1) == quantizer.levels()[-1]).all()


def test_kmeans_shares_few_values_and_is_deterministic():
    layer = make_layer(shape=(1, 300, 8))
    quantizer = build(KMeansQuantizer, bits=8, clusters=5, granularity="layer", sample=500)
    q = quantizer.quantize(layer)
    assert np.unique(q.w_int[layer.mask]).size <= 5
    assert np.array_equal(q.w_int, quantizer.quantize(layer).w_int)
    centroids = quantizer.centroids(layer)
    nearest = centroids[np.abs(layer.weight[layer.mask][:, None] - centroids[None]).argmin(axis=1)]
    assert np.array_equal(q.w_int[layer.mask], np.rint(nearest / q.scale.item()).astype(np.int64))
    fine = build(KMeansQuantizer, bits=8, clusters=64, granularity="layer").quantize(layer)
    exact = np.where(layer.mask, layer.weight, 0)
    assert np.linalg.norm(fine.dequantized() - exact) / np.linalg.norm(exact) < 0.05


def test_kmeans_with_few_distinct_weights_and_empty_layer():
    layer = make_layer(shape=(1, 10, 3))
    layer.weight[:] = np.where(np.arange(10)[:, None] % 2, 0.5, -0.25)
    q = build(KMeansQuantizer, bits=4, clusters=16, granularity="layer").quantize(layer)
    assert set(np.unique(q.w_int[layer.mask])) <= {-4, 7}
    layer.mask[:] = False
    assert (build(KMeansQuantizer).quantize(layer).w_int == 0).all()


def test_bad_input_is_rejected():
    with pytest.raises(ValidationError):
        UniformQuantizer.Params(bits=1)
    with pytest.raises(ValidationError):
        UniformQuantizer.Params(bits=17)
    with pytest.raises(ValidationError):
        UniformQuantizer.Params(granularity="tensor")
    with pytest.raises(ValidationError):
        UniformQuantizer.Params(terms=2)
    with pytest.raises(ValidationError):
        KMeansQuantizer.Params(clusters=1)
    layer = make_layer()
    layer.weight[1, 3, 2] = np.nan
    layer.mask[1, 3, 2] = True
    with pytest.raises(WeightsError, match="NaN"):
        build(UniformQuantizer).quantize(layer)
    flat = Layer("flat", "linear", np.zeros((4, 4), np.float32), np.ones((4, 4), bool), None, 4)
    with pytest.raises(ValueError, match=r"\(P, N, M\)"):
        build(UniformQuantizer).quantize(flat)
