import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sme_adapters.aihwkit import AihwkitHost
from sme_adapters.aihwkit_tiles import AihwkitPlan, rpu_config
from sme_cell_models import SLCCell
from test_host import sim_of, small_net

from sme_plugin import errors
from sme_plugin.converters import NoisyADC, NoisyDAC, UniformADC
from sme_plugin.errors import ConflictError
from sme_plugin.plugins import build_registry, plugin_manager
from sme_plugin.signs import SIGN_SCHEMES
from sme_plugin.simulator import CrossbarPlan, digital_model
from sme_plugin.types import Geometry, Layer, QuantizedLayer

torch.set_num_threads(1)
REGISTRY = build_registry(plugin_manager(load_entrypoints=False))


@pytest.fixture(scope="module")
def kit():
    pytest.importorskip("aihwkit")
    from sme_adapters.aihwkit import load_aihwkit

    return load_aihwkit()


def mapper(name, **params):
    factory = REGISTRY.get("mapper", name).factory
    fields = factory.Params.model_fields
    return factory(factory.Params(**{k: v for k, v in params.items() if k in fields}))


def host(**params):
    return AihwkitHost(AihwkitHost.Params(**params))


def test_host_is_registered_by_the_adapters_plugin():
    registration = REGISTRY.get("host", "aihwkit")
    assert registration.factory is AihwkitHost and registration.plugin == "adapters"


@st.composite
def golden_cases(draw):
    name = draw(st.sampled_from(REGISTRY.names("mapper")))
    sign = draw(st.sampled_from(SIGN_SCHEMES))
    params = {"sign": sign, "isaac_sign": sign, "packing": draw(st.sampled_from(["tile", "column", "ou"]))}
    geometry = Geometry(rows=draw(st.sampled_from([8, 16, 32])), cols=draw(st.sampled_from([16, 32])),
                        ou_rows=draw(st.sampled_from([2, 4])), cell_bits=draw(st.integers(1, 3)))
    return {"name": name, "params": params, "geometry": geometry, "shape": (draw(st.integers(1, 2)), draw(st.integers(1, 40)),
                draw(st.integers(1, 10))), "bits": draw(st.integers(2, 8)), "dac_bits": draw(st.integers(1, 4)),
                "activation_bits": draw(st.integers(1, 8)), "signed": draw(st.booleans()),
                "adc": draw(st.sampled_from(["ideal", "auto"])), "seed": draw(st.integers(0, 2**31))}


