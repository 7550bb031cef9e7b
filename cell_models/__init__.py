"""ReRAM cell models (ideal, SLC, MLC), registered as an SME plugin through ``sme_register_cell_models``.

Installed as ``sme_cell_models`` (a unique top-level name); ``import cell_models`` from a source checkout
resolves to the same module objects.
"""

if __name__ == "cell_models":  # a source checkout imported by its folder name: become the installed package
    from sme_plugin._alias import alias_package as _alias

    _alias(__name__, "sme_cell_models")
else:
    from sme_plugin.hookspecs import hookimpl

    from .reram import PRESETS, IdealCell, MLCCell, PhysicalCell, SLCCell

    __all__ = ["PRESETS", "IdealCell", "MLCCell", "PhysicalCell", "SLCCell"]

    @hookimpl
    def sme_register_cell_models(register):
        register("ideal", IdealCell)
        register("slc", SLCCell)
        register("mlc", MLCCell)
