"""Cost model: crossbars, ADC resolution, conversions, area, energy and latency of a mapped layer.

Component figures (32 nm, ISAAC, ISCA 2016; ADC/DAC/shift-add/eDRAM energies as tabulated in
Accelergy's hwcomponents library, see ``shared/reference/paper.md``):

- crossbar array 128x128: 25 um^2 and 0.3 mW (ISAAC: 8 arrays, 2.4 mW, 0.0002 mm^2), one read every
  100 ns -> 30 pJ per full read; other sizes scale with rows*cols;
- ADC: :func:`sme_plugin.converters.adc_cost` (one ADC per crossbar at 1.28 GS/s);
- DAC: 0.417 pJ per row per input cycle (1-bit; a v-bit DAC costs 2**v - 1 times that), 0.17 um^2 per row;
- shift-and-add: 0.021 pJ per conversion, 60 um^2 per crossbar; the same energy per digital offset correction;
- eDRAM (index memory): 20.45 pJ per 256-bit access, 64 KB in 0.083 mm^2.

Latency assumes the crossbars of one layer work in parallel and layers run one after the other:
``out_positions * input_cycles * reads_per_crossbar * max(100 ns, cols / 1.28 GS/s)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .converters import adc_cost
from .signs import segment_view
from .types import MappedLayer

ARRAY_AREA_UM2 = 25.0
ARRAY_READ_PJ = 30.0
ARRAY_CELLS = 128 * 128
DAC_PJ = 0.417
DAC_AREA_UM2 = 0.17
SHIFT_ADD_PJ = 0.021
SHIFT_ADD_AREA_UM2 = 60.0
EDRAM_PJ_PER_256_BITS = 20.45
EDRAM_UM2_PER_BIT = 0.083e6 / (64 * 1024 * 8)
READ_NS = 100.0
ADC_RATE_GHZ = 1.28


@dataclass(frozen=True)
class Periphery:
    """What the cost model needs of the converters: configured ADC bits (None = lossless ideal ADC),
    DAC bits per input cycle, and the activation magnitude bits."""

    adc_bits: int | None
    dac_bits: int
    activation_bits: int

    @property
    def input_cycles(self) -> int:
        return -(-self.activation_bits // self.dac_bits)


def active_rows(mapped: MappedLayer) -> np.ndarray:
    """(S, G, P, read groups, M) number of present cells each ADC read sums."""
    present = mapped.present
    flat = present.reshape((-1,) + present.shape[3:])  # (S*G*P, N, M)
    groups = segment_view(flat, mapped.read_rows).sum(axis=2, dtype=np.int64)  # (S*G*P, RB, M)
    return groups.reshape(present.shape[:3] + groups.shape[1:])


def lossless_bits(active: np.ndarray, cell_bits: int, dac_bits: int) -> np.ndarray:
    """ADC bits that convert a column sum of ``active`` cells exactly (0 for an empty read)."""
    full_scale = active * ((1 << cell_bits) - 1) * ((1 << dac_bits) - 1)
    return np.ceil(np.log2(full_scale + 1.0)).astype(np.int64)


def layer_costs(mapped: MappedLayer, periphery: Periphery) -> dict:
    """Costs of one mapped layer per inference (one input sample). Keys carry their units."""
    geometry = mapped.geometry
    cell_bits = mapped.encoding.cell_bits
    needed = lossless_bits(active_rows(mapped), cell_bits, periphery.dac_bits)
    reads = needed > 0
    needed = needed[reads]
    used = needed if periphery.adc_bits is None else np.full_like(needed, periphery.adc_bits)
    energy_per_read, _ = adc_cost(used)
    positions = mapped.quantized.layer.out_positions
    cycles = periphery.input_cycles
    per_inference = positions * cycles
    size = geometry.rows * geometry.cols / ARRAY_CELLS
    reads_per_crossbar = geometry.rows // mapped.read_rows
    adc_bits_area = int(used.max()) if used.size else 0
    _, adc_area = adc_cost(np.array([adc_bits_area]))
    conversions = int(reads.sum()) * per_inference
    energy_pj = {
        "adc": float(energy_per_read.sum()) * per_inference,
        "dac": mapped.crossbars * geometry.rows * DAC_PJ * ((1 << periphery.dac_bits) - 1) * per_inference,
        "array": mapped.crossbars * ARRAY_READ_PJ * size * per_inference,
        "shift_add": SHIFT_ADD_PJ * (conversions + mapped.digital_ops * positions),
        "index": EDRAM_PJ_PER_256_BITS * mapped.index_bits / 256 * positions,
    }
    area_um2 = mapped.crossbars * (
        ARRAY_AREA_UM2 * size + float(adc_area[0]) + geometry.rows * DAC_AREA_UM2 + SHIFT_ADD_AREA_UM2
    ) + EDRAM_UM2_PER_BIT * mapped.index_bits
    read_ns = max(READ_NS, geometry.cols / ADC_RATE_GHZ)
    return {
        "crossbars": mapped.crossbars,
        "adc_bits_lossless_max": int(needed.max()) if needed.size else 0,
        "adc_bits_lossless_mean": round(float(needed.mean()), 3) if needed.size else 0.0,
        "adc_bits_used_max": adc_bits_area,
        "lossy_reads_fraction": round(float((needed > used).mean()), 4) if needed.size else 0.0,
        "adc_conversions": conversions,
        "index_bits": mapped.index_bits,
        "digital_ops": mapped.digital_ops * positions,
        "area_mm2": area_um2 * 1e-6,
        "energy_uj": sum(energy_pj.values()) * 1e-6,
        "energy_breakdown_uj": {k: v * 1e-6 for k, v in energy_pj.items()},
        "latency_us": per_inference * reads_per_crossbar * read_ns * 1e-3,
    }


def total_costs(per_layer: list[dict]) -> dict:
    """Sum the additive costs of :func:`layer_costs` over layers."""
    keys = ("crossbars", "adc_conversions", "index_bits", "digital_ops", "area_mm2", "energy_uj", "latency_us")
    totals = {k: sum(c[k] for c in per_layer) for k in keys}
    totals["adc_bits_lossless_max"] = max((c["adc_bits_lossless_max"] for c in per_layer), default=0)
    return totals
