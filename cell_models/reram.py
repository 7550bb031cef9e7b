"""ReRAM cell models: ideal cells and physical SLC/MLC cells with variation and stuck-at faults.

A cell model turns the cell levels of a mapping into effective conductances, in *level units*
(one level step = 1) and *after* the periphery subtracts the nominal off-state current: an ideal
cell conducts exactly its level, an absent cell exactly 0.

Physical model (``slc``/``mlc``) of a c-bit cell programmed to level L in [0, W], W = 2**c - 1
(the conductance window g_on - g_off is W level units)::

    g(L)  = g_off + L                      with g_off = W / (on_off_ratio - 1)
    s(L)  = sqrt((program_sigma * g(L))**2 + (program_sigma_window * W)**2)   (programming spread)
            or level_sigma[L] when a per-level table is given
    g'    = max(0, g(L) + s(L) * z),  z ~ N(0, 1)                  (a conductance is never negative)
    g'    = g_off or g_on for stuck-at-0 / stuck-at-1 cells          (faults)
    C     = g' - g_off                                               (reference-column correction)

The spread has two parts: a *relative* one (``program_sigma``, a fraction of the cell's own
conductance: open-loop programming of filamentary cells, where the spread grows with the state)
and a *window* one (``program_sigma_window``, a fraction of the whole conductance window, the
same for every level: what an iterative write-verify loop with a fixed acceptance band and the
relaxation after it leave). ``level_sigma`` replaces both with one std per level (level units), for
measured, level-dependent spreads. Off cells (g_off > 0) still vary. ``read_noise`` is the relative
std of each cell's read current; the host applies it per column sum.

Presets (:data:`PRESETS`, sources in :data:`PRESET_SOURCES`). Figures marked *verified* are quoted
from the paper's abstract; the others are *representative* values, rounded, for the device and
programming scheme the paper describes, not quoted figures.

- ``wan2022`` (**default** of ``slc`` and ``mlc``): Wan et al., "A compute-in-memory chip based on
  resistive random-access memory", Nature 608, 504-512 (2022) (NeuRRAM). HfOx 1T1R cells programmed
  by incremental-pulse write-verify into an analogue conductance window of a few tens of uS; the
  spread left after programming is dominated by conductance relaxation, roughly independent of the
  target state (their Extended Data Fig. 3). Representative: on/off 40, window spread 4 % of the
  window (level-independent), 1 % read noise, no stuck cells (faults are screened out).
- ``hu2016``: Hu et al., "Dot-product engine for neuromorphic computing: programming 1T1M
  crossbar to accelerate matrix-vector multiplication", DAC 2016, and the measured 128x64 Ta/HfO2
  1T1R arrays of the same group (Li et al., "Analogue signal and image processing with large
  memristor crossbars", Nature Electronics 1, 52-59, 2018). Representative: on/off 100, write-verify
  to 1 % of the window, 1 % read noise. Verified: device yield 99.8 % (Li et al. 2018), i.e. 0.2 %
  defective cells, split evenly here between stuck-off and stuck-on (the split is our assumption).
- ``yao2020``: Yao et al., "Fully hardware-implemented memristor convolutional neural network",
  Nature 577, 641-646 (2020). TiN/TaOx/HfOx/TiN 1T1R cells with a few multi-level states in a window
  of about one decade, write-verify programming, hybrid training to absorb device variation.
  Representative: on/off 10, window spread 3 %, 2 % read noise, no stuck cells.
- ``grossi2016``: Grossi et al., "Fundamental variability limits of filament-based RRAM", IEDM 2016.
  Filamentary HfO2 cells programmed without verification: cell-to-cell spread grows with the state
  (relative), low window. Representative: on/off 10, 10 % relative spread, 2 % read noise, 0.1 %
  stuck cells each way.
- ``chen2015``: fault rates only (other values from the cell's default preset): Chen et al., "RRAM
  defect modeling and failure analysis based on March test and a novel squeeze-search scheme", IEEE
  Trans. Computers 64(1), 180-190 (2015), a first-cut 4-Mb HfO2 RRAM test chip: 1.75 % stuck-at-0 and
  9.04 % stuck-at-1 cells, the figures this paper is usually cited for (e.g. by fault-tolerance work
  on RRAM crossbars); stuck-at-1 (stuck on, over-forming) dominates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from sme_plugin.params import StrategyParams

if TYPE_CHECKING:  # torch is imported where it is used, so that configs validate without it
    import torch

#: Cell presets (see the module docstring for what each figure is and where it comes from). A preset
#: may set only some keys (``chen2015``: faults); the rest come from the cell's default preset.
PRESETS = {
    "wan2022": dict(on_off_ratio=40.0, program_sigma=0.0, program_sigma_window=0.04, read_sigma=0.01,
                    stuck_at_0=0.0, stuck_at_1=0.0),
    "hu2016": dict(on_off_ratio=100.0, program_sigma=0.0, program_sigma_window=0.01, read_sigma=0.01,
                   stuck_at_0=0.001, stuck_at_1=0.001),
    "yao2020": dict(on_off_ratio=10.0, program_sigma=0.0, program_sigma_window=0.03, read_sigma=0.02,
                    stuck_at_0=0.0, stuck_at_1=0.0),
    "grossi2016": dict(on_off_ratio=10.0, program_sigma=0.10, program_sigma_window=0.0, read_sigma=0.02,
                       stuck_at_0=0.001, stuck_at_1=0.001),
    "chen2015": dict(stuck_at_0=0.0175, stuck_at_1=0.0904),
}
#: Source of each preset, as reported by ``describe()``.
PRESET_SOURCES = {
    "wan2022": "Wan et al., Nature 608, 504-512 (2022), NeuRRAM: write-verify + relaxation (representative)",
    "hu2016": "Hu et al., DAC 2016 (dot-product engine); yield 99.8 % from Li et al., Nature Electronics 1, "
              "52-59 (2018) (representative, yield verified)",
    "yao2020": "Yao et al., Nature 577, 641-646 (2020), memristor CNN, TaOx/HfOx 1T1R (representative)",
    "grossi2016": "Grossi et al., IEDM 2016, variability limits of filamentary HfO2 RRAM (representative)",
    "chen2015": "Chen et al., IEEE Trans. Computers 64(1), 180-190 (2015), 4-Mb HfO2 RRAM test chip: "
                "1.75 % stuck-at-0, 9.04 % stuck-at-1",
}
PresetName = Literal["wan2022", "hu2016", "yao2020", "grossi2016", "chen2015"]
#: preset of the ``slc`` and ``mlc`` cells when none is given
DEFAULT_PRESET = "wan2022"
PHYSICAL_KEYS = ("on_off_ratio", "program_sigma", "program_sigma_window", "read_sigma", "stuck_at_0", "stuck_at_1")


class _CellParams(StrategyParams):
    """Every cell parameter is finite (NaN and infinities are rejected)."""

    model_config = ConfigDict(allow_inf_nan=False)


def _check_cells(levels: torch.Tensor, present: torch.Tensor, bits: int) -> None:
    if levels.shape != present.shape:
        raise ValueError(f"levels shape {tuple(levels.shape)} differs from present shape {tuple(present.shape)}")
    if levels.numel() and int(levels.max()) > (1 << bits) - 1:
        raise ValueError(f"cell level {int(levels.max())} exceeds the {bits}-bit cell maximum {(1 << bits) - 1}")


class IdealCell:
    """Ideal cell: conductance equals the level exactly; no read noise."""

    class Params(_CellParams):
        """bits: bits stored per cell (1..4)."""

        bits: int = Field(1, ge=1, le=4)

    read_noise = 0.0

    def __init__(self, params: Params):
        self.params = params
        self.bits = params.bits

    def program(self, levels: torch.Tensor, present: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """float64 conductances (level units) of cells ``levels`` (any shape); absent cells give 0."""
        import torch
        _check_cells(levels, present, self.bits)
        return torch.where(present, levels.to(torch.float64), 0.0)

    def describe(self) -> dict:
        return {"model": "ideal", "bits": self.bits}


class PhysicalParams(_CellParams):
    """Parameters of a physical cell; unset values come from ``preset``, else the default preset
    (:data:`DEFAULT_PRESET`).

    on_off_ratio: g_on / g_off (> 1). program_sigma: relative std of the programmed conductance (a
    fraction of g(L)). program_sigma_window: level-independent std, a fraction of the conductance
    window (W level units). level_sigma: one std per level 0..2**bits - 1 in level units; replaces the
    two spreads above. read_sigma: relative std of each cell's read current. stuck_at_0 / stuck_at_1:
    fraction of present cells stuck at the lowest / highest conductance. preset: one of
    :data:`PRESETS`.
    """

    preset: PresetName | None = None
    on_off_ratio: float | None = Field(None, gt=1.0, le=1e7)
    program_sigma: float | None = Field(None, ge=0.0, le=1.0)
    program_sigma_window: float | None = Field(None, ge=0.0, le=1.0)
    level_sigma: tuple[Annotated[float, Field(ge=0.0, le=16.0, allow_inf_nan=False)], ...] | None = None
    read_sigma: float | None = Field(None, ge=0.0, le=1.0)
    stuck_at_0: float | None = Field(None, ge=0.0, le=1.0)
    stuck_at_1: float | None = Field(None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self):
        if (self.stuck_at_0 or 0.0) + (self.stuck_at_1 or 0.0) > 1.0:
            raise ValueError(f"stuck_at_0 + stuck_at_1 = {self.stuck_at_0} + {self.stuck_at_1} exceeds 1")
        levels = 1 << getattr(self, "bits", 1)
        if self.level_sigma is not None and len(self.level_sigma) != levels:
            raise ValueError(f"level_sigma needs one std per level ({levels}), got {len(self.level_sigma)}")
        return self


class PhysicalCell:
    """c-bit ReRAM cell with finite on/off ratio, programming variation and stuck-at faults."""

    name = "physical"
    #: preset whose values are used when neither the params nor their preset set them
    default_preset = DEFAULT_PRESET

    def __init__(self, params: PhysicalParams):
        self.params = params
        self.bits = getattr(params, "bits", 1)
        self.preset = params.preset or self.default_preset
        values = {**PRESETS[self.default_preset], **PRESETS.get(params.preset, {})}
        values.update({k: getattr(params, k) for k in PHYSICAL_KEYS if getattr(params, k) is not None})
        if values["stuck_at_0"] + values["stuck_at_1"] > 1.0:
            raise ValueError(f"{self.name} cell: stuck_at_0 + stuck_at_1 exceeds 1 ({values})")
        self.values = values
        self.level_sigma = params.level_sigma
        self.read_noise = values["read_sigma"]
        top = (1 << self.bits) - 1
        self.g_off = top / (values["on_off_ratio"] - 1.0)
        self.g_on = self.g_off + top

    def spread(self, levels: torch.Tensor) -> torch.Tensor:
        """std (level units, float64) of the programmed conductance of cells at ``levels``."""
        import torch
        if self.level_sigma is not None:
            table = torch.tensor(self.level_sigma, dtype=torch.float64, device=levels.device)
            return table[levels.long()]
        relative = self.values["program_sigma"] * (self.g_off + levels.to(torch.float64))
        window = self.values["program_sigma_window"] * ((1 << self.bits) - 1)
        return relative.square_().add_(window**2).sqrt_() if window else relative

    def program(self, levels: torch.Tensor, present: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """float64 effective conductances (level units, nominal g_off subtracted); absent cells give 0.

        Draws one normal (variation) and one uniform (faults) number per cell from ``generator``,
        which must live on ``levels.device``.
        """
        import torch
        _check_cells(levels, present, self.bits)
        draw = dict(generator=generator, dtype=torch.float64, device=levels.device)
        g = torch.randn(levels.shape, **draw).mul_(self.spread(levels)).add_(levels.to(torch.float64) + self.g_off)
        g.clamp_min_(0.0)
        fault = torch.rand(levels.shape, **draw)
        low, high = self.values["stuck_at_0"], self.values["stuck_at_0"] + self.values["stuck_at_1"]
        g = torch.where(fault < low, self.g_off, torch.where(fault < high, self.g_on, g))
        return torch.where(present, g - self.g_off, 0.0)

    def describe(self) -> dict:
        return {
            "model": self.name,
            "bits": self.bits,
            "preset": self.preset,
            "source": "; ".join(PRESET_SOURCES[p] for p in dict.fromkeys((self.default_preset, self.preset))),
            **self.values,
            "level_sigma": None if self.level_sigma is None else list(self.level_sigma),
            "g_off_levels": self.g_off,
            "program_sigma_dependence": (
                "std = level_sigma[level], in level units" if self.level_sigma is not None else
                "std = sqrt((program_sigma * (g_off + level))**2 + (program_sigma_window * (2**bits - 1))**2), "
                "in level units"),
        }


class SLCCell(PhysicalCell):
    """Single-level (1-bit) cell; default preset ``wan2022`` (NeuRRAM, Wan et al., Nature 2022):
    on/off 40, programming spread 4 % of the window at both levels, 1 % read noise, no stuck cells."""

    name = "slc"
    Params = PhysicalParams


class MLCCell(PhysicalCell):
    """Multi-level cell of ``bits`` bits; default preset ``wan2022`` (NeuRRAM, Wan et al., Nature 2022):
    on/off 40, programming spread 4 % of the window at every level, 1 % read noise, no stuck cells.
    The same device as :class:`SLCCell`: its window holds 2**bits - 1 level steps instead of one, so
    the same spread is 2**bits - 1 times larger in level units."""

    name = "mlc"

    class Params(PhysicalParams):
        """bits: bits stored per cell (2..4); the rest as :class:`PhysicalParams`."""

        bits: int = Field(2, ge=2, le=4)
