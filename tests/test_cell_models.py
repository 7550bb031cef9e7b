import pytest
import sme_cell_models as cell_models
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sme_cell_models import PRESETS, IdealCell, MLCCell, SLCCell, reram
from sme_cell_models.reram import DEFAULT_PRESET, PRESET_SOURCES

from sme_plugin.plugins import registry_of


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def cells(bits, n=200_000, seed=0):
    levels = torch.randint(0, 1 << bits, (n,), generator=gen(seed)).to(torch.uint8)
    return levels, torch.ones(n, dtype=torch.bool)


def test_plugin_registers_cell_models():
    assert registry_of(cell_models).names("cell") == ["ideal", "mlc", "slc"]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(0, 2**31))
def test_ideal_cell_conducts_its_level_and_absent_cells_nothing(bits, seed):
    levels, _ = cells(bits, 500, seed)
    present = torch.rand(500, generator=gen(seed)) < 0.5
    g = IdealCell(IdealCell.Params(bits=bits)).program(levels, present, gen(seed))
    assert g.dtype == torch.float64
    assert torch.equal(g, torch.where(present, levels.double(), 0.0))


@pytest.mark.parametrize("cell", [SLCCell(SLCCell.Params(program_sigma=0, program_sigma_window=0, read_sigma=0)),
                                  MLCCell(MLCCell.Params(bits=3, program_sigma_window=0, on_off_ratio=20))])
def test_physical_cell_without_variation_is_the_level(cell):
    levels, present = cells(cell.bits, 1000)
    assert torch.allclose(cell.program(levels, present, gen()), levels.double(), atol=1e-12)


def test_programming_spread_follows_conductance():
    cell = MLCCell(MLCCell.Params(bits=2, on_off_ratio=10, program_sigma=0.1, program_sigma_window=0))
    levels, present = cells(2)
    g = cell.program(levels, present, gen())
    for level in range(4):  # a loop over the 4 levels of the check, not over cells
        sel = g[levels == level]
        nominal = cell.g_off + level
        assert float(sel.mean()) == pytest.approx(level, abs=0.01)
        assert float(sel.std()) == pytest.approx(0.1 * nominal, rel=0.05)  # off cells still vary


def test_window_spread_is_the_same_at_every_level():
    cell = MLCCell(MLCCell.Params(bits=3, on_off_ratio=1000, program_sigma=0, program_sigma_window=0.02))
    levels, present = cells(3, 400_000)
    g = cell.program(levels, present, gen(1))
    for level in range(1, 8):  # level 0 sits 0.007 above 0: clamped, checked below
        sel = g[levels == level]
        assert float(sel.mean()) == pytest.approx(level, abs=0.005)
        assert float(sel.std()) == pytest.approx(0.02 * 7, rel=0.03)
    assert float(g[levels == 0].min()) == pytest.approx(-cell.g_off)  # a conductance is never negative


def test_relative_and_window_spreads_add_in_quadrature():
    cell = SLCCell(SLCCell.Params(on_off_ratio=5, program_sigma=0.05, program_sigma_window=0.1))
    levels = torch.ones(200_000, dtype=torch.uint8)
    g = cell.program(levels, torch.ones_like(levels, dtype=torch.bool), gen(2))
    expected = ((0.05 * (cell.g_off + 1)) ** 2 + 0.1**2) ** 0.5
    assert float(g.std()) == pytest.approx(expected, rel=0.02)
    assert float(cell.spread(torch.tensor([1]))) == pytest.approx(expected)


