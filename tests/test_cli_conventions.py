"""CLI conventions: version, logging, exit codes, --set, plugins/config listings, validate, errors,
signals, strict and complete reports, plugin contracts and switches."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from sme_plugin import __version__, hookimpl
from sme_plugin.cli import main
from sme_plugin.errors import EXIT_CODES, PluginError
from sme_plugin.params import StrategyParams
from sme_plugin.plugins import build_registry, plugin_manager

FAST = {"dataset": None, "orchestrator": {"name": "none"}}


def write(tmp_path, data, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def sme(*args, env=None, timeout=300, **kw):
    """Run the installed CLI in a fresh process."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "sme_plugin.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, **kw)


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sme {__version__}"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("exit codes", "resnet50", "mobilenet_v2", "config --defaults", "plugins --params", "SME_DEBUG"):
        assert word in out
    for code in EXIT_CODES:
        assert f"{code:>3}  " in out


def test_usage_errors_exit_2(capsys):
    assert main(["run", "--bogus"]) == 2
    assert main(["run", "--set", "nonsense"]) == 2
    assert "--set" in capsys.readouterr().err


def test_set_overrides_and_config_prints_them(capsys):
    assert main(["config", "--set", "mapper.rows=64", "--set", "seed=7", "--set", "dataset=null",
                 "--set", "cell.name=mlc"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["mapper"]["rows"] == 64 and config["seed"] == 7 and config["dataset"] is None
    assert config["cell"]["name"] == "mlc"
    assert main(["config", "--defaults"]) == 0
    assert "model: {name: digits}" in capsys.readouterr().out


def test_plugins_json_and_params(capsys):
    assert main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    names = {(row["kind"], row["name"]) for row in listing["strategies"]}
    assert ("squeezer", "tile-empty") in names and ("host", "aihwkit") in names
    assert main(["plugins", "--params", "tile-empty"]) == 0
    out = capsys.readouterr().out
    assert "budget" in out and "threshold" in out
    assert main(["plugins", "--params", "no-such-thing"]) == 2


@pytest.mark.parametrize("data, expected", [
    ({"quantizer": {"bits": 2}, "orchestrator": {"name": "kbits", "k": 2}}, "error: orchestrator: "),
    ({"mapper": {"name": "sme", "cols": 4}}, "error: mapper (baseline isaac): "),
    ({"model": {"name": "digits", "weights": "/nonexistent/w.pt"}}, "error: model.weights: "),
    ({"orchestrator": {"name": "window", "error": "output"}}, "error: orchestrator.error: output needs a dataset"),
])
def test_validate_rejects_what_run_rejects(tmp_path, capsys, data, expected):
    code = main(["validate", write(tmp_path, {**data, "dataset": None})])
    err = capsys.readouterr().err
    assert code in (3, 4) and err.startswith(expected), err


def test_validate_and_plugins_need_no_torch_plotting_sklearn_or_scipy():
    code = ("import sys; from sme_plugin.cli import main; assert main(['validate']) == 0; "
            "assert main(['plugins']) == 0; "
            "print(sorted(m for m in ('matplotlib', 'scipy', 'sklearn', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_internal_error_is_one_line_unless_debug(tmp_path, capsys, monkeypatch):
    from sme_plugin import pipeline

    def broken(*args, **kwargs):
        raise ValueError("x" * 5000)

    monkeypatch.setattr(pipeline, "run", broken)
    out = tmp_path / "out"
    assert main(["run", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "internal error: ValueError" in err and "--debug" in err and "Traceback" not in err
    assert len(err) < 800 and not out.exists()
    assert main(["run", "--debug", "--output", str(out)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_is_clean(tmp_path, capsys, monkeypatch):
    from sme_plugin import pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run", interrupted)
    out = tmp_path / "new" / "out"
    assert main(["run", "--output", str(out)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted" in err
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_leaves_no_output_directory(tmp_path):
    out = tmp_path / "new" / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sme_plugin.cli", "run", "--model", "resnet50", "--output", str(out),
                             "--set", "orchestrator.name=none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "SME_HEARTBEAT_S": "0.2"})
    deadline = time.monotonic() + 120
    while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert out.exists(), proc.communicate()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated" in err
    assert "still running" in err  # the heartbeat: stdout is not a terminal
    assert not (tmp_path / "new").exists()


def test_report_is_strict_complete_and_replaced_as_a_set(tmp_path, capsys):
    out = tmp_path / "out"
    data = {**FAST, "mapper": {"name": "hybrid", "cols": 8, "sign": "differential", "packing": "ou"},
            "orchestrator": {"name": "window", "budget": 0.01, "scope": "model"}}
    assert main(["run", write(tmp_path, data), "--output", str(out), "-q"]) == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert report["config"]["output"] == str(out)  # --output recorded, not the config's value
    md = (out / "report.md").read_text()
    for word in ("## Configuration", "cell", "adc", "dac", "host", "budgets", "orchestrator.budget=0.01", "seed",
                 "## Timings"):
        assert word in md, word
    reduction = report["totals"]["reduction"]
    assert f"{reduction:.2f}x" in md and f"{reduction:.2f}x" in stdout
    # a directory where summary.png should go: nothing is replaced, the old report stays whole
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "summary.png").unlink()
    (out / "summary.png").mkdir()
    assert main(["run", write(tmp_path, {**data, "seed": 1}), "--output", str(out)]) == 5
    assert (out / "report.json").read_bytes() == before["report.json"]
    assert (out / "report.md").read_bytes() == before["report.md"]
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "summary.png"]


def test_non_finite_report_values_are_refused():
    from sme_plugin.report import to_json

    with pytest.raises(ValueError, match=r"totals.reduction = nan"):
        to_json({"totals": {"reduction": float("nan")}})


def test_plot_stays_legible_for_many_layers():
    import io

    from matplotlib import image

    from sme_plugin.plots import summary_png

    layers = [{"name": f"layer{i}.conv", "weights": 100, "crossbars": {"sme": i + 1, "isaac": 2 * i + 1},
               "bit_sparsity": [0.5] * 7, "bit_sparsity_before": [0.4] * 7, "stored_sparsity": [0.6] * (8 - i % 2)}
              for i in range(60)]
    report = {"layers": layers, "totals": {"crossbars": {"sme": 1, "isaac": 2}}, "model": {"name": "big"}}
    png = image.imread(io.BytesIO(summary_png(report)))
    height, width = png.shape[:2]
    assert height >= 60 * 0.28 * 100 and width <= 1000  # one readable row per layer, not a 2640 px strip


class NoParams:
    def squeeze(self, mapped, mapper):
        return mapped


class NoSqueeze:
    class Params(StrategyParams):
        pass


@pytest.mark.parametrize("factory, expected", [(NoParams, "has no Params"), (NoSqueeze, "lacks the method")])
def test_factories_are_checked_against_their_contract(factory, expected):
    class Bad:
        @hookimpl
        def sme_register_squeezers(self, register):
            register("bad", factory)

    with pytest.raises(PluginError, match=expected) as info:
        build_registry(plugin_manager(load_entrypoints=False, extra_plugins=[Bad()]))
    assert "plugin " in str(info.value) and "'bad'" in str(info.value)


def test_disable_single_plugins(monkeypatch):
    monkeypatch.setenv("SME_DISABLE_PLUGINS", "adapters, sme_plugin.datasets")
    registry = build_registry(plugin_manager(load_entrypoints=False))
    assert "aihwkit" not in registry.names("host") and registry.names("dataset") == []
    assert "standalone" in registry.names("host")


def test_config_plugins_key_loads_inline_plugin_modules(tmp_path, capsys, write_squeezer_plugin):
    write_squeezer_plugin("my_sme_plugin", "keep-inline")
    path = write(tmp_path, {"plugins": ["my_sme_plugin"], "squeezer": {"name": "keep-inline"}, **FAST})
    assert main(["validate", path]) == 0
    assert main(["run", path, "--output", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["config"]["plugins"] == ["my_sme_plugin"]
    capsys.readouterr()
    assert main(["validate", write(tmp_path, {"plugins": ["no_such_module_xyz"]}, "bad.yaml")]) == 6
    assert "cannot import 'no_such_module_xyz'" in capsys.readouterr().err


def test_verbose_shows_model_logs(tmp_path):
    done = sme("run", "-v", "--output", str(tmp_path / "out"), "--set", "dataset.samples=30",
               "--set", "orchestrator.name=none", env={"SME_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    assert "digits model: trained" in done.stderr and "digits model" not in done.stdout
    assert "reduction vs ISAAC" in done.stdout


def test_model_flag_warns_about_dropped_weights(tmp_path, capsys):
    path = write(tmp_path, {"model": {"name": "digits", "weights": "/x/digits.pt"}})
    assert main(["config", path, "--model", "mobilenet_v2"]) == 0
    assert "weights: /x/digits.pt are not used" in capsys.readouterr().err
