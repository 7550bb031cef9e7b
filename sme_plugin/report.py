"""Reports: report.json for scripts (strict JSON), report.md for people and its figure summary.png,
replaced together or not at all."""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

#: mapping labels in the order reports list them.
LABELS = ("isaac", "isaac16", "bitplane", "sme")


def format_reduction(value) -> str:
    """The one format of a crossbar reduction factor everywhere (console, report.md): ``1.50x``."""
    return "—" if value is None else f"{value:.2f}x"


def non_finite(value, path: str = "") -> list[str]:
    """Paths of every NaN/inf number in a JSON-like value."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{path or '.'} = {value}"]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in non_finite(item, f"{path}.{key}" if path else str(key))]
    if isinstance(value, (list, tuple)):
        return [p for i, item in enumerate(value) for p in non_finite(item, f"{path}[{i}]")]
    return []


def to_json(report: dict) -> str:
    """Strict JSON text of a report; a NaN/inf anywhere is an error naming where (never bare NaN)."""
    bad = non_finite(report)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(f"report has non-finite values: {', '.join(bad[:3])}{more}")
    return json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n"


@contextmanager
def prepare_output(directory: str | Path):
    """Create ``directory`` if needed and check it is writable before any long computation; if the
    run then fails, remove the directories this created (nothing half-written stays behind)."""
    path = Path(directory)
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".sme-probe-"):
            pass
    except OSError as error:
        raise OutputError(f"output directory {path}: not writable ({error.strerror or error})") from None
    try:
        yield path
    except BaseException:
        for folder in created:  # innermost first
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def write_atomically(files: dict[Path, str | bytes]) -> None:
    """Replace every file together or none: write each to a temporary sibling, set the old files
    aside, rename the new ones into place, then drop the old ones; on any failure (or interrupt) the
    old files are put back and every temporary file is removed."""
    temps: list[tuple[str, Path]] = []
    aside: list[tuple[Path, str]] = []
    placed: list[Path] = []
    try:
        for target, content in files.items():
            if target.is_dir() and not target.is_symlink():
                raise IsADirectoryError(21, "a directory is in the way", str(target))
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            temps.append((tmp, target))
            with os.fdopen(fd, "wb" if isinstance(content, bytes) else "w", **({} if isinstance(content, bytes) else {"encoding": "utf-8"})) as handle:
                handle.write(content)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        for _, target in temps:
            if target.exists() or target.is_symlink():
                backup = str(target.parent / f".{target.name}.old.{os.getpid()}")
                os.replace(target, backup)
                aside.append((target, backup))
        for tmp, target in temps:
            os.replace(tmp, target)
            placed.append(target)
    except BaseException as error:
        for target in placed:
            Path(target).unlink(missing_ok=True)
        for target, backup in aside:
            try:
                os.replace(backup, target)
            except OSError:  # pragma: no cover - nothing better to do
                pass
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            where = getattr(error, "filename", None) or next(iter(files)).parent
            raise OutputError(f"cannot write the report into {next(iter(files)).parent}: "
                              f"{error.strerror or error} ({where})") from None
        raise
    for _, backup in aside:
        Path(backup).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _params_text(section: dict | None) -> str:
    if not section:
        return "none"
    params = ", ".join(f"{k}={json.dumps(v)}" for k, v in section.items() if k != "name")
    return f"`{section['name']}`" + (f" ({params})" if params else "")


def _components(report: dict) -> str:
    """Every component and budget of the run, the seed and the output (from report['config'])."""
    config = report.get("config", {})
    rows = [[kind, _params_text(config.get(kind))] for kind in
            ("model", "dataset", "quantizer", "orchestrator", "mapper", "squeezer", "cell", "adc", "dac", "host")
            if kind in config]
    if "activations" in config:
        rows.append(["activations", ", ".join(f"{k}={v}" for k, v in config["activations"].items())])
    budgets = [f"{kind}.budget={config[kind]['budget']}" for kind in ("orchestrator", "squeezer")
               if isinstance(config.get(kind), dict) and "budget" in config[kind]]
    rows.append(["budgets", ", ".join(budgets) or "none"])
    rows.append(["seed", str(config.get("seed", "—"))])
    if config.get("plugins"):
        rows.append(["plugins", ", ".join(config["plugins"])])
    return _table(["component", "strategy and parameters"], rows)


def _timings(report: dict) -> str:
    timing = report.get("timing_s", {})
    if not timing:
        return "No timings recorded."
    return _table(["stage", "seconds"], [[k, _fmt(float(v))] for k, v in timing.items()] +
                  [["total", _fmt(float(sum(timing.values())))]])


def _tradeoff(report: dict, baseline: str = "isaac") -> str:
    """One sentence naming every axis on which SME is worse than ``baseline`` (the price of its saving)."""
    sme, base = report["costs"]["sme"], report["costs"][baseline]
    axes = {"energy": "energy_uj", "latency": "latency_us", "area": "area_mm2", "ADC conversions": "adc_conversions"}
    worse = [f"{sme[key] / base[key]:.2f}x the {axis}" for axis, key in axes.items()
             if base[key] and sme[key] > base[key]]
    accuracy = report["accuracy"]
    if accuracy.get("sme") is not None and accuracy.get(baseline) is not None and accuracy["sme"] < accuracy[baseline]:
        worse.append(f"{accuracy[baseline] - accuracy['sme']:.2f} points of accuracy")
    if not worse:
        return f"SME is no worse than {baseline} on energy, latency, area, ADC conversions or accuracy."
    return f"Trade-off: against {baseline}, SME takes {', '.join(worse)}."


def _metric_column(accuracy: dict) -> str:
    """Header of the accuracy column: top-1 accuracy, or top-1 agreement with the float model on unlabelled data."""
    return "agreement with float %" if "agreement" in (accuracy.get("metric") or "") else "accuracy %"


def _headline(report: dict, labels: list[str]) -> str:
    """One row per mapping: crossbars, reduction, reads, ADC conversions and bits, energy (analog and
    digital), latency, area and simulated accuracy, so a saving on one axis shows its cost on the others."""
    totals, costs, acc = report["totals"], report["costs"], report["accuracy"]
    rows = []
    for label in labels:
        c = costs[label]
        rows.append([label, c["crossbars"], format_reduction(totals["reductions"].get(f"vs_{label}")), c["reads"],
                     c["adc_conversions"], f"{c['adc_bits_lossless_max']} / {c['adc_bits_used_max']}",
                     _fmt(c["energy_uj"]), f"{_fmt(c['energy_analog_uj'])} / {_fmt(c['energy_digital_uj'])}",
                     _fmt(c["latency_us"]), _fmt(c["area_mm2"]), _fmt(acc.get(label))])
    return _table(["mapping", "crossbars", "SME saves", "reads", "ADC conversions", "ADC bits (lossless / used)",
                   "energy µJ", "analog / digital µJ", "latency µs", "area mm²", _metric_column(acc)], rows)


def markdown(report: dict, extra_sections=()) -> str:
    """The human report."""
    totals, model, acc = report["totals"], report["model"], report["accuracy"]
    labels = [label for label in LABELS if label in totals["crossbars"]]
    g = report["geometry"]
    parts = [
        f"# SME report — {model['name']} ({model['weights']} weights)",
        f"Crossbars {g['rows']}x{g['cols']}, {g['cell']} cells of {g['cell_bits']} bit(s), OU rows {g['ou_rows']}, "
        f"depthwise convention `{model['depthwise']}`; config: {report['config_source']}; "
        f"SME {report.get('sme_version', '?')}.",
        *([f"BatchNorm not folded (it could not be folded into the conv before it; it runs in float between the "
           f"mapped layers, whose weights stay unfolded): {', '.join(model['batchnorm_unfolded'])}."]
          if model.get("batchnorm_unfolded") else []),
        "## Configuration",
        _components(report),
        "## SME next to each baseline (per inference)",
        _headline(report, labels),
        f"Reduction against the ISAAC baseline at the same weight width: **{format_reduction(totals['reduction'])}**; "
        f"weight error of the SME mapping ||W'-W||/||W|| = {_fmt(totals['weight_error'])}. Every figure comes from "
        "the mappings' placements; accuracies are simulated through the same cells, ADC and DAC. "
        + _tradeoff(report),
        "![crossbars per layer and bit-plane sparsity](summary.png)",
        "## Accuracy",
        _table(["float", "quantizer only", "quantized (digital, final weights)", "SME crossbars", "ISAAC crossbars",
                "samples"],
               [[_fmt(acc["float"]), _fmt(acc["quantizer_only"]), _fmt(acc["quantized"]), _fmt(acc["sme"]),
                 _fmt(acc.get("isaac")), acc["samples"]]])
        if acc.get("dataset") else f"Not run: {acc.get('skipped', 'no dataset configured')}.",
        "## Layers",
        _table(["layer", "kind", "N x M (parts)", "weights", *labels, "ADC bits (lossless max)", "weight error"],
               [[lay["name"], lay["kind"], f"{lay['rows']}x{lay['cols']} ({lay['parts']})", lay["weights"],
                 *[lay["crossbars"][label] for label in labels], lay["adc_bits"]["lossless_max"], _fmt(lay["weight_error"])]
                for lay in report["layers"]]),
    ]
    parts += ["## Timings", _timings(report)]
    for title, body in extra_sections:
        parts += [f"## {title}", body]
    return "\n\n".join(parts) + "\n"


def write_report(report: dict, directory: Path, extra_sections=()) -> dict[str, Path]:
    """Write report.json, report.md and its figure summary.png into ``directory``: everything is
    rendered first (strict JSON, the figure), then the three files replace the old ones together."""
    from .plots import summary_png

    paths = {"json": directory / "report.json", "md": directory / "report.md", "png": directory / "summary.png"}
    contents = {paths["json"]: to_json(report), paths["md"]: markdown(report, extra_sections),
                paths["png"]: summary_png(report)}
    write_atomically(contents)
    return paths
