"""``sme reproduce``: the paper's table (crossbars saved at an accuracy cost) on the models that ship offline.

Per model, every figure comes from :func:`sme_plugin.pipeline.run` on one design point (:data:`DESIGN`:
8-bit per-channel weights, SLC 128x128 crossbars, 16-row operation units, per-segment offsets) with ideal
cells, ADC and DAC, so the accuracies measure what orchestration and squeeze-out cost, not device noise
(``sme run`` simulates that). Runs per model:

- ``slice``: SME's slice/splice mapping alone (no orchestration, no squeeze-out); its report also holds
  the baselines ``isaac16`` (ISAAC's own design point: 16-bit weights on 2-bit cells), ``isaac`` (the
  same weight width on the same cells) and ``bitplane`` (dense bit planes);
- the trade-off curve: the window orchestrator + squeeze-out at each error budget (``error: output``,
  the relative output error on calibration inputs, where the model has data; the relative weight error
  otherwise, or where the study's ``error`` says so), post-training and, at the fine-tuning budgets, after fine-tuning within the orchestrated
  bit patterns (STE: labelled training data where the dataset has it, else distillation from the float
  model on its calibration inputs);
- the operating point: the curve point with the largest reduction against ``isaac16`` whose accuracy
  stays within ``tolerance`` points of the INT8 model (``int8`` = the quantizer's weights), or, for a
  model without data, the budget nearest :data:`BLIND_BUDGET`; one more run there without squeeze-out
  gives ``sme_orchestrated``.

Models without a dataset (random weights) get crossbars and costs only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from .errors import UsageError

log = logging.getLogger(__name__)

#: the hardware design point every run shares (config sections; ideal devices: see the module docstring).
DESIGN = {
    "quantizer": {"name": "uniform", "bits": 8, "granularity": "channel"},
    "mapper": {"name": "sme", "packing": "ou", "sign": "segment-offset", "rows": 128, "cols": 128, "ou_rows": 16},
    "cell": {"name": "ideal", "bits": 1},
    "adc": {"name": "ideal"},
    "dac": {"name": "ideal", "bits": 1},
    "activations": {"bits": 8},
}
#: the window orchestrator's damping in output-error mode: few calibration photos leave most input
#: directions unexcited; 0.1 keeps them from being free (mobilenet_v2_keras at budget 0.01: 1,419 crossbars
#: at 77.8 % agreement against 1,377 at 66.7 % undamped).
OUTPUT_DAMPING = 0.1
#: baseline mapping labels of the table, in order.
BASELINES = ("isaac16", "isaac", "bitplane")
#: fine-tuning within the orchestrated bit patterns: labelled data / distillation (few photos, large models).
#: Distillation on 4 calibration photos is 10 steps: at lr 1e-4 it keeps the orchestrated accuracy
#: (EfficientNet-Lite0 at budget 0.1: 81.25 % at 0 and 10 epochs), at 1e-3 (3e-4 on mobilenet_v2_keras) it
#: overfits the 4 photos and loses the others (6.25 %; 83.3 -> 61.1 %).
FINETUNE_TRAIN = {"method": "ste", "data": "train", "epochs": 2, "lr": 1e-4, "batch_size": 64}
FINETUNE_DISTILL = {"method": "ste", "data": "distill", "epochs": 10, "lr": 1e-4, "batch_size": 8}


#: error budgets of the curve: small nets tolerate large per-layer errors, deep ImageNet nets small ones.
SMALL_BUDGETS, DEEP_BUDGETS = (0.0, 0.05, 0.1, 0.2, 0.3), (0.0, 0.002, 0.005, 0.01, 0.02, 0.05)


@dataclass(frozen=True)
class Study:
    """How one model is reproduced: its dataset section (None: crossbars only), fine-tuning section, the
    error budgets of its curve and those also fine-tuned (unless the plan gives its own)."""

    model: str
    dataset: dict | None
    finetune: dict | None = None
    budgets: tuple[float, ...] = SMALL_BUDGETS
    finetune_budgets: tuple[float, ...] = (0.2, 0.3)
    error: str = "output"  # what the budget bounds where there is data ("weight" without)


STUDIES = {
    "digits": Study("digits", {"name": "digits"}, FINETUNE_TRAIN),
    "fmnist_cnn": Study("fmnist_cnn", {"name": "fashion_mnist"}, FINETUNE_TRAIN),
    "mobilenet_v2_keras": Study("mobilenet_v2_keras", {"name": "photos"}, FINETUNE_DISTILL, DEEP_BUDGETS, (0.02,)),
    # 2-3 min per output-error point on one core (21.8 M weights): the curve stops at 0.02 (44 % agreement)
    "inception_v3": Study("inception_v3", {"name": "photos"}, FINETUNE_DISTILL, DEEP_BUDGETS[:-1], (0.01,)),
    "efficientnet_lite0": Study("efficientnet_lite0", {"name": "imagenet_samples"}, FINETUNE_DISTILL,
                                (0.0, 0.01, 0.02, 0.05, 0.1, 0.2), (0.1,)),
    "resnet50": Study("resnet50", None, budgets=(0.0, 0.05, 0.1, 0.2)),
    "mobilenet_v2": Study("mobilenet_v2", None, budgets=(0.0, 0.05, 0.1, 0.2)),
}
#: what ``sme reproduce`` runs without ``--models``.
DEFAULT_MODELS = ("fmnist_cnn", "mobilenet_v2_keras", "inception_v3", "efficientnet_lite0", "resnet50", "mobilenet_v2")


@dataclass
class Plan:
    """What one ``sme reproduce`` runs: models, budgets (None: each study's own; fine-tuned budgets (): no
    fine-tuning), the accuracy tolerance (points below INT8), a cap on test samples (None: all), the seed."""

    models: tuple[str, ...] = DEFAULT_MODELS
    budgets: tuple[float, ...] | None = None  # None: each study's own
    finetune_budgets: tuple[float, ...] | None = None
    tolerance: float = 0.3
    samples: int | None = None
    seed: int = 0
    studies: dict[str, Study] = field(default_factory=lambda: dict(STUDIES))

    def check(self) -> None:
        unknown = [m for m in self.models if m not in self.studies]
        if unknown:
            raise UsageError(f"--models: unknown model {unknown[0]!r}; reproducible models: {', '.join(self.studies)}")
        bad = [b for b in (*(self.budgets or ()), *(self.finetune_budgets or ())) if not 0 <= b <= 1]
        if bad:
            raise UsageError(f"--budgets: {bad[0]} is not a relative error in [0, 1]")
        if self.budgets is not None and not self.budgets:
            raise UsageError("--budgets: give at least one error budget")
        if not 0 <= self.tolerance <= 100:
            raise UsageError(f"--tolerance: {self.tolerance} is not a number of percentage points in [0, 100]")

    def budgets_of(self, study: Study) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(curve budgets, fine-tuned budgets) of ``study``: the plan's where it gives them."""
        tuned = () if study.finetune is None or study.dataset is None else (
            study.finetune_budgets if self.finetune_budgets is None else self.finetune_budgets)
        return (study.budgets if self.budgets is None else self.budgets), tuned


