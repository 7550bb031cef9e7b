
import pytest

from sme_plugin import hookimpl
from sme_plugin.errors import ConfigError, PluginError
from sme_plugin.params import StrategyParams
from sme_plugin.plugins import KINDS, build_registry, plugin_manager


class KeepSqueezer:
    class Params(StrategyParams):
        pass

    def __init__(self, params):
        self.params = params

    def squeeze(self, mapped, mapper):
        return mapped


class InlinePlugin:
    @hookimpl
    def sme_register_squeezers(self, register):
        register("keep", KeepSqueezer)


def test_builtins_register_every_kind():
    registry = build_registry(plugin_manager(load_entrypoints=False))
    expected = {
        "quantizer": {"uniform", "pow2", "apot", "kmeans"},
        "orchestrator": {"none", "kbits", "window"},
        "mapper": {"isaac", "bitplane", "sme", "hybrid"},
        "squeezer": {"none", "row-compact", "tile-empty", "sme"},
        "cell": {"ideal", "slc", "mlc"},
        "adc": {"ideal", "uniform", "noisy"},
        "dac": {"ideal", "noisy"},
        "host": {"standalone"},
        "model": {"digits", "resnet50", "mobilenet_v2"},
        "dataset": {"digits"},
    }
    for kind, names in expected.items():
        assert names <= set(registry.names(kind)), kind
    assert set(expected) == set(KINDS)


def test_inline_plugin_registers_and_knows_its_plugin():
    pm = plugin_manager(load_entrypoints=False, extra_plugins=[InlinePlugin()])
    entry = build_registry(pm).get("squeezer", "keep")
    assert entry.factory is KeepSqueezer
    assert entry.plugin not in ("sme_plugin.squeeze",)


def test_duplicate_name_names_both_plugins():
    class Clash:
        @hookimpl
        def sme_register_squeezers(self, register):
            register("none", KeepSqueezer)

    pm = plugin_manager(load_entrypoints=False, extra_plugins=[Clash()])
    with pytest.raises(PluginError, match=r"'none' is registered twice.*sme_plugin\.squeeze"):
        build_registry(pm)


def test_unknown_name_suggests_closest():
    registry = build_registry(plugin_manager(load_entrypoints=False))
    with pytest.raises(ConfigError, match=r"squeezer\.name: unknown squeezer 'tile-emtpy' \(did you mean 'tile-empty'\?\)"):
        registry.get("squeezer", "tile-emtpy", "squeezer.name")


def test_entry_point_plugin_autoloads_and_can_be_disabled(tmp_path, monkeypatch, write_squeezer_plugin):
    write_squeezer_plugin("sme_third_party", "third-party")
    info = tmp_path / "sme_third_party-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sme-third-party\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sme_plugin]\nthird = sme_third_party\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    monkeypatch.setenv("SME_DISABLE_PLUGIN_AUTOLOAD", "")
    entry = build_registry(plugin_manager()).get("squeezer", "third-party")
    assert entry.distribution == "sme-third-party 1.0"

    monkeypatch.setenv("SME_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "third-party" not in build_registry(plugin_manager()).names("squeezer")
