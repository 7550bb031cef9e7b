import pytest

from sme_plugin.config import load_config
from sme_plugin.errors import ConfigError, InputError
from sme_plugin.plugins import build_registry, plugin_manager


@pytest.fixture(scope="module")
def registry():
    return build_registry(plugin_manager(load_entrypoints=False))


def error_lines(data, registry):
    with pytest.raises(ConfigError) as info:
        load_config(data, registry)
    return str(info.value).splitlines()


def test_embedded_default_is_valid_and_complete(registry):
    config = load_config(None, registry)
    assert config.strategies["mapper"].name == "sme"
    assert config.strategies["orchestrator"].name == "window"
    assert config.as_dict()["mapper"]["rows"] == 128
    assert config.source == "embedded default"


def test_override_same_strategy_updates_params(registry):
    config = load_config({"quantizer": {"bits": 6}}, registry)
    assert config.strategies["quantizer"].params.bits == 6
    assert config.strategies["quantizer"].name == "uniform"


def test_dataset_null_disables_accuracy(registry):
    assert load_config({"dataset": None}, registry).strategies["dataset"] is None


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"mappr": {"name": "sme"}}, "mappr: unknown key (did you mean 'mapper'?)"),
        ({"quantizer": {"name": "uniform", "bits": "eight"}}, "quantizer.bits: "),
        ({"quantizer": {"name": "uniform", "bits": 40}}, "quantizer.bits: "),
        ({"squeezer": {"name": "tile-emtpy"}}, "squeezer.name: unknown squeezer 'tile-emtpy' (did you mean 'tile-empty'?)"),
        ({"mapper": {"name": "sme", "pakcing": "ou"}}, "mapper.pakcing: unknown key (did you mean 'packing'?)"),
        ({"mapper": {"name": "sme", "packing": "colum"}}, "mapper.packing: 'colum' is not one of tile, column, ou (did you mean 'column'?)"),
        ({"mapper": {"rows": 0}}, "mapper.rows: "),
        ({"seed": -1}, "seed: "),
        ({"activations": {"bits": 0}}, "activations.bits: "),
        ({"mapper": {"ou_rows": 10}}, "mapper: ou_rows = 10 must divide rows = 128"),
        ({"mapper": {"rowz": 64}}, "mapper.rowz: unknown key (did you mean 'rows'?); valid keys: sign, packing, rows"),
        ({"cell": {"name": "slc", "stuck_at_0": 0.6, "stuck_at_1": 0.6}}, "cell: stuck_at_0 + stuck_at_1"),
    ],
)
def test_each_mistake_is_one_line_naming_the_path(registry, data, expected):
    lines = error_lines(data, registry)
    assert len(lines) == 1, lines
    assert lines[0].startswith(expected), lines[0]


def test_several_mistakes_give_several_lines(registry):
    lines = error_lines({"quantizer": {"name": "uniform", "bits": 99}, "cell": {"name": "mcl"}}, registry)
    assert len(lines) == 2
    assert lines[0].startswith("quantizer.bits") and lines[1].startswith("cell.name")


def test_yaml_errors_name_the_file_and_line(tmp_path, registry):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {name: digits}\nmapper: [unclosed\n")
    lines = error_lines(path, registry)
    assert lines[0].startswith(f"{path}: line") and "invalid YAML" in lines[0]


def test_missing_file_is_an_input_error(tmp_path, registry):
    with pytest.raises(InputError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml", registry)


@pytest.mark.parametrize(
    "section, key",
    [
        ("cell", "read_sigma"), ("cell", "program_sigma"), ("cell", "on_off_ratio"),
        ("adc", "noise_lsb"), ("adc", "offset_lsb"), ("dac", "sigma"), ("squeezer", "budget"),
    ],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), ".nan", "inf"])
def test_non_finite_numbers_are_refused(registry, section, key, value):
    names = {"cell": "slc", "adc": "noisy", "dac": "noisy", "squeezer": "tile-empty"}
    lines = error_lines({section: {"name": names[section], key: value}}, registry)
    assert len(lines) == 1 and lines[0].startswith(f"{section}.{key}: "), lines