def point_config(study: Study, plan: Plan, budget: float | None, squeeze: bool = True, finetune: bool = False) -> dict:
    """The config document of one run: :data:`DESIGN`, the study's model and dataset, the window
    orchestrator at ``budget`` (None: no orchestration), the ``sme`` squeezer (or none), fine-tuning."""
    dataset = None if study.dataset is None else {**study.dataset,
                                                  **({"samples": plan.samples} if plan.samples else {})}
    orchestrator = {"name": "none"} if budget is None else {
        "name": "window", "mode": "budget", "budget": budget, "scope": "layer",
        **({"error": "output", "damping": OUTPUT_DAMPING} if dataset is not None and study.error == "output"
           else {"error": "weight"})}
    data = {"model": {"name": study.model}, "dataset": dataset, **DESIGN, "orchestrator": orchestrator,
            "squeezer": {"name": "sme"} if squeeze else {"name": "none"}, "seed": plan.seed}
    if finetune:
        data["finetune"] = {**study.finetune, "seed": plan.seed}
    return data


def _accuracy(report: dict, key: str = "sme") -> float | None:
    return report["accuracy"].get(key)


def curve_point(report: dict, budget: float, finetuned: bool) -> dict:
    """One point of the trade-off curve from a run's report."""
    totals = report["totals"]
    return {
        "budget": budget,
        "finetuned": finetuned,
        "crossbars": totals["crossbars"]["sme"],
        "reduction_vs_isaac16": totals["reductions"]["vs_isaac16"],
        "reduction_vs_isaac": totals["reductions"]["vs_isaac"],
        "weight_error": totals["weight_error"],
        "accuracy": _accuracy(report),
        **({"float_finetuned": _accuracy(report, "float_finetuned")} if finetuned else {}),
    }


