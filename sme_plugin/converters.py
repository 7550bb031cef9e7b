"""ADC and DAC components: conversion behaviour and per-conversion energy/area.

ADC figures are ISAAC's (32 nm, as tabulated in Accelergy's hwcomponents library), see
:data:`ADC_TABLE`; :func:`adc_cost` extrapolates outside the table. An ADC converts column sums
given in level*input units (integer-valued for ideal cells) and returns them in the same units.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from .hookspecs import hookimpl
from .params import StrategyParams

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


def adc_cost(bits):
    """(energy pJ per conversion, area um^2) of an ADC of ``bits`` resolution (int or int array).

    Table values inside 4..10 bits; above 10 each bit multiplies energy by 1.2 and area by 1.6;
    below 4 each bit removed divides the 4-bit energy by 1.25 and area by 1.3. 0 bits (a column
    that never conducts) costs nothing.
    """
    b = np.asarray(bits)
    if not np.issubdtype(b.dtype, np.integer) or (b < 0).any():
        raise ValueError(f"ADC bits must be non-negative integers, got {bits!r}")
    lo, hi = min(ADC_TABLE), max(ADC_TABLE)
    table = np.array([ADC_TABLE[k] for k in range(lo, hi + 1)])  # (7, 2)
    inside = table[np.clip(b, lo, hi) - lo]  # (..., 2)
    above = np.array(ADC_GROWTH_ABOVE) ** np.maximum(b - hi, 0)[..., None]
    below = np.array(ADC_GROWTH_BELOW) ** np.maximum(lo - b, 0)[..., None]
    cost = np.where((b > 0)[..., None], inside * above / below, 0.0)
    if cost.ndim == 1:
        return float(cost[0]), float(cost[1])
    return cost[..., 0], cost[..., 1]


def lossless_bits(full_scale) -> int:
    """Bits that represent every integer in [0, max(full_scale)]: ceil(log2(max + 1))."""
    top = torch.as_tensor(full_scale, dtype=torch.float64)
    return math.ceil(math.log2(float(top.max()) + 1.0)) if top.numel() else 0


class _ADCCost:
    """Energy and area of an ADC from :func:`adc_cost` (``bits`` an int or an int array)."""

    def energy_pj(self, bits):
        """Energy per conversion, pJ."""
        return adc_cost(bits)[0]

    def area_um2(self, bits):
        """Area of one converter, um^2."""
        return adc_cost(bits)[1]


class IdealADC(_ADCCost):
    """Infinite-resolution ADC: returns the sums unchanged; costed at the lossless resolution."""

    class Params(StrategyParams):
        """No parameters."""

    lossless = True
    calibrated = False

    def __init__(self, params: Params):
        self.params = params

    def convert(self, sums: torch.Tensor, full_scale: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return sums

    def bits_for(self, full_scale) -> int:
        return lossless_bits(full_scale)

    def describe(self) -> dict:
        return {"model": "ideal"}


class UniformADC(_ADCCost):
    """Uniform ``bits``-bit ADC over [0, full_scale]: codes = clamp(round(sums/step), 0, 2**bits-1),
    step = max(1, full_scale / (2**bits - 1)); exact whenever 2**bits - 1 >= full_scale."""

    class Params(StrategyParams):
        """bits: resolution. full_scale: ``lossless`` (range = largest possible column sum) or
        ``calibrated`` (range = largest column sum observed on calibration data)."""

        bits: int = Field(8, ge=1, le=16)
        full_scale: Literal["lossless", "calibrated"] = "lossless"

    lossless = False

    def __init__(self, params: Params):
        self.params = params
        self.bits = params.bits
        self.calibrated = params.full_scale == "calibrated"

    def perturbation(self, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor | float:
        """Input-referred error in LSB, shaped like ``like``, added before rounding (none for a clean ADC)."""
        return 0.0

    def convert(self, sums: torch.Tensor, full_scale: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """sums (...) float64 and full_scale broadcastable to it -> quantized sums, same units.

        The converter's native LSB is full_scale / (2**bits - 1); input-referred errors are in that
        LSB. Codes never resolve below one unit (the sums of integer levels are integers), so an ADC
        with more bits than the column needs is exact unless its noise reaches half a unit.
        """
        top = (1 << self.bits) - 1
        native = torch.as_tensor(full_scale, dtype=sums.dtype, device=sums.device) / top
        step = native.clamp_min(1.0)
        level = sums / step
        error = self.perturbation(sums, generator)
        if isinstance(error, torch.Tensor):  # in place: these tensors are the largest of a simulation
            level.add_(error.mul_(native / step))
        return level.round_().clamp_(0, top).mul_(step)

    def bits_for(self, full_scale) -> int:
        return self.bits

    def describe(self) -> dict:
        return {"model": "uniform", **self.params.model_dump()}


class NoisyADC(UniformADC):
    """Uniform ADC with input-referred Gaussian noise and a fixed offset, clipped at the range ends."""

    class Params(UniformADC.Params):
        """noise_lsb: noise std in LSB; offset_lsb: constant offset in LSB."""

        noise_lsb: float = Field(0.5, ge=0.0)
        offset_lsb: float = 0.0

    def perturbation(self, like, generator):
        noise = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        return noise.mul_(self.params.noise_lsb).add_(self.params.offset_lsb)

    def describe(self) -> dict:
        return {"model": "noisy", **self.params.model_dump()}


class IdealDAC:
    """``bits``-bit DAC applying input slices exactly.

    Energy per conversion: ISAAC's 1-bit DAC (0.417 pJ, 0.166 um^2) scaled by the 2**bits - 1
    levels a v-bit DAC drives (a linear, capacitive-DAC estimate).
    """

    class Params(StrategyParams):
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

        sigma: float = Field(0.01, ge=0.0)

    def apply(self, slices, generator):
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