@settings(max_examples=60, deadline=None)
@given(case=golden_cases())
def test_golden_rule_bit_exact_through_registered_mappers(kit, case):
    """Ideal cells, lossless ADC (is_perfect, or aihwkit's out_res at unit steps): y_int == x_int @ w_int."""
    rng = np.random.default_rng(case["seed"])
    P, N, M = case["shape"]
    wmax, xmax = (1 << (case["bits"] - 1)) - 1, (1 << case["activation_bits"]) - 1
    mask = rng.random((P, N, M)) < 0.8
    w_int = np.where(mask, rng.integers(-wmax, wmax + 1, (P, N, M)), 0)
    x = rng.integers(-xmax if case["signed"] else 0, xmax + 1, (3, P, N))
    q = QuantizedLayer(Layer("fc", "linear", w_int.astype(np.float32), mask, None, M), w_int, np.ones((1, 1, 1)),
                       case["bits"])
    try:
        mapped = mapper(case["name"], **case["params"]).map(q, case["geometry"])
    except errors.SMEError:  # isaac: a weight's cells do not fit one crossbar row
        return
    cell_bits, v = mapped.placement.cell_bits, case["dac_bits"]
    adc = UniformADC(UniformADC.Params(bits="auto")) if case["adc"] == "auto" else None
    sim = sim_of(adc=adc, dac_bits=v, activation_bits=case["activation_bits"], cell_bits=cell_bits)
    config = rpu_config(kit, mapped, sim, 0.0)
    assert config.forward.is_perfect == (adc is None)
    conductance = torch.as_tensor(mapped.placement.levels * mapped.placement.present(), dtype=torch.float64)
    plan = AihwkitPlan(mapped, conductance, sim, config, 1.0)
    assert len(plan.tiles) == len(plan.buckets) and sum(len(t) for t in plan.tiles) == plan.reads
    if plan.reads:
        tile = plan.tiles[0][0]
        assert (tile.out_size, tile.in_size) == (plan.buckets[0].width, plan.buckets[0].height)
        assert tile.tile.weight.dtype == plan.dtype == torch.float32
    y = plan.matmul(torch.as_tensor(x, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert torch.equal(y, torch.as_tensor(np.einsum("rpn,pnm->rpm", x, mapped.quantized.w_int), dtype=torch.float64))


def test_sums_beyond_float32_run_in_float64(kit):
    """4400 rows of 4-bit cells read with 8-bit inputs sum past 2**24: the tiles switch to float64."""
    w_int = np.full((1, 4400, 1), 15)
    q = QuantizedLayer(Layer("fc", "linear", w_int.astype(np.float32), np.ones(w_int.shape, bool), None, 1), w_int,
                       np.ones((1, 1, 1)), 5)
    mapped = mapper("bitplane").map(q, Geometry(rows=4400, cols=8, cell_bits=4))
    sim = sim_of(adc=UniformADC(UniformADC.Params(bits="auto")), dac_bits=8, cell_bits=4)
    config = rpu_config(kit, mapped, sim, 0.0)
    plan = AihwkitPlan(mapped, torch.as_tensor(mapped.placement.levels, dtype=torch.float64), sim, config, 1.0)
    assert plan.dtype == torch.float64 and plan.tiles[0][0].tile.weight.dtype == torch.float64
    x = torch.full((1, 1, 4400), 255.0, dtype=torch.float64)
    x[..., 0] = 254  # odd total 15 * 1121999: not a float32 number
    assert torch.equal(plan.matmul(x, torch.Generator()), (x * 15).sum(-1, keepdim=True))


@pytest.fixture(scope="module")
def net_setup():
    net, inputs, qs, scales = small_net()
    geometry = Geometry(rows=16, cols=16, ou_rows=4, cell_bits=2)
    mapped = {n: mapper("sme", sign="segment-offset", packing="ou").map(q, geometry) for n, q in qs.items()}
    reference = digital_model(net, {n: m.quantized for n, m in mapped.items()}, 8, scales)(inputs)
    return net, inputs, mapped, scales, reference


def run(net_setup, params=None, **sim):
    net, inputs, mapped, scales, _ = net_setup
    sim = sim_of(**{"cell_bits": 2, "dac_bits": 2, **sim})
    with torch.no_grad():
        return host(**(params or {})).build(net, mapped, sim, scales)(inputs)


@pytest.mark.parametrize("adc", [None, UniformADC(UniformADC.Params(bits="auto")),
                                 UniformADC(UniformADC.Params(bits=7, round_to_levels=True))])  # OU reads: 6 bits
def test_conv_model_equals_digital_model_exactly(kit, net_setup, adc):
    out = run(net_setup, adc=adc)
    assert out.dtype == torch.float32 and torch.equal(out, net_setup[4])


def test_lossy_adc_matches_standalone_host(kit):
    """A uniform ADC below lossless resolution quantizes as SME's does when every read column has the
    range aihwkit gives the whole layer (its largest read column's)."""
    rng = np.random.default_rng(0)
    w_int = rng.integers(-127, 128, (2, 32, 12))
    q = QuantizedLayer(Layer("fc", "linear", w_int.astype(np.float32), np.ones(w_int.shape, bool), None, 12), w_int,
                       np.ones((1, 1, 1)), 8)
    mapped = mapper("sme", sign="differential", packing="ou").map(q, Geometry(rows=16, cols=8, ou_rows=8, cell_bits=2))
    sim = sim_of(adc=UniformADC(UniformADC.Params(bits=4)), cell_bits=2, dac_bits=2)
    x = torch.as_tensor(rng.integers(-255, 256, (5, 2, 32)), dtype=torch.float64)
    conductance = torch.as_tensor(mapped.placement.levels, dtype=torch.float64)
    y = AihwkitPlan(mapped, conductance, sim, rpu_config(kit, mapped, sim, 0.0), 1.0).matmul(x, torch.Generator())
    assert not torch.equal(y, torch.einsum("rpn,pnm->rpm", x, torch.as_tensor(w_int, dtype=torch.float64)))
    standalone = CrossbarPlan(mapped, sim, conductance=conductance, path="analog")
    widest = float(mapped.placement.full_scale(2).max())
    for bucket in standalone.buckets:
        bucket.full_scale = torch.full_like(bucket.lossless_scale, widest)
    expected = standalone.matmul(x, torch.Generator())
    assert torch.allclose(y, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def relative_error(out, reference):
    return float((out - reference).norm() / reference.norm())


@pytest.mark.parametrize("params,sim", [
    ({"noise_model": "reram"}, {}),
    ({"noise_model": "reram", "t_inference": 86400}, {}),
    ({"noise_model": "pcm", "t_inference": 3600}, {}),
    ({"out_noise": 0.3}, {}),
    ({}, {"adc": NoisyADC(NoisyADC.Params(bits=6, noise_lsb=0.5))}),
])
def test_noise_is_close_and_deterministic_for_a_seed(kit, net_setup, params, sim):
    reference = net_setup[4]
    state = torch.get_rng_state()
    first = run(net_setup, params, seed=1, **sim)
    assert torch.equal(torch.get_rng_state(), state)  # aihwkit's global-RNG draws are isolated
    assert torch.equal(first, run(net_setup, params, seed=1, **sim))
    assert not torch.equal(first, run(net_setup, params, seed=2, **sim))
    assert 0 < relative_error(first, reference) < 0.3


def test_pcm_drift_is_compensated(kit, net_setup):
    net, inputs, mapped, scales, reference = net_setup
    built = host(noise_model="pcm", t_inference=1e7).build(net, mapped, sim_of(cell_bits=2, dac_bits=2), scales)
    assert built.fc.plan.drift_factor > 1.5  # conductances lost a third after 1e7 s
    with torch.no_grad():
        assert relative_error(built(inputs), reference) < 0.3


def test_unsupported_simulations_raise_config_errors(net_setup):
    net, _inputs, mapped, scales, _ = net_setup
    cases = {
        "full_scale: lossless": sim_of(adc=UniformADC(UniformADC.Params(bits=4, full_scale="calibrated")), cell_bits=2),
        "offset_lsb": sim_of(adc=NoisyADC(NoisyADC.Params(bits=4, offset_lsb=0.5)), cell_bits=2),
        "offset_levels": sim_of(adc=NoisyADC(NoisyADC.Params(bits=4, offset_levels=2.0)), cell_bits=2),
        "dac: ideal": replace(sim_of(cell_bits=2), dac=NoisyDAC(NoisyDAC.Params())),
        "read_sigma": sim_of(cell=SLCCell(SLCCell.Params())),
    }
    for message, sim in cases.items():
        with pytest.raises(errors.ConfigError, match=message):
            host().build(net, mapped, sim, scales)


def test_bad_params_and_inputs(kit, net_setup):
    net, _inputs, mapped, scales, _ = net_setup
    with pytest.raises(ValidationError, match="t_inference"):
        AihwkitHost.Params(noise_model="reram", t_inference=5.0)
    with pytest.raises(ValidationError):
        AihwkitHost.Params(device="cuda")
    with pytest.raises(ValidationError):
        AihwkitHost.Params(w_noise=0.1)
    with pytest.raises(ValueError, match="activation scale"):
        host().build(net, mapped, sim_of(cell_bits=2), {})
    with pytest.raises(ConflictError, match="2-bit cells"):
        host().build(net, mapped, sim_of(cell_bits=1), scales)


def test_missing_aihwkit_is_a_clear_config_error(net_setup, monkeypatch):
    net, _inputs, mapped, scales, _ = net_setup
    for name in [n for n in sys.modules if n == "aihwkit" or n.startswith("aihwkit.")] or ["aihwkit"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(errors.ConfigError, match=r"aihwkit is not installed \(pip install --no-deps aihwkit==1.1.0\)"):
        host().build(net, mapped, sim_of(cell_bits=2), scales)