#: the operating point of a model without data (no accuracy to bound it): the budget nearest this one,
#: the embedded default's weight-error budget.
BLIND_BUDGET = 0.1


def within(point: dict, int8: float | None, tolerance: float) -> bool:
    """Whether ``point``'s accuracy is within ``tolerance`` points of ``int8`` (True without accuracy data)."""
    return int8 is None or point["accuracy"] is None or point["accuracy"] >= int8 - tolerance


def operating_point(points: list[dict], int8: float | None, tolerance: float) -> dict:
    """The point with the largest reduction against ``isaac16`` whose accuracy is within ``tolerance``
    points of ``int8`` (ties: the smaller budget); none within: the most accurate point. Without accuracy
    data (``int8`` None): the point whose budget is nearest :data:`BLIND_BUDGET`."""
    if int8 is None:
        return min(points, key=lambda p: (abs(p["budget"] - BLIND_BUDGET), p["budget"]))
    kept = [p for p in points if within(p, int8, tolerance)]
    if kept:
        return max(kept, key=lambda p: (p["reduction_vs_isaac16"] or 0, -p["budget"]))
    return max(points, key=lambda p: (p["accuracy"], p["reduction_vs_isaac16"] or 0))


def _ratio(sme: dict, base: dict, key: str) -> float | None:
    return round(sme[key] / base[key], 4) if base.get(key) else None


