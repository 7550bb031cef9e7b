"""Standalone host: it simulates exactly the placement, and with ideal parts reproduces x @ w bit for bit."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sme_cell_models import IdealCell, MLCCell, SLCCell
from torch import nn

from sme_plugin import errors
from sme_plugin.checker import check_placement
from sme_plugin.converters import IdealADC, IdealDAC, NoisyADC, NoisyDAC, UniformADC, lossless_bits
from sme_plugin.errors import ConflictError
from sme_plugin.host import Simulation, StandaloneHost
from sme_plugin.placement import assemble
from sme_plugin.plugins import build_registry, plugin_manager
from sme_plugin.signs import SIGN_SCHEMES, encode
from sme_plugin.simulator import CrossbarLayer, CrossbarPlan, calibrate_activations, crossbar_matmul, digital_model
from sme_plugin.types import Geometry, Layer, MappedLayer, QuantizedLayer

torch.set_num_threads(1)
REGISTRY = build_registry(plugin_manager(load_entrypoints=False))


def quantized(name, weight, mask, bits, kind="linear", bias=None, **layer_kw):
    """Per-column symmetric quantization of (P, N, M) float weights (test helper)."""
    peak = np.abs(np.where(mask, weight, 0)).max(axis=1, keepdims=True)
    scale = np.where(peak > 0, peak, 1.0) / ((1 << (bits - 1)) - 1)
    w_int = np.where(mask, np.round(weight / scale), 0).astype(np.int64)
    layer = Layer(name=name, kind=kind, weight=weight.astype(np.float32), mask=mask, bias=bias,
                  out_features=layer_kw.pop("out_features", weight.shape[2]), **layer_kw)
    return QuantizedLayer(layer, w_int, scale, bits)


def integer_layer(w_int, bits, mask=None):
    mask = np.ones(w_int.shape, bool) if mask is None else mask
    layer = Layer("fc", "linear", w_int.astype(np.float32), mask, None, w_int.shape[2])
    return QuantizedLayer(layer, np.asarray(w_int, dtype=np.int64), np.ones((1, 1, 1)), bits)


def random_placement(q, cell_bits, scheme, read_rows, cols, rng, bands=2, empty=0.2, segment_rows=None):
    """A MappedLayer of ``q`` on a random valid placement: per (part, block of ``read_rows`` rows), its
    (sign set, group, column) level columns (non-empty ones, plus a fraction ``empty`` of empty ones)
    shuffled and packed ``cols`` to a read, so one read mixes sign sets and groups; row slots in random
    order (unused slots anywhere); ``bands`` reads stacked per crossbar."""
    enc = encode(q.w_int, q.layer.mask, q.bits, cell_bits, scheme, segment_rows or read_rows)
    _n_sets, _n_groups, parts, n_rows, _n_cols = enc.levels.shape
    reads = []
    for p in range(parts):
        for start in range(0, n_rows, read_rows):
            block = enc.levels[:, :, p, start:start + read_rows]
            keep = block.any(axis=2) | (rng.random(block.shape[:2] + block.shape[3:]) < empty)
            columns = rng.permutation(np.argwhere(keep))  # (s, g, m)
            for first in range(0, len(columns), cols):
                rows = np.full(read_rows, -1)
                rows[rng.permutation(read_rows)[: min(read_rows, n_rows - start)]] = start + np.arange(
                    min(read_rows, n_rows - start))
                reads.append((p, rows, columns[first:first + cols]))
    count = len(reads)
    column, sign_set, group = (np.full((count, cols), fill) for fill in (-1, 0, 0))
    for i, (_, _, chosen) in enumerate(reads):
        sign_set[i, : len(chosen)], group[i, : len(chosen)], column[i, : len(chosen)] = chosen.T
    index = np.arange(count)
    placement = assemble(
        enc, rows=read_rows * bands, cols=cols, part=np.array([r[0] for r in reads], dtype=np.int64),
        logical_rows=np.array([r[1] for r in reads]).reshape(count, read_rows),
        physical_rows=(index % bands)[:, None] * read_rows + np.arange(read_rows), crossbar=index // bands,
        crossbars=-(-count // bands), column=column, sign_set=sign_set, group=group, segment_rows=read_rows)
    return MappedLayer(quantized=q, encoding=enc, placement=placement, layout=None, label="test")


def sim_of(cell=None, adc=None, dac_bits=1, activation_bits=8, seed=0, cell_bits=1, dac=None):
    return Simulation(cell or IdealCell(IdealCell.Params(bits=cell_bits)), adc or IdealADC(IdealADC.Params()),
                      dac or IdealDAC(IdealDAC.Params(bits=dac_bits)), activation_bits, seed)


def exact(x, w_int):
    return torch.as_tensor(np.einsum("rpn,pnm->rpm", np.asarray(x, dtype=np.int64), w_int), dtype=torch.float64)


@st.composite
def golden_cases(draw):
    P, N, M = draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 12))
    return {
        "shape": (P, N, M), "bits": draw(st.integers(2, 9)), "cell_bits": draw(st.integers(1, 4)),
        "scheme": draw(st.sampled_from(SIGN_SCHEMES)), "read_rows": draw(st.integers(1, N + 3)),
        "cols": draw(st.integers(1, 9)), "dac_bits": draw(st.integers(1, 8)), "activation_bits": draw(st.integers(1, 9)),
        "signed": draw(st.booleans()), "path": draw(st.sampled_from([None, "integer", "analog"])),
        "adc": draw(st.sampled_from(["ideal", "auto", "rounded"])), "rows": draw(st.integers(1, 5)),
        "density": draw(st.sampled_from([0.8, 0.2, 0.0])), "seed": draw(st.integers(0, 2**31)),
    }


def random_integers(rng, case):
    P, N, M = case["shape"]
    wmax = (1 << (case["bits"] - 1)) - 1
    mask = rng.random((P, N, M)) < 0.8
    w_int = np.where(mask & (rng.random(mask.shape) < case["density"]), rng.integers(-wmax, wmax + 1, (P, N, M)), 0)
    xmax = (1 << case["activation_bits"]) - 1
    x = rng.integers(-xmax if case["signed"] else 0, xmax + 1, (case["rows"], P, N))
    return w_int, mask, x


def adc_of(kind, placement, dac_bits):
    """An ADC that converts every column sum exactly: ideal, ``auto`` bits, or fixed bits at least the
    lossless ones with the result rounded to whole levels."""
    if kind == "auto":
        return UniformADC(UniformADC.Params(bits="auto"))
    if kind == "rounded":
        bits = max(1, lossless_bits(placement.full_scale(dac_bits))) + 1  # LSB at most half a level
        if bits > 16:  # beyond a 16-bit converter: such sums are only exact with per-column (auto) bits
            return UniformADC(UniformADC.Params(bits="auto"))
        return UniformADC(UniformADC.Params(bits=bits, round_to_levels=True))
    return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(golden_cases())
def test_golden_rule_on_random_placements(case):
    """Ideal cells and DAC, an exact ADC: every path reproduces x @ w_int bit for bit, on placements that
    mix sign sets and cell groups in a read, permute row slots and stack reads on crossbars."""
    rng = np.random.default_rng(case["seed"])
    w_int, mask, x = random_integers(rng, case)
    q = integer_layer(w_int, case["bits"], mask)
    mapped = random_placement(q, case["cell_bits"], case["scheme"], case["read_rows"], case["cols"], rng)
    check_placement(mapped.placement, q, mapped.encoding)
    adc = adc_of(case["adc"], mapped.placement, case["dac_bits"])
    sim = sim_of(adc=adc, dac_bits=case["dac_bits"], activation_bits=case["activation_bits"],
                 cell_bits=case["cell_bits"])
    y = crossbar_matmul(torch.as_tensor(x, dtype=torch.float64), mapped, sim, path=case["path"], chunk_mib=0.05)
    assert torch.equal(y, exact(x, w_int))


def test_paths_follow_the_components():
    rng = np.random.default_rng(0)
    q = integer_layer(rng.integers(-7, 8, (1, 20, 6)), 4)
    mapped = random_placement(q, 1, "differential", 8, 4, rng)
    path = lambda **sim: CrossbarPlan(mapped, sim_of(**sim)).path
    assert path() == "fused"
    assert path(adc=UniformADC(UniformADC.Params(bits="auto"))) == "fused"  # lossless
    assert path(adc=NoisyADC(NoisyADC.Params(bits="auto"))) == "integer"
    assert path(adc=UniformADC(UniformADC.Params(bits=6))) == "integer"
    assert path(dac=NoisyDAC(NoisyDAC.Params(sigma=0.1))) == "analog"
    assert path(dac=NoisyDAC(NoisyDAC.Params(sigma=0.0))) == "fused"  # behaves ideally
    assert path(cell=SLCCell(SLCCell.Params(read_sigma=0.0))) == "analog"
    with pytest.raises(ValueError, match="the fused path needs ideal cells and DAC and a lossless ADC"):
        CrossbarPlan(mapped, sim_of(adc=UniformADC(UniformADC.Params(bits=6))), path="fused")
    with pytest.raises(ValueError, match="path must be one of"):
        CrossbarPlan(mapped, sim_of(), path="fast")


def test_adc_resolution_decides_exactness():
    """16 rows of weight 7 (3 SLC planes), 2-bit inputs: column sums up to 16, 5 bits lossless. A code is
    worth its own LSB (16/31 at 5 bits): exact with ``auto`` bits (LSB = 1 level) or with the result
    rounded to whole levels, not with a plain 5-bit code or too few bits."""
    q = integer_layer(np.full((1, 16, 2), 7), 4)
    mapped = random_placement(q, 1, "differential", 16, 8, np.random.default_rng(0), empty=0.0)
    x = torch.full((1, 1, 16), 3.0, dtype=torch.float64)
    x[..., 0] = 0  # column sums of 15 per cycle
    expected = torch.full((1, 1, 2), 15 * 3 * 7.0, dtype=torch.float64)
    for params, equal in [({"bits": "auto"}, True), ({"bits": 5, "round_to_levels": True}, True),
                          ({"bits": 5}, False), ({"bits": 3, "round_to_levels": True}, False)]:
        sim = sim_of(adc=UniformADC(UniformADC.Params(**params)), activation_bits=2)
        assert torch.equal(crossbar_matmul(x, mapped, sim, path="integer"), expected) == equal, params
    with pytest.raises(ValueError, match="activation range"):
        crossbar_matmul(x * 2, mapped, sim_of(activation_bits=2))


def test_adc_sees_each_read_column_with_its_own_full_scale():
    """A plain 6-bit ADC (LSB = full_scale / 63) quantizes each column on its own range: the integer path
    equals a direct read-by-read simulation of the placement with the same ADC."""
    rng = np.random.default_rng(1)
    q = integer_layer(rng.integers(-127, 128, (1, 40, 5)), 8)
    mapped = random_placement(q, 2, "offset", 16, 6, rng)
    p = mapped.placement
    adc = UniformADC(UniformADC.Params(bits=3))
    x = rng.integers(0, 256, (4, 1, 40))
    y = crossbar_matmul(torch.as_tensor(x, dtype=torch.float64), mapped, sim_of(adc=adc, cell_bits=2, dac_bits=2))
    full_scale, coef = torch.as_tensor(p.full_scale(2), dtype=torch.float32), p.coefficients()
    xin = np.concatenate([x.reshape(4, -1), np.zeros((4, 1), np.int64)], axis=1)[:, p.input]  # (B, R, K)
    expected = np.einsum("rpn,pnm->rpm", x, p.offset).reshape(4, -1).astype(np.float64)
    for t in range(4):
        digit = (xin >> (2 * t)) & 3
        sums = torch.as_tensor(np.einsum("brk,rkj->brj", digit, p.levels.astype(np.int64)), dtype=torch.float32)
        codes = adc.convert(sums, full_scale, None).double().numpy()  # float32, as the host converts
        for r, j in zip(*np.nonzero(p.col >= 0)):
            expected[:, p.output[r, j]] += codes[:, r, j] * coef[r, j] * 4**t
    expected = torch.as_tensor(expected)  # float32 splicing of non-integer codes: equal to ~1e-7
    assert torch.allclose(y.reshape(4, -1), expected, rtol=0, atol=1e-6 * float(expected.abs().max()))
    assert not torch.equal(y, exact(x, q.w_int))


def test_absent_cells_and_empty_columns_draw_no_current():
    rng = np.random.default_rng(0)
    q = integer_layer(rng.integers(-7, 8, (2, 20, 3)), 4)
    mapped = random_placement(q, 1, "differential", 8, 5, rng, empty=0.5)
    p = mapped.placement
    x = torch.as_tensor(rng.integers(0, 200, (4, 2, 20)), dtype=torch.float64)
    sim = sim_of(adc=NoisyADC(NoisyADC.Params(bits=6)))
    present = torch.as_tensor(p.present())
    programmed = torch.where(present, torch.as_tensor(p.levels, dtype=torch.float64) * 1.01 + 0.01, 0.0)
    garbage = torch.where(present, programmed, 1e3)  # huge conductance where no cell exists
    clean = crossbar_matmul(x, mapped, sim, conductance=programmed)
    assert torch.equal(crossbar_matmul(x, mapped, sim, conductance=garbage), clean)
    # a layer of zeros stores only level-0 cells: no column converts, even with faulty cells and noisy ADCs
    zero = random_placement(integer_layer(np.zeros((2, 20, 3), np.int64), 4), 2, "differential", 8, 5, rng, empty=1.0)
    assert zero.placement.reads > 0
    faulty = MLCCell(MLCCell.Params(bits=2, program_sigma=0.5, read_sigma=0.3, stuck_at_1=0.5))
    y = crossbar_matmul(x, zero, sim_of(cell=faulty, adc=NoisyADC(NoisyADC.Params(bits=4)), cell_bits=2))
    assert torch.equal(y, torch.zeros(4, 2, 3, dtype=torch.float64))


def test_chunking_and_memory_cap_do_not_change_exact_results():
    rng = np.random.default_rng(5)
    q = integer_layer(rng.integers(-127, 128, (2, 70, 9)), 8)
    mapped = random_placement(q, 2, "segment-offset", 16, 8, rng)
    x = torch.as_tensor(rng.integers(-255, 256, (37, 2, 70)), dtype=torch.float64)
    adc = UniformADC(UniformADC.Params(bits=16, round_to_levels=True))
    for path in ("fused", "integer", "analog"):
        sim = sim_of(adc=None if path == "fused" else adc, cell_bits=2)
        for batch_rows, chunk_mib in [(1, 256), (5, 256), (4096, 0.01), (4096, 256)]:
            y = crossbar_matmul(x, mapped, sim, path=path, batch_rows=batch_rows, chunk_mib=chunk_mib)
            assert torch.equal(y, exact(x, q.w_int)), (path, batch_rows, chunk_mib)


def peak_bytes(fn) -> int:
    """Largest net size of the CPU tensors allocated while ``fn`` runs: the profiler's per-op (self)
    allocations and frees, added up in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    level = peak = 0
    for event in events:
        level += event.self_cpu_memory_usage
        peak = max(peak, level)
    return peak


