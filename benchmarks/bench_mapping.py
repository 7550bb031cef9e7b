"""Wall time and peak memory of each pipeline stage, with the crossbar counts it produces.

Runs :func:`sme_plugin.pipeline.run` (``dataset: null``, or ``--dataset``) for each model under orchestrator
``none`` and ``window`` (budget mode; ``--error output``: priced on the dataset's calibration inputs) times
each packing, every run in a fresh process so that
its peak RSS is its own. Stage times come from the report's ``timing_s``; the orchestrator's calls
(one per layer under ``scope: layer``) are timed and split out of the stage they run in. The peak
resident set size (MiB) of each stage comes from a thread sampling ``/proc/self/statm`` (Linux)
every few milliseconds, and the whole run's from ``resource.getrusage``.

Also the shared helpers of the other benchmarks: :func:`positive`, :func:`limit_threads`,
:func:`print_table`, :func:`measured_run`, :func:`run_pipelines`.

    python benchmarks/bench_mapping.py [--models resnet50 mobilenet_v2] [--packings column ou]
                                       [--budget 0.10] [--squeeze-budget 0.02] [--threads 1] [--json]
                                       [--dataset photos --error output [--damping 0.1]]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from sme_plugin.config import load_config  # noqa: E402
from sme_plugin.pipeline import run  # noqa: E402
from sme_plugin.plugins import build_registry, plugin_manager  # noqa: E402
from sme_plugin.workers import spawned_pool  # noqa: E402

STAGES = ("model", "quantize+layout", "orchestrate", "map+squeeze+costs")
#: table headers of the stages: model build + layer extraction, quantize + layouts, orchestrate, map + squeeze + costs
SHORT = dict(zip(STAGES, ("build", "quant", "orch", "map")))


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def limit_threads(threads: int) -> None:
    """Use ``threads`` threads in torch, numpy's BLAS/OpenMP and any child process."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    threadpool_limits(threads)
    torch.set_num_threads(threads)


def cell_text(value) -> str:
    """A table cell: floats to 4 significant digits, None as ``-``."""
    return f"{value:.4g}" if isinstance(value, float) else "-" if value is None else str(value)


