"""Command line: ``sme run``, ``sme reproduce``, ``sme validate``, ``sme plugins``, ``sme config``.

Results go to stdout; progress bars, log messages, the heartbeat and errors go to stderr. A user
mistake prints one ``error:`` line per problem and exits with its documented code (see
:data:`sme_plugin.errors.EXIT_CODES`); anything else is an internal error: one line and
"run with --debug for the traceback" (``--debug`` or ``SME_DEBUG=1`` prints it).

Heavy modules (torch, matplotlib, scikit-learn) are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager

from . import __version__
from .errors import (
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Interrupted,
    OutputError,
    SMEError,
    UsageError,
)

log = logging.getLogger("sme_plugin")

#: seconds between heartbeat lines on stderr while ``sme run`` works with stdout not a terminal.
HEARTBEAT_S = float(os.environ.get("SME_HEARTBEAT_S", "15") or 15)


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items())
    return (
        "models: digits, fmnist_cnn (train themselves; with their datasets), resnet50, mobilenet_v2 (random\n"
        "  weights unless given), efficientnet_lite0/1/2, mobilenet_v2_keras, inception_v3 (trained weights from\n"
        "  the [zoo] packages), module (your own nn.Module factory);\n"
        "  `sme plugins` lists every strategy and model, `sme plugins --params NAME` its parameters,\n"
        "  `sme config --defaults` prints the default config.\n"
        "environment: SME_DEBUG=1 (tracebacks), SME_CACHE_DIR, SME_DISABLE_PLUGIN_AUTOLOAD=1,\n"
        "  SME_DISABLE_PLUGINS=name,... (block single plugins), SME_HEARTBEAT_S.\n"
        f"exit codes:\n{codes}\n"
    )


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("-v", "--verbose", action="count", help="more log messages on stderr (-vv: debug)")
    common.add_argument("-q", "--quiet", action="count", help="only errors on stderr; no progress, no heartbeat")
    common.add_argument("--debug", action="store_true", help="print tracebacks (also SME_DEBUG=1)")

    parser = argparse.ArgumentParser(
        prog="sme", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog(),
        description="Squeeze bit-level sparsity out of ReRAM crossbar mappings of quantized DNNs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_args(command, optional=True):
        command.add_argument("config", nargs="?" if optional else None, help="YAML config file (default: the embedded default)")
        command.add_argument("--model", help="model name (overrides the config's model; its own dataset if one is registered)")
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                             help="override one config value (VALUE is YAML: 64, null, mlc); repeatable")

    run = sub.add_parser("run", parents=[common], help="run the pipeline and write the report")
    config_args(run)
    run.add_argument("--output", help="output directory (default: the config's output, ./sme-out)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    reproduce = sub.add_parser("reproduce", parents=[common],
                               help="the paper's table: crossbars saved against each baseline at an accuracy cost, per model")
    reproduce.add_argument("--models", nargs="+", metavar="MODEL",
                           help="models to reproduce (default: every offline model but digits)")
    reproduce.add_argument("--output", default="sme-reproduce", help="output directory (default: ./sme-reproduce)")
    reproduce.add_argument("--budgets", nargs="+", type=float, metavar="B",
                           help="error budgets of the trade-off curve (default: each model's own, 0 .. 0.3 for the small CNNs, "
                                "0 .. 0.05 for the ImageNet ones)")
    reproduce.add_argument("--finetune-budgets", nargs="*", type=float, metavar="B",
                           help="budgets also fine-tuned (default: each model's own; none: no fine-tuning)")
    reproduce.add_argument("--tolerance", type=float, default=0.3,
                           help="accuracy points below INT8 the operating point may lose (default 0.3)")
    reproduce.add_argument("--samples", type=int, help="cap on test samples per model (default: all)")
    reproduce.add_argument("--readme", metavar="README.md", help="also rewrite this README's results section")
    reproduce.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                           help="models reproduced at once, one process each (default: 2 where there are 2 cores)")
    reproduce.add_argument("--no-progress", action="store_true", help="hide progress bars")
    validate = sub.add_parser("validate", parents=[common],
                              help="check a config: every stage built, settings that cannot work together")
    config_args(validate)
    plugins = sub.add_parser("plugins", parents=[common], help="list every registered strategy by kind")
    plugins.add_argument("--json", action="store_true", help="machine-readable list on stdout")
    plugins.add_argument("--params", metavar="NAME", help="the parameters of strategy NAME (KIND:NAME if ambiguous)")
    config = sub.add_parser("config", parents=[common], help="print the resolved config as YAML")
    config_args(config)
    config.add_argument("--defaults", action="store_true", help="print the embedded default config file")
    return parser


# --------------------------------------------------------------------------------------------- logging
def _configure_logging(verbosity: int) -> None:
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(max(min(verbosity, 2), -1), logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("sme: %(message)s" if level > logging.DEBUG else "sme: %(name)s: %(message)s"))
    for name in ("sme_plugin", "sme_cell_models", "sme_adapters", "cell_models", "adapters"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


# --------------------------------------------------------------------------------------------- config
def _named(section) -> str | None:
    return section.get("name") if isinstance(section, dict) else None


def parse_override(text: str) -> tuple[list[str], object]:
    """``section.key=value`` (or ``key=value`` for top-level keys) -> (path, YAML value)."""
    from .config import parse_yaml

    key, sep, value = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(part.strip() for part in path) or len(path) > 2:
        raise UsageError(f"--set {text[:80]!r}: expected SECTION.KEY=VALUE or KEY=VALUE (e.g. mapper.rows=64, seed=3)")
    try:
        parsed = parse_yaml(value, f"--set {key}") if value.strip() else ""
    except SMEError as error:
        raise UsageError(str(error)) from None
    return [part.strip() for part in path], parsed


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """The config document with every ``--set`` applied in order."""
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 1:
            data[path[0]] = value
            continue
        section, key = path
        current = data.get(section)
        if not isinstance(current, dict):
            current = {} if current is None else {"name": current} if isinstance(current, str) else {}
        data[section] = {**current, key: value}
    return data


def config_data(args, registry) -> dict:
    """The config file's data with ``--set`` and ``--model`` applied: the model section keeps its params
    when it names the same model (otherwise it is replaced, with a warning naming what is dropped); the
    dataset becomes the model's own (a dataset of the same name) or none, unless the config already
    picks that dataset or ``dataset: null``, or ``--set dataset=...`` / ``--set dataset.name=...`` chooses one
    (``--set dataset.samples=...`` alone sets a parameter of the model's own dataset)."""
    from .config import read_yaml

    data = read_yaml(args.config) if args.config else {}
    overrides = getattr(args, "overrides", [])
    data = apply_overrides(data, overrides)
    if args.model:
        old = data.get("model")
        if _named(old) != args.model:
            dropped = {k: v for k, v in old.items() if k != "name"} if isinstance(old, dict) else {}
            if dropped:
                log.warning("--model %s replaces the config's model %s; its settings %s are not used",
                            args.model, _named(old), ", ".join(f"{k}: {v}" for k, v in dropped.items()))
            data["model"] = {"name": args.model}
        own = {"name": args.model} if args.model in registry.entries["dataset"] else None
        chosen = any(parse_override(text)[0] in (["dataset"], ["dataset", "name"]) for text in overrides)
        section = data.get("dataset")
        if isinstance(section, dict) and "name" not in section and not chosen:  # --set dataset.samples=...
            if own is None:
                raise UsageError(f"--set dataset.{next(iter(section), '')}: model {args.model!r} has no dataset of its "
                                 f"own; name one with --set dataset.name=...")
            data["dataset"] = {**own, **section}
        elif not (chosen or "dataset" in data and (section is None or _named(section) == args.model)):
            data["dataset"] = own
    return data


def _registry_for(data: dict, config_path: str | None):
    """The plugin manager and registry with the config's ``plugins:`` modules loaded."""
    from .config import plugin_modules
    from .plugins import build_registry, plugin_manager

    modules = plugin_modules(data)
    pm = plugin_manager(extra_modules=modules, search_path=os.path.dirname(os.path.abspath(config_path)) if config_path else None) \
        if modules else plugin_manager()
    return pm, build_registry(pm)


# --------------------------------------------------------------------------------------------- output
def _reduction(value) -> str:
    from .report import format_reduction

    return format_reduction(value)


def _summary(report: dict, out) -> None:
    from .report import LABELS, _tradeoff

    totals, acc = report["totals"], report["accuracy"]
    print(f"SME — {report['model']['name']} ({report['model']['weights']} weights)", file=out)
    labels = [label for label in LABELS if label in totals["crossbars"]]
    rows = [("mapping", "crossbars", "SME reduction", "energy µJ", "latency µs", "area mm²", "accuracy %")]
    for label in labels:
        cost = report["costs"][label]
        rows.append((label, str(totals["crossbars"][label]), _reduction(totals["reductions"].get(f"vs_{label}")),
                     f"{cost['energy_uj']:.3g}", f"{cost['latency_us']:.3g}", f"{cost['area_mm2']:.3g}",
                     "—" if acc.get(label) is None else f"{acc[label]:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))), file=out)
    if acc.get("dataset"):
        print(f"{acc.get('metric') or 'accuracy'} on {acc['samples']} {acc['dataset']} samples: float {acc['float']} %, "
              f"quantized {acc['quantized']} %, SME crossbars {acc['sme']} %", file=out)
    reduction = _reduction(totals["reduction"]) if totals["reduction"] else "n/a (SME uses no crossbar)"
    print(f"weight error {totals['weight_error']}, reduction vs ISAAC {reduction}", file=out)
    print(_tradeoff(report), file=out)


def _plugin_rows(registry) -> list[dict]:
    from .plugins import KINDS

    return [
        {"kind": kind, "name": name, "plugin": registry.entries[kind][name].plugin,
         "distribution": registry.entries[kind][name].distribution}
        for kind in KINDS for name in registry.names(kind)
    ]


def _plugins(args, pm, registry) -> int:
    if args.params:
        return _params(args.params, registry)
    rows = _plugin_rows(registry)
    if args.json:
        print(json.dumps({"sme_version": __version__, "strategies": rows}, indent=2))
        return EXIT_OK
    widths = {key: max(len(key), *(len(str(row[key] or "-")) for row in rows)) for key in rows[0]}
    print("  ".join(key.ljust(widths[key]) for key in widths))
    for row in rows:
        print("  ".join(str(row[key] or "-").ljust(widths[key]) for key in widths).rstrip())
    return EXIT_OK


def _params(spec: str, registry) -> int:
    """Print the parameters (type, default, constraints, description) of one strategy."""
    from .plugins import KINDS

    kind, _, name = spec.rpartition(":")
    kinds = [kind] if kind else [k for k in KINDS if name in registry.entries[k]]
    if kind and kind not in KINDS:
        raise UsageError(f"--params {spec!r}: unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    if not kinds:
        known = sorted({n for k in KINDS for n in registry.names(k)})
        raise UsageError(f"--params: no strategy named {name!r}; registered: {', '.join(known)}")
    if len(kinds) > 1:
        raise UsageError(f"--params {name!r} names a strategy of several kinds; use one of "
                         f"{', '.join(f'{k}:{name}' for k in kinds)}")
    entry = registry.get(kinds[0], name)
    schema = entry.factory.Params.model_json_schema()
    print(f"{kinds[0]} {name!r} (plugin {entry.plugin})")
    doc = (entry.factory.__doc__ or "").strip().splitlines()
    if doc:
        print(f"  {doc[0]}")
    properties = schema.get("properties", {})
    if kinds[0] == "mapper":
        from .config import CrossbarParams

        print(f"  shared by every mapper: {', '.join(CrossbarParams.model_fields)} (sme plugins --params is per strategy)")
    if not properties:
        print("  no parameters")
    for key, prop in properties.items():
        field = entry.factory.Params.model_fields[key]
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        kind_text = prop.get("type") or " | ".join(
            str(p.get("type", p.get("const", p.get("enum", "?")))) for p in prop.get("anyOf", [])) or "?"
        if "enum" in prop:
            kind_text = " | ".join(map(str, prop["enum"]))
        bounds = [f"{label} {prop[key_]}" for key_, label in
                  (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")) if key_ in prop]
        text = f"  {key}: {kind_text} " + ("(required)" if field.is_required() else f"= {json.dumps(default, default=str)}")
        if bounds:
            text += f"  ({', '.join(bounds)})"
        if prop.get("description"):
            text += f"  — {prop['description']}"
        print(text)
    return EXIT_OK


def _print_config(args, registry) -> int:
    import yaml

    from .config import DEFAULT_CONFIG, load_config

    if args.defaults:
        sys.stdout.write(DEFAULT_CONFIG.read_text())
        return EXIT_OK
    config = load_config(config_data(args, registry), registry, source=args.config or "embedded default")
    sys.stdout.write(yaml.safe_dump(config.as_dict(), sort_keys=False))
    return EXIT_OK


@contextmanager
def _heartbeat(enabled: bool, what: str):
    """While the block runs, a line on stderr every HEARTBEAT_S seconds (stdout not a terminal: no
    progress bars, and nothing else shows that the run is alive)."""
    if not enabled:
        yield
        return
    stop = threading.Event()
    started = time.monotonic()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            print(f"sme: {what}: still running ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)

    thread = threading.Thread(target=beat, name="sme-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1)


def _run(args, verbosity: int) -> int:
    from .config import load_config, output_problem

    raw = _raw_document(args)
    pm, registry = _registry_for(raw, args.config)
    config = load_config(config_data(args, registry), registry, source=args.config or "embedded default")
    if args.output is not None:
        why = output_problem(args.output)
        if why:
            raise OutputError(f"--output: {why}")
        config.output = args.output
    from .pipeline import run  # torch-heavy imports only when running
    from .report import prepare_output, write_report

    progress = not args.no_progress and verbosity >= 0 and sys.stderr.isatty()
    heartbeat = verbosity >= 0 and not sys.stdout.isatty() and not progress
    with prepare_output(config.output) as directory:
        with _heartbeat(heartbeat, f"run {config.strategies['model'].name} -> {directory}"):
            report = run(config, registry, progress=progress)
            sections = [s for found in pm.hook.sme_report_sections(report=report) for s in found]
            paths = write_report(report, directory, sections)
    _summary(report, sys.stdout)
    print(f"wrote {paths['json']}, {paths['md']} and {paths['png']}")
    return EXIT_OK


def _reproduce(args, verbosity: int) -> int:
    from .config import output_problem
    from .plugins import build_registry, plugin_manager
    from .reproduce import Plan, Reproduction, write

    why = output_problem(args.output)
    if why:
        raise OutputError(f"--output: {why}")
    if args.jobs < 1:
        raise UsageError(f"--jobs: {args.jobs} is not a positive number of processes")
    if args.samples is not None and args.samples < 1:
        raise UsageError(f"--samples: {args.samples} is not a positive number of samples")
    if args.readme is not None:  # a README that cannot take the results fails now, not after the runs
        from pathlib import Path

        from .reproduce import readme_with

        try:
            readme_with(Path(args.readme).read_text(encoding="utf-8"), "", args.readme)
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"--readme {args.readme}: cannot read it as UTF-8 text ({error})") from None
    plan = Plan()
    for key in ("models", "budgets", "finetune_budgets"):
        if getattr(args, key) is not None:
            setattr(plan, key, tuple(getattr(args, key)))
    plan.tolerance, plan.samples = args.tolerance, args.samples
    progress = not args.no_progress and verbosity >= 0 and sys.stderr.isatty()
    reproduction = Reproduction(plan, build_registry(plugin_manager()), progress=progress)
    from .report import prepare_output  # torch-heavy imports only once the plan is valid

    with prepare_output(args.output) as directory:
        with _heartbeat(verbosity >= 0 and not progress, f"reproduce {' '.join(plan.models)} -> {directory}"):
            document, reports = reproduction.run(args.jobs)
            paths = write(document, reports, directory, args.readme)
    from .reproduce import markdown

    print(markdown(document, figures=None))
    print("wrote " + ", ".join(str(p) for p in paths))
    return EXIT_OK


def _raw_document(args) -> dict:
    from .config import read_yaml

    return read_yaml(args.config) if args.config else {}


def _validate(args) -> int:
    from .config import load_config
    from .validate import check

    raw = _raw_document(args)
    _, registry = _registry_for(raw, args.config)
    config = load_config(config_data(args, registry), registry, source=args.config or "embedded default")
    check(config, registry)
    print(f"{args.config or 'embedded default'}: valid")
    return EXIT_OK


def _on_sigterm(signum, frame):
    raise Interrupted("terminated")


def main(argv=None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors: argparse's codes (0, 2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    verbosity = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
    debug = getattr(args, "debug", False) or os.environ.get("SME_DEBUG", "") not in ("", "0")
    _configure_logging(verbosity)
    try:
        import rich

        rich.reconfigure(stderr=True)  # progress bars (rich's global console) on stderr, never stdout
    except ImportError:  # pragma: no cover
        pass
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command == "plugins":
            from .plugins import build_registry, plugin_manager

            pm = plugin_manager()
            return _plugins(args, pm, build_registry(pm))
        if args.command == "config":
            if args.defaults:
                return _print_config(args, None)
            _, registry = _registry_for(_raw_document(args), args.config)
            return _print_config(args, registry)
        if args.command == "validate":
            return _validate(args)
        if args.command == "reproduce":
            return _reproduce(args, verbosity)
        return _run(args, verbosity)
    except SMEError as error:
        if debug:
            import traceback

            traceback.print_exc()
        for line in str(error).splitlines() or [type(error).__name__]:
            print(f"error: {line}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:  # stdout closed early (`sme plugins --json | head`): not an error
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK
    except KeyboardInterrupt:
        print("sme: interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Interrupted as error:
        print("sme: terminated; nothing written", file=sys.stderr)
        return error.exit_code
    except Exception as error:  # a bug: one line, the traceback on demand
        if debug:
            import traceback

            traceback.print_exc()
        message = " ".join(str(error).split())[:300] or "(no message)"
        print(f"error: internal error: {type(error).__name__}: {message}", file=sys.stderr)
        if not debug:
            print("error: this is a bug in SME or a plugin; run with --debug (or SME_DEBUG=1) for the traceback",
                  file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        try:
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            pass


if __name__ == "__main__":
    sys.exit(main())
