import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sme_plugin import converters
from sme_plugin.converters import (
    ADC_TABLE,
    IdealADC,
    IdealDAC,
    NoisyADC,
    NoisyDAC,
    UniformADC,
    adc_cost,
    column_bits,
    lossless_bits,
    rounding_cost,
)
from sme_plugin.plugins import registry_of


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_plugin_registers_adcs_and_dacs():
    registry = registry_of(converters)
    assert registry.names("adc") == ["ideal", "noisy", "uniform"]
    assert registry.names("dac") == ["ideal", "noisy"]


def test_adc_cost_table_and_extrapolation():
    for bits, figures in ADC_TABLE.items():
        assert adc_cost(bits) == figures
    assert adc_cost(8) == (1.67, 1200.0)
    assert adc_cost(11) == pytest.approx((2.38 * 1.2, 3002 * 1.6))
    assert adc_cost(3) == pytest.approx((0.79 / 1.25, 361 / 1.3))
    assert adc_cost(0) == (0.0, 0.0)
    energy, area = adc_cost(np.arange(1, 17))
    assert np.all(np.diff(energy) > 0) and np.all(np.diff(area) > 0)
    assert energy.shape == (16,) and energy[7] == 1.67
    with pytest.raises(ValueError, match="non-negative integers"):
        adc_cost(-1)
    with pytest.raises(ValueError, match="non-negative integers"):
        adc_cost(4.5)


def test_lossless_bits():
    assert [lossless_bits(v) for v in (0, 1, 2, 3, 4, 127, 128)] == [0, 1, 2, 2, 3, 7, 8]
    assert lossless_bits(torch.tensor([[3.0, 255.0]])) == 8


def test_column_bits_per_column_and_exact_at_powers_of_two():
    full_scale = np.array([[0, 1, 2, 3, 4], [7, 8, 255, 256, 2**24 - 1]], dtype=np.float64)
    bits = column_bits(full_scale)
    assert bits.dtype == np.int64 and bits.shape == (2, 5)
    assert bits.tolist() == [[0, 1, 2, 2, 3], [3, 4, 8, 9, 24]]
    assert column_bits(torch.tensor([2.5, 3.0000001], dtype=torch.float64)).tolist() == [2, 3]  # calibrated, non-integer
    for b in range(1, 40):  # 2**b - 1 needs b bits, 2**b needs b + 1
        assert column_bits(np.array([2.0**b - 1, 2.0**b])).tolist() == [b, b + 1]


def test_ideal_adc_is_lossless_and_costs_lossless_bits():
    adc = IdealADC(IdealADC.Params())
    sums = torch.tensor([0.0, 5.0, 1000.0], dtype=torch.float64)
    assert adc.lossless and torch.equal(adc.convert(sums, torch.tensor(10.0), gen()), sums)
    assert adc.bits_for(torch.tensor([15.0, 200.0, 0.0])).tolist() == [4, 8, 0]
    assert adc.energy_pj(8) == 1.67 and adc.area_um2(4) == 361
    assert adc.bits is None


def fs(value):
    return torch.tensor(float(value), dtype=torch.float64)


def test_a_code_is_worth_its_own_lsb():
    # full scale 100 on a 6-bit ADC: LSB = 100/63; no rounding to whole level units
    adc = UniformADC(UniformADC.Params(bits=6))
    lsb = 100 / 63
    sums = torch.tensor([0.0, 1.0, 2.0, 50.0, 99.0, 100.0], dtype=torch.float64)
    out = adc.convert(sums.clone(), fs(100), gen())
    assert out[1] == pytest.approx(lsb) and out[1] != 1.0
    assert out.tolist() == pytest.approx([0.0, lsb, lsb, 32 * lsb, 62 * lsb, 100.0])
    assert torch.allclose(out / lsb, torch.round(out / lsb))
    # full scale 10 on an 8-bit ADC: LSB = 10/255, finer than a level; integer sums still land on codes
    fine = UniformADC(UniformADC.Params(bits=8)).convert(torch.tensor([3.0, 7.0], dtype=torch.float64), fs(10), gen())
    assert torch.allclose(fine, torch.tensor([3.0, 7.0], dtype=torch.float64), atol=10 / 255 / 2)
    assert fine.tolist() == pytest.approx([76 * 10 / 255, 178 * 10 / 255])  # codes 76.5, 178.5: ties to even