def print_table(rows: list[dict], title: str) -> None:
    """Plain-text table of ``rows`` (dicts sharing their keys), columns right-aligned."""
    columns = list(rows[0])
    cells = [[cell_text(v) for v in row.values()] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    for line in [columns, ["-" * w for w in widths], *cells]:
        print("  ".join(v.rjust(w) for v, w in zip(line, widths)))


class RSSSampler(threading.Thread):
    """Samples this process's resident set size every ``interval`` seconds as (perf_counter s, MiB)."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval, self.samples, self.done = interval, [], threading.Event()

    def run(self):
        page_mib = os.sysconf("SC_PAGE_SIZE") / 2**20
        with open("/proc/self/statm") as statm:
            while not self.done.is_set():
                statm.seek(0)
                self.samples.append((time.perf_counter(), int(statm.read().split()[1]) * page_mib))
                self.done.wait(self.interval)

    def peak(self, start: float, end: float, exclude: list[tuple[float, float]] = ()) -> float:
        """Largest sample (MiB) taken in [start, end] outside the ``exclude`` intervals (the nearest earlier
        one if none fell inside)."""
        inside = [mib for t, mib in self.samples
                  if start <= t <= end and not any(a <= t <= b for a, b in exclude)]
        return max(inside or [mib for t, mib in self.samples if t <= start][-1:] or [0.0])


def stamp_calls(strategy, method: str, stamps: list) -> None:
    """Make ``strategy`` build objects whose ``method`` appends its start and end perf_counter to ``stamps``."""
    base = strategy.factory

    def stamped(self, *args, **kwargs):
        stamps.append(time.perf_counter())
        result = getattr(base, method)(self, *args, **kwargs)
        stamps.append(time.perf_counter())
        return result

    strategy.factory = type(base.__name__, (base,), {method: stamped})


def measured_run(config: dict, threads: int) -> dict:
    """Run the pipeline on ``config`` (a config dict over the defaults) and measure each stage.

    Returns the report's ``totals`` and ``accuracy``, ``seconds`` and ``rss_mib`` per stage of
    :data:`STAGES` (plus ``accuracy`` when a dataset is configured) and ``max_rss_mib`` of the process.
    The orchestrator runs inside ``quantize+layout`` (``scope: model``) or once per layer inside
    ``map+squeeze+costs``; its calls are reported as ``orchestrate`` and left out of those stages.
    """
    limit_threads(threads)
    registry = build_registry(plugin_manager())
    parsed = load_config(config, registry)
    stamps, sampler = [], RSSSampler()
    stamp_calls(parsed.strategies["orchestrator"], "orchestrate", stamps)
    sampler.start()
    start = time.perf_counter()
    report = run(parsed, registry)
    sampler.done.set()
    sampler.join()
    timing = report["timing_s"]
    built = start + timing["model"]
    laid = built + timing["quantize+layout"]
    mapped = laid + timing["map+squeeze+costs"]
    calls = list(zip(stamps[::2], stamps[1::2]))

    def outside(a, b):  # seconds of [a, b] not spent in the orchestrator
        return (b - a) - sum(max(0.0, min(b, e) - max(a, s)) for s, e in calls)

    seconds = {"model": built - start, "quantize+layout": outside(built, laid),
               "orchestrate": sum(e - s for s, e in calls), "map+squeeze+costs": outside(laid, mapped)}
    rss = {"model": sampler.peak(start, built), "quantize+layout": sampler.peak(built, laid, calls),
           "orchestrate": max([sampler.peak(s, e) for s, e in calls] or [0.0]),
           "map+squeeze+costs": sampler.peak(laid, mapped, calls)}
    if "accuracy" in timing:
        seconds["accuracy"] = timing["accuracy"]
        rss["accuracy"] = sampler.peak(mapped, mapped + timing["accuracy"])
    return {
        "totals": report["totals"],
        "accuracy": report["accuracy"],
        "seconds": {stage: round(value, 3) for stage, value in seconds.items()},
        "rss_mib": {stage: round(value) for stage, value in rss.items()},
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def run_pipelines(configs: list[dict], threads: int, jobs: int = 1) -> list[dict]:
    """:func:`measured_run` of each config, each in a fresh process (``jobs`` at a time).

    Every config is validated first, so a bad one raises :class:`~sme_plugin.errors.ConfigError` here.
    """
    registry = build_registry(plugin_manager())
    for config in configs:
        load_config(config, registry)
    with spawned_pool(jobs, max_tasks_per_child=1) as pool:
        return list(pool.map(measured_run, configs, [threads] * len(configs)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--packings", nargs="+", default=["column", "ou"], choices=["tile", "column", "ou"])
    parser.add_argument("--budget", type=float, default=0.10, help="window orchestrator's relative weight-error budget")
    parser.add_argument("--squeeze-budget", type=float, default=0.0,
                        help="the sme squeezer's (tile-empty) relative weight-error budget")
    parser.add_argument("--dataset", help="dataset section name (default: none; needed by --error output)")
    parser.add_argument("--error", choices=["weight", "output"], default="weight",
                        help="what the window orchestrator's budget bounds")
    parser.add_argument("--damping", type=float, default=0.1, help="window damping with --error output")
    parser.add_argument("--threads", type=positive, default=1)
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    args = parser.parse_args(argv)
    if args.error == "output" and args.dataset is None:
        parser.error("--error output needs --dataset (the calibration inputs)")

    window = {"name": "window", "mode": "budget", "budget": args.budget, "error": args.error,
              **({"damping": args.damping} if args.error == "output" else {})}
    orchestrators = {"none": {"name": "none"}, f"window {args.budget}": window}
    points = [
        {"model": model, "orchestrator": label, "packing": packing}
        for model in args.models for label in orchestrators for packing in args.packings
    ]
    configs = [
        {"model": {"name": p["model"]}, "dataset": args.dataset and {"name": args.dataset},
         "orchestrator": orchestrators[p["orchestrator"]],
         "mapper": {"name": "sme", "packing": p["packing"]}, "squeezer": {"name": "sme", "budget": args.squeeze_budget}}
        for p in points
    ]
    results = run_pipelines(configs, args.threads)
    if args.json:
        print(json.dumps([{**p, **r} for p, r in zip(points, results)], indent=1))
        return
    stages, counts = [], []
    for p, r in zip(points, results):
        total = round(sum(r["seconds"].values()), 3)
        stages.append({**p, **{f"{SHORT[s]} s": r["seconds"][s] for s in STAGES},
                       **({"accuracy s": r["seconds"]["accuracy"]} if "accuracy" in r["seconds"] else {}), "total s": total,
                       **{f"{SHORT[s]} MiB": r["rss_mib"][s] for s in STAGES}, "max RSS MiB": r["max_rss_mib"]})
        counts.append({**p, **{k: v for k, v in r["totals"]["crossbars"].items() if k != "baseline"},
                       **{f"x {k[3:]}": v for k, v in r["totals"]["reductions"].items()},
                       "weight error": r["totals"]["weight_error"],
                       **({"SME accuracy %": r["accuracy"]["sme"]} if r["accuracy"].get("sme") is not None else {}), "total s": total})
    print_table(stages, f"stage wall time (s) and peak RSS (MiB), {args.threads} thread(s) per run")
    print_table(counts, "crossbars per mapping label and SME's reduction (x label = label crossbars / sme crossbars)")


if __name__ == "__main__":
    main()