class Reproduction:
    """Runs a :class:`Plan` model by model; ``run_point`` is the one place a pipeline runs (a seam for tests)."""

    def __init__(self, plan: Plan, registry, progress: bool = False):
        from .config import load_config

        plan.check()
        self.plan, self.registry, self.progress = plan, registry, progress
        for model in plan.models:  # every config is validated before any run
            study = plan.studies[model]
            budgets, tuned = plan.budgets_of(study)
            load_config(point_config(study, plan, budgets[0]), registry, source=f"reproduce {model}")
            if tuned:
                load_config(point_config(study, plan, tuned[0], finetune=True), registry,
                            source=f"reproduce {model} (fine-tuned)")

    def run_point(self, data: dict, label: str, measure=frozenset({"sme"})) -> dict:
        """One pipeline run; ``measure``: the accuracy figures it computes (:data:`sme_plugin.pipeline.MEASURES`)."""
        from .config import load_config
        from .pipeline import run

        config = load_config(data, self.registry, source=f"reproduce: {label}")
        started = time.perf_counter()
        report = run(config, self.registry, progress=self.progress, measure=frozenset(measure))
        log.info("%s: %d SME crossbars (%.2fx vs isaac16), %s %% in %.0f s", label, report["totals"]["crossbars"]["sme"],
                 report["totals"]["reductions"]["vs_isaac16"] or 0, report["accuracy"].get("sme"),
                 time.perf_counter() - started)
        return report

    def model(self, name: str) -> tuple[dict, dict]:
        """(the model's entry of ``reproduce.json``, the operating point's full report for its figure)."""
        plan, study = self.plan, self.plan.studies[name]
        started = time.perf_counter()
        sliced = self.run_point(point_config(study, plan, None, squeeze=False), f"{name} slice/splice", ())
        reports, points = {}, []
        budgets, tuned_budgets = plan.budgets_of(study)
        for budget in budgets:  # float and INT8 once: they do not depend on the budget
            measure = {"sme", "float", "quantizer_only"} if not reports else {"sme"}
            reports[(budget, False)] = report = self.run_point(point_config(study, plan, budget),
                                                               f"{name} budget {budget}", measure)
            points.append(curve_point(report, budget, False))
        tuned = bool(tuned_budgets)
        for budget in tuned_budgets:
            reports[(budget, True)] = report = self.run_point(point_config(study, plan, budget, finetune=True),
                                                              f"{name} budget {budget} fine-tuned", {"sme", "float"})
            points.append(curve_point(report, budget, True))
        first = reports[(budgets[0], False)]
        int8 = _accuracy(first, "quantizer_only")
        best = operating_point([p for p in points if not p["finetuned"]], int8, plan.tolerance)
        best_tuned = operating_point([p for p in points if p["finetuned"]], int8, plan.tolerance) if tuned else None
        chosen = reports[(best["budget"], False)]
        orchestrated = self.run_point(point_config(study, plan, best["budget"], squeeze=False),
                                      f"{name} budget {best['budget']} without squeeze-out", ())
        crossbars = {label: sliced["totals"]["crossbars"][label] for label in BASELINES}
        crossbars.update(sme_slice=sliced["totals"]["crossbars"]["sme"],
                         sme_orchestrated=orchestrated["totals"]["crossbars"]["sme"], sme=best["crossbars"])
        if best_tuned is not None:
            crossbars["sme_finetuned"] = best_tuned["crossbars"]
        reductions = {f"{label}_vs_{base}": round(crossbars[base] / crossbars[label], 4) if crossbars[label] else None
                      for label in ("sme_slice", "sme_orchestrated", "sme", "sme_finetuned") if label in crossbars
                      for base in BASELINES}
        reductions.update({f"vs_{base}": reductions[f"sme_vs_{base}"] for base in BASELINES})
        costs = chosen["costs"]
        entry = {
            "weights": chosen["model"]["weights"],
            "weights_trained": chosen["model"]["weights"] != "random",
            "conv_and_fc_weights": chosen["totals"]["weights"],
            "layers": chosen["model"]["layers"],
            "operating_point": {"budget": best["budget"], "error": chosen["config"]["orchestrator"].get("error"),
                                "weight_error": best["weight_error"],
                                "within_tolerance": within(best, int8, plan.tolerance),
                                "finetuned_budget": None if best_tuned is None else best_tuned["budget"],
                                "finetuned_within_tolerance": None if best_tuned is None else
                                within(best_tuned, int8, plan.tolerance)},
            "crossbars": crossbars,
            "reductions": reductions,
            "adc_bits": {label: {"lossless_max": costs[label]["adc_bits_lossless_max"],
                                 "used_max": costs[label]["adc_bits_used_max"]}
                         for label in ("sme", *BASELINES)},
            "vs_isaac": {key: _ratio(costs["sme"], costs["isaac"], key) for key in ("energy_uj", "latency_us", "area_mm2")},
            "vs_isaac16": {key: _ratio(costs["sme"], costs["isaac16"], key) for key in ("energy_uj", "latency_us", "area_mm2")},
            "curve": points,
            "seconds": round(time.perf_counter() - started, 1),
        }
        if study.dataset is not None:
            acc = first["accuracy"]
            metric_key = "accuracy" if acc["metric"] == "top-1 accuracy" else "agreement"
            entry[metric_key] = {"float": acc["float"], "int8": acc["quantizer_only"], "sme": best["accuracy"],
                                 "sme_finetuned": None if best_tuned is None else best_tuned["accuracy"]}
            entry["data"] = {"dataset": acc["dataset"], "metric": acc["metric"], "samples": acc["samples"],
                             "calibration_samples": acc["calibration_samples"]}
        if "absent_layers" in chosen["model"].get("details", {}):
            entry["absent_layers"] = chosen["model"]["details"]["absent_layers"]
        return entry, chosen

    def run(self, jobs: int = 1) -> tuple[dict, dict[str, dict]]:
        """(``reproduce.json``'s document, model -> the operating point's report). ``jobs`` > 1 reproduces
        that many models at once, each in a process of its own (spawned, ``cpu_count // jobs`` torch
        threads each); the document lists the models in the plan's order either way."""
        from . import __version__

        started = time.perf_counter()
        plan = self.plan
        if jobs > 1 and len(plan.models) > 1:
            results = _in_processes(plan, min(jobs, len(plan.models)))
        else:
            results = {name: self.model(name) for name in plan.models}
        document = {
            "sme_version": __version__,
            "design": DESIGN,
            "plan": {"models": list(plan.models),
                     "budgets": {name: list(plan.budgets_of(plan.studies[name])[0]) for name in plan.models},
                     "finetune_budgets": {name: list(plan.budgets_of(plan.studies[name])[1]) for name in plan.models},
                     "tolerance_points": plan.tolerance, "samples": plan.samples, "seed": plan.seed},
            "models": {name: results[name][0] for name in plan.models},
            "seconds": round(time.perf_counter() - started, 1),
        }
        return document, {name: results[name][1] for name in plan.models}


