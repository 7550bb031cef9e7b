"""IBM aihwkit host: the standalone host's layers, with every crossbar read run on an aihwkit analog tile.

A layer's placement is prepared as for the standalone host (:class:`~sme_plugin.simulator.CrossbarPlan`,
reads compacted and grouped); then every read becomes one aihwkit ``TorchInferenceTile`` of K inputs (its
row slots) x J outputs (its column slots) holding the read's conductances in cell-level units, so that
aihwkit's forward IO (DAC ``inp_res``, ADC ``out_res``/``out_bound``, ``out_noise``) acts per read, as a
crossbar read with its converters. The tiles live in :mod:`sme_adapters.aihwkit_tiles` (torch and aihwkit,
imported when the host is built, so that configs validate without them).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Literal

from pydantic import Field, model_validator

from sme_plugin.errors import ConfigError
from sme_plugin.host import Simulation
from sme_plugin.params import StrategyParams
from sme_plugin.types import MappedLayer

#: t_inference values (s) ReRamWan2022NoiseModel has data for (0: programming noise only).
RERAM_TIMES = (0.0, 1.0, 86400.0, 172800.0)


def check_supported(sim: Simulation) -> None:
    """Raise :class:`ConfigError` for simulation parts aihwkit's torch tiles cannot run."""
    adc, dac = sim.adc.describe(), sim.dac.describe()
    calibrated = getattr(sim.adc, "calibrated", False)
    offset = getattr(sim.adc, "offset", ("lsb", 0.0))[1]
    if adc["model"] not in ("ideal", "uniform", "noisy") or offset or calibrated:
        raise ConfigError(f"host aihwkit: adc {adc} is not supported; use the ideal, uniform or noisy ADC with "
                          "full_scale: lossless and no offset (offset_lsb / offset_levels: 0)")
    if dac["model"] != "ideal":
        raise ConfigError(f"host aihwkit: dac {dac} is not supported; aihwkit applies ideal DAC codes (dac: ideal)")
    if sim.cell.read_noise > 0:
        raise ConfigError(f"host aihwkit: cell read noise {sim.cell.read_noise} has no torch-tile equivalent "
                          "(forward.w_noise is unsupported); set cell read_sigma: 0, or use host.out_noise")


class AihwkitHost:
    """Runs models through SME's mapped crossbars simulated by IBM aihwkit's torch tiles (CPU)."""

    class Params(StrategyParams):
        """noise_model: aihwkit conductance noise added once at build on top of the cell model
        (``pcm``: PCMLikeNoiseModel, ``reram``: ReRamWan2022NoiseModel). t_inference: seconds since
        programming (drift; ``reram`` has data for 0, 1, 86400 and 172800). out_noise: std of aihwkit's
        output noise per read, in column-sum units (one cell level read at one DAC step).
        device: aihwkit's torch tiles run on the CPU. batch_rows: most im2col rows per chunk.
        chunk_mib: memory cap (MiB) of one chunk's column sums."""

        noise_model: Literal["none", "pcm", "reram"] = "none"
        t_inference: float = Field(0.0, ge=0.0)
        out_noise: float = Field(0.0, ge=0.0)
        device: Literal["cpu"] = "cpu"
        batch_rows: int = Field(4096, ge=1)
        chunk_mib: int = Field(256, ge=1)

        @model_validator(mode="after")
        def _known_time(self):
            if self.noise_model == "reram" and self.t_inference not in RERAM_TIMES:
                raise ValueError(f"t_inference must be one of {RERAM_TIMES} s for the reram noise model")
            return self

    def __init__(self, params: Params):
        self.params = params

    def build(self, model, mapped: dict[str, MappedLayer], sim: Simulation, activation_scales: dict[str, float],
              calibration_inputs=None, batch_size: int = 256):
        """Deep copy of ``model`` with each named layer replaced by an :class:`AihwkitLayer`.

        ``calibration_inputs`` and ``batch_size`` are accepted for the host interface; a calibrated
        ADC is not supported (aihwkit's output range is set per tile at build).
        """
        from sme_plugin.simulator import check_activation_scales, layer_modules, with_layers_replaced

        from .aihwkit_tiles import AihwkitLayer

        check_supported(sim)
        kit = load_aihwkit()
        modules = layer_modules(model, list(mapped))
        check_activation_scales(mapped, activation_scales)
        noise_model = {"none": lambda: None, "pcm": kit.PCMLikeNoiseModel,
                       "reram": kit.ReRamWan2022NoiseModel}[self.params.noise_model]()
        return with_layers_replaced(model, {
            n: AihwkitLayer(modules[n], m, sim, activation_scales[n], kit, noise_model, self.params)
            for n, m in mapped.items()
        })


def load_aihwkit():
    """The aihwkit names the host uses; :class:`ConfigError` when aihwkit is not installed."""
    try:
        from aihwkit.inference import PCMLikeNoiseModel, ReRamWan2022NoiseModel
        from aihwkit.simulator.configs import TorchInferenceRPUConfig
        from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType, RPUDataType
    except ImportError:
        raise ConfigError("host aihwkit: aihwkit is not installed (pip install --no-deps aihwkit==1.1.0)") from None
    return SimpleNamespace(
        PCMLikeNoiseModel=PCMLikeNoiseModel, ReRamWan2022NoiseModel=ReRamWan2022NoiseModel,
        TorchInferenceRPUConfig=TorchInferenceRPUConfig, BoundManagementType=BoundManagementType,
        NoiseManagementType=NoiseManagementType, RPUDataType=RPUDataType)
