import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cell_models
from cell_models import PRESETS, IdealCell, MLCCell, SLCCell
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


@pytest.mark.parametrize("cell", [SLCCell(SLCCell.Params(program_sigma=0, read_sigma=0)),
                                  MLCCell(MLCCell.Params(bits=3, program_sigma=0, on_off_ratio=20))])
def test_physical_cell_without_variation_is_the_level(cell):
    levels, present = cells(cell.bits, 1000)
    assert torch.allclose(cell.program(levels, present, gen()), levels.double(), atol=1e-12)


def test_programming_spread_follows_conductance():
    cell = MLCCell(MLCCell.Params(bits=2, on_off_ratio=10, program_sigma=0.1))
    levels, present = cells(2)
    g = cell.program(levels, present, gen())
    for level in range(4):  # a loop over the 4 levels of the check, not over cells
        sel = g[levels == level]
        nominal = cell.g_off + level
        assert float(sel.mean()) == pytest.approx(level, abs=0.01)
        assert float(sel.std()) == pytest.approx(0.1 * nominal, rel=0.05)  # off cells still vary


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
    cell = MLCCell(MLCCell.Params(preset="wan2022", read_sigma=0.05))
    assert cell.values == {**PRESETS["wan2022"], "read_sigma": 0.05}
    assert cell.read_noise == 0.05
    assert SLCCell(SLCCell.Params()).values["on_off_ratio"] == 100
    assert MLCCell(MLCCell.Params()).values["on_off_ratio"] == 50
    described = cell.describe()
    assert described["model"] == "mlc" and described["preset"] == "wan2022" and described["bits"] == 2
    assert IdealCell(IdealCell.Params(bits=3)).describe() == {"model": "ideal", "bits": 3}
    assert IdealCell(IdealCell.Params()).read_noise == 0.0


@pytest.mark.parametrize("factory,kwargs", [
    (IdealCell, {"bits": 5}), (MLCCell, {"bits": 1}), (SLCCell, {"bits": 2}), (SLCCell, {"on_off_ratio": 1.0}),
    (SLCCell, {"preset": "nope"}), (SLCCell, {"program_sigma": -0.1}), (MLCCell, {"stuck_at_0": 1.5}),
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