def _worker_setup(threads: int, level: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="sme: %(message)s")
    logging.getLogger("sme_plugin").setLevel(level)


def _reproduce_model(plan: Plan, name: str) -> tuple[dict, dict]:
    from .plugins import build_registry, plugin_manager

    return Reproduction(plan, build_registry(plugin_manager())).model(name)


def _in_processes(plan: Plan, jobs: int) -> dict[str, tuple[dict, dict]]:
    """model -> (entry, report), ``jobs`` models at a time in spawned processes."""
    import os

    from .workers import spawned_pool

    threads = max(1, (os.cpu_count() or 1) // jobs)
    level = logging.getLogger("sme_plugin").getEffectiveLevel()
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # BLAS pools of the workers,
        os.environ.setdefault(name, str(threads))  # read when they import numpy: no oversubscribed cores
    with spawned_pool(jobs, initializer=_worker_setup, initargs=(threads, level)) as pool:
        futures = {name: pool.submit(_reproduce_model, plan, name) for name in plan.models}
        return {name: future.result() for name, future in futures.items()}


# --------------------------------------------------------------------------------------------- output
def _x(value) -> str:
    from .report import format_reduction

    return format_reduction(value)


def _pct(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def _metric(entry: dict) -> tuple[str, dict | None]:
    """("accuracy" / "agreement" / "—", its figures)."""
    for key in ("accuracy", "agreement"):
        if key in entry:
            return key, entry[key]
    return "—", None


def markdown(document: dict, figures: str | None = ".") -> str:
    """The results as Markdown: crossbars after each step against each baseline, costs, accuracy and
    the trade-off curve per model. ``figures``: the folder of the PNGs, relative to where the Markdown
    lies (None: no figures)."""
    models = document["models"]
    plan = document["plan"]
    crossbar_rows, cost_rows, accuracy_rows = [], [], []
    for name, e in models.items():
        c, r = e["crossbars"], e["reductions"]
        weights = "trained" if e["weights_trained"] else "**random**"
        point = e["operating_point"]
        beyond = lambda ok: "" if ok in (True, None) else " †"  # noqa: E731 - no point within the tolerance
        crossbar_rows.append([f"{name} ({weights})", *[f"{c[label]:,}" for label in BASELINES],
                              f"{c['sme_slice']:,}", f"{c['sme_orchestrated']:,}",
                              f"**{c['sme']:,}**{beyond(point['within_tolerance'])}",
                              f"{c['sme_finetuned']:,}{beyond(point['finetuned_within_tolerance'])}"
                              if "sme_finetuned" in c else "—",
                              *[_x(r[f"vs_{base}"]) for base in BASELINES],
                              _x(r.get("sme_finetuned_vs_isaac16"))])
        bits = e["adc_bits"]
        cost_rows.append([name, f"{bits['sme']['lossless_max']} / {bits['isaac']['lossless_max']} / "
                                f"{bits['isaac16']['lossless_max']}",
                          *[_x(e["vs_isaac"][key]) for key in ("energy_uj", "latency_us", "area_mm2")],
                          *[_x(e["vs_isaac16"][key]) for key in ("energy_uj", "latency_us", "area_mm2")]])
        key, acc = _metric(e)
        if acc is not None:
            data = e["data"]
            accuracy_rows.append([name, f"{key} ({data['dataset']}, {data['samples']} test / "
                                        f"{data['calibration_samples']} calibration)",
                                  _pct(acc["float"]), _pct(acc["int8"]), _pct(acc["sme"]), _pct(acc["sme_finetuned"]),
                                  f"{point['budget']} ({point['error']})",
                                  "—" if point["finetuned_budget"] is None else str(point["finetuned_budget"])])
    from .report import _table

    parts = [
        "Crossbars per inference for every conv and fully-connected layer (128x128 SLC crossbars, 8-bit per-channel "
        "weights, 16-row operation units, per-segment offsets; `isaac16` = ISAAC's own design point, 16-bit weights "
        "on 2-bit cells). SME after each step: slice/splice alone, + orchestration, + squeeze-out (the operating "
        f"point: the largest reduction within {plan['tolerance_points']} points of the INT8 model; without data, the "
        f"budget nearest {BLIND_BUDGET}), and after "
        "fine-tuning within the orchestrated bit patterns. Rows marked **random** carry random weights "
        "(no trained weights ship offline): their crossbars say nothing about a trained model.",
        _table(["model", "ISAAC-16", "ISAAC", "bit-plane", "SME slice", "+ orchestration", "+ squeeze-out",
                "fine-tuned", "SME vs ISAAC-16", "vs ISAAC", "vs bit-plane", "fine-tuned vs ISAAC-16"], crossbar_rows),
        *([f"† no point of the curve stays within {plan['tolerance_points']} points of INT8: the most accurate one "
           "is shown (its accuracy is in the table below)."] if any(" †" in str(cell) for row in crossbar_rows
                                                                   for cell in row) else []),
        "What the saving costs at the operating point (ratios SME / baseline; > 1 means SME pays more):",
        _table(["model", "ADC bits max (SME / ISAAC / ISAAC-16)", "energy x ISAAC", "latency x ISAAC",
                "area x ISAAC", "energy x ISAAC-16", "latency x ISAAC-16", "area x ISAAC-16"], cost_rows),
    ]
    if accuracy_rows:
        parts += [
            "Accuracy in percent (`agreement` = top-1 agreement with the float model on unlabelled photos) with ideal "
            "cells, ADC and DAC: the cost of orchestration and squeeze-out alone. INT8 = the quantizer's weights.",
            _table(["model", "metric (data)", "float", "INT8", "SME", "SME fine-tuned", "budget (error)",
                    "fine-tuned budget"], accuracy_rows),
        ]
    parts.append("Trade-off curves (error budget -> SME crossbars, reduction against ISAAC-16, accuracy):")
    for name, e in models.items():
        rows = [[p["budget"], "yes" if p["finetuned"] else "no", f"{p['crossbars']:,}", _x(p["reduction_vs_isaac16"]),
                 _x(p["reduction_vs_isaac"]), f"{p['weight_error']:.3f}", _pct(p["accuracy"])] for p in e["curve"]]
        parts += [f"**{name}** ({e['seconds']:.0f} s)",
                  _table(["budget", "fine-tuned", "SME crossbars", "vs ISAAC-16", "vs ISAAC", "weight error",
                          _metric(e)[0] if _metric(e)[1] else "accuracy"], rows)]
        absent = e.get("absent_layers") or []
        if absent:
            parts.append("Not counted: " + "; ".join(f"{a['name']} ({a['rows']}x{a['cols']}): {a['note']}" for a in absent) + ".")
    if figures is not None:
        folder = "" if figures in ("", ".") else figures.rstrip("/") + "/"
        parts.append(f"![trade-off curves]({folder}tradeoff.png)")
        parts += [f"![{name}: crossbars per layer and bit-plane sparsity]({folder}{name}.png)" for name in models]
    parts.append(f"Generated by `sme reproduce --models {' '.join(plan['models'])}` (SME {document['sme_version']}, "
                 f"{document['seconds']:.0f} s).")
    return "\n\n".join(parts) + "\n"


#: the README's results section lies between these lines; ``sme reproduce --readme`` rewrites it.
README_START, README_END = "<!-- sme reproduce: start -->", "<!-- sme reproduce: end -->"


def readme_with(text: str, results: str, where: str) -> str:
    """``text`` (a README) with its results section replaced by ``results``."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise UsageError(f"--readme {where}: no results section; add the lines {README_START} and {README_END}")
    return text[: start + len(README_START)] + "\n" + results + text[end:]


def write(document: dict, reports: dict[str, dict], directory, readme=None) -> list:
    """Write reproduce.json, reproduce.md, tradeoff.png and one <model>.png per model into ``directory``
    (and the README's results section), all together or none."""
    import os
    from pathlib import Path

    from .plots import summary_png, tradeoff_png
    from .report import to_json, write_atomically

    directory = Path(directory)
    files = {directory / "reproduce.json": to_json(document), directory / "reproduce.md": markdown(document),
             directory / "tradeoff.png": tradeoff_png(document)}
    files.update({directory / f"{name}.png": summary_png(report) for name, report in reports.items()})
    if readme is not None:
        path = Path(readme)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"--readme {path}: cannot read it as UTF-8 text ({error})") from None
        figures = os.path.relpath(directory.resolve(), path.resolve().parent)
        files[path] = readme_with(text, markdown(document, figures=None if figures.startswith("..") else figures),
                                  str(path))
    write_atomically(files)
    return list(files)
