import pytest

from sme_plugin.config import load_config
from sme_plugin.errors import ConfigError
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


def test_missing_file_is_a_config_error(tmp_path, registry):
    assert "cannot read config" in error_lines(tmp_path / "nope.yaml", registry)[0]