def test_level_sigma_sets_each_level_spread():
    table = (0.05, 0.2, 0.3, 0.1)
    cell = MLCCell(MLCCell.Params(bits=2, on_off_ratio=4, level_sigma=table))
    levels, present = cells(2)
    g = cell.program(levels, present, gen(3))
    for level, sigma in enumerate(table):
        sel = g[levels == level]
        assert float(sel.mean()) == pytest.approx(level, abs=0.01)
        assert float(sel.std()) == pytest.approx(sigma, rel=0.04)
    assert cell.describe()["level_sigma"] == list(table)
    with pytest.raises(ValueError, match="one std per level"):
        MLCCell.Params(bits=3, level_sigma=table)
    with pytest.raises(ValueError, match="one std per level"):
        SLCCell.Params(level_sigma=table)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_programmed_statistics_match_each_preset(preset, bits):
    """Mean, spread and fault fractions of programmed cells follow the preset's parameters."""
    cell = SLCCell(SLCCell.Params(preset=preset)) if bits == 1 else MLCCell(MLCCell.Params(bits=bits, preset=preset))
    values = {**PRESETS[DEFAULT_PRESET], **PRESETS[preset]}
    assert cell.values == values and cell.read_noise == values["read_sigma"]
    top = (1 << bits) - 1
    assert cell.g_off == pytest.approx(top / (values["on_off_ratio"] - 1))
    assert cell.g_on / cell.g_off == pytest.approx(values["on_off_ratio"])
    levels = torch.full((300_000,), top, dtype=torch.uint8)  # top level: far from the clamp at 0
    g = cell.program(levels, torch.ones_like(levels, dtype=torch.bool), gen(4))
    stuck_off = (g.abs() < 1e-12)
    stuck_on = (g - top).abs() < 1e-12
    assert float(stuck_off.double().mean()) == pytest.approx(values["stuck_at_0"], abs=0.002)
    assert float(stuck_on.double().mean()) == pytest.approx(values["stuck_at_1"], abs=0.002)
    healthy = g[~stuck_off & ~stuck_on]
    sigma = ((values["program_sigma"] * cell.g_on) ** 2 + (values["program_sigma_window"] * top) ** 2) ** 0.5
    assert float(healthy.mean()) == pytest.approx(top, abs=0.01 * top)
    assert float(healthy.std()) == pytest.approx(sigma, rel=0.03)


def test_defaults_are_a_named_literature_preset():
    assert DEFAULT_PRESET in PRESETS and DEFAULT_PRESET in PRESET_SOURCES
    slc, mlc = SLCCell(SLCCell.Params()), MLCCell(MLCCell.Params())
    assert slc.values == mlc.values == PRESETS[DEFAULT_PRESET]
    assert slc.describe()["preset"] == mlc.describe()["preset"] == DEFAULT_PRESET
    assert "Nature" in slc.describe()["source"]
    # a real device spreads: the default cells are not ideal, and MLC levels are closer than SLC's
    assert slc.values["program_sigma"] > 0 or slc.values["program_sigma_window"] > 0
    assert slc.read_noise > 0
    assert float(mlc.spread(torch.tensor([1]))) == pytest.approx(3 * float(slc.spread(torch.tensor([1]))))


def test_presets_are_documented_with_their_sources():
    assert set(PRESET_SOURCES) == set(PRESETS)
    assert set(reram.PresetName.__args__) == set(PRESETS)
    for name, source in PRESET_SOURCES.items():
        assert name in reram.__doc__ and any(str(year) in source for year in range(2010, 2030))
    for citation in ("Nature 608", "DAC 2016", "Nature 577", "IEDM 2016", "1.75 %", "9.04 %", "99.8 %"):
        assert citation in reram.__doc__
    assert PRESETS["chen2015"] == dict(stuck_at_0=0.0175, stuck_at_1=0.0904)
    faulty = MLCCell(MLCCell.Params(preset="chen2015"))  # fault-only preset: the rest from the default
    assert faulty.values["on_off_ratio"] == PRESETS[DEFAULT_PRESET]["on_off_ratio"]
    assert faulty.describe()["source"].count("Nature 608") == 1 and "Computers" in faulty.describe()["source"]


