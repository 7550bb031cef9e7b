"""SME: squeeze bit-level sparsity out of ReRAM crossbar mappings of quantized DNNs.

Stages (one module each): :mod:`~sme_plugin.quantize`, :mod:`~sme_plugin.orchestrate`,
:mod:`~sme_plugin.signs`, :mod:`~sme_plugin.mapping`, :mod:`~sme_plugin.squeeze`,
:mod:`~sme_plugin.converters` (ADC/DAC), :mod:`~sme_plugin.costs`, :mod:`~sme_plugin.host`,
:mod:`~sme_plugin.report`; glued by :mod:`~sme_plugin.pipeline` and driven by :mod:`~sme_plugin.cli`.
"""

from .hookspecs import hookimpl

__all__ = ["hookimpl"]
__version__ = "0.1.0"
