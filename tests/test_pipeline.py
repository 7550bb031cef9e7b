"""The whole pipeline on the digits model: ideal components reproduce the digital integer models exactly,
noisy components cost accuracy, and every reported count comes from the placements."""

import copy

import pytest

from sme_plugin.config import load_config
from sme_plugin.errors import ConflictError
from sme_plugin.pipeline import run
from sme_plugin.plugins import build_registry, plugin_manager

SMALL = {"dataset": {"name": "digits", "samples": 60, "calibration": 32}}
IDEAL = {"cell": {"name": "ideal"}, "adc": {"name": "ideal"}, "dac": {"name": "ideal", "bits": 1}}


def run_config(data: dict) -> dict:
    registry = build_registry(plugin_manager(load_entrypoints=False))
    return run(load_config({**SMALL, **data}, registry), registry)


MAPPINGS = [
    {"mapper": {"name": "sme", "packing": "ou", "sign": "segment-offset"}, "squeezer": {"name": "sme", "budget": 0.02}},
    {"mapper": {"name": "sme", "packing": "column", "sign": "differential"}, "squeezer": {"name": "row-compact"}},
    {"mapper": {"name": "sme", "packing": "tile", "sign": "offset"}, "squeezer": {"name": "tile-empty", "budget": 0.05}},
    {"mapper": {"name": "hybrid", "packing": "column"}, "squeezer": {"name": "none"}},
    {"mapper": {"name": "bitplane"}, "orchestrator": {"name": "none"}, "squeezer": {"name": "none"}},
    {"mapper": {"name": "isaac"}, "orchestrator": {"name": "none"}, "squeezer": {"name": "none"}},
]


@pytest.mark.parametrize("mapping", MAPPINGS, ids=lambda m: f"{m['mapper']['name']}-{m['squeezer']['name']}")
def test_ideal_components_reproduce_the_integer_models(mapping):
    report = run_config({**IDEAL, **mapping})
    acc = report["accuracy"]
    assert acc["sme"] == acc["quantized"] and acc["isaac"] == acc["quantizer_only"]
    for layer in report["layers"]:
        assert layer["output_error"] == {"sme": 0.0, "isaac": 0.0}
        assert layer["crossbars"]["sme"] == layer["costs"]["sme"]["crossbars"]


def test_noisy_components_cost_output_error():
    report = run_config({"cell": {"name": "slc", "preset": "grossi2016"}, "adc": {"name": "noisy", "bits": "auto"}})
    errors = [layer["output_error"]["sme"] for layer in report["layers"]]
    assert all(e > 0 for e in errors)
    assert all(layer["output_error"]["isaac"] > 0 for layer in report["layers"])


def test_headline_costs_sit_next_to_the_crossbars():
    report = run_config({"dataset": None})
    for label in ("sme", "isaac", "isaac16", "bitplane"):
        cost = report["costs"][label]
        assert cost["crossbars"] == report["totals"]["crossbars"][label]
        assert cost["energy_uj"] == pytest.approx(cost["energy_analog_uj"] + cost["energy_digital_uj"])
        assert cost["latency_us"] > 0 and cost["area_mm2"] > 0 and cost["adc_conversions"] > 0


def test_finetuning_within_the_bit_patterns_keeps_the_golden_rule():
    report = run_config({**IDEAL, "orchestrator": {"name": "window", "budget": 0.3},
                         "finetune": {"method": "ste", "epochs": 1, "data": "distill", "batch_size": 64}})
    acc = report["accuracy"]
    assert report["finetune"]["params"]["method"] == "ste" and len(report["finetune"]["history"]) == 1
    assert acc["sme"] == acc["quantized"] and acc["float_finetuned"] is not None
    assert all(layer["output_error"]["sme"] == 0.0 for layer in report["layers"])


@pytest.mark.parametrize("data, message", [
    ({"dataset": None, "finetune": {"data": "distill"}}, "finetune: fine-tuning needs data"),
])
def test_finetuning_without_usable_data_is_a_conflict(data, message):
    with pytest.raises(ConflictError, match=message):
        run_config(data)


def test_a_tiny_output_error_is_not_rounded_away():
    """One wrong unit in a large output is a small relative error, never a reported 0 (6 significant digits)."""
    import torch

    from sme_plugin.pipeline import output_errors

    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(64, 32)).double()
    simulated = copy.deepcopy(reference)
    with torch.no_grad():
        simulated[0].bias[3] += 1e-8 * float(reference[0].weight.abs().sum())
    errors = output_errors(simulated, reference, ["0"], torch.randn(256, 64, dtype=torch.float64))
    assert 0 < errors["0"] < 5e-7  # round(x, 6) would report 0.0
    assert output_errors(copy.deepcopy(reference), reference, ["0"], torch.randn(8, 64, dtype=torch.float64)) == {"0": 0.0}
