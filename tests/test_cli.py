"""End to end through the command line: the embedded default, error handling, plugins from YAML."""

import json

import pytest
import torch
import yaml

from sme_plugin import hookimpl
from sme_plugin.cli import main
from sme_plugin.models import DigitsModel
from sme_plugin.params import StrategyParams

FAST = {"dataset": {"name": "digits", "samples": 120}}


def write_config(tmp_path, data, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def run_cli(tmp_path, data=None, *extra):
    out = tmp_path / "out"
    args = ["run", "--output", str(out), "--no-progress", *extra]
    if data is not None:
        args.insert(1, write_config(tmp_path, data))
    assert main(args) == 0
    return json.loads((out / "report.json").read_text()), out


def test_default_pipeline_saves_crossbars_and_keeps_accuracy(tmp_path):
    report, out = run_cli(tmp_path, FAST)
    totals, acc = report["totals"], report["accuracy"]
    assert report["model"] == {**report["model"], "name": "digits", "weights": "trained"}
    assert totals["crossbars"]["baseline"] == totals["crossbars"]["isaac"]
    assert totals["reduction"] == pytest.approx(totals["crossbars"]["baseline"] / totals["crossbars"]["sme"], rel=1e-3)
    assert totals["reduction"] > 1
    assert {"vs_isaac", "vs_isaac16", "vs_bitplane"} <= set(totals["reductions"])
    assert acc["samples"] == 120 and abs(acc["sme"] - acc["float"]) <= 2.0
    layer = report["layers"][0]
    for key in ("name", "rows", "cols", "weights", "crossbars", "adc_bits", "bit_sparsity"):
        assert key in layer
    assert set(layer["crossbars"]) == {"sme", "isaac", "isaac16", "bitplane"}
    assert len(layer["bit_sparsity"]) == 7
    assert totals["weights"] == sum(lay["weights"] for lay in report["layers"])
    assert report["model"]["batchnorm_unfolded"] == []  # the digits CNN's BatchNorms all fold
    assert {"area_mm2", "energy_uj", "latency_us"} <= set(report["costs"]["sme"])
    assert "# SME report" in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "summary.png"]
    assert (out / "summary.png").read_bytes().startswith(b"\x89PNG")
    assert len(layer["stored_sparsity"]) == 8  # segment-offset stores 8 single-bit planes
    assert (out / "report.json").stat().st_mode & 0o044  # readable by others (umask permitting), unlike mkstemp's 0600


@pytest.mark.parametrize(
    "mapping",
    [
        {"mapper": {"name": "sme", "packing": "column", "sign": "segment-offset"}},
        {"mapper": {"name": "sme", "packing": "ou", "sign": "differential"}, "squeezer": {"name": "row-compact", "reorder": True}},
        {"mapper": {"name": "hybrid", "packing": "tile"}, "squeezer": {"name": "tile-empty", "budget": 0.05}},
    ],
)
def test_ideal_cell_and_adc_reproduce_the_digital_model(tmp_path, mapping):
    data = {**FAST, **mapping, "cell": {"name": "ideal"}, "adc": {"name": "ideal"}}
    report, _ = run_cli(tmp_path, data)
    assert report["accuracy"]["sme"] == report["accuracy"]["quantized"]


class KeepSqueezer:
    """A third-party squeezer: leaves the mapping as it is and counts its calls."""

    calls = 0

    class Params(StrategyParams):
        note: str = "kept"

    def __init__(self, params):
        self.params = params

    def squeeze(self, mapped, mapper):
        KeepSqueezer.calls += 1
        return mapped


class ThirdParty:
    @hookimpl
    def sme_register_squeezers(self, register):
        register("keep", KeepSqueezer)

    @hookimpl
    def sme_report_sections(self, report):
        return [("Third party", f"{len(report['layers'])} layers seen")]


def test_third_party_squeezer_selected_from_yaml(tmp_path, monkeypatch):
    from sme_plugin import plugins

    real = plugins.plugin_manager
    monkeypatch.setattr(plugins, "plugin_manager",
                        lambda **kw: real(load_entrypoints=False, extra_plugins=[ThirdParty()], **kw))
    data = {"dataset": None, "squeezer": {"name": "keep", "note": "from yaml"}}
    report, out = run_cli(tmp_path, data)
    assert KeepSqueezer.calls == len(report["layers"])
    assert report["mappings"]["sme"]["squeezer"] == {"name": "keep", "note": "from yaml"}
    assert "## Third party" in (out / "report.md").read_text()
    assert report["accuracy"]["sme"] is None and "no dataset" in report["accuracy"]["skipped"]


