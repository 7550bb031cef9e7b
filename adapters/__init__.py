"""Adapters to existing simulators, registered as an SME plugin; their simulators are imported lazily."""

from sme_plugin.hookspecs import hookimpl

from .aihwkit import AihwkitHost

__all__ = ["AihwkitHost"]


@hookimpl
def sme_register_hosts(register):
    register("aihwkit", AihwkitHost)
