"""Accuracy against crossbar reduction on the digits model, through the simulated crossbars.

Sweeps the window orchestrator's weight-error budget x the ``sme`` packing x the cell (SLC, 2-bit
MLC) over the default config (8-bit uniform per-channel quantizer, segment-offset signs, ``sme``
squeezer, 128x128 crossbars, 16-row operation units, 1-bit DAC, 8-bit activations) with a noisy
ADC, each point one :func:`sme_plugin.pipeline.run` in a fresh process. Prints the float,
quantizer-only, quantized (digital model of the weights SME maps) and SME-crossbar accuracies (%)
and the crossbars and reduction against ``isaac`` (same weight bits and cells) and ``isaac16``.

    python benchmarks/bench_fidelity.py [--budgets 0 0.05 0.1 0.2] [--packings column ou]
                                        [--cells slc mlc] [--adc-bits 8] [--samples N] [--jobs 2]
                                        [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json

from bench_mapping import positive, print_table, run_pipelines  # also puts the checkout on sys.path

CELLS = {"slc": {"name": "slc"}, "mlc": {"name": "mlc", "bits": 2}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.0, 0.05, 0.1, 0.2],
                        help="window orchestrator's relative weight-error budgets")
    parser.add_argument("--packings", nargs="+", default=["column", "ou"], choices=["tile", "column", "ou"])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS), help="mlc: 2-bit cells")
    parser.add_argument("--adc-bits", type=positive, default=8, help="noisy ADC resolution (0.5 LSB noise)")
    parser.add_argument("--samples", type=positive, default=None, help="test samples (default: the whole test split)")
    parser.add_argument("--jobs", type=positive, default=2, help="points run at once, one process each")
    parser.add_argument("--threads", type=positive, default=1, help="threads per process")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)

    grid = itertools.product(args.budgets, args.packings, args.cells)
    points = [{"budget": b, "packing": p, "cell": c} for b, p, c in grid]
    configs = [
        {"model": {"name": "digits"}, "dataset": {"name": "digits", "samples": args.samples},
         "orchestrator": {"name": "window", "mode": "budget", "budget": p["budget"]},
         "mapper": {"name": "sme", "packing": p["packing"]}, "cell": CELLS[p["cell"]],
         "adc": {"name": "noisy", "bits": args.adc_bits}}
        for p in points
    ]
    results = run_pipelines(configs, args.threads, args.jobs)
    if args.json:
        print(json.dumps([{**p, **r} for p, r in zip(points, results)], indent=1))
        return
    rows = []
    for p, r in zip(points, results):
        acc, crossbars, reductions = r["accuracy"], r["totals"]["crossbars"], r["totals"]["reductions"]
        rows.append({**p, "float %": acc["float"], "quant-only %": acc["quantizer_only"],
                     "quantized %": acc["quantized"], "sme %": acc["sme"],
                     "sme xbars": crossbars["sme"], "isaac": crossbars["isaac"],
                     "isaac16": crossbars["isaac16"], "x isaac": reductions["vs_isaac"],
                     "x isaac16": reductions["vs_isaac16"], "weight error": r["totals"]["weight_error"],
                     "seconds": round(sum(r["seconds"].values()), 1)})
    print_table(rows, f"digits: accuracy on {results[0]['accuracy']['samples']} test samples vs crossbar reduction "
                      f"(noisy {args.adc_bits}-bit ADC; x label = label crossbars / sme crossbars)")


if __name__ == "__main__":
    main()
