"""ReRAM cell models: ideal cells and physical SLC/MLC cells with variation and stuck-at faults.

A cell model turns the cell levels of a mapping into effective conductances, in *level units*
(one level step = 1) and *after* the periphery subtracts the nominal off-state current: an ideal
cell conducts exactly its level, an absent cell exactly 0.

Physical model (``slc``/``mlc``) of a c-bit cell programmed to level L in [0, 2**c - 1]::

    g(L) = g_off + L                      with g_off = (2**c - 1) / (on_off_ratio - 1)
    g'   = max(0, g(L) * (1 + program_sigma * z)),   z ~ N(0, 1)   (programming variation)
    g'   = g_off or g_on for stuck-at-0 / stuck-at-1 cells          (faults)
    C    = g' - g_off                                               (reference-column correction)

so the std of the programming error is ``program_sigma * g(L)``: a constant *relative* spread
(log-normal-like), which makes off cells (g_off > 0) still add error. ``read_noise`` is the
relative std of each cell's read current; the host applies it per column sum.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from sme_plugin.params import StrategyParams

#: Cell presets: representative (rounded) values typical of each line of work, not quoted figures.
#: - ``hu2016``: Hu et al., DAC 2016 (Dot-Product Engine, HP Labs): iterative write-verify tuning,
#:   on/off about 100, about 2 % programming error, about 1 % read noise.
#: - ``wan2022``: Wan et al., Nature 2022 (NeuRRAM CIM chip): narrow conductance window (on/off
#:   about 40), write-verify to a few percent (5 %), about 1 % read noise.
#: - ``grossi2016``: Grossi et al., IEDM 2016 (variability limits of filamentary HfO2 RRAM): low
#:   on/off (about 10), 10 % cell-to-cell spread, 2 % read noise, 0.1 % stuck cells each way.
PRESETS = {
    "hu2016": dict(on_off_ratio=100.0, program_sigma=0.02, read_sigma=0.01, stuck_at_0=0.0, stuck_at_1=0.0),
    "wan2022": dict(on_off_ratio=40.0, program_sigma=0.05, read_sigma=0.01, stuck_at_0=0.0, stuck_at_1=0.0),
    "grossi2016": dict(on_off_ratio=10.0, program_sigma=0.10, read_sigma=0.02, stuck_at_0=0.001, stuck_at_1=0.001),
}
PHYSICAL_KEYS = ("on_off_ratio", "program_sigma", "read_sigma", "stuck_at_0", "stuck_at_1")


def _check_cells(levels: torch.Tensor, present: torch.Tensor, bits: int) -> None:
    if levels.shape != present.shape:
        raise ValueError(f"levels shape {tuple(levels.shape)} differs from present shape {tuple(present.shape)}")
    if levels.numel() and int(levels.max()) > (1 << bits) - 1:
        raise ValueError(f"cell level {int(levels.max())} exceeds the {bits}-bit cell maximum {(1 << bits) - 1}")


class IdealCell:
    """Ideal cell: conductance equals the level exactly; no read noise."""

    class Params(StrategyParams):
        """bits: bits stored per cell (1..4)."""

        bits: int = Field(1, ge=1, le=4)

    read_noise = 0.0

    def __init__(self, params: Params):
        self.params = params
        self.bits = params.bits

    def program(self, levels: torch.Tensor, present: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """float64 conductances (level units) of cells ``levels`` (any shape); absent cells give 0."""
        _check_cells(levels, present, self.bits)
        return torch.where(present, levels.to(torch.float64), 0.0)

    def describe(self) -> dict:
        return {"model": "ideal", "bits": self.bits}


class PhysicalParams(StrategyParams):
    """Parameters of a physical cell; unset values come from ``preset``, else the class defaults.

    on_off_ratio: g_on / g_off (> 1). program_sigma: relative std of the programmed conductance.
    read_sigma: relative std of each cell's read current. stuck_at_0 / stuck_at_1: fraction of
    present cells stuck at the lowest / highest conductance. preset: one of :data:`PRESETS`.
    """

    preset: Literal["hu2016", "wan2022", "grossi2016"] | None = None
    on_off_ratio: float | None = Field(None, gt=1.0)
    program_sigma: float | None = Field(None, ge=0.0)
    read_sigma: float | None = Field(None, ge=0.0)
    stuck_at_0: float | None = Field(None, ge=0.0, le=1.0)
    stuck_at_1: float | None = Field(None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _fault_fractions(self):
        if (self.stuck_at_0 or 0.0) + (self.stuck_at_1 or 0.0) > 1.0:
            raise ValueError(f"stuck_at_0 + stuck_at_1 = {self.stuck_at_0} + {self.stuck_at_1} exceeds 1")
        return self


class PhysicalCell:
    """c-bit ReRAM cell with finite on/off ratio, programming variation and stuck-at faults."""

    name = "physical"
    #: values used when neither the params nor the preset set them
    DEFAULTS = dict(on_off_ratio=100.0, program_sigma=0.03, read_sigma=0.01, stuck_at_0=0.0, stuck_at_1=0.0)

    def __init__(self, params: PhysicalParams):
        self.params = params
        self.bits = getattr(params, "bits", 1)
        values = {**self.DEFAULTS, **PRESETS.get(params.preset, {})}
        values.update({k: getattr(params, k) for k in PHYSICAL_KEYS if getattr(params, k) is not None})
        if values["stuck_at_0"] + values["stuck_at_1"] > 1.0:
            raise ValueError(f"{self.name} cell: stuck_at_0 + stuck_at_1 exceeds 1 ({values})")
        self.values = values
        self.read_noise = values["read_sigma"]
        top = (1 << self.bits) - 1
        self.g_off = top / (values["on_off_ratio"] - 1.0)
        self.g_on = self.g_off + top

    def program(self, levels: torch.Tensor, present: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """float64 effective conductances (level units, nominal g_off subtracted); absent cells give 0.

        Draws one normal (variation) and one uniform (faults) number per cell from ``generator``,
        which must live on ``levels.device``.
        """
        _check_cells(levels, present, self.bits)
        draw = dict(generator=generator, dtype=torch.float64, device=levels.device)
        nominal = self.g_off + levels.to(torch.float64)
        g = (nominal * (1.0 + self.values["program_sigma"] * torch.randn(levels.shape, **draw))).clamp_min(0.0)
        fault = torch.rand(levels.shape, **draw)
        low, high = self.values["stuck_at_0"], self.values["stuck_at_0"] + self.values["stuck_at_1"]
        g = torch.where(fault < low, self.g_off, torch.where(fault < high, self.g_on, g))
        return torch.where(present, g - self.g_off, 0.0)

    def describe(self) -> dict:
        return {
            "model": self.name,
            "bits": self.bits,
            "preset": self.params.preset,
            **self.values,
            "g_off_levels": self.g_off,
            "program_sigma_dependence": "std = program_sigma * (g_off + level), in level units",
        }


class SLCCell(PhysicalCell):
    """Single-level (1-bit) cell; defaults: on/off 100, 3 % programming spread, 1 % read noise."""

    name = "slc"
    Params = PhysicalParams


class MLCCell(PhysicalCell):
    """Multi-level cell of ``bits`` bits; defaults: on/off 50, 5 % programming spread, 1 % read noise
    (levels of a narrow window are harder to place than SLC states)."""

    name = "mlc"
    DEFAULTS = dict(on_off_ratio=50.0, program_sigma=0.05, read_sigma=0.01, stuck_at_0=0.0, stuck_at_1=0.0)

    class Params(PhysicalParams):
        """bits: bits stored per cell (2..4); the rest as :class:`PhysicalParams`."""

        bits: int = Field(2, ge=2, le=4)