def test_full_scale_equal_to_top_code_is_exact_and_float32_works():
    adc = UniformADC(UniformADC.Params(bits=5))
    sums = torch.arange(32, dtype=torch.float32)
    out = adc.convert(sums.clone(), torch.tensor(31.0), gen())
    assert out.dtype == torch.float32 and torch.equal(out, sums)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 16), st.integers(1, 2**16), st.integers(0, 2**31))
def test_uniform_adc_error_within_half_its_lsb(bits, full_scale, seed):
    adc = UniformADC(UniformADC.Params(bits=bits))
    sums = torch.randint(0, full_scale + 1, (50,), generator=gen(seed)).double()
    out = adc.convert(sums.clone(), fs(full_scale), gen())
    lsb = full_scale / ((1 << bits) - 1)
    assert torch.all((out - sums).abs() <= lsb / 2 * (1 + 1e-9))
    assert torch.allclose(out / lsb, torch.round(out / lsb))
    if full_scale == (1 << bits) - 1:
        assert torch.equal(out, sums)


def test_error_falls_monotonically_with_bits():
    sums = torch.rand(20_000, generator=gen(3), dtype=torch.float64) * 100
    rms = [float((UniformADC(UniformADC.Params(bits=b)).convert(sums.clone(), fs(100), gen()) - sums).square().mean().sqrt())
           for b in range(1, 17)]
    assert all(later < earlier for earlier, later in zip(rms, rms[1:]))
    assert rms[5] == pytest.approx(100 / 63 / 12**0.5, rel=0.05)  # uniform quantization error, LSB / sqrt(12)


@pytest.mark.parametrize("bits", [3, 6, 8, "auto"])
@pytest.mark.parametrize("full_scale", [5, 16, 100, 255])
def test_a_noisy_adc_never_beats_the_noiseless_one(bits, full_scale):
    sums = torch.randint(0, full_scale + 1, (20_000,), generator=gen(full_scale)).double()
    clean = UniformADC(UniformADC.Params(bits=bits)).convert(sums.clone(), fs(full_scale), gen())
    clean_mse = float((clean - sums).square().mean())
    for noise in (0.1, 0.5, 2.0):
        noisy = NoisyADC(NoisyADC.Params(bits=bits, noise_lsb=noise)).convert(sums.clone(), fs(full_scale), gen(1))
        assert float((noisy - sums).square().mean()) >= clean_mse
    # the nearest code is the best any code can do, so this holds sample by sample too
    noisy = NoisyADC(NoisyADC.Params(bits=bits, noise_lsb=1.0)).convert(sums.clone(), fs(full_scale), gen(2))
    assert torch.all((noisy - sums).abs() >= (clean - sums).abs() - 1e-9)


def test_auto_bits_are_exact_per_column():
    adc = UniformADC(UniformADC.Params(bits="auto"))
    assert adc.lossless and adc.bits is None
    full_scale = torch.tensor([[0.0, 1.0, 5.0, 100.0, 255.0, 256.0]], dtype=torch.float64)
    assert adc.bits_for(full_scale).tolist() == [[0, 1, 3, 7, 8, 9]]
    assert adc.bits_for(full_scale.numpy()).dtype == np.int64
    sums = torch.randint(0, 257, (1000, 6), generator=gen()).double().minimum(full_scale)
    assert torch.equal(adc.convert(sums.clone(), full_scale, gen()), sums)
    # the range is rounded up to 2**b - 1 level units: 100 -> 127, clipped above
    over = adc.convert(torch.tensor([120.0, 200.0, 3.0], dtype=torch.float64), torch.tensor([100.0, 100.0, 0.0]), gen())
    assert over.tolist() == [120.0, 127.0, 0.0]
    # each conversion is charged at its own resolution
    assert adc.energy_pj(adc.bits_for(full_scale))[0].tolist() == pytest.approx(
        [0.0, 0.79 / 1.25**3, 0.79 / 1.25, 1.42, 1.67, 1.97])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**20), min_size=1, max_size=20), st.integers(0, 2**31))