@pytest.mark.parametrize("mode", ["integer", "analog"])
def test_chunk_mib_caps_the_temporaries(mode):
    """chunk_mib bounds what one call allocates at once (beyond inputs and outputs) to within 25 %."""
    rng = np.random.default_rng(0)
    q = integer_layer(rng.integers(-127, 128, (1, 200, 32)), 8)
    mapped = random_placement(q, 1, "differential", 64, 64, rng, empty=0.0)
    cell = IdealCell(IdealCell.Params()) if mode == "integer" else SLCCell(SLCCell.Params())
    sim = sim_of(cell=cell, adc=NoisyADC(NoisyADC.Params(bits=6)))
    layer = CrossbarLayer(nn.Linear(200, 32), mapped, sim, 1.0, "cpu", 4096, 1 << 20)
    x = torch.as_tensor(rng.integers(0, 256, (256, 1, 200)), dtype=torch.float64)
    io = x.numel() * 8 * 2 + 256 * 32 * 8 * 2
    for cap in (1 << 19, 2 << 20):
        layer.chunk_bytes = cap
        assert peak_bytes(lambda: layer.integer_matmul(x)) < 1.25 * cap + io


def test_noise_is_deterministic_for_a_seed():
    rng = np.random.default_rng(2)
    q = integer_layer(rng.integers(-127, 128, (1, 50, 6)), 8)
    mapped = random_placement(q, 1, "differential", 16, 8, rng)
    x = torch.as_tensor(rng.integers(0, 256, (6, 1, 50)), dtype=torch.float64)
    noisy = {"cell": SLCCell(SLCCell.Params(preset="grossi2016")), "adc": NoisyADC(NoisyADC.Params(bits=5)),
             "dac": NoisyDAC(NoisyDAC.Params(sigma=0.05))}
    for parts in [("cell",), ("adc",), ("dac",), ("cell", "adc", "dac")]:
        chosen = {k: noisy[k] for k in parts}
        run = lambda seed, chosen=chosen: crossbar_matmul(x, mapped, sim_of(seed=seed, **chosen))
        first = run(3)
        assert torch.equal(first, run(3))
        assert not torch.equal(first, run(4))
        assert not torch.equal(first, exact(x, q.w_int))
        assert float((first - exact(x, q.w_int)).norm() / exact(x, q.w_int).norm()) < 0.5


