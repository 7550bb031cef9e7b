"""ADC and DAC components: conversion behaviour and per-conversion energy/area.

ADC figures are ISAAC's (32 nm, as tabulated in Accelergy's hwcomponents library), see
:data:`ADC_TABLE`; :func:`adc_cost` extrapolates outside the table. An ADC converts column sums
given in level*input units (integer-valued for ideal cells) and returns them in the same units.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import ConfigDict, Field, field_validator, model_validator

from .hookspecs import hookimpl
from .params import StrategyParams

if TYPE_CHECKING:  # torch is imported where it is used, so that configs validate without it
    import torch

#: ISAAC ADC per resolution: bits -> (energy pJ per conversion, area um^2).
ADC_TABLE = {
    4: (0.79, 361.0),
    5: (0.99, 477.0),
    6: (1.20, 627.0),
    7: (1.42, 845.0),
    8: (1.67, 1200.0),
    9: (1.97, 1828.0),
    10: (2.38, 3002.0),
}
#: per-bit growth used to extrapolate: above 10 bits (the table's top ratios) and below 4 bits
#: (the table's bottom ratios, applied downwards from the 4-bit figures).
ADC_GROWTH_ABOVE = (1.2, 1.6)
ADC_GROWTH_BELOW = (1.25, 1.3)
#: ISAAC 1-bit DAC: energy pJ per conversion, area um^2 (8x128 DACs in 0.00017 mm^2).
DAC_1BIT = (0.417, 0.166)


@functools.lru_cache(maxsize=1)
def _adc_table() -> np.ndarray:
    """(65, 2) (energy pJ, area um^2) of ADCs of 0..64 bits, by the rule of :func:`adc_cost`."""
    b = np.arange(65)
    lo, hi = min(ADC_TABLE), max(ADC_TABLE)
    table = np.array([ADC_TABLE[k] for k in range(lo, hi + 1)])  # (7, 2)
    inside = table[np.clip(b, lo, hi) - lo]
    above = np.array(ADC_GROWTH_ABOVE) ** np.maximum(b - hi, 0)[:, None]
    below = np.array(ADC_GROWTH_BELOW) ** np.maximum(lo - b, 0)[:, None]
    return np.where((b > 0)[:, None], inside * above / below, 0.0)


def adc_cost(bits):
    """(energy pJ per conversion, area um^2) of an ADC of ``bits`` resolution (int or int array, 0..64).

    Table values inside 4..10 bits; above 10 each bit multiplies energy by 1.2 and area by 1.6;
    below 4 each bit removed divides the 4-bit energy by 1.25 and area by 1.3. 0 bits (a column
    that never conducts) costs nothing.
    """
    b = np.asarray(bits)
    if not np.issubdtype(b.dtype, np.integer) or (b < 0).any() or (b > 64).any():
        raise ValueError(f"ADC bits must be non-negative integers up to 64, got {bits!r:.80}")
    cost = _adc_table()[b]
    if cost.ndim == 1:
        return float(cost[0]), float(cost[1])
    return cost[..., 0], cost[..., 1]


def lossless_bits(full_scale) -> int:
    """Bits that represent every integer in [0, max(full_scale)]: ceil(log2(max + 1))."""
    import torch
    top = torch.as_tensor(full_scale, dtype=torch.float64)
    return int(column_bits(top).max()) if top.numel() else 0


def column_bits(full_scale) -> np.ndarray:
    """Lossless bits of each column, ceil(log2(full_scale + 1)), as an int64 array shaped like
    ``full_scale`` (0 where full_scale <= 0): the fewest bits whose top code 2**b - 1 reaches it."""
    if hasattr(full_scale, "detach"):  # a torch tensor, on any device
        full_scale = full_scale.detach().cpu().double().numpy()
    top = np.maximum(np.asarray(full_scale, dtype=np.float64), 0.0)
    if not np.isfinite(top).all():
        raise ValueError("ADC full scale must be finite")
    bits = np.ceil(np.log2(top + 1.0)).astype(np.int64)
    # log2 is exact on powers of two; correct any rounding of other values by one bit either way
    bits += (np.exp2(bits) - 1.0 < top).astype(np.int64)
    bits -= ((bits > 0) & (np.exp2(bits - 1) - 1.0 >= top)).astype(np.int64)
    return bits


def _column_bits_tensor(full_scale, device) -> torch.Tensor:
    """:func:`column_bits` on ``device`` as float64 (no round trip through the host for CUDA tensors)."""
    import torch
    top = torch.as_tensor(full_scale, dtype=torch.float64, device=device).clamp_min(0.0)
    bits = torch.ceil(torch.log2(top + 1.0))
    bits += (torch.exp2(bits) - 1.0 < top).to(bits.dtype)
    bits -= ((bits > 0) & (torch.exp2(bits - 1.0) - 1.0 >= top)).to(bits.dtype)
    return bits


#: Digital adder per conversion that rounds a converted value to whole level units
#: (``round_to_levels``): Horowitz, "Computing's energy problem (and what we can do about it)",
#: ISSCC 2014, 45 nm: 8-bit integer add 0.03 pJ / 36 um^2, 32-bit add 0.1 pJ / 137 um^2.
#: Used unscaled (45 nm, conservative next to ISAAC's 32 nm).
ADDER_8BIT = (0.03, 36.0)
ADDER_32BIT = (0.1, 137.0)


def rounding_cost(bits):
    """(energy pJ, area um^2) of the adder that rounds one ``bits``-bit conversion to whole levels.

    Linear in the adder width between Horowitz's 8- and 32-bit figures (and beyond 32 bits);
    below 8 bits proportional to the width (w/8 of the 8-bit figure); 0 for 0 bits.
    """
    b = np.asarray(bits, dtype=np.float64)
    slope = (np.array(ADDER_32BIT) - np.array(ADDER_8BIT)) / 24.0
    wide = np.array(ADDER_8BIT) + slope * (b[..., None] - 8.0)
    narrow = np.array(ADDER_8BIT) * b[..., None] / 8.0
    cost = np.where((b >= 8)[..., None], wide, narrow)
    if cost.ndim == 1:
        return float(cost[0]), float(cost[1])
    return cost[..., 0], cost[..., 1]


class _ConverterParams(StrategyParams):
    """Every ADC/DAC parameter is finite (NaN and infinities are rejected)."""

    model_config = ConfigDict(allow_inf_nan=False)


class _ADCCost:
    """Energy and area of an ADC from :func:`adc_cost` (``bits`` an int or an int array), plus the
    digital rounding adder of :func:`rounding_cost` per conversion when ``round_to_levels`` is on."""

    round_to_levels = False

    def energy_pj(self, bits):
        """Energy per conversion, pJ."""
        energy = adc_cost(bits)[0]
        return energy + rounding_cost(bits)[0] if self.round_to_levels else energy

    def area_um2(self, bits):
        """Area of one converter (and its rounding adder when ``round_to_levels``), um^2."""
        area = adc_cost(bits)[1]
        return area + rounding_cost(bits)[1] if self.round_to_levels else area


class IdealADC(_ADCCost):
    """Infinite-resolution ADC: returns the sums unchanged; costed at each column's lossless bits."""

    class Params(_ConverterParams):
        """No parameters."""

    lossless = True
    calibrated = False
    bits = None  # resolution per read: see :meth:`bits_for`

    def __init__(self, params: Params):
        self.params = params

    def convert(self, sums: torch.Tensor, full_scale: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return sums

    def bits_for(self, full_scale) -> np.ndarray:
        """Lossless bits of each read column (int64, shaped like ``full_scale``; 0 where it is 0)."""
        return column_bits(full_scale)

    def describe(self) -> dict:
        return {"model": "ideal"}


def _reject_bool(value):
    if isinstance(value, bool):
        raise ValueError(f"bits must be an integer 1..16 or 'auto', got {value!r}")
    return value


class UniformADC(_ADCCost):
    """Uniform ADC over [0, full_scale]; a code is worth its own LSB.

    With ``bits`` = B (fixed): LSB = full_scale / (2**B - 1), code = clamp(round(sums / LSB), 0, 2**B - 1),
    result = code * LSB. A sum of 1 on a 6-bit ADC of full scale 100 converts to 100/63, not to 1:
    the converter has no notion of whole level units.

    With ``bits: auto``: every read column gets its lossless resolution b = ceil(log2(full_scale + 1))
    and its range is rounded up to 2**b - 1 level units, so LSB = 1 level unit and integer sums convert
    exactly (plus whatever noise is configured); :meth:`bits_for` returns each column's b, so the cost
    model charges each conversion at its own resolution.

    ``round_to_levels``: the digital periphery rounds every converted value to whole level units (the
    integers an ideal cell sums to). Off by default; when on, each conversion also pays a digital
    adder (:func:`rounding_cost`, Horowitz ISSCC 2014) in :meth:`energy_pj` / :meth:`area_um2`.

    ``full_scale: calibrated`` sets the range of each read column from the largest column sum
    observed on calibration data instead of the largest possible one (host's job: it passes that
    range as ``full_scale`` to :meth:`convert`).
    """

    class Params(_ConverterParams):
        """bits: resolution 1..16, or ``auto`` (each read column at its lossless resolution).
        full_scale: ``lossless`` (range = largest possible column sum) or ``calibrated`` (range =
        largest column sum observed on calibration data). round_to_levels: round converted values to
        whole level units digitally (costed)."""

        bits: Annotated[int, Field(ge=1, le=16)] | Literal["auto"] = 8
        full_scale: Literal["lossless", "calibrated"] = "lossless"
        round_to_levels: bool = False

        @field_validator("bits", mode="before")
        @classmethod
        def _no_bool(cls, value):
            return _reject_bool(value)

    def __init__(self, params: Params):
        self.params = params
        self.auto = params.bits == "auto"
        #: fixed resolution, or None with ``bits: auto`` (resolution per read column: :meth:`bits_for`)
        self.bits = None if self.auto else params.bits
        self.calibrated = params.full_scale == "calibrated"
        self.round_to_levels = params.round_to_levels

    @property
    def lossless(self) -> bool:
        """True when integer sums convert exactly: auto bits, no noise or offset, lossless range."""
        return self.auto and not self.calibrated and not self.perturbed

    #: whether :meth:`perturbation` adds anything
    perturbed = False

    def perturbation(self, like: torch.Tensor, lsb, generator: torch.Generator) -> torch.Tensor | None:
        """Input-referred error in LSB, shaped like ``like``, added before rounding (None: none).

        ``lsb``: each column's LSB in level units (a tensor broadcastable to ``like``, or 1.0 in auto mode)."""
        return None

    def bits_for(self, full_scale) -> np.ndarray:
        """Resolution of each read column (int64 array shaped like ``full_scale``; 0 where full_scale
        is 0, a column never read): its lossless bits with ``bits: auto``, else the fixed ``bits``."""
        needed = column_bits(full_scale)
        if self.auto:
            return needed
        return np.where(needed > 0, self.bits, 0).astype(np.int64)

    def convert(self, sums: torch.Tensor, full_scale: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """sums (...) float tensor (level*input units; modified in place) and full_scale broadcastable
        to it (largest ideal column sum of each read column, same units) -> converted values, code * LSB,
        in the same units and dtype. Columns of full scale 0 convert to 0."""
        import torch
        fs = torch.as_tensor(full_scale, dtype=sums.dtype, device=sums.device).clamp_min(0.0)
        if self.auto:  # range 2**b - 1 level units, LSB = 1
            top = torch.exp2(_column_bits_tensor(full_scale, sums.device)).sub_(1.0).to(sums.dtype)
            lsb = None
            level = sums
        else:
            top = float((1 << self.bits) - 1)
            lsb = fs / top
            level = sums.div_(torch.where(lsb > 0, lsb, 1.0))  # in place: the largest tensor of a simulation
        error = self.perturbation(level, 1.0 if lsb is None else torch.where(lsb > 0, lsb, 1.0), generator)
        if error is not None:
            level.add_(error)
        level.round_().clamp_(min=0.0)
        level = torch.minimum(level, top, out=level) if isinstance(top, torch.Tensor) else level.clamp_(max=top)
        if lsb is not None:
            level.mul_(lsb)
        return level.round_() if self.round_to_levels else level

    def describe(self) -> dict:
        return {"model": "uniform", **self.params.model_dump(), "lossless": self.lossless}


class NoisyADC(UniformADC):
    """Uniform ADC with input-referred Gaussian noise and a fixed offset, clipped at the range ends.

    Noise and offset are given either in LSB (``noise_lsb``, ``offset_lsb``: fractions of each
    column's own LSB, full_scale / (2**bits - 1)) or in level units (``noise_levels``,
    ``offset_levels``: the units of the column sums, one level step of one cell at input 1), not both.
    With ``bits: auto`` the LSB is one level unit and both spellings are the same. Unset: 0.5 LSB of
    noise and no offset.
    """

    class Params(UniformADC.Params):
        """noise_lsb / noise_levels: noise std in LSB / in level units (default 0.5 LSB);
        offset_lsb / offset_levels: constant offset in LSB / in level units (default 0)."""

        noise_lsb: float | None = Field(None, ge=0.0, le=65535.0)
        noise_levels: float | None = Field(None, ge=0.0, le=2.0**24)
        offset_lsb: float | None = Field(None, ge=-65535.0, le=65535.0)
        offset_levels: float | None = Field(None, ge=-(2.0**24), le=2.0**24)

        @model_validator(mode="after")
        def _one_unit_each(self):
            for quantity in ("noise", "offset"):
                if getattr(self, f"{quantity}_lsb") is not None and getattr(self, f"{quantity}_levels") is not None:
                    raise ValueError(f"give the ADC {quantity} either as {quantity}_lsb or as {quantity}_levels, "
                                     f"not both ({quantity}_lsb={getattr(self, f'{quantity}_lsb')}, "
                                     f"{quantity}_levels={getattr(self, f'{quantity}_levels')})")
            return self

    def __init__(self, params: Params):
        super().__init__(params)
        both_unset = params.noise_lsb is None and params.noise_levels is None
        self.noise = ("lsb", 0.5) if both_unset else (
            ("lsb", params.noise_lsb) if params.noise_levels is None else ("levels", params.noise_levels))
        self.offset = ("levels", params.offset_levels) if params.offset_levels is not None else (
            "lsb", params.offset_lsb or 0.0)
        self.perturbed = self.noise[1] != 0.0 or self.offset[1] != 0.0

    def perturbation(self, like, lsb, generator):
        import torch
        (noise_unit, noise), (offset_unit, offset) = self.noise, self.offset
        if not self.perturbed:
            return None
        error = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        error.mul_(noise if noise_unit == "lsb" else noise / lsb)  # levels / (levels per LSB) = LSB
        if offset:
            error.add_(offset if offset_unit == "lsb" else offset / lsb)
        return error

    def describe(self) -> dict:
        values = self.params.model_dump()
        values[f"noise_{self.noise[0]}"] = self.noise[1]  # the default 0.5 LSB spelled out
        return {"model": "noisy", **values, "lossless": self.lossless}


class IdealDAC:
    """``bits``-bit DAC applying input slices exactly.

    Energy per conversion: ISAAC's 1-bit DAC (0.417 pJ, 0.166 um^2) scaled by the 2**bits - 1
    levels a v-bit DAC drives (a linear, capacitive-DAC estimate).
    """

    class Params(_ConverterParams):
        """bits: input bits applied per cycle (v)."""

        bits: int = Field(1, ge=1, le=8)

    def __init__(self, params: Params):
        self.params = params
        self.bits = params.bits

    def apply(self, slices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Input slices (...) float tensor in [0, 2**bits - 1] -> applied amplitudes, same units and dtype."""
        return slices

    def energy_pj(self) -> float:
        return DAC_1BIT[0] * ((1 << self.bits) - 1)

    def area_um2(self) -> float:
        return DAC_1BIT[1] * ((1 << self.bits) - 1)

    def describe(self) -> dict:
        return {"model": "ideal", "bits": self.bits}


class NoisyDAC(IdealDAC):
    """DAC whose output amplitude has a relative Gaussian error ``sigma`` per applied slice."""

    class Params(IdealDAC.Params):
        """sigma: relative std of the applied amplitude."""

        sigma: float = Field(0.01, ge=0.0, le=1.0)

    def apply(self, slices, generator):
        import torch
        noise = torch.randn(slices.shape, generator=generator, dtype=slices.dtype, device=slices.device)
        return slices * noise.mul_(self.params.sigma).add_(1.0)

    def describe(self) -> dict:
        return {"model": "noisy", **self.params.model_dump()}


@hookimpl
def sme_register_adcs(register):
    register("ideal", IdealADC)
    register("uniform", UniformADC)
    register("noisy", NoisyADC)


@hookimpl
def sme_register_dacs(register):
    register("ideal", IdealDAC)
    register("noisy", NoisyDAC)