def test_auto_bits_exact_for_any_full_scales(scales, seed):
    adc = UniformADC(UniformADC.Params(bits="auto", full_scale="lossless"))
    full_scale = torch.tensor(scales, dtype=torch.float64)
    sums = (torch.rand(64, len(scales), generator=gen(seed), dtype=torch.float64) * (full_scale + 1)).floor()
    assert torch.equal(adc.convert(sums.clone(), full_scale, gen()), sums)
    assert adc.bits_for(full_scale).tolist() == [int(s).bit_length() for s in scales]


def test_fixed_bits_for_is_constant_except_unread_columns():
    adc = NoisyADC(NoisyADC.Params(bits=6))
    assert adc.bits_for(np.array([[0.0, 3.0], [100.0, 5000.0]])).tolist() == [[0, 6], [6, 6]]
    assert adc.bits_for(torch.tensor(7.0)).shape == ()
    assert not adc.lossless and adc.bits == 6


def test_lossless_flag():
    assert UniformADC(UniformADC.Params(bits="auto")).lossless
    assert UniformADC(UniformADC.Params(bits="auto", round_to_levels=True)).lossless
    assert NoisyADC(NoisyADC.Params(bits="auto", noise_lsb=0.0)).lossless
    assert not NoisyADC(NoisyADC.Params(bits="auto")).lossless  # default noise 0.5 LSB
    assert not NoisyADC(NoisyADC.Params(bits="auto", noise_lsb=0.0, offset_levels=0.5)).lossless
    assert not UniformADC(UniformADC.Params(bits="auto", full_scale="calibrated")).lossless
    assert not UniformADC(UniformADC.Params(bits=16)).lossless


def test_noise_in_lsb_or_in_level_units_is_the_same_noise():
    sums = torch.randint(0, 101, (5000,), generator=gen()).double()
    lsb = 100 / 63
    in_lsb = NoisyADC(NoisyADC.Params(bits=6, noise_lsb=0.7, offset_lsb=-0.3))
    in_levels = NoisyADC(NoisyADC.Params(bits=6, noise_levels=0.7 * lsb, offset_levels=-0.3 * lsb))
    a = in_lsb.convert(sums.clone(), fs(100), gen(5))
    b = in_levels.convert(sums.clone(), fs(100), gen(5))
    assert torch.allclose(a, b)
    # per column: level-unit noise is a different number of LSB on each column's own range
    scales = torch.tensor([63.0, 630.0], dtype=torch.float64)  # LSB 1 and 10
    levels = NoisyADC(NoisyADC.Params(bits=6, noise_levels=5.0))
    out = levels.convert(torch.full((20_000, 2), 30.0, dtype=torch.float64), scales, gen(6))
    assert float(out[:, 0].std()) == pytest.approx(5.0, rel=0.05)
    assert float(out[:, 1].std()) == pytest.approx((25 + 100 / 12) ** 0.5, rel=0.1)  # 0.5 LSB + quantization
    # auto: LSB = 1 level unit, both spellings coincide exactly
    auto_lsb = NoisyADC(NoisyADC.Params(bits="auto", noise_lsb=1.5)).convert(sums.clone(), fs(100), gen(7))
    auto_levels = NoisyADC(NoisyADC.Params(bits="auto", noise_levels=1.5)).convert(sums.clone(), fs(100), gen(7))
    assert torch.equal(auto_lsb, auto_levels)