def test_read_noise_scales_with_the_applied_conductances():
    """Read noise only (no programming spread): zero inputs give exactly zero, and the error grows with
    read_sigma."""
    rng = np.random.default_rng(4)
    q = integer_layer(rng.integers(-127, 128, (1, 64, 8)), 8)
    mapped = random_placement(q, 1, "differential", 32, 8, rng)
    x = torch.as_tensor(rng.integers(0, 256, (16, 1, 64)), dtype=torch.float64)
    levels = torch.as_tensor(mapped.placement.levels, dtype=torch.float64)
    errors_ = []
    for sigma in (0.01, 0.1):
        cell = SLCCell(SLCCell.Params(read_sigma=sigma))
        y = crossbar_matmul(x, mapped, sim_of(cell=cell), conductance=levels)
        errors_.append(float((y - exact(x, q.w_int)).norm()))
        assert torch.equal(crossbar_matmul(torch.zeros_like(x), mapped, sim_of(cell=cell), conductance=levels),
                           torch.zeros(16, 1, 8, dtype=torch.float64))
    assert 0 < errors_[0] < errors_[1]


def test_input_cycles_that_are_zero_for_a_chunk_are_skipped():
    """No DAC drives and no ADC fires in an all-zero cycle: zero inputs read exactly 0 even through noisy
    ADCs, and inputs without low bits skip those cycles and stay exact."""
    rng = np.random.default_rng(6)
    q = integer_layer(rng.integers(-127, 128, (1, 30, 4)), 8)
    mapped = random_placement(q, 1, "differential", 16, 8, rng)
    noisy = sim_of(adc=NoisyADC(NoisyADC.Params(bits=6, noise_lsb=2.0)))
    zeros = torch.zeros(3, 1, 30, dtype=torch.float64)
    assert torch.equal(crossbar_matmul(zeros, mapped, noisy), torch.zeros(3, 1, 4, dtype=torch.float64))
    x = torch.as_tensor(rng.integers(0, 16, (3, 1, 30)) * 16, dtype=torch.float64)  # cycles 0-3 all zero
    plan = CrossbarPlan(mapped, sim_of(adc=UniformADC(UniformADC.Params(bits="auto", round_to_levels=True))),
                        path="integer")
    assert torch.equal(plan.matmul(x, torch.Generator()), exact(x, q.w_int))