def test_yaml_nan_is_refused(tmp_path, registry):
    path = tmp_path / "nan.yaml"
    path.write_text("cell: {name: slc, read_sigma: .nan}\nadc: {name: noisy, noise_lsb: .inf}\n")
    lines = error_lines(path, registry)
    assert [line.split(":")[0] for line in lines] == ["cell.read_sigma", "adc.noise_lsb"]


@pytest.mark.parametrize("data, expected", [
    ({"squeezer": {"name": "tile-empty", "budget": 1e308}}, "squeezer.budget: "),
    ({"adc": {"name": "noisy", "noise_lsb": 1e300}}, "adc.noise_lsb: "),
    ({"seed": 2**64}, "seed: "),
    ({"seed": 2**32}, "seed: "),
    ({"seed": 1.5}, "seed: "),
    ({"output": ""}, "output: must not be empty"),
    ({"output": "a\0b"}, "output: contains a NUL"),
    ({"output": "x" * 300}, "output: path component longer than 255 bytes"),
    ({"output": 3}, "output: "),
    ({"squeezer": {"name": "x" * 10_000}}, "squeezer.name: "),
    ({"plugins": "my_module"}, "plugins: must be a list"),
    ({"plugins": ["not a module"]}, "plugins: 'not a module' is not a module name"),
    ({"cell": "slc"}, "cell: must be a section"),
    ({"model": {"name": "digits", 3: 4}}, "model.3: Keys should be strings"),
])
def test_extreme_values_are_config_errors(registry, data, expected):
    lines = error_lines(data, registry)
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert len(lines[0]) <= 300


def test_seed_range_accepts_32_bits(registry):
    assert load_config({"seed": 2**32 - 1}, registry).seed == 2**32 - 1


def test_every_bad_section_is_reported(registry):
    data = {"quantizer": {"bits": 99}, "cell": {"name": "mcl"}, "seed": -1, "mapper": {"rows": 0},
            "adc": {"name": "noisy", "noise_lsb": float("nan")}, "bogus": 1}
    lines = error_lines(data, registry)
    heads = {line.split(":")[0] for line in lines}
    assert {"bogus", "seed", "quantizer.bits", "cell.name", "mapper.rows", "adc.noise_lsb"} <= heads, lines


def test_error_messages_stay_short(registry):
    data = {f"bad{i}": i for i in range(100)} | {"quantizer": {"name": "uniform", "bits": ["x" * 1000] * 1000}}
    with pytest.raises(ConfigError) as info:
        load_config(data, registry)
    message = str(info.value)
    assert len(message.splitlines()) <= 20 and len(message) < 20 * 300 and "more problems" in message


def test_small_crossbars_get_a_fitting_operation_unit(registry):
    assert load_config({"mapper": {"rows": 2}}, registry).crossbar.ou_rows == 2
    assert load_config({"mapper": {"rows": 24}}, registry).crossbar.ou_rows == 12
    assert load_config({"mapper": {"rows": 24, "ou_rows": 8}}, registry).crossbar.ou_rows == 8
    assert load_config({}, registry).crossbar.ou_rows == 16


@pytest.mark.parametrize("content, expected", [
    (b"model: {name: digits}\n\xff\xfe bad", "not UTF-8"),
    (b"a: " + b"[" * 5000 + b"]" * 5000, "nested deeper than"),
    (b"a: " + b"{b: " * 100 + b"1" + b"}" * 100, "nested deeper than"),
    (b"x" * (2 << 20), "larger than"),
])
def test_hostile_files_are_refused_quickly(tmp_path, registry, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises((ConfigError, InputError), match=expected):
        load_config(path, registry)


def test_billion_laughs_is_refused_quickly(tmp_path, registry):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    lines += ["model: {name: digits, seed: *a9}"]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    import time

    started = time.perf_counter()
    with pytest.raises(ConfigError, match="YAML aliases") as info:
        load_config(path, registry)
    assert time.perf_counter() - started < 2 and len(str(info.value)) < 300
