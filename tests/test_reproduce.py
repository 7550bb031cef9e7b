"""``sme reproduce``: the paper's table, end to end on the digits model (the reduced run CI affords), and
the rules that pick its operating point."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sme_plugin.cli import main
from sme_plugin.config import load_config
from sme_plugin.pipeline import run
from sme_plugin.plugins import build_registry, plugin_manager
from sme_plugin.reproduce import (
    BLIND_BUDGET,
    README_END,
    README_START,
    Plan,
    Reproduction,
    operating_point,
    point_config,
    readme_with,
)

REGISTRY = build_registry(plugin_manager(load_entrypoints=False))


def point(budget, reduction, accuracy, finetuned=False):
    return {"budget": budget, "reduction_vs_isaac16": reduction, "accuracy": accuracy, "finetuned": finetuned}


def test_operating_point_is_the_largest_reduction_within_the_tolerance():
    points = [point(0.0, 1.1, 90.0), point(0.1, 1.6, 89.8), point(0.2, 2.0, 89.6), point(0.3, 2.0, 89.75)]
    assert operating_point(points, 90.0, 0.3)["budget"] == 0.3  # 2.0x within 0.3 points: the one that keeps 89.75
    assert operating_point(points, 90.0, 0.25)["budget"] == 0.3
    assert operating_point(points, 90.0, 0.2)["budget"] == 0.1
    assert operating_point(points, 95.0, 0.3)["budget"] == 0.0  # none within: the most accurate
    blind = [point(b, r, None) for b, r in ((0.0, 1.0), (0.05, 1.5), (0.3, 3.0))]
    assert operating_point(blind, None, 0.3)["budget"] == 0.05 == min((0.0, 0.05, 0.3), key=lambda b: abs(b - BLIND_BUDGET))


def test_readme_section_is_replaced_and_a_readme_without_markers_is_refused():
    text = f"# T\nintro\n{README_START}\nold table\n{README_END}\ntail\n"
    new = readme_with(text, "new table\n", "README.md")
    assert new == f"# T\nintro\n{README_START}\nnew table\n{README_END}\ntail\n"
    with pytest.raises(Exception, match="no results section"):
        readme_with("# T\n", "x", "README.md")


@pytest.mark.parametrize("plan, message", [
    (Plan(models=("nope",)), "unknown model 'nope'"),
    (Plan(models=("digits",), budgets=(1.5,)), "not a relative error"),
    (Plan(models=("digits",), budgets=()), "at least one"),
    (Plan(models=("digits",), tolerance=-1), "--tolerance"),
])
def test_bad_plans_are_refused_before_any_run(plan, message):
    with pytest.raises(Exception, match=message):
        Reproduction(plan, REGISTRY)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """The reduced run: digits, 300 test samples, two budgets, one fine-tuned, through the CLI."""
    out = tmp_path_factory.mktemp("reproduce") / "out"
    readme = out.parent / "README.md"
    readme.write_text(f"# Project\n\n{README_START}\nstale\n{README_END}\nend\n", encoding="utf-8")
    code = main(["reproduce", "--models", "digits", "--samples", "300", "--budgets", "0", "0.3",
                 "--finetune-budgets", "0.3", "--output", str(out), "--readme", str(readme), "--no-progress"])
    assert code == 0
    return json.loads((out / "reproduce.json").read_text()), out, readme


def test_reproduce_writes_the_table_plots_and_readme(reproduced):
    document, out, readme = reproduced
    assert sorted(p.name for p in out.iterdir()) == ["digits.png", "reproduce.json", "reproduce.md", "tradeoff.png"]
    assert (out / "tradeoff.png").read_bytes().startswith(b"\x89PNG")
    entry = document["models"]["digits"]
    assert entry["weights"] == "trained" and entry["weights_trained"]
    assert set(entry["crossbars"]) == {"isaac16", "isaac", "bitplane", "sme_slice", "sme_orchestrated", "sme",
                                       "sme_finetuned"}
    assert set(entry["accuracy"]) == {"float", "int8", "sme", "sme_finetuned"}
    assert entry["data"]["samples"] == 300
    assert [(p["budget"], p["finetuned"]) for p in entry["curve"]] == [(0.0, False), (0.3, False), (0.3, True)]
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# Project\n\n") and text.endswith(f"{README_END}\nend\n") and "stale" not in text
    assert "| digits (trained) |" in text and "| digits (trained) |" in (out / "reproduce.md").read_text()
    assert "](out/tradeoff.png)" in text and "](tradeoff.png)" in (out / "reproduce.md").read_text()  # figures linked


def test_reproduce_figures_are_the_runs_they_name(reproduced):
    """Every crossbar count and accuracy is what ``sme run`` gives for the same config; the steps only
    remove crossbars; the reductions are the ratios of the counts."""
    document, _, _ = reproduced
    entry, plan = document["models"]["digits"], Plan(models=("digits",), samples=300)
    c, r = entry["crossbars"], entry["reductions"]
    assert c["sme"] <= c["sme_orchestrated"] <= c["sme_slice"] <= c["isaac"]
    for base in ("isaac16", "isaac", "bitplane"):
        assert r[f"vs_{base}"] == pytest.approx(c[base] / c["sme"], rel=1e-3)
    budget = entry["operating_point"]["budget"]
    report = run(load_config(point_config(plan.studies["digits"], plan, budget), REGISTRY), REGISTRY)
    assert report["totals"]["crossbars"]["sme"] == c["sme"]
    assert report["totals"]["crossbars"]["isaac16"] == c["isaac16"]
    assert report["accuracy"]["sme"] == entry["accuracy"]["sme"]
    assert report["accuracy"]["quantizer_only"] == entry["accuracy"]["int8"]
    # ideal devices: the simulated crossbars reproduce the digital integer model exactly
    assert report["accuracy"]["sme"] == report["accuracy"]["quantized"]
    lossless = next(p for p in entry["curve"] if p["budget"] == 0.0)
    assert lossless["weight_error"] == 0 and lossless["accuracy"] == entry["accuracy"]["int8"]


def test_reproduce_usage_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    for args in (["--models", "nope"], ["--budgets", "2"], ["--samples", "0"],
                 ["--models", "digits", "--readme", str(tmp_path / "missing.md"), "--budgets", "0",
                  "--finetune-budgets"]):
        code = main(["reproduce", "--output", str(out), "--no-progress", *args])
        err = capsys.readouterr().err
        assert code != 0 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert not out.exists()


def test_the_projects_readme_has_the_results_section():
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert readme_with(text, "x\n", "README.md").count("x\n") >= 1


def test_models_reproduced_in_processes_match_one_process():
    plan = Plan(models=("digits", "mobilenet_v2"), budgets=(0.1,), finetune_budgets=(), samples=100)
    parallel, _ = Reproduction(plan, REGISTRY).run(jobs=2)
    serial, _ = Reproduction(plan, REGISTRY).run(jobs=1)
    assert list(parallel["models"]) == ["digits", "mobilenet_v2"]
    for name in plan.models:
        for key in ("crossbars", "reductions", "curve", "accuracy"):
            assert parallel["models"][name].get(key) == serial["models"][name].get(key), (name, key)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="child processes read from /proc (Linux)")
def test_sigterm_stops_the_models_running_in_processes(tmp_path):
    """SIGTERM while models run in worker processes: one line, exit 143, the workers stopped at once (not
    after their models finish), nothing written."""
    out = tmp_path / "new" / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sme_plugin.cli", "reproduce", "--models", "resnet50", "mobilenet_v2",
                             "--jobs", "2", "--output", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})

    def children():
        found = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            except OSError:
                continue
            if fields.get("PPid", "").strip() == str(proc.pid):
                found.append(int(status.parent.name))
        return found

    deadline = time.monotonic() + 60
    while len(children()) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    workers = children()
    assert len(workers) >= 2, proc.communicate()
    time.sleep(3)  # the workers are building their models
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)  # the models take minutes: the workers must be stopped, not awaited
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated" in err
    assert not (tmp_path / "new").exists()
    time.sleep(0.5)

    def running(pid):  # neither gone nor a zombie
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    assert not [pid for pid in workers if running(pid)]