# --- models through the host ------------------------------------------------------------------------------


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
    diag = lambda b: np.einsum("pinm,ij->pinjm", np.pad(b, pad).reshape(parts, k, *b.shape[1:]), np.eye(k)).reshape(
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


def mapper(name, **params):
    factory = REGISTRY.get("mapper", name).factory
    fields = factory.Params.model_fields
    return factory(factory.Params(**{k: v for k, v in params.items() if k in fields}))


def test_calibrate_activations_records_input_peaks(net_setup):
    net, inputs, _qs, scales = net_setup
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


@pytest.mark.parametrize("name,params,cell_bits,dac_bits,adc", [
    ("sme", {"sign": "differential", "packing": "column"}, 1, 1, None),
    ("sme", {"sign": "segment-offset", "packing": "ou"}, 2, 2, "auto"),
    ("isaac", {"sign": "offset"}, 2, 1, None),
    ("bitplane", {"sign": "differential"}, 3, 1, "rounded"),
])
def test_crossbar_model_equals_digital_model(net_setup, name, params, cell_bits, dac_bits, adc):
    net, inputs, qs, scales = net_setup
    geometry = Geometry(rows=16, cols=16, ou_rows=4, cell_bits=cell_bits)
    mapped = {n: mapper(name, **params).map(q, geometry) for n, q in qs.items()}
    some = next(iter(mapped.values())).placement
    host = StandaloneHost(StandaloneHost.Params(batch_rows=37, chunk_mib=1))
    built = host.build(net, mapped, sim_of(dac_bits=dac_bits, cell_bits=cell_bits,
                                           adc=adc_of(adc, some, dac_bits) if adc != "rounded" else
                                           UniformADC(UniformADC.Params(bits=12, round_to_levels=True))), scales)
    assert isinstance(built.features[2], CrossbarLayer)
    with torch.no_grad():
        assert torch.equal(built(inputs), digital_model(net, qs, 8, scales)(inputs))


def test_calibrated_adc_full_scale(net_setup):
    net, inputs, qs, scales = net_setup
    geometry = Geometry(rows=64, cols=32, cell_bits=1)
    mapped = {n: mapper("sme", sign="differential", packing="column").map(q, geometry) for n, q in qs.items()}
    host = StandaloneHost(StandaloneHost.Params())
    calibrated = sim_of(adc=UniformADC(UniformADC.Params(bits=4, full_scale="calibrated")))
    with pytest.raises(ValueError, match="calibration_inputs"):
        host.build(net, mapped, calibrated, scales)
    built = host.build(net, mapped, calibrated, scales, calibration_inputs=inputs)
    plan = built.features[0].plan
    assert plan.observed is None
    full, lossless = plan.column_scales("full"), plan.column_scales("lossless")
    assert torch.all(full <= lossless) and torch.any(full < lossless) and torch.all((full > 0) == (lossless > 0))
    reference = digital_model(net, qs, 8, scales)(inputs)
    lossless_run = host.build(net, mapped, sim_of(adc=UniformADC(UniformADC.Params(bits=4))), scales)(inputs)
    error = lambda out: float((out - reference).abs().mean())
    with torch.no_grad():
        assert error(built(inputs)) < error(lossless_run)


def test_linear_on_higher_rank_inputs_and_chunking():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(10, 7)).eval()
    inputs = torch.randn(3, 4, 10)
    q = conv_layer("0", net[0], 1, 6)
    scales = calibrate_activations(net, ["0"], inputs)
    mapped = {"0": mapper("sme", sign="differential", packing="ou").map(q, Geometry(rows=8, cols=8, ou_rows=2,
                                                                                    cell_bits=2))}
    sim = sim_of(cell_bits=2, activation_bits=5, adc=UniformADC(UniformADC.Params(bits=8, round_to_levels=True)))
    outs = [StandaloneHost(StandaloneHost.Params(batch_rows=b)).build(net, mapped, sim, scales)(inputs)
            for b in (1, 5, 4096)]
    reference = digital_model(net, {"0": q}, 5, scales)(inputs)
    assert outs[0].shape == (3, 4, 7)
    assert all(torch.equal(o, reference) for o in outs)


