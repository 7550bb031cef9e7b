"""Command line: ``sme run``, ``sme validate``, ``sme plugins``.

User mistakes (config, weights, output) print one ``error:`` line per problem and exit 2.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from .config import load_config, read_yaml
from .errors import SMEError
from .plugins import KINDS, build_registry, plugin_manager
from .report import LABELS, prepare_output, write_report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sme", description="Squeeze bit-level sparsity out of ReRAM crossbar mappings.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline (embedded default config when none is given)")
    run.add_argument("config", nargs="?", help="YAML config file")
    run.add_argument("--model", help="model name (overrides the config's model; its own dataset if one is registered)")
    run.add_argument("--output", help="output directory (default: the config's output, ./sme-out)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    validate = sub.add_parser("validate", help="validate a config file")
    validate.add_argument("config")
    sub.add_parser("plugins", help="list every registered strategy by kind")
    return parser


def _named(section) -> str | None:
    return section.get("name") if isinstance(section, dict) else None


def _config_data(args, registry) -> dict:
    """The config file's data with ``--model`` applied: the model section keeps its params when it
    names the same model; the dataset becomes the model's own (a dataset of the same name) or none,
    unless the config already picks that dataset or ``dataset: null``."""
    data = read_yaml(args.config) if args.config else {}
    if args.model:
        if _named(data.get("model")) != args.model:
            data["model"] = {"name": args.model}
        own = {"name": args.model} if args.model in registry.entries["dataset"] else None
        if not ("dataset" in data and (data["dataset"] is None or _named(data["dataset"]) == args.model)):
            data["dataset"] = own
    return data


def _summary(report: dict, console: Console) -> None:
    totals = report["totals"]
    table = Table(title=f"SME — {report['model']['name']} ({report['model']['weights']} weights)")
    for column in ("mapping", "crossbars", "SME reduction", "energy µJ", "area mm²"):
        table.add_column(column, justify="right" if column != "mapping" else "left")
    for label in (label for label in LABELS if label in totals["crossbars"]):
        cost = report["costs"][label]
        reduction = totals["reductions"].get(f"vs_{label}")
        table.add_row(label, str(totals["crossbars"][label]), f"{reduction:.2f}x" if reduction else "—",
                      f"{cost['energy_uj']:.3g}", f"{cost['area_mm2']:.3g}")
    console.print(table)
    acc = report["accuracy"]
    if acc.get("dataset"):
        console.print(f"accuracy on {acc['samples']} {acc['dataset']} samples: float {acc['float']} %, "
                      f"quantized {acc['quantized']} %, SME crossbars {acc['sme']} %")
    reduction = f"{totals['reduction']}x" if totals["reduction"] else "n/a (SME uses no crossbar)"
    console.print(f"weight error {totals['weight_error']}, reduction vs ISAAC {reduction}")


def _plugins(pm, registry, console: Console) -> None:
    table = Table(title="registered strategies")
    for column in ("kind", "name", "plugin", "distribution"):
        table.add_column(column)
    for kind in KINDS:
        for name in registry.names(kind):
            entry = registry.entries[kind][name]
            table.add_row(kind, name, entry.plugin, entry.distribution or "-")
    console.print(table)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    try:
        pm = plugin_manager()
        registry = build_registry(pm)
        if args.command == "plugins":
            _plugins(pm, registry, console)
            return 0
        if args.command == "validate":
            load_config(args.config, registry)
            console.print(f"{args.config}: valid")
            return 0
        config = load_config(_config_data(args, registry), registry, source=args.config or "embedded default")
        from .pipeline import run  # torch-heavy imports only when running

        with prepare_output(args.output or config.output) as directory:
            report = run(config, registry, progress=not args.no_progress and sys.stderr.isatty())
            sections = [s for found in pm.hook.sme_report_sections(report=report) for s in found]
            paths = write_report(report, directory, sections)
        _summary(report, console)
        console.print(f"wrote {paths['json']} and {paths['md']}")
        return 0
    except SMEError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
