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
    lossless_bits,
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


def test_ideal_adc_is_lossless_and_costs_lossless_bits():
    adc = IdealADC(IdealADC.Params())
    sums = torch.tensor([0.0, 5.0, 1000.0], dtype=torch.float64)
    assert adc.lossless and torch.equal(adc.convert(sums, torch.tensor(10.0), gen()), sums)
    assert adc.bits_for(torch.tensor([15.0, 200.0])) == 8
    assert adc.energy_pj(8) == 1.67 and adc.area_um2(4) == 361


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 16), st.integers(0, 2**16), st.integers(0, 2**31))
def test_uniform_adc_exact_within_range_when_bits_suffice(bits, full_scale, seed):
    adc = UniformADC(UniformADC.Params(bits=bits))
    sums = torch.randint(0, full_scale + 1, (50,), generator=gen(seed)).double()
    out = adc.convert(sums, torch.tensor(float(full_scale), dtype=torch.float64), gen())
    if (1 << bits) - 1 >= full_scale:
        assert torch.equal(out, sums)
    else:  # quantized to the step, error at most half a step
        step = full_scale / ((1 << bits) - 1)
        assert torch.all((out - sums).abs() <= step / 2 + 1e-9)
        assert torch.allclose(out / step, torch.round(out / step))


def test_uniform_adc_clips_and_broadcasts_full_scale():
    adc = UniformADC(UniformADC.Params(bits=2))
    sums = torch.tensor([[-2.0, 1.0, 9.0], [-2.0, 1.0, 9.0]], dtype=torch.float64)
    full_scale = torch.tensor([[3.0], [6.0]], dtype=torch.float64)  # steps 1 and 2
    out = adc.convert(sums, full_scale, gen())
    assert torch.equal(out, torch.tensor([[0.0, 1.0, 3.0], [0.0, 0.0, 6.0]], dtype=torch.float64))
    assert adc.bits_for(full_scale) == 2 and not adc.lossless and not adc.calibrated
    assert UniformADC(UniformADC.Params(full_scale="calibrated")).calibrated


def test_noisy_adc_noise_offset_and_determinism():
    sums = torch.full((20_000,), 100.0, dtype=torch.float64)
    fs = torch.tensor(255.0, dtype=torch.float64)
    clean = NoisyADC(NoisyADC.Params(noise_lsb=0.0))
    assert torch.equal(clean.convert(sums, fs, gen()), UniformADC(UniformADC.Params()).convert(sums, fs, gen()))
    shifted = NoisyADC(NoisyADC.Params(noise_lsb=0.0, offset_lsb=2.0))
    assert torch.equal(shifted.convert(sums, fs, gen()), sums + 2)
    noisy = NoisyADC(NoisyADC.Params(noise_lsb=2.0))
    out = noisy.convert(sums, fs, gen(1))
    assert torch.equal(out, noisy.convert(sums, fs, gen(1)))
    assert float(out.std()) == pytest.approx((4 + 1 / 12) ** 0.5, rel=0.05)
    assert torch.equal(noisy.convert(torch.full((100,), 255.0, dtype=torch.float64), fs, gen()).max(), fs)


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


@pytest.mark.parametrize("factory,kwargs", [
    (UniformADC, {"bits": 0}), (UniformADC, {"bits": 17}), (UniformADC, {"full_scale": "max"}),
    (NoisyADC, {"noise_lsb": -1}), (IdealDAC, {"bits": 9}), (NoisyDAC, {"sigma": -0.1}), (IdealADC, {"bits": 8}),
])
def test_bad_params_are_rejected(factory, kwargs):
    with pytest.raises(ValueError):
        factory.Params(**kwargs)