def test_bad_inputs_raise_clear_errors(net_setup):
    net, _inputs, qs, scales = net_setup
    mapped = {"fc": mapper("sme").map(qs["fc"], Geometry(rows=16, cols=16, cell_bits=2))}
    with pytest.raises(ConflictError, match="mapped for 2-bit cells, but the cell model stores 1 bits"):
        StandaloneHost(StandaloneHost.Params()).build(net, mapped, sim_of(cell_bits=1), scales)
    with pytest.raises(ValueError, match="do not fit"):
        digital_model(net, {"features.2": qs["fc"]}, 8, scales)
    plan = CrossbarPlan(mapped["fc"], sim_of(cell_bits=2))
    with pytest.raises(ValueError, match=r"inputs must be \(rows, 1, 96\)"):
        plan.matmul(torch.zeros(2, 1, 95, dtype=torch.float64), torch.Generator())
    with pytest.raises(ValueError, match="conductance"):
        CrossbarPlan(mapped["fc"], sim_of(cell_bits=2), conductance=torch.zeros(1, 2, 3))
    if not torch.cuda.is_available():
        with pytest.raises(errors.ConfigError, match="cuda"):
            StandaloneHost(StandaloneHost.Params(device="cuda"))
        assert StandaloneHost(StandaloneHost.Params(device="auto")).device.type == "cpu"
    with pytest.raises(ValueError):
        StandaloneHost.Params(batch_rows=0)
    with pytest.raises(ValueError):
        StandaloneHost.Params(chunk_mib=0)


