import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cell_models import IdealCell, MLCCell, SLCCell
from sme_plugin import errors, mapping, orchestrate, squeeze
from sme_plugin.converters import IdealADC, IdealDAC, NoisyADC, UniformADC, lossless_bits
from sme_plugin.host import (
    CrossbarLayer,
    Simulation,
    StandaloneHost,
    calibrate_activations,
    crossbar_matmul,
    digital_model,
)
from sme_plugin.plugins import registry_of
from sme_plugin.signs import SIGN_SCHEMES, encode
from sme_plugin.types import Geometry, Layer, MappedLayer, MappingContext, QuantizedLayer

torch.set_num_threads(1)


def quantized(name, weight, mask, bits, kind="linear", bias=None, **layer_kw):
    """Per-column symmetric quantization of (P, N, M) float weights (test helper)."""
    peak = np.abs(np.where(mask, weight, 0)).max(axis=1, keepdims=True)
    scale = np.where(peak > 0, peak, 1.0) / ((1 << (bits - 1)) - 1)
    w_int = np.where(mask, np.round(weight / scale), 0).astype(np.int64)
    layer = Layer(name=name, kind=kind, weight=weight.astype(np.float32), mask=mask, bias=bias,
                  out_features=layer_kw.pop("out_features", weight.shape[2]), **layer_kw)
    return QuantizedLayer(layer, w_int, scale, bits)


def mapped_layer(q, cell_bits, scheme, read_rows, rng, present="all", permute=False, segment_rows=8):
    """MappedLayer built straight from signs.encode, optionally with permuted rows/cols and sparse ``present``."""
    P, N, M = q.w_int.shape
    row_order = col_order = None
    w, mask = q.w_int, q.layer.mask
    if permute:
        row_order = rng.permuted(np.tile(np.arange(N), (P, 1)), axis=1)
        col_order = rng.permuted(np.tile(np.arange(M), (P, 1)), axis=1)
        pick = lambda a: np.take_along_axis(np.take_along_axis(a, row_order[:, :, None], 1), col_order[:, None, :], 2)  # noqa: E731
        w, mask = pick(w), pick(mask)
    enc = encode(w, mask, q.bits, cell_bits, scheme, segment_rows)
    cells = np.ones(enc.levels.shape, bool) if present == "all" else (rng.random(enc.levels.shape) < 0.5) | (enc.levels > 0)
    return MappedLayer(q, enc, cells, Geometry(cell_bits=cell_bits), read_rows, crossbars=1, label="test",
                       row_order=row_order, col_order=col_order)


def sim_of(cell=None, adc=None, dac_bits=1, activation_bits=8, seed=0, cell_bits=1):
    return Simulation(cell or IdealCell(IdealCell.Params(bits=cell_bits)), adc or IdealADC(IdealADC.Params()),
                      IdealDAC(IdealDAC.Params(bits=dac_bits)), activation_bits, seed)


def program(mapped, sim, seed=0):
    return sim.cell.program(torch.as_tensor(mapped.encoding.levels), torch.as_tensor(mapped.present),
                            torch.Generator().manual_seed(seed))


@st.composite
def golden_cases(draw):
    P, N, M = draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 12))
    return dict(
        shape=(P, N, M), bits=draw(st.integers(2, 9)), cell_bits=draw(st.integers(1, 4)),
        scheme=draw(st.sampled_from(SIGN_SCHEMES)), read_rows=draw(st.integers(1, N + 3)),
        dac_bits=draw(st.integers(1, 8)), activation_bits=draw(st.integers(1, 9)),
        signed=draw(st.booleans()), present=draw(st.sampled_from(["all", "random"])),
        permute=draw(st.booleans()), segment_rows=draw(st.integers(1, N)), adc=draw(st.sampled_from(["ideal", "uniform"])),
        rows=draw(st.integers(1, 5)), seed=draw(st.integers(0, 2**31)),
    )


def random_integers(rng, case):
    P, N, M = case["shape"]
    wmax = (1 << (case["bits"] - 1)) - 1
    mask = rng.random((P, N, M)) < 0.8
    w_int = np.where(mask, rng.integers(-wmax, wmax + 1, (P, N, M)), 0)
    xmax = (1 << case["activation_bits"]) - 1
    x = rng.integers(-xmax if case["signed"] else 0, xmax + 1, (case["rows"], P, N))
    return w_int, mask, x


