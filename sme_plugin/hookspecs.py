"""Hook specifications of SME (pluggy project name ``sme_plugin``).

Every registry hook is called once per plugin with a ``register(name, factory)`` callback.
A factory is a class (or callable) with a pydantic ``Params`` model attribute; SME validates the
config section against ``Params`` and calls ``factory(params)`` to build the strategy.
"""

import pluggy

hookspec = pluggy.HookspecMarker("sme_plugin")
hookimpl = pluggy.HookimplMarker("sme_plugin")


@hookspec
def sme_register_quantizers(register):
    """Register quantizers: ``quantize(layer: Layer) -> QuantizedLayer``."""


@hookspec
def sme_register_orchestrators(register):
    """Register bit orchestrators: ``orchestrate(layers, layouts) -> list[QuantizedLayer]`` and ``per_layer``
    (see :class:`sme_plugin.contracts.Orchestrator`)."""


@hookspec
def sme_register_mappers(register):
    """Register crossbar mappers: ``layout(q, geometry) -> Layout``, ``encode(q, layout) -> Encoding``,
    ``map(q, geometry, layout=None) -> MappedLayer`` (with its explicit placement) and
    ``place(q, encoding, layout) -> MappedLayer`` for squeezers, and the attributes ``label``, ``sign``
    (sign scheme) and ``packing`` (see :class:`sme_plugin.contracts.Mapper`)."""


@hookspec
def sme_register_squeezers(register):
    """Register squeeze-out strategies: ``squeeze(mapped, mapper) -> MappedLayer``."""


@hookspec
def sme_register_cell_models(register):
    """Register ReRAM cell models: ``bits``, ``read_noise`` and
    ``program(levels, present, generator) -> conductance`` (level units, float64 tensor)."""


@hookspec
def sme_register_adcs(register):
    """Register ADC components: ``convert(sums, full_scale, generator) -> codes``, ``lossless``, ``bits``
    (unless lossless), ``calibrated``, and ``energy_pj(bits)`` / ``area_um2(bits)`` for the cost model."""


@hookspec
def sme_register_dacs(register):
    """Register DAC components: ``bits`` per input cycle, ``apply(slices, generator)``, and
    ``energy_pj()`` / ``area_um2()`` per conversion and per converter for the cost model."""


@hookspec
def sme_register_hosts(register):
    """Register hosts that run a model through mapped crossbars:
    ``build(model, mapped, sim, activation_scales, calibration_inputs=None) -> nn.Module``."""


@hookspec
def sme_register_models(register):
    """Register model builders: ``factory(params).build() -> ModelBundle``."""


@hookspec
def sme_register_datasets(register):
    """Register datasets: ``factory(params).load() -> Dataset`` (test and calibration batch streams)."""


@hookspec
def sme_report_sections(report):
    """Return a list of ``(title, markdown)`` sections to append to report.md.

    ``report`` is the dict written to report.json (read it, do not change it).
    """
