"""Adapters to existing simulators, registered as an SME plugin; their simulators are imported lazily.

The repository's ``adapters/`` folder is installed as ``sme_adapters`` (a unique top-level name).
"""

from sme_plugin.hookspecs import hookimpl

from .aihwkit import AihwkitHost

__all__ = ["AihwkitHost"]


@hookimpl
def sme_register_hosts(register):
    register("aihwkit", AihwkitHost)
