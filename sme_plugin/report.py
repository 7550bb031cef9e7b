"""Reports: report.json for scripts, report.md for people; both written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError
from .plots import LABELS, summary_png


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
    """Write every file (text or bytes) to a temporary sibling first, then rename them all into place."""
    temps = []
    try:
        for target, content in files.items():
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            temps.append((tmp, target))
            with os.fdopen(fd, "wb" if isinstance(content, bytes) else "w") as handle:
                handle.write(content)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        for tmp, target in temps:
            os.replace(tmp, target)
    except OSError as error:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write the report into {next(iter(files)).parent}: {error.strerror or error}") from None


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


def markdown(report: dict, extra_sections=()) -> str:
    """The human report."""
    totals, model, acc = report["totals"], report["model"], report["accuracy"]
    labels = [label for label in LABELS if label in totals["crossbars"]]
    g = report["geometry"]
    parts = [
        f"# SME report — {model['name']} ({model['weights']} weights)",
        f"Crossbars {g['rows']}x{g['cols']}, {g['cell']} cells of {g['cell_bits']} bit(s), OU rows {g['ou_rows']}, "
        f"depthwise convention `{model['depthwise']}`; config: {report['config_source']}.",
        "## Crossbars",
        _table(["mapping", "crossbars", "reduction by SME"],
               [[label, totals["crossbars"][label], _fmt(totals["reductions"].get(f"vs_{label}"))] for label in labels]),
        f"Reduction against the ISAAC baseline at the same weight width: **{_fmt(totals['reduction'])}x**; "
        f"weight error of the SME mapping ||W'-W||/||W|| = {_fmt(totals['weight_error'])}.",
        "![crossbars per layer and bit-plane sparsity](summary.png)",
        "## Accuracy",
        _table(["float", "quantizer only", "quantized (digital, final weights)", "SME crossbars", "samples"],
               [[_fmt(acc["float"]), _fmt(acc["quantizer_only"]), _fmt(acc["quantized"]), _fmt(acc["sme"]), acc["samples"]]])
        if acc.get("dataset") else f"Not run: {acc.get('skipped', 'no dataset configured')}.",
        "## Costs per inference",
        _table(["mapping", "area mm²", "energy µJ", "latency µs", "ADC conversions", "max lossless ADC bits"],
               [[label, _fmt(c["area_mm2"]), _fmt(c["energy_uj"]), _fmt(c["latency_us"]), c["adc_conversions"],
                 c["adc_bits_lossless_max"]] for label, c in report["costs"].items()]),
        "## Layers",
        _table(["layer", "kind", "N x M (parts)", "weights", *labels, "ADC bits (lossless max)", "weight error"],
               [[lay["name"], lay["kind"], f"{lay['rows']}x{lay['cols']} ({lay['parts']})", lay["weights"],
                 *[lay["crossbars"][label] for label in labels], lay["adc_bits"]["lossless_max"], _fmt(lay["weight_error"])]
                for lay in report["layers"]]),
    ]
    for title, body in extra_sections:
        parts += [f"## {title}", body]
    return "\n\n".join(parts) + "\n"


def write_report(report: dict, directory: Path, extra_sections=()) -> dict[str, Path]:
    """Write report.json, report.md and its figure summary.png into ``directory`` atomically."""
    paths = {"json": directory / "report.json", "md": directory / "report.md", "png": directory / "summary.png"}
    write_atomically({
        paths["json"]: json.dumps(report, indent=2, sort_keys=False) + "\n",
        paths["md"]: markdown(report, extra_sections),
        paths["png"]: summary_png(report),
    })
    return paths
