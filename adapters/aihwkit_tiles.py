"""The torch side of the aihwkit host (:mod:`sme_adapters.aihwkit`): one aihwkit tile per crossbar read.

A layer's placement is prepared as for the standalone host (:class:`~sme_plugin.simulator.CrossbarPlan`, reads
compacted and grouped); then every read becomes one aihwkit ``TorchInferenceTile`` of K inputs (its row
slots) x J outputs (its column slots) holding the read's conductances in cell-level units, so that
aihwkit's forward IO (DAC ``inp_res``, ADC ``out_res``/``out_bound``, ``out_noise``) acts per read, as a
crossbar read with its converters. The input cycles of every row are stacked along the batch of one
forward per read. SME splices the converted sums (shift-and-add over cycles, sign and cell-group
weights, placement outputs, plus the digital offset ``x @ offset``) as the standalone host does. Tile
dtypes keep integer sums exact (see :func:`rpu_config`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from sme_plugin.converters import lossless_bits
from sme_plugin.errors import ConflictError
from sme_plugin.host import Simulation, layer_seed
from sme_plugin.simulator import CrossbarPlan, IntegerLayer
from sme_plugin.types import MappedLayer


@contextmanager
def drawing_from(generator: torch.Generator):
    """Run aihwkit's draws from the global torch RNG seeded by ``generator``; the global RNG is restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(1 << 62, (1,), generator=generator)))
        yield


def io_range(bits: int, step: float) -> tuple[float, int]:
    """(bound, states) of an aihwkit converter of ``bits`` bits and ``step`` resolution: 2**bits - 1
    steps per sign, so aihwkit's step ``2 * bound / states`` is ``step`` (exactly 1.0 for unit steps)."""
    top = (1 << bits) - 1
    return step * top, 2 * top


def adc_range(mapped: MappedLayer, sim: Simulation) -> tuple[int, float]:
    """(bits, step in level units) of the layer's ADC as one aihwkit range: aihwkit has one range per
    tile configuration, SME's ADC one per read column, so the range is that of the layer's largest read
    column (full scale F): ``bits: auto`` -> lossless bits of F with a one-level step; fixed bits B ->
    step F / (2**B - 1), as SME's uniform ADC on that column."""
    full_scale = float(mapped.placement.full_scale(sim.dac.bits).max(initial=0.0))
    bits = getattr(sim.adc, "bits", None)
    if bits is None:
        return max(1, lossless_bits(full_scale)), 1.0
    return bits, max(full_scale, 1.0) / ((1 << bits) - 1)


def rpu_config(kit, mapped: MappedLayer, sim: Simulation, out_noise: float):
    """TorchInferenceRPUConfig of a layer's read tiles: SME's DAC/ADC as forward IO.

    kit: the names from :func:`load_aihwkit`; out_noise: extra output noise std (column-sum units).
    Inputs are DAC codes (step 1), outputs column sums in level*input units; tiles run in float32
    where every integer sum (the placement's largest read-column full scale) stays below 2**24, else
    in float64. A uniform ADC resolves :func:`adc_range`; a noisy ADC's noise becomes output noise
    (``noise_lsb`` times the step, or ``noise_levels``). aihwkit's range is symmetric, so negative
    (noisy) sums are kept, not clipped at 0. The ideal ADC without output noise runs ``is_perfect``.
    """
    config = kit.TorchInferenceRPUConfig()
    full_scale = float(mapped.placement.full_scale(sim.dac.bits).max(initial=0.0))
    config.runtime.data_type = kit.RPUDataType.FLOAT if full_scale < 1 << 24 else kit.RPUDataType.DOUBLE
    config.drift_compensation = None  # drift and its compensation are applied at build
    io = config.forward
    io.bound_management, io.noise_management = kit.BoundManagementType.NONE, kit.NoiseManagementType.NONE
    io.inp_bound, io.inp_res = io_range(sim.dac.bits, 1.0)
    io.out_noise, io.out_res, io.out_bound = out_noise, -1, 0.0  # ideal ADC: no quantization, no clipping
    ideal = sim.adc.describe()["model"] == "ideal"
    if not ideal:
        bits, step = adc_range(mapped, sim)
        io.out_bound, io.out_res = io_range(bits, step)
        unit, noise = getattr(sim.adc, "noise", ("lsb", 0.0))
        io.out_noise = math.hypot(out_noise, noise * step if unit == "lsb" else noise)
    io.is_perfect = ideal and out_noise == 0
    return config