def test_noise_given_twice_is_rejected():
    with pytest.raises(ValueError, match="either as noise_lsb or as noise_levels"):
        NoisyADC.Params(noise_lsb=0.5, noise_levels=0.5)
    with pytest.raises(ValueError, match="either as offset_lsb or as offset_levels"):
        NoisyADC.Params(offset_lsb=0.0, offset_levels=1.0)


def test_round_to_levels_option_and_its_cost():
    plain = UniformADC(UniformADC.Params(bits=6))
    rounding = UniformADC(UniformADC.Params(bits=6, round_to_levels=True))
    sums = torch.tensor([1.0, 2.0, 50.0, 99.0], dtype=torch.float64)
    out = rounding.convert(sums.clone(), fs(100), gen())
    assert out.tolist() == [2.0, 2.0, 51.0, 98.0]  # round(code * 100/63): codes 1, 1, 32, 62
    assert torch.equal(out, torch.round(plain.convert(sums.clone(), fs(100), gen())))
    assert not plain.params.round_to_levels and plain.energy_pj(6) == 1.20 and plain.area_um2(6) == 627.0
    # Horowitz ISSCC 2014 adders: 8 bits 0.03 pJ / 36 um^2, 32 bits 0.1 pJ / 137 um^2
    assert rounding_cost(8) == pytest.approx((0.03, 36.0)) and rounding_cost(32) == pytest.approx((0.1, 137.0))
    assert rounding_cost(0) == (0.0, 0.0)
    assert rounding.energy_pj(8) == pytest.approx(1.67 + 0.03) and rounding.area_um2(8) == pytest.approx(1200 + 36)
    assert rounding.energy_pj(6) == pytest.approx(1.20 + 0.03 * 6 / 8)
    bits = np.array([0, 4, 8])
    assert rounding.energy_pj(bits).tolist() == pytest.approx([0.0, 0.79 + 0.015, 1.70])
    assert rounding.describe()["round_to_levels"] is True


def test_clamping_at_the_range_ends():
    adc = UniformADC(UniformADC.Params(bits=2))
    sums = torch.tensor([[-2.0, 2.0, 9.0], [-2.0, 2.0, 9.0]], dtype=torch.float64)
    full_scale = torch.tensor([[3.0], [6.0]], dtype=torch.float64)  # LSB 1 and 2
    out = adc.convert(sums, full_scale, gen())
    assert torch.equal(out, torch.tensor([[0.0, 2.0, 3.0], [0.0, 2.0, 6.0]], dtype=torch.float64))
    assert adc.bits_for(full_scale).tolist() == [[2], [2]] and not adc.lossless and not adc.calibrated
    assert UniformADC(UniformADC.Params(full_scale="calibrated")).calibrated
    offset = NoisyADC(NoisyADC.Params(bits=4, noise_lsb=0.0, offset_lsb=-3.0))
    ends = offset.convert(torch.tensor([0.0, 1.0, 15.0, 40.0], dtype=torch.float64), fs(15), gen())
    assert ends.tolist() == [0.0, 0.0, 12.0, 15.0]
    noisy = NoisyADC(NoisyADC.Params(bits=8, noise_lsb=3.0))
    out = noisy.convert(torch.cat([torch.zeros(1000), torch.full((1000,), 255.0)]).double(), fs(255), gen())
    assert out.min() == 0 and out.max() == 255


def test_unread_columns_convert_to_zero():
    for adc in (UniformADC(UniformADC.Params(bits=6)), NoisyADC(NoisyADC.Params(bits=6, noise_levels=2.0)),
                NoisyADC(NoisyADC.Params(bits="auto", noise_lsb=2.0, offset_lsb=1.0))):
        out = adc.convert(torch.zeros(4, 2, dtype=torch.float64), torch.tensor([0.0, 10.0]), gen())
        assert torch.equal(out[:, 0], torch.zeros(4, dtype=torch.float64))
        assert adc.bits_for(torch.tensor([0.0, 10.0]))[0] == 0