@settings(max_examples=250, deadline=None)
@given(golden_cases())
def test_golden_rule_bit_exact(case):
    rng = np.random.default_rng(case["seed"])
    w_int, mask, x = random_integers(rng, case)
    q = QuantizedLayer(Layer("fc", "linear", w_int.astype(np.float32), mask, None, case["shape"][2]), w_int,
                       np.ones((1, 1, 1)), case["bits"])
    mapped = mapped_layer(q, case["cell_bits"], case["scheme"], case["read_rows"], rng, case["present"],
                          case["permute"], case["segment_rows"])
    fs = case["read_rows"] * ((1 << case["cell_bits"]) - 1) * ((1 << case["dac_bits"]) - 1)
    adc = None
    if case["adc"] == "uniform" and lossless_bits(fs) <= 16:
        adc = UniformADC(UniformADC.Params(bits=max(1, lossless_bits(fs))))
    sim = sim_of(adc=adc, dac_bits=case["dac_bits"], activation_bits=case["activation_bits"], cell_bits=case["cell_bits"])
    y = crossbar_matmul(torch.as_tensor(x, dtype=torch.float64), mapped, program(mapped, sim), sim)
    expected = torch.as_tensor(np.einsum("rpn,pnm->rpm", x, w_int), dtype=torch.float64)
    assert torch.equal(y, expected)