def test_stuck_at_faults_hit_their_fraction():
    cell = MLCCell(MLCCell.Params(bits=2, program_sigma=0.0, stuck_at_0=0.1, stuck_at_1=0.2))
    levels = torch.full((100_000,), 1, dtype=torch.uint8)
    g = cell.program(levels, torch.ones_like(levels, dtype=torch.bool), gen())
    assert float((g.abs() < 1e-9).double().mean()) == pytest.approx(0.1, abs=0.01)
    assert float(((g - 3).abs() < 1e-9).double().mean()) == pytest.approx(0.2, abs=0.01)


def test_absent_cells_stay_zero_with_faults_and_variation():
    cell = SLCCell(SLCCell.Params(program_sigma=0.5, stuck_at_1=0.9))
    levels, _ = cells(1, 1000)
    present = torch.arange(1000) % 2 == 0
    g = cell.program(levels, present, gen())
    assert torch.all(g[~present] == 0) and torch.any(g[present] != levels[present].double())


def test_program_is_deterministic_for_a_seed():
    cell = SLCCell(SLCCell.Params(preset="grossi2016"))
    levels, present = cells(1, 1000)
    assert torch.equal(cell.program(levels, present, gen(7)), cell.program(levels, present, gen(7)))
    assert not torch.equal(cell.program(levels, present, gen(7)), cell.program(levels, present, gen(8)))


def test_presets_fill_unset_values_and_explicit_values_win():
    cell = MLCCell(MLCCell.Params(preset="grossi2016", read_sigma=0.05))
    assert cell.values == {**PRESETS["grossi2016"], "read_sigma": 0.05}
    assert cell.read_noise == 0.05
    assert SLCCell(SLCCell.Params(on_off_ratio=100)).values["on_off_ratio"] == 100
    described = cell.describe()
    assert described["model"] == "mlc" and described["preset"] == "grossi2016" and described["bits"] == 2
    assert "IEDM 2016" in described["source"]
    assert IdealCell(IdealCell.Params(bits=3)).describe() == {"model": "ideal", "bits": 3}
    assert IdealCell(IdealCell.Params()).read_noise == 0.0


@pytest.mark.parametrize("factory,kwargs", [
    (IdealCell, {"bits": 5}), (MLCCell, {"bits": 1}), (SLCCell, {"bits": 2}), (SLCCell, {"on_off_ratio": 1.0}),
    (SLCCell, {"preset": "nope"}), (SLCCell, {"program_sigma": -0.1}), (MLCCell, {"stuck_at_0": 1.5}),
    (SLCCell, {"on_off_ratio": float("nan")}), (SLCCell, {"on_off_ratio": float("inf")}),
    (SLCCell, {"program_sigma": float("nan")}), (MLCCell, {"program_sigma_window": float("inf")}),
    (SLCCell, {"read_sigma": float("nan")}), (SLCCell, {"stuck_at_1": float("nan")}),
    (SLCCell, {"level_sigma": (0.1, float("nan"))}), (SLCCell, {"level_sigma": (0.1, float("inf"))}),
    (SLCCell, {"level_sigma": (0.1, -0.1)}), (SLCCell, {"program_sigma": 1.5}), (SLCCell, {"read_sigma": 2.0}),
    (SLCCell, {"program_sigma_window": -0.01}), (SLCCell, {"on_off_ratio": 1e9}),
])
def test_bad_params_are_rejected(factory, kwargs):
    with pytest.raises(ValueError):
        factory.Params(**kwargs)


def test_bad_cells_are_rejected():
    with pytest.raises(ValueError, match="exceeds 1"):
        SLCCell(SLCCell.Params(stuck_at_0=0.6, stuck_at_1=0.6))
    with pytest.raises(ValueError, match="exceeds the 1-bit"):
        SLCCell(SLCCell.Params()).program(torch.tensor([2]), torch.tensor([True]), gen())
    with pytest.raises(ValueError, match="shape"):
        IdealCell(IdealCell.Params()).program(torch.tensor([1, 0]), torch.tensor([True]), gen())
