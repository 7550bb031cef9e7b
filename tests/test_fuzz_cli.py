"""Hypothesis fuzzing of config documents and CLI arguments: every outcome is a documented exit code,
never a traceback without --debug; a failure leaves no output directory, a success complete outputs."""

import json
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sme_plugin.cli import main
from sme_plugin.errors import EXIT_CODES

SECTIONS = {
    "quantizer": ["uniform", "pow2", "apot", "kbits", None],
    "orchestrator": ["none", "kbits", "window", "bogus"],
    "mapper": ["isaac", "bitplane", "sme", "hybrid"],
    "squeezer": ["none", "row-compact", "tile-empty", "sme"],
    "cell": ["ideal", "slc", "mlc"],
    "adc": ["ideal", "uniform", "noisy"],
    "dac": ["ideal", "noisy"],
}
KEYS = ["bits", "k", "budget", "scope", "mode", "segment", "packing", "sign", "rows", "cols", "ou_rows", "threshold",
        "reorder", "read_sigma", "program_sigma", "on_off_ratio", "noise_lsb", "offset_lsb", "sigma", "full_scale",
        "weight_bits", "cell_bits", "planes", "rounding", "stuck_at_0", "granularity"]
values = st.one_of(
    st.integers(-3, 300), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.01, 0.05, 0.5, 1.0, 1e308]),
    st.booleans(), st.none(), st.text(max_size=12),
    st.sampled_from(["ou", "tile", "column", "layer", "model", "budget", "fixed", "auto", "differential", "offset",
                     "segment-offset", "lossless", "calibrated", "channel", "nearest"]),
    st.lists(st.integers(0, 3), max_size=3),
)


@st.composite
def documents(draw):
    doc = {"dataset": None, "model": {"name": "digits"}}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), unique=True, max_size=4)):
        body = {"name": draw(st.sampled_from(SECTIONS[section]))}
        for key in draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=3)):
            body[key] = draw(values)
        doc[section] = body
    if draw(st.booleans()):
        doc["seed"] = draw(values)
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.sampled_from(["output", "activations", "plugins", "junk"]))] = draw(values)
    return doc


def _dump(doc) -> str:
    return yaml.safe_dump(doc, allow_unicode=True)


def check(capsys, code, out, ran):
    err = capsys.readouterr().err
    assert code in EXIT_CODES, (code, err)
    assert "Traceback" not in err, err
    if ran and code == 0:
        assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "summary.png"]
        report = json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
        assert all(math.isfinite(v) for v in report["totals"]["crossbars"].values())
    elif ran:
        assert not out.exists(), err
        assert code != 1, err  # a fuzzed config is a user mistake, never an internal error


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=documents(), extra=st.lists(st.sampled_from(["-q", "-v", "--set", "seed=1", "--set", "mapper.rows=2",
                                                        "--set", "=", "--model", "digits", "--bogus"]), max_size=3))
def test_validate_fuzz(tmp_path_factory, capsys, doc, extra):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(_dump(doc))
    code = main(["validate", str(path), *extra])
    check(capsys, code, None, ran=False)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=documents())
def test_run_fuzz(tmp_path_factory, capsys, doc):
    base = tmp_path_factory.mktemp("fuzzrun")
    path = base / "c.yaml"
    path.write_text(_dump(doc))
    out = base / "new" / "out"
    code = main(["run", str(path), "--output", str(out), "-q"])
    check(capsys, code, out, ran=True)
    if code != 0:
        assert not (base / "new").exists()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(content=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_arbitrary_files_are_clean_errors(tmp_path_factory, capsys, content):
    path = tmp_path_factory.mktemp("raw") / "c.yaml"
    path.write_bytes(content)
    code = main(["validate", str(path)])
    check(capsys, code, None, ran=False)