def test_one_adc_bit_short_of_lossless_breaks_exactness():
    w_int = np.full((1, 16, 2), 7)
    q = QuantizedLayer(Layer("fc", "linear", w_int.astype(np.float32), np.ones_like(w_int, bool), None, 2),
                       w_int, np.ones((1, 1, 1)), 4)
    mapped = mapped_layer(q, 1, "differential", 16, np.random.default_rng(0))
    x = torch.full((1, 1, 16), 3.0)
    x[..., 0] = 0  # column sums of 15 per cycle: not a multiple of the 4-bit step 16/15
    exact = sim_of(adc=UniformADC(UniformADC.Params(bits=5)), activation_bits=2)  # 16 rows -> 5 bits lossless
    short = sim_of(adc=UniformADC(UniformADC.Params(bits=4)), activation_bits=2)
    expected = torch.full((1, 1, 2), 15 * 3 * 7.0, dtype=torch.float64)
    assert torch.equal(crossbar_matmul(x, mapped, program(mapped, exact), exact), expected)
    assert not torch.equal(crossbar_matmul(x, mapped, program(mapped, short), short), expected)
    with pytest.raises(ValueError, match="activation range"):
        crossbar_matmul(x * 2, mapped, program(mapped, exact), exact)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),  # depthwise, several parts
            nn.Conv2d(8, 4, 1, groups=2, dilation=1), nn.ReLU(),  # grouped
            nn.Conv2d(4, 6, 3, stride=1, padding=2, dilation=2),
        )
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def conv_layer(name, module, groups_per_part, bits):
    """A Conv2d/Linear as (P, N, M) block-diagonal parts, quantized (test helper)."""
    if isinstance(module, nn.Linear):
        w = module.weight.detach().numpy().T[None].astype(np.float64)
        return quantized(name, w, np.ones(w.shape, bool), bits, bias=module.bias.detach().numpy())
    g, k = module.groups, groups_per_part
    parts = -(-g // k)
    blocks = module.weight.detach().numpy().astype(np.float64).reshape(g, module.out_channels // g, -1).transpose(0, 2, 1)
    exists = np.ones(blocks.shape, bool)
    pad = [(0, parts * k - g), (0, 0), (0, 0)]
    diag = lambda b: np.einsum("pinm,ij->pinjm", np.pad(b, pad).reshape(parts, k, *b.shape[1:]), np.eye(k)).reshape(  # noqa: E731
        parts, k * b.shape[1], k * b.shape[2])
    kind = "conv" if g == 1 else "grouped"
    return quantized(name, diag(blocks), diag(exists).astype(bool), bits, kind=kind, bias=module.bias.detach().numpy(),
                     out_features=module.out_channels, groups=g, groups_per_part=k)


def small_net():
    """A conv net with strided, dilated, depthwise (3 parts) and grouped layers, its quantized layers,
    inputs and activation scales."""
    torch.manual_seed(0)
    net = Net().eval()
    inputs = torch.randn(6, 3, 8, 8)
    names = ["features.0", "features.2", "features.4", "features.6", "fc"]
    per_part = {"features.2": 3, "features.4": 1}
    modules = dict(net.named_modules())
    qs = {n: conv_layer(n, modules[n], per_part.get(n, 1), 8) for n in names}
    scales = calibrate_activations(net, names, inputs, batch_size=4)
    return net, inputs, qs, scales


@pytest.fixture(scope="module")
def net_setup():
    return small_net()


def test_calibrate_activations_records_input_peaks(net_setup):
    net, inputs, qs, scales = net_setup
    assert scales["features.0"] == pytest.approx(float(inputs.abs().max()))
    assert scales["fc"] == pytest.approx(float(net.features(inputs).detach().abs().max()))
    with pytest.raises(ValueError, match="not modules"):
        calibrate_activations(net, ["nope"], inputs)
    with pytest.raises(ValueError, match="Conv2d/Linear"):
        calibrate_activations(net, ["features.1"], inputs)


def test_digital_model_tracks_float_model(net_setup):
    net, inputs, qs, scales = net_setup
    digital = digital_model(net, qs, 8, scales)
    assert isinstance(digital.features[2], nn.Module) and not isinstance(net.features[2], type(digital.features[2]))
    with torch.no_grad():
        ref = net(inputs)
        out = digital(inputs)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.allclose(out, ref, atol=0.05 * float(ref.abs().max()))
    with pytest.raises(ValueError, match="activation scale"):
        digital_model(net, qs, 8, {})


@pytest.mark.parametrize("scheme,cell_bits,dac_bits,read_rows", [
    ("differential", 1, 1, 128), ("offset", 2, 2, 16), ("segment-offset", 3, 1, 5),
])
def test_crossbar_model_equals_digital_with_ideal_parts(net_setup, scheme, cell_bits, dac_bits, read_rows):
    net, inputs, qs, scales = net_setup
    rng = np.random.default_rng(1)
    mapped = {n: mapped_layer(q, cell_bits, scheme, read_rows, rng, "random", permute=True) for n, q in qs.items()}
    host = StandaloneHost(StandaloneHost.Params(batch_rows=37))
    built = host.build(net, mapped, sim_of(dac_bits=dac_bits, cell_bits=cell_bits), scales)
    assert isinstance(built.features[2], CrossbarLayer)
    assert torch.equal(built(inputs), digital_model(net, qs, 8, scales)(inputs))


def noisy_build(net_setup, seed, cell=True, adc=True):
    net, inputs, qs, scales = net_setup
    rng = np.random.default_rng(2)
    mapped = {n: mapped_layer(q, 1, "differential", 16, rng) for n, q in qs.items()}
    sim = sim_of(cell=SLCCell(SLCCell.Params(preset="grossi2016")) if cell else None,
                 adc=NoisyADC(NoisyADC.Params(bits=5, noise_lsb=1.0)) if adc else None, seed=seed)
    return StandaloneHost(StandaloneHost.Params()).build(net, mapped, sim, scales)(inputs)


@pytest.mark.parametrize("cell,adc", [(True, False), (False, True), (True, True)])
def test_noise_is_deterministic_for_a_seed(net_setup, cell, adc):
    first, again = noisy_build(net_setup, 3, cell, adc), noisy_build(net_setup, 3, cell, adc)
    assert torch.equal(first, again)
    assert not torch.equal(first, noisy_build(net_setup, 4, cell, adc))
    assert not torch.equal(first, noisy_build(net_setup, 3, False, False))


def test_absent_cells_draw_no_current_even_with_noise():
    w_int = np.zeros((2, 20, 3), np.int64)
    q = QuantizedLayer(Layer("fc", "linear", w_int.astype(np.float32), np.ones(w_int.shape, bool), None, 3),
                       w_int, np.ones((1, 1, 1)), 6)
    mapped = mapped_layer(q, 2, "offset", 8, np.random.default_rng(0))
    mapped.present = mapped.encoding.levels > 0  # only the offset-encoded cells stay
    faulty = SLCCell.Params(program_sigma=0.5, read_sigma=0.3, stuck_at_1=0.5)
    sim = sim_of(cell=MLCCell(MLCCell.Params(bits=2, **faulty.model_dump(exclude_none=True))))
    x = torch.as_tensor(np.random.default_rng(1).integers(0, 200, (4, 2, 20)), dtype=torch.float64)
    mapped.present[:] = False
    assert torch.equal(crossbar_matmul(x, mapped, program(mapped, sim), sim),
                       torch.einsum("rpn,pnm->rpm", x, torch.as_tensor(mapped.encoding.offset, dtype=torch.float64)))
    mapped.present[:] = True  # the same cells, now present, do conduct (stuck-at-1, variation)
    assert not torch.equal(crossbar_matmul(x, mapped, program(mapped, sim), sim),
                           torch.zeros(4, 2, 3, dtype=torch.float64) + x.sum(2, keepdim=True) * -32)


def test_calibrated_adc_full_scale(net_setup):
    net, inputs, qs, scales = net_setup
    rng = np.random.default_rng(3)
    mapped = {n: mapped_layer(q, 1, "differential", 64, rng) for n, q in qs.items()}
    host = StandaloneHost(StandaloneHost.Params())
    calibrated = sim_of(adc=UniformADC(UniformADC.Params(bits=4, full_scale="calibrated")))
    with pytest.raises(ValueError, match="calibration_inputs"):
        host.build(net, mapped, calibrated, scales)
    built = host.build(net, mapped, calibrated, scales, calibration_inputs=inputs)
    layer = built.features[0]
    assert layer.observed is None and torch.all(layer.full_scale <= layer.plan.lossless_scale)
    assert torch.any(layer.full_scale < layer.plan.lossless_scale)
    reference = digital_model(net, qs, 8, scales)(inputs)
    lossless = host.build(net, mapped, sim_of(adc=UniformADC(UniformADC.Params(bits=4))), scales)(inputs)
    error = lambda out: float((out - reference).abs().mean())  # noqa: E731
    assert error(built(inputs)) < error(lossless)


def test_linear_on_higher_rank_inputs_and_chunking():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(10, 7)).eval()
    inputs = torch.randn(3, 4, 10)
    q = conv_layer("0", net[0], 1, 6)
    scales = calibrate_activations(net, ["0"], inputs)
    mapped = {"0": mapped_layer(q, 2, "differential", 3, np.random.default_rng(0))}
    outs = [StandaloneHost(StandaloneHost.Params(batch_rows=b)).build(net, mapped, sim_of(cell_bits=2, activation_bits=5), scales)(inputs)
            for b in (1, 5, 4096)]
    reference = digital_model(net, {"0": q}, 5, scales)(inputs)
    assert outs[0].shape == (3, 4, 7)
    assert all(torch.equal(o, reference) for o in outs)


def test_bad_inputs_raise_clear_errors(net_setup):
    net, inputs, qs, scales = net_setup
    mapped = {"fc": mapped_layer(qs["fc"], 2, "differential", 8, np.random.default_rng(0))}
    with pytest.raises(ValueError, match="2-bit cells"):
        StandaloneHost(StandaloneHost.Params()).build(net, mapped, sim_of(cell_bits=1), scales)
    with pytest.raises(ValueError, match="do not fit"):
        digital_model(net, {"features.2": qs["fc"]}, 8, scales)
    if not torch.cuda.is_available():
        with pytest.raises(errors.ConfigError, match="cuda"):
            StandaloneHost(StandaloneHost.Params(device="cuda"))
        assert StandaloneHost(StandaloneHost.Params(device="auto")).device.type == "cpu"
    with pytest.raises(ValueError):
        StandaloneHost.Params(batch_rows=0)


MAPPERS = registry_of(mapping).entries["mapper"]
ORCHESTRATORS = registry_of(orchestrate).entries["orchestrator"]
SQUEEZERS = registry_of(squeeze).entries["squeezer"]


@st.composite
def mapper_cases(draw):
    rows = draw(st.sampled_from([8, 16, 32]))
    params = {"sign": draw(st.sampled_from(SIGN_SCHEMES))}
    name = draw(st.sampled_from(sorted(MAPPERS)))
    fields = MAPPERS[name].factory.Params.model_fields
    if "packing" in fields:
        params["packing"] = draw(st.sampled_from(["tile", "column", "ou"]))
    if "weight_bits" in fields:  # isaac: its own weight width and cells, as for ISAAC-16
        params["weight_bits"] = draw(st.sampled_from([None, 12]))
        params["cell_bits"] = draw(st.sampled_from([None, 2]))
    geometry = Geometry(rows=rows, cols=32, ou_rows=draw(st.sampled_from([2, 4, 8])), cell_bits=draw(st.integers(1, 4)))
    return name, params, geometry


@st.composite
def squeezer_cases(draw):
    """A registered squeezer with drawn params (error budget, threshold, reordering) where it has them."""
    name = draw(st.sampled_from(sorted(SQUEEZERS)))
    factory = SQUEEZERS[name].factory
    fields = factory.Params.model_fields
    params = {}
    if "budget" in fields:
        params["budget"] = draw(st.sampled_from([0.0, 0.05, 0.3]))
        params["threshold"] = draw(st.sampled_from([0, 4]))
    if "reorder" in fields:
        params["reorder"] = draw(st.booleans())
    return factory(factory.Params(**params))


@st.composite
def orchestrator_cases(draw):
    """A registered orchestrator with params that change the weights."""
    name, params = draw(st.sampled_from([("none", {}), ("kbits", {"k": 1}), ("window", {"budget": 0.1}),
                                         ("window", {"mode": "fixed", "planes": 2})]))
    factory = ORCHESTRATORS[name].factory
    return factory(factory.Params(**params))


@pytest.mark.skipif(not MAPPERS, reason="no mappers registered yet")
@settings(max_examples=150, deadline=None)
@given(mapper_cases(), golden_cases(), squeezer_cases(), orchestrator_cases())
def test_golden_rule_after_orchestration_and_squeeze_out(mapper_case, case, squeezer, orchestrator):
    name, params, geometry = mapper_case
    rng = np.random.default_rng(case["seed"])
    bits = min(case["bits"], 8)
    w_int, mask, x = random_integers(rng, {**case, "bits": bits})
    q = QuantizedLayer(Layer("fc", "linear", w_int.astype(np.float32), mask, None, w_int.shape[2]), w_int,
                       np.ones((1, 1, 1)), bits)
    mapper = MAPPERS[name].factory(MAPPERS[name].factory.Params(**params))
    [q] = orchestrator.orchestrate([q], MappingContext(geometry, mapper.sign, mapper.packing))
    mapped = squeezer.squeeze(mapper.map(q, geometry), mapper)
    sim = sim_of(dac_bits=case["dac_bits"], activation_bits=case["activation_bits"], cell_bits=mapped.encoding.cell_bits)
    y = crossbar_matmul(torch.as_tensor(x, dtype=torch.float64), mapped, program(mapped, sim), sim)
    expected = np.einsum("rpn,pnm->rpm", x, mapped.quantized.w_int)
    assert torch.equal(y, torch.as_tensor(expected, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_host_matches_cpu_reference(net_setup):
    net, inputs, qs, scales = net_setup
    mapped = {n: mapped_layer(q, 2, "segment-offset", 8, np.random.default_rng(4), "random", True) for n, q in qs.items()}
    host = StandaloneHost(StandaloneHost.Params(device="cuda"))
    assert host.device.type == "cuda"
    out = host.build(net, mapped, sim_of(cell_bits=2, dac_bits=2), scales)(inputs)
    assert out.device == inputs.device and torch.equal(out, digital_model(net, qs, 8, scales)(inputs))
    noisy = sim_of(cell=SLCCell(SLCCell.Params(preset="wan2022")), adc=NoisyADC(NoisyADC.Params(bits=6)), seed=9)
    mapped = {n: mapped_layer(q, 1, "differential", 16, np.random.default_rng(4)) for n, q in qs.items()}
    assert torch.equal(host.build(net, mapped, noisy, scales)(inputs), host.build(net, mapped, noisy, scales)(inputs))
