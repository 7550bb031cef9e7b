"""Adapters to existing simulators, registered as an SME plugin; their simulators are imported lazily.

Installed as ``sme_adapters`` (a unique top-level name); ``import adapters`` from a source checkout
resolves to the same module objects.
"""

if __name__ == "adapters":  # a source checkout imported by its folder name: become the installed package
    from sme_plugin._alias import alias_package as _alias

    _alias(__name__, "sme_adapters")
else:
    from sme_plugin.hookspecs import hookimpl

    from .aihwkit import AihwkitHost

    __all__ = ["AihwkitHost"]

    @hookimpl
    def sme_register_hosts(register):
        register("aihwkit", AihwkitHost)
