"""Cost model: crossbars, ADC resolution, conversions, area, energy and latency of a mapped layer.

Component figures (32 nm, ISAAC, ISCA 2016; ADC/DAC/shift-add/eDRAM energies as tabulated in
Accelergy's hwcomponents library, see ``shared/reference/paper.md``):

- crossbar array 128x128: 25 um^2 and 0.3 mW (ISAAC: 8 arrays, 2.4 mW, 0.0002 mm^2), one read every
  100 ns -> 30 pJ per full read; other sizes scale with rows*cols;
- ADC and DAC: the configured components' own ``energy_pj``/``area_um2`` (the built-ins use ISAAC's
  table, :mod:`sme_plugin.converters`); one ADC per crossbar at 1.28 GS/s, one DAC per crossbar row;
- shift-and-add: 0.021 pJ per conversion, 60 um^2 per crossbar; the same energy per digital offset correction;
- eDRAM (squeeze-out indices and segment offsets, read once per output position): 20.45 pJ per
  256-bit access, 64 KB in 0.083 mm^2.

Latency assumes the crossbars of one layer work in parallel and layers run one after the other:
``out_positions * input_cycles * reads_per_crossbar * max(100 ns, cols / 1.28 GS/s)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .signs import segment_view
from .types import MappedLayer

ARRAY_AREA_UM2 = 25.0
ARRAY_READ_PJ = 30.0
ARRAY_CELLS = 128 * 128
SHIFT_ADD_PJ = 0.021
SHIFT_ADD_AREA_UM2 = 60.0
EDRAM_PJ_PER_256_BITS = 20.45
EDRAM_UM2_PER_BIT = 0.083e6 / (64 * 1024 * 8)
READ_NS = 100.0
ADC_RATE_GHZ = 1.28


@dataclass(frozen=True)
class Periphery:
    """The converters around the crossbars and the activation magnitude bits they stream.

    adc: an ADC component (``lossless``, ``bits`` unless lossless, ``energy_pj(bits)``, ``area_um2(bits)``);
    dac: a DAC component (``bits`` per input cycle, ``energy_pj()``, ``area_um2()``).
    """

    adc: object
    dac: object
    activation_bits: int

    @property
    def adc_bits(self) -> int | None:
        """Configured ADC resolution; None for a lossless ADC (costed at each read's lossless bits)."""
        return None if self.adc.lossless else self.adc.bits

    @property
    def input_cycles(self) -> int:
        return -(-self.activation_bits // self.dac.bits)


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


def stored_offset_bits(mapped: MappedLayer) -> int:
    """Digital memory for the sign scheme's offsets: one register for a layer-wide constant (ISAAC's
    offset), else one signed value per (segment, column) correction."""
    offsets = mapped.encoding.offset
    nonzero = offsets[offsets != 0]
    if nonzero.size == 0:
        return 0
    width = int(np.abs(nonzero).max()).bit_length() + 1
    return width if (nonzero == nonzero[0]).all() else mapped.digital_ops * width


def layer_costs(mapped: MappedLayer, periphery: Periphery) -> dict:
    """Costs of one mapped layer per inference (one input sample). Keys carry their units."""
    geometry = mapped.geometry
    cell_bits = mapped.encoding.cell_bits
    needed = lossless_bits(active_rows(mapped), cell_bits, periphery.dac.bits)
    reads = needed > 0
    needed = needed[reads]
    used = needed if periphery.adc_bits is None else np.full_like(needed, periphery.adc_bits)
    adc, dac = periphery.adc, periphery.dac
    positions = mapped.quantized.layer.out_positions
    cycles = periphery.input_cycles
    per_inference = positions * cycles
    size = geometry.rows * geometry.cols / ARRAY_CELLS
    reads_per_crossbar = geometry.rows // mapped.read_rows
    adc_bits_area = int(used.max()) if used.size else 0
    conversions = int(reads.sum()) * per_inference
    offset_bits = stored_offset_bits(mapped)
    memory_bits = mapped.index_bits + offset_bits
    energy_pj = {
        "adc": float(np.sum(adc.energy_pj(used))) * per_inference,
        "dac": mapped.crossbars * geometry.rows * dac.energy_pj() * per_inference,
        "array": mapped.crossbars * ARRAY_READ_PJ * size * per_inference,
        "shift_add": SHIFT_ADD_PJ * (conversions + mapped.digital_ops * positions),
        "memory": EDRAM_PJ_PER_256_BITS * memory_bits / 256 * positions,
    }
    area_um2 = mapped.crossbars * (
        ARRAY_AREA_UM2 * size + adc.area_um2(adc_bits_area) + geometry.rows * dac.area_um2() + SHIFT_ADD_AREA_UM2
    ) + EDRAM_UM2_PER_BIT * memory_bits
    read_ns = max(READ_NS, geometry.cols / ADC_RATE_GHZ)
    return {
        "crossbars": mapped.crossbars,
        "adc_bits_lossless_max": int(needed.max()) if needed.size else 0,
        "adc_bits_lossless_mean": round(float(needed.mean()), 3) if needed.size else 0.0,
        "adc_bits_used_max": adc_bits_area,
        "lossy_reads_fraction": round(float((needed > used).mean()), 4) if needed.size else 0.0,
        "adc_conversions": conversions,
        "index_bits": mapped.index_bits,
        "offset_bits": offset_bits,
        "digital_ops": mapped.digital_ops * positions,
        "area_mm2": area_um2 * 1e-6,
        "energy_uj": sum(energy_pj.values()) * 1e-6,
        "energy_breakdown_uj": {k: v * 1e-6 for k, v in energy_pj.items()},
        "latency_us": per_inference * reads_per_crossbar * read_ns * 1e-3,
    }


def total_costs(per_layer: list[dict]) -> dict:
    """Sum the additive costs of :func:`layer_costs` over layers."""
    keys = ("crossbars", "adc_conversions", "index_bits", "offset_bits", "digital_ops", "area_mm2", "energy_uj",
            "latency_us")
    totals = {k: sum(c[k] for c in per_layer) for k in keys}
    totals["adc_bits_lossless_max"] = max((c["adc_bits_lossless_max"] for c in per_layer), default=0)
    return totals
