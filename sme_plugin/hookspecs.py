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
    """Register bit orchestrators: ``orchestrate(layers, context) -> list[QuantizedLayer]``."""


@hookspec
def sme_register_mappers(register):
    """Register crossbar mappers: ``map(qlayer, geometry) -> MappedLayer``."""


@hookspec
def sme_register_squeezers(register):
    """Register squeeze-out strategies: ``squeeze(mapped, mapper) -> MappedLayer``."""


@hookspec
def sme_register_cell_models(register):
    """Register ReRAM cell models: ``program(levels, present, rng) -> conductance``."""


@hookspec
def sme_register_adcs(register):
    """Register ADC components: ``convert(sums, full_scale, generator) -> codes``."""


@hookspec
def sme_register_dacs(register):
    """Register DAC components: ``bits`` per input cycle and ``apply(slices, generator)``."""


@hookspec
def sme_register_hosts(register):
    """Register hosts that run a model through mapped crossbars: ``build(model, mapped, sim)``."""


@hookspec
def sme_register_models(register):
    """Register model builders: ``factory(params) -> ModelBundle``."""


@hookspec
def sme_register_datasets(register):
    """Register datasets: ``factory(params) -> Dataset`` (``test`` and ``calibration`` tensors)."""


@hookspec
def sme_report_sections(report):
    """Return a list of ``(title, markdown)`` sections to append to report.md.

    ``report`` is the dict written to report.json (read it, do not change it).
    """