# --- every registered mapper and squeezer ------------------------------------------------------------------


@st.composite
def strategy_cases(draw):
    name = draw(st.sampled_from(REGISTRY.names("mapper")))
    sign = draw(st.sampled_from(SIGN_SCHEMES))
    rows = draw(st.sampled_from([8, 16, 32]))
    params = {"sign": sign, "isaac_sign": sign, "packing": draw(st.sampled_from(["tile", "column", "ou"])),
                  "weight_bits": draw(st.sampled_from([None, 12])), "cell_bits": draw(st.sampled_from([None, 2]))}
    geometry = Geometry(rows=rows, cols=64, ou_rows=draw(st.sampled_from([2, 4, 8])), cell_bits=draw(st.integers(1, 4)))
    squeezer = REGISTRY.get("squeezer", draw(st.sampled_from(REGISTRY.names("squeezer")))).factory
    fields = squeezer.Params.model_fields
    squeeze_params = {k: v for k, v in {"budget": draw(st.sampled_from([0.0, 0.3])), "threshold": draw(
        st.sampled_from([0, 4])), "reorder": draw(st.booleans())}.items() if k in fields}
    return name, params, geometry, squeezer(squeezer.Params(**squeeze_params))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategy_cases(), golden_cases())
def test_golden_rule_through_registered_mappers_and_squeezers(strategy, case):
    name, params, geometry, squeezer = strategy
    rng = np.random.default_rng(case["seed"])
    bits = min(case["bits"], 8)
    w_int, mask, x = random_integers(rng, {**case, "bits": bits})
    q = integer_layer(w_int, bits, mask)
    chosen = mapper(name, **params)
    mapped = squeezer.squeeze(chosen.map(q, geometry), chosen)
    cell_bits = mapped.placement.cell_bits
    sim = sim_of(adc=adc_of(case["adc"], mapped.placement, case["dac_bits"]), dac_bits=case["dac_bits"],
                 activation_bits=case["activation_bits"], cell_bits=cell_bits)
    y = crossbar_matmul(torch.as_tensor(x, dtype=torch.float64), mapped, sim, path=case["path"])
    assert torch.equal(y, exact(x, mapped.quantized.w_int))


