"""Plugin manager and strategy registries.

Built-in strategies are plugins like any other (:data:`DEFAULT_PLUGINS`); third-party plugins load
from the entry-point group ``sme_plugin`` unless ``SME_DISABLE_PLUGIN_AUTOLOAD`` is set; a config's
``plugins: [module, ...]`` loads inline plugin modules (like pytest's ``-p``); ``SME_DISABLE_PLUGINS=
name,...`` blocks single plugins by the name ``sme plugins`` shows. Every registry hook is called
through pluggy, one plugin at a time so that each registration knows its plugin, and every factory is
checked against its kind's contract (:mod:`~sme_plugin.contracts`).
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from . import __version__, hookspecs
from .contracts import check_factory
from .errors import ConfigError, PluginError

log = logging.getLogger(__name__)

DEFAULT_PLUGINS = (
    "sme_plugin.quantize",
    "sme_plugin.orchestrate",
    "sme_plugin.mapping",
    "sme_plugin.squeeze",
    "sme_plugin.converters",
    "sme_plugin.host",
    "sme_plugin.models",
    "sme_plugin.datasets",
    "sme_plugin.zoo",
    "cell_models",
    "adapters",
)
#: plugin name -> module, where they differ: the repository's cell_models/ and adapters/ folders are
#: installed as sme_cell_models and sme_adapters (unique top-level names).
PLUGIN_MODULES = {"cell_models": "sme_cell_models", "adapters": "sme_adapters"}

#: registry kind -> hook name; the kind is also the config section that selects it.
KINDS = {
    "quantizer": "sme_register_quantizers",
    "orchestrator": "sme_register_orchestrators",
    "mapper": "sme_register_mappers",
    "squeezer": "sme_register_squeezers",
    "cell": "sme_register_cell_models",
    "adc": "sme_register_adcs",
    "dac": "sme_register_dacs",
    "host": "sme_register_hosts",
    "model": "sme_register_models",
    "dataset": "sme_register_datasets",
}


@dataclass(frozen=True)
class Registration:
    """One registered strategy: its factory and the plugin (and distribution) that provided it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str | None


@dataclass
class Registry:
    """Every registered strategy, by kind then name."""

    entries: dict[str, dict[str, Registration]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def get(self, kind: str, name: str, path: str | None = None) -> Registration:
        """Look a strategy up; an unknown name raises :class:`ConfigError` listing the choices."""
        known = self.entries[kind]
        if name in known:
            return known[name]
        where = path or f"{kind}.name"
        close = difflib.get_close_matches(str(name), list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{where}: unknown {kind} {name!r}{hint}; registered: {', '.join(sorted(known)) or 'none'}"
        )

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])


def disabled_plugins() -> list[str]:
    """Plugin names blocked by ``SME_DISABLE_PLUGINS`` (comma-separated)."""
    return [name.strip() for name in os.environ.get("SME_DISABLE_PLUGINS", "").split(",") if name.strip()]


def import_plugin_module(name: str, search_path: str | None = None):
    """Import a plugin module named in a config's ``plugins:`` (``search_path``: the config's folder,
    searched first, as tox finds a toxfile next to tox.ini)."""
    added = search_path is not None and search_path not in sys.path
    if added:
        sys.path.insert(0, search_path)
    try:
        return importlib.import_module(name)
    except Exception as error:  # ImportError, or anything the module raises while it loads
        raise PluginError(f"plugins: cannot import {name!r} ({type(error).__name__}: {str(error)[:200]})") from None
    finally:
        if added:
            sys.path.remove(search_path)


def plugin_manager(load_entrypoints: bool | None = None, extra_plugins=(), extra_modules=(),
                   search_path: str | None = None) -> pluggy.PluginManager:
    """A plugin manager with the built-ins, entry-point plugins, ``extra_modules`` (module names, as a
    config's ``plugins:``) and ``extra_plugins`` (objects) registered.

    ``load_entrypoints=None`` loads the ``sme_plugin`` entry points unless the environment variable
    ``SME_DISABLE_PLUGIN_AUTOLOAD`` is set to a non-empty value other than ``0``. Plugins named in
    ``SME_DISABLE_PLUGINS`` are blocked (built-ins, entry points and modules alike).
    """
    pm = pluggy.PluginManager("sme_plugin")
    pm.add_hookspecs(hookspecs)
    for name in disabled_plugins():
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if not pm.is_blocked(module_name):
            pm.register(importlib.import_module(PLUGIN_MODULES.get(module_name, module_name)), name=module_name)
    if load_entrypoints is None:
        load_entrypoints = os.environ.get("SME_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0")
    if load_entrypoints:
        pm.load_setuptools_entrypoints("sme_plugin")
    for module_name in extra_modules:
        if not pm.is_blocked(module_name) and pm.get_plugin(module_name) is None:
            pm.register(import_plugin_module(module_name, search_path), name=module_name)
    for plugin in extra_plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        raise PluginError(f"plugin {pm.get_name(error.plugin)!r}: {error}") from None
    return pm


def _distributions(pm: pluggy.PluginManager) -> dict[int, str]:
    return {id(plugin): f"{dist.project_name} {dist.version}" for plugin, dist in pm.list_plugin_distinfo()}


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Call every registry hook through pluggy, plugin by plugin, so each registration knows its plugin.

    Registering one name twice for a kind, or a factory that breaks its kind's contract, raises
    :class:`PluginError` naming the plugin(s).
    """
    registry = Registry()
    dists = _distributions(pm)
    plugins = pm.get_plugins()
    for kind, hook_name in KINDS.items():
        for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
            plugin_name = impl.plugin_name

            def register(name, factory, _kind=kind, _impl=impl, _plugin=plugin_name):
                if not isinstance(name, str) or not name or len(name) > 64:
                    raise PluginError(f"plugin {_plugin!r} registered a {_kind} with an invalid name {name!r:.80}")
                check_factory(_kind, name, factory, _plugin)
                previous = registry.entries[_kind].get(name)
                if previous is not None:
                    raise PluginError(
                        f"{_kind} {name!r} is registered twice: by plugin {previous.plugin!r} "
                        f"and by plugin {_plugin!r}"
                    )
                builtin = f"sme-reram {__version__} (built-in)" if _plugin in DEFAULT_PLUGINS else None
                registry.entries[_kind][name] = Registration(
                    _kind, name, factory, _plugin, dists.get(id(_impl.plugin), builtin)
                )

            only_this = pm.subset_hook_caller(hook_name, remove_plugins=[p for p in plugins if p is not impl.plugin])
            try:
                only_this(register=register)
            except (PluginError, ConfigError):
                raise
            except Exception as error:
                raise PluginError(f"plugin {plugin_name!r}: {hook_name} failed "
                                  f"({type(error).__name__}: {str(error)[:200]})") from error
    return registry


def registry_of(*plugins) -> Registry:
    """The registry of just ``plugins`` (modules or objects): no built-ins, no entry points."""
    pm = pluggy.PluginManager("sme_plugin")
    pm.add_hookspecs(hookspecs)
    for plugin in plugins:
        pm.register(plugin)
    return build_registry(pm)
