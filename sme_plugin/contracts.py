"""The contract of each strategy kind, as a :class:`typing.Protocol` (next to :mod:`~sme_plugin.hookspecs`).

A factory registered for a kind must have a ``Params`` attribute, a pydantic model subclassing
:class:`~sme_plugin.params.StrategyParams`; ``factory(params)`` builds the strategy object, which
must provide the kind's methods and attributes. :func:`check_factory` runs at registration (Params,
and the methods when the factory is a class); :func:`check_strategy` runs on every built object
(methods and attributes, since attributes are often set in ``__init__``). Both raise
:class:`~sme_plugin.errors.PluginError` naming the plugin at fault.

Type names in the signatures (``Layer``, ``QuantizedLayer``, ``MappedLayer``, ...) are those of
:mod:`sme_plugin.types`; tensors are torch tensors, level arrays numpy arrays.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

from .errors import PluginError


class Quantizer(Protocol):
    def quantize(self, layer) -> Any:
        """``Layer -> QuantizedLayer``: integer sign-magnitude weights and their scale."""


class Orchestrator(Protocol):
    per_layer: bool

    def orchestrate(self, layers, layouts) -> list:
        """``(list[QuantizedLayer], list[Layout]) -> list[QuantizedLayer]``: denser bit-level sparsity where
        the layout is sparse, exact weights where it is dense. ``per_layer``: layers may be orchestrated one
        at a time (False: a model-wide budget needs them all at once).

        Optional, for data-aware orchestrators: an attribute ``needs_inputs`` (absent: False); when True the
        run calls ``orchestrate(layers, layouts, grams=...)`` with ``grams`` layer name -> (P, N, N) float64
        ``sum x x^T`` of the layer's im2col inputs on the dataset's calibration inputs
        (:func:`sme_plugin.activations.input_gram`; None for a dense layout), and a run without a dataset is
        a ConflictError. Orchestrators without it keep the two-argument call."""


class Mapper(Protocol):
    label: str
    sign: str
    packing: str

    def layout(self, q, geometry) -> Any:
        """``(QuantizedLayer, Geometry) -> Layout``: the layout rules orchestrators and squeezers follow."""

    def encode(self, q, layout) -> Any:
        """``(QuantizedLayer, Layout) -> Encoding``: cell levels under the layout's sign scheme."""

    def map(self, q, geometry, layout=None) -> Any:
        """``(QuantizedLayer, Geometry, Layout | None) -> MappedLayer`` with its placement."""

    def place(self, q, encoding, layout) -> Any:
        """``(QuantizedLayer, Encoding, Layout) -> MappedLayer``: the placement of changed levels (squeezers)."""


class Squeezer(Protocol):
    def squeeze(self, mapped, mapper) -> Any:
        """``(MappedLayer, mapper) -> MappedLayer``: fewer crossbars."""


class Cell(Protocol):
    bits: int
    read_noise: Any

    def program(self, levels, present, generator) -> Any:
        """Programmed conductances (level units, float64 tensor) of ``levels``."""

    def describe(self) -> dict:
        """The cell's settings for the report."""


class ADC(Protocol):
    lossless: bool
    calibrated: bool

    def convert(self, sums, full_scale, generator) -> Any:
        """Column sums -> ADC codes."""

    def bits_for(self, full_scale) -> Any:
        """Bits the ADC uses for columns of ``full_scale``."""

    def energy_pj(self, bits) -> Any:
        """Energy per conversion at ``bits``."""

    def area_um2(self, bits) -> Any:
        """Area per converter at ``bits``."""

    def describe(self) -> dict:
        """The ADC's settings for the report."""


class DAC(Protocol):
    bits: int

    def apply(self, slices, generator) -> Any:
        """Input bit slices -> analog drive levels."""

    def energy_pj(self) -> float:
        """Energy per conversion."""

    def area_um2(self) -> float:
        """Area per converter."""

    def describe(self) -> dict:
        """The DAC's settings for the report."""


class Host(Protocol):
    def build(self, model, mapped, sim, activation_scales, calibration_inputs=None) -> Any:
        """``nn.Module`` that runs ``model`` through the mapped crossbars."""


class ModelBuilder(Protocol):
    def build(self) -> Any:
        """``ModelBundle``: the module, its input shape and weights label."""


class DatasetLoader(Protocol):
    def load(self) -> Any:
        """``Dataset``: test and calibration batch streams (:class:`~sme_plugin.types.Batches`)."""


#: registry kind -> its contract.
CONTRACTS: dict[str, type] = {
    "quantizer": Quantizer,
    "orchestrator": Orchestrator,
    "mapper": Mapper,
    "squeezer": Squeezer,
    "cell": Cell,
    "adc": ADC,
    "dac": DAC,
    "host": Host,
    "model": ModelBuilder,
    "dataset": DatasetLoader,
}


def methods(contract: type) -> list[str]:
    return [name for name, value in vars(contract).items() if not name.startswith("_") and inspect.isfunction(value)]


def attributes(contract: type) -> list[str]:
    return [name for name in getattr(contract, "__annotations__", {}) if not name.startswith("_")]


def _what(kind: str, name: str, plugin: str) -> str:
    return f"plugin {plugin!r}: {kind} {name!r}"


def check_factory(kind: str, name: str, factory: Any, plugin: str) -> None:
    """Registration-time check: ``Params`` is a StrategyParams model; a class factory has the methods."""
    from .params import StrategyParams

    if not callable(factory):
        raise PluginError(f"{_what(kind, name, plugin)}: factory {factory!r:.60} is not callable")
    params = getattr(factory, "Params", None)
    if params is None:
        raise PluginError(f"{_what(kind, name, plugin)}: factory {getattr(factory, '__name__', factory)!s:.60} has no "
                          "Params (a pydantic model subclassing sme_plugin.params.StrategyParams)")
    if not (isinstance(params, type) and issubclass(params, StrategyParams)):
        raise PluginError(f"{_what(kind, name, plugin)}: Params {params!r:.60} does not subclass "
                          "sme_plugin.params.StrategyParams")
    contract = CONTRACTS.get(kind)
    if contract is not None and isinstance(factory, type):
        missing = [m for m in methods(contract) if not callable(getattr(factory, m, None))]
        if missing:
            raise PluginError(f"{_what(kind, name, plugin)}: {factory.__name__} lacks the method(s) "
                              f"{', '.join(missing)} of the {contract.__name__} contract")


def check_strategy(kind: str, name: str, obj: Any, plugin: str) -> None:
    """Build-time check of a strategy object against its kind's contract."""
    contract = CONTRACTS.get(kind)
    if contract is None:
        return
    missing = [m for m in methods(contract) if not callable(getattr(obj, m, None))]
    missing += [a for a in attributes(contract) if not hasattr(obj, a)]
    if missing:
        raise PluginError(f"{_what(kind, name, plugin)}: the built object lacks {', '.join(missing)} "
                          f"of the {contract.__name__} contract")