def test_fewer_reads_simulate_faster_work():
    """The simulated work follows the placement: the plan holds exactly the reads that convert something."""
    rng = np.random.default_rng(0)
    w = np.where(rng.random((1, 128, 32)) < 0.1, rng.integers(-3, 4, (1, 128, 32)), 0)
    q = integer_layer(w, 8)
    geometry = Geometry(rows=32, cols=32, ou_rows=8)
    adc = NoisyADC(NoisyADC.Params(bits=6))
    dense = CrossbarPlan(mapper("bitplane").map(q, geometry), sim_of(adc=adc))
    sparse = CrossbarPlan(mapper("sme", packing="column").map(q, geometry), sim_of(adc=adc))
    assert sparse.reads < dense.reads
    assert sparse.reads == mapper("sme", packing="column").map(q, geometry).placement.reads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_host_matches_cpu_reference(net_setup):
    net, inputs, qs, scales = net_setup
    geometry = Geometry(rows=16, cols=16, ou_rows=4, cell_bits=2)
    mapped = {n: mapper("sme", sign="segment-offset", packing="ou").map(q, geometry) for n, q in qs.items()}
    host = StandaloneHost(StandaloneHost.Params(device="cuda"))
    assert host.device.type == "cuda"
    reference = digital_model(net, qs, 8, scales)(inputs)
    for adc in (None, UniformADC(UniformADC.Params(bits=10, round_to_levels=True))):
        out = host.build(net, mapped, sim_of(cell_bits=2, dac_bits=2, adc=adc), scales)(inputs)
        assert out.device == inputs.device and torch.equal(out, reference)
    noisy = sim_of(cell=MLCCell(MLCCell.Params(bits=2)), adc=NoisyADC(NoisyADC.Params(bits=6)), seed=9)
    assert torch.equal(host.build(net, mapped, noisy, scales)(inputs), host.build(net, mapped, noisy, scales)(inputs))