def programmed(mapped: MappedLayer, sim: Simulation, noise_model, t_inference: float,
               generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Conductances (R, K, J) float64 of the placement's cells in level units and the global
    drift-compensation factor.

    The cell model programs the levels; an aihwkit ``noise_model`` then adds its programming noise
    and drift at ``t_inference`` s, mapping level 0..2**c-1 linearly onto its converter's
    [g_min, g_max] µS. Drift is compensated by one factor per layer (as aihwkit's global drift
    compensation): programmed over drifted total conductance. Absent cells stay at 0.
    """
    placement = mapped.placement
    present = torch.as_tensor(placement.present())
    g = CrossbarPlan._program(sim.cell, torch.as_tensor(placement.levels), present, generator)
    if noise_model is None:
        return g, 1.0
    low, high = noise_model.g_converter.g_min, noise_model.g_converter.g_max
    per_level = (high - low) / ((1 << placement.cell_bits) - 1)
    with drawing_from(generator):
        target = low + g * per_level
        noisy = noise_model.apply_programming_noise_to_conductance(target)
        drifted = noisy if t_inference == 0 else noise_model.apply_drift_noise_to_conductance(
            noisy, noise_model.generate_drift_coefficients(target), t_inference)
    noisy, drifted = (torch.where(present, (c - low) / per_level, 0.0) for c in (noisy, drifted))
    total = float(drifted.sum())
    return drifted, float(noisy.sum()) / total if total > 0 else 1.0


class AihwkitPlan(CrossbarPlan):
    """:class:`CrossbarPlan` whose reads run on aihwkit tiles, one tile per read (module docstring).

    conductance: (R, K, J) level-unit conductances (from :func:`programmed`); config: the tiles'
    :func:`rpu_config`; drift_factor: multiplies every converted sum (global drift compensation).
    """

    def __init__(self, mapped: MappedLayer, conductance: torch.Tensor, sim: Simulation, config, drift_factor: float):
        super().__init__(mapped, sim, "cpu", conductance=conductance, path="analog")
        self.drift_factor = drift_factor
        self.dtype = config.runtime.data_type.as_torch()
        self.round_to_levels = bool(getattr(sim.adc, "round_to_levels", False))
        if self.dtype == torch.float64:  # sums beyond float32's exact integers: splice them in float64 too
            self.splice_dtype = torch.float64
        self.tiles = torch.nn.ModuleList()
        for b in self.buckets:
            tiles = torch.nn.ModuleList(config.tile_class(b.width, b.height, config) for _ in range(b.reads))
            for tile, weight in zip(tiles, b.conductance_t):
                tile.set_weights(weight.to(torch.float64))
            self.tiles.append(tiles.eval())

    def _convert(self, index, start, stop, source, cycles, generator, calibrate):
        """Converted sums (r, Jb, T'*b) of reads [start, stop) of bucket ``index`` from their aihwkit tiles."""
        slices = self._gather(self.buckets[index], start, stop, source).to(self.dtype)
        tiles = self.tiles[index]
        with torch.no_grad(), drawing_from(generator):
            sums = torch.stack([tiles[start + i](read.t()).t() for i, read in enumerate(slices)])
        sums = sums.to(self.splice_dtype).mul_(self.drift_factor)
        return sums.round_() if self.round_to_levels else sums


class AihwkitLayer(IntegerLayer):
    """Layer whose crossbar reads run on aihwkit tiles (conductances programmed once, at build)."""

    def __init__(self, module, mapped: MappedLayer, sim: Simulation, activation_scale: float, kit, noise_model,
                 params):
        super().__init__(module, mapped.quantized, sim.activation_bits, activation_scale, "cpu")
        if mapped.encoding.cell_bits != sim.cell.bits:
            raise ConflictError(f"layer {mapped.name}: mapped for {mapped.encoding.cell_bits}-bit cells, "
                             f"but the cell model stores {sim.cell.bits} bits")
        program = torch.Generator().manual_seed(layer_seed(sim.seed, mapped.name, "program"))
        conductance, drift_factor = programmed(mapped, sim, noise_model, params.t_inference, program)
        self.plan = AihwkitPlan(mapped, conductance, sim, rpu_config(kit, mapped, sim, params.out_noise), drift_factor)
        self.generator = torch.Generator().manual_seed(layer_seed(sim.seed, mapped.name, "read"))
        self.batch_rows, self.chunk_bytes = params.batch_rows, params.chunk_mib << 20

    def integer_matmul(self, x_int):
        return self.plan.matmul(x_int, self.generator, self.batch_rows, self.chunk_bytes)