def test_mobilenet_v2_counts_per_layer(tmp_path):
    report, _ = run_cli(tmp_path, {"orchestrator": {"name": "none"}, "squeezer": {"name": "none"}}, "--model", "mobilenet_v2")
    assert report["model"]["weights"] == "random" and report["accuracy"]["dataset"] is None
    assert len(report["layers"]) == 53
    assert all({"sme", "isaac", "isaac16", "bitplane"} == set(lay["crossbars"]) for lay in report["layers"])
    # dense ISAAC, 8-bit offset on SLC: 8 adjacent columns per weight, 16 weights per 128-column row
    assert report["totals"]["crossbars"]["isaac"] == 2526


def fail(capsys, args, code=3):
    assert main(args) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_bad_config_is_one_line_and_writes_nothing(tmp_path, capsys):
    path = write_config(tmp_path, {"mapper": {"name": "sme", "packing": "colum"}})
    err = fail(capsys, ["run", path, "--output", str(tmp_path / "out")])
    assert err.count("\n") == 1 and "mapper.packing" in err and "did you mean 'column'" in err
    assert not (tmp_path / "out").exists()
    assert main(["validate", write_config(tmp_path, {"quantizer": {"bits": 6}}, "ok.yaml")]) == 0


def test_nan_weights_are_rejected_before_writing(tmp_path, capsys):
    state = DigitsModel(DigitsModel.Params()).build().module.state_dict()
    state["conv2.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    err = fail(capsys, ["run", write_config(tmp_path, {"model": {"name": "digits", "weights": str(tmp_path / "nan.pt")}}),
                        "--output", str(tmp_path / "out")], code=4)
    assert "conv2.weight" in err and "NaN" in err
    assert not (tmp_path / "out" / "report.json").exists()


def test_checkpoint_of_another_architecture_is_rejected(tmp_path, capsys):
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    err = fail(capsys, ["run", "--model", "resnet50", "--output", str(tmp_path / "out"),
                        write_config(tmp_path, {"model": {"name": "resnet50", "weights": str(tmp_path / "other.pt")}})], code=4)
    assert "other.pt" in err


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    err = fail(capsys, ["run", "--output", str(blocker / "out")], code=5)
    assert "output directory" in err


def test_plugins_lists_every_kind(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for word in ("quantizer", "window", "tile-empty", "standalone", "aihwkit", "cell_models", "kmeans"):
        assert word in out


def test_dataset_that_does_not_fit_the_model(tmp_path, capsys):
    data = {"model": {"name": "mobilenet_v2"}, "dataset": {"name": "digits"}}
    err = fail(capsys, ["run", write_config(tmp_path, data), "--output", str(tmp_path / "out")])
    assert "dataset.name: 'digits' gives samples of shape (1, 8, 8)" in err and "dataset: null" in err


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"mapper": {"name": "sme", "cols": 4}}, "mapper (baseline isaac): "),
        ({"mapper": {"name": "isaac", "weight_bits": 4}}, "mapper: isaac weight_bits=4"),
        ({"quantizer": {"bits": 2}, "orchestrator": {"name": "kbits", "k": 2}}, "orchestrator: kbits: k=2"),
    ],
)
def test_settings_that_cannot_work_together(tmp_path, capsys, data, expected):
    out = tmp_path / "new" / "out"
    err = fail(capsys, ["run", write_config(tmp_path, {**data, "dataset": None}), "--output", str(out)])
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1
    assert not (tmp_path / "new").exists()  # the directories the failed run created are gone again


def test_model_flag_keeps_the_dataset_settings_of_that_model(tmp_path):
    report, _ = run_cli(tmp_path, {"dataset": {"name": "digits", "samples": 60}, "orchestrator": {"name": "none"}},
                        "--model", "digits")
    assert report["accuracy"]["samples"] == 60


def test_model_flag_keeps_a_dataset_chosen_with_set(tmp_path):
    """``--model M --set dataset.name=D``: the dataset the user set wins over M's own (or none)."""
    from sme_plugin.cli import config_data, _parser
    from sme_plugin.plugins import build_registry, plugin_manager

    registry = build_registry(plugin_manager(load_entrypoints=False))
    args = _parser().parse_args(["run", "--model", "inception_v3", "--set", "dataset.name=photos"])
    assert config_data(args, registry)["dataset"] == {"name": "photos"}
    args = _parser().parse_args(["run", "--model", "inception_v3"])
    assert config_data(args, registry)["dataset"] is None


def test_model_flag_with_a_dataset_parameter_sets_it_on_the_models_own_dataset():
    from sme_plugin.cli import config_data, _parser
    from sme_plugin.errors import UsageError
    from sme_plugin.plugins import build_registry, plugin_manager

    registry = build_registry(plugin_manager(load_entrypoints=False))
    args = _parser().parse_args(["run", "--model", "digits", "--set", "dataset.samples=30"])
    assert config_data(args, registry)["dataset"] == {"name": "digits", "samples": 30}
    args = _parser().parse_args(["run", "--model", "inception_v3", "--set", "dataset.samples=30"])
    with pytest.raises(UsageError, match="has no dataset of its own"):
        config_data(args, registry)
