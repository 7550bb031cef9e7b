"""The hosts stage: the standalone reference host, chosen as ``host: {name: standalone}``.

The host runs a model with each Conv2d/Linear replaced by a layer that simulates the crossbars of its
:class:`~sme_plugin.types.Placement`; the simulation itself lives in :mod:`sme_plugin.simulator` (torch),
imported when a host is built, so that configs validate without torch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from .errors import ConfigError
from .hookspecs import hookimpl
from .params import StrategyParams


@dataclass
class Simulation:
    """What the crossbar simulation uses: component instances, activation bits A and the seed."""

    cell: object
    adc: object
    dac: object
    activation_bits: int
    seed: int = 0


def layer_seed(seed: int, name: str, stream: str) -> int:
    """Seed of one random stream (``program``, ``read``) of layer ``name``; stable across runs."""
    return (seed + zlib.crc32(f"{name}/{stream}".encode())) % (1 << 63)


class StandaloneHost:
    """Runs models through simulated crossbars with no external simulator (:mod:`sme_plugin.simulator`)."""

    class Params(StrategyParams):
        """device: where the simulation runs (``auto``: CUDA when present).
        batch_rows: most im2col rows per chunk. chunk_mib: memory cap (MiB) of the temporaries of one
        chunk (gathered input slices, column sums, noise, ADC work, codes)."""

        device: Literal["cpu", "cuda", "auto"] = "cpu"
        batch_rows: int = Field(4096, ge=1)
        chunk_mib: int = Field(256, ge=1)

    def __init__(self, params: Params):
        self.params = params
        self.device_name = params.device
        if params.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("host.device: 'cuda' requested but CUDA is not available")

    @property
    def device(self):
        """The torch device the simulation runs on."""
        import torch

        cuda = self.device_name == "cuda" or (self.device_name == "auto" and torch.cuda.is_available())
        return torch.device("cuda" if cuda else "cpu")

    def build(self, model, mapped: dict, sim: Simulation, activation_scales: dict[str, float],
              calibration_inputs=None, batch_size: int = 256):
        """Deep copy of ``model`` (an ``nn.Module``) with each layer named in ``mapped`` simulated on its
        crossbars; see :func:`sme_plugin.simulator.build_crossbar_model`."""
        from .simulator import build_crossbar_model

        return build_crossbar_model(model, mapped, sim, activation_scales, self.device, self.params.batch_rows,
                                    self.params.chunk_mib << 20, calibration_inputs, batch_size)


@hookimpl
def sme_register_hosts(register):
    register("standalone", StandaloneHost)
