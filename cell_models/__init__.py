"""ReRAM cell models (ideal, SLC, MLC), registered as an SME plugin through ``sme_register_cell_models``.

The repository's ``cell_models/`` folder is installed as ``sme_cell_models`` (a unique top-level name).
"""

from sme_plugin.hookspecs import hookimpl

from .reram import PRESETS, IdealCell, MLCCell, PhysicalCell, SLCCell

__all__ = ["PRESETS", "IdealCell", "MLCCell", "PhysicalCell", "SLCCell"]


@hookimpl
def sme_register_cell_models(register):
    register("ideal", IdealCell)
    register("slc", SLCCell)
    register("mlc", MLCCell)