def test_noisy_adc_noise_offset_and_determinism():
    sums = torch.full((20_000,), 100.0, dtype=torch.float64)
    full_scale = fs(255)
    clean = NoisyADC(NoisyADC.Params(noise_lsb=0.0))
    assert torch.equal(clean.convert(sums.clone(), full_scale, gen()),
                       UniformADC(UniformADC.Params()).convert(sums.clone(), full_scale, gen()))
    shifted = NoisyADC(NoisyADC.Params(noise_lsb=0.0, offset_lsb=2.0))
    assert torch.equal(shifted.convert(sums.clone(), full_scale, gen()), sums + 2)
    noisy = NoisyADC(NoisyADC.Params(noise_lsb=2.0))
    out = noisy.convert(sums.clone(), full_scale, gen(1))
    assert torch.equal(out, noisy.convert(sums.clone(), full_scale, gen(1)))
    assert float(out.std()) == pytest.approx((4 + 1 / 12) ** 0.5, rel=0.05)
    default = NoisyADC(NoisyADC.Params())
    assert default.noise == ("lsb", 0.5) and default.describe()["noise_lsb"] == 0.5


def test_dacs():
    slices = torch.arange(8, dtype=torch.float64)
    ideal = IdealDAC(IdealDAC.Params(bits=3))
    assert torch.equal(ideal.apply(slices, gen()), slices)
    assert IdealDAC(IdealDAC.Params()).energy_pj() == 0.417
    assert ideal.energy_pj() == pytest.approx(0.417 * 7) and ideal.area_um2() == pytest.approx(0.166 * 7)
    noisy = NoisyDAC(NoisyDAC.Params(bits=3, sigma=0.1))
    out = noisy.apply(slices, gen(2))
    assert torch.equal(out, noisy.apply(slices, gen(2))) and not torch.equal(out, slices)
    assert out[0] == 0  # relative error: a zero slice stays zero


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("factory,kwargs", [
    (UniformADC, {"bits": 0}), (UniformADC, {"bits": 17}), (UniformADC, {"full_scale": "max"}),
    (UniformADC, {"bits": "automatic"}), (UniformADC, {"bits": 6.5}), (UniformADC, {"bits": True}),
    (UniformADC, {"round_to_levels": "maybe"}),
    (NoisyADC, {"noise_lsb": -1}), (NoisyADC, {"noise_levels": -0.1}), (NoisyADC, {"noise_lsb": 1e6}),
    (NoisyADC, {"noise_lsb": NAN}), (NoisyADC, {"noise_levels": INF}), (NoisyADC, {"offset_lsb": NAN}),
    (NoisyADC, {"offset_levels": -INF}), (NoisyADC, {"offset_lsb": 1e9}),
    (IdealDAC, {"bits": 9}), (NoisyDAC, {"sigma": -0.1}), (NoisyDAC, {"sigma": NAN}), (NoisyDAC, {"sigma": 2.0}),
    (IdealADC, {"bits": 8}),
])
def test_bad_params_are_rejected(factory, kwargs):
    with pytest.raises(ValueError):
        factory.Params(**kwargs)


def test_infinite_full_scale_is_rejected():
    with pytest.raises(ValueError, match="finite"):
        UniformADC(UniformADC.Params(bits="auto")).bits_for(np.array([float("inf")]))


def test_tensor_and_numpy_column_bits_agree():
    from sme_plugin.converters import _column_bits_tensor

    scales = torch.cat([torch.arange(0, 70000, dtype=torch.float64), torch.rand(1000, dtype=torch.float64) * 1e7,
                        2.0 ** torch.arange(0, 40, dtype=torch.float64) - 1])
    assert _column_bits_tensor(scales, "cpu").long().tolist() == column_bits(scales).tolist()
