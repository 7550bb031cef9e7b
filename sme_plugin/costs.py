"""Cost model: crossbars, reads, ADC resolution and conversions, area, energy and latency of a mapped
layer, every figure derived from its :class:`~sme_plugin.types.Placement` (and nothing else).

Analog side (32 nm, ISAAC, ISCA 2016; ADC/DAC/shift-add/eDRAM energies as tabulated in Accelergy's
hwcomponents library, see ``shared/reference/paper.md``):

- crossbar array 128x128: 25 um^2 and 0.3 mW (ISAAC: 8 arrays, 2.4 mW, 0.0002 mm^2), one read every
  100 ns -> 30 pJ for a read driving all rows and columns; a read charges its share
  (driven rows x used columns) / (128 x 128); other array sizes scale their area with rows*cols;
- ADC and DAC: the configured components' own ``energy_pj``/``area_um2``; every non-empty column sum of
  a read is one conversion at the resolution ``adc.bits_for`` gives it; one ADC per crossbar (sized for
  the largest resolution it converts) at 1.28 GS/s; one DAC per crossbar row, one conversion per
  driven row and read;
- shift-and-add: 0.021 pJ per conversion, 60 um^2 per crossbar;
- eDRAM (routing indices and segment offsets, read once per output position): 20.45 pJ per 256-bit
  access, 64 KB in 0.083 mm^2.

Digital periphery (offset corrections ``o * sum(x over a segment)``): each segment whose columns carry a
correction needs its input sum (``rows - 1`` additions of ``A + log2 rows``-bit words per output
position), and each (segment, column, offset) correction is a multiply-accumulate of the offset
(``offset_width`` bits) by that sum, accumulated at 32 bits; power-of-two offsets (ISAAC's ``2**(B-1)``)
need only a shift. Energy and area from Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm):
8-bit add 0.03 pJ / 36 um^2, 32-bit add 0.1 pJ / 137 um^2, 8-bit multiply 0.2 pJ / 282 um^2, 32-bit
multiply 3.1 pJ / 3495 um^2; adders scale linearly and multipliers with the product of the operand
widths between those points. They are used unscaled at ISAAC's 32 nm, which overstates the digital
side: a mapping that moves weights into the periphery pays at least its real price. One multiplier
and one adder per crossbar (one per layer if it has none) do the corrections of a layer, one
operation per cycle at ISAAC's 1.2 GHz; the offsets they multiply are read from eDRAM.

Latency: the crossbars of a layer work in parallel, each doing its reads one after another, a read
taking ``max(100 ns, conversions / 1.28 GS/s)``; the digital units work alongside; layers run one after
the other: ``out_positions * max(input_cycles * slowest crossbar's time per cycle, digital time)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .types import MappedLayer, Placement

ARRAY_AREA_UM2 = 25.0
ARRAY_READ_PJ = 30.0
ARRAY_CELLS = 128 * 128
SHIFT_ADD_PJ = 0.021
SHIFT_ADD_AREA_UM2 = 60.0
EDRAM_PJ_PER_256_BITS = 20.45
EDRAM_UM2_PER_BIT = 0.083e6 / (64 * 1024 * 8)
READ_NS = 100.0
ADC_RATE_GHZ = 1.28
DIGITAL_CLOCK_GHZ = 1.2
#: Horowitz, ISSCC 2014, 45 nm: (energy pJ, area um^2) of an 8-bit adder and an 8x8-bit multiplier
ADD8 = (0.03, 36.0)
MUL8 = (0.2, 282.0)
ACCUMULATOR_BITS = 32


def adder_cost(bits) -> tuple[float, float]:
    """(energy pJ, area um^2) of one ``bits``-bit addition (linear in width: 32 bits -> 0.12 pJ, 144 um^2)."""
    return ADD8[0] * bits / 8, ADD8[1] * bits / 8


def multiplier_cost(a_bits, b_bits) -> tuple[float, float]:
    """(energy pJ, area um^2) of one ``a_bits`` x ``b_bits`` multiplication (product of widths; 32x32 ->
    3.2 pJ, 4512 um^2 against Horowitz's 3.1 pJ, 3495 um^2)."""
    return MUL8[0] * a_bits * b_bits / 64, MUL8[1] * a_bits * b_bits / 64


@dataclass(frozen=True)
class Periphery:
    """The converters around the crossbars and the activation magnitude bits they stream.

    adc: an ADC component (``bits_for(full_scale)``, ``energy_pj(bits)``, ``area_um2(bits)``);
    dac: a DAC component (``bits`` per input cycle, ``energy_pj()``, ``area_um2()``).
    """

    adc: object
    dac: object
    activation_bits: int

    @property
    def input_cycles(self) -> int:
        return -(-self.activation_bits // self.dac.bits)


def lossless_bits(full_scale: np.ndarray) -> np.ndarray:
    """ADC bits that convert every column sum in [0, full_scale] exactly: ceil(log2(full_scale + 1))."""
    return np.ceil(np.log2(np.asarray(full_scale, dtype=np.float64) + 1.0)).astype(np.int64)


@dataclass(frozen=True)
class Corrections:
    """The digital offset corrections of a placement, per output position.

    macs: (segment, column, offset) corrections that multiply; shifts: those by a power of two;
    sums: segment input sums they need; sum_adds: additions those sums take; offset_width: signed bits
    of the widest offset; sum_width: bits of a segment input sum; stored: distinct offsets held in memory
    (1 for a layer-wide constant).
    """

    macs: int
    shifts: int
    sums: int
    sum_adds: int
    offset_width: int
    sum_width: int
    stored: int


def _distinct_offsets(placement: Placement) -> tuple[np.ndarray, np.ndarray]:
    """(segment, offset) of every distinct non-zero (segment, column, offset) correction of ``placement``.

    Offsets of the built-in sign schemes are constant over a segment's rows in each column; that case
    is one reduction over contiguous segments, anything else goes through ``np.unique``."""
    parts, rows, cols = placement.shape
    segments = placement.offset_segment.reshape(-1)
    offset = placement.offset.reshape(parts * rows, cols)
    if segments.size and (np.diff(segments) >= 0).all():
        starts = np.flatnonzero(np.r_[True, segments[1:] != segments[:-1]])
        low, high = np.minimum.reduceat(offset, starts, axis=0), np.maximum.reduceat(offset, starts, axis=0)
        if (low == high).all():
            segment, _ = np.nonzero(low)
            return segments[starts][segment], low[low != 0]
    nonzero = offset != 0
    values = offset[nonzero]
    span = 2 * int(np.abs(values).max(initial=0)) + 1
    row, column = np.nonzero(nonzero)
    keys = np.unique((segments[row] * cols + column) * span + values + span // 2)
    return keys // span // cols, keys % span - span // 2


def corrections(placement: Placement, activation_bits: int) -> Corrections:
    """The offset corrections ``o * sum(x over segment)`` the periphery adds back for ``placement``."""
    segment, values = _distinct_offsets(placement)
    if not values.size:
        return Corrections(0, 0, 0, 0, 0, 0, 0)
    magnitude = np.abs(values)
    power_of_two = (magnitude & (magnitude - 1)) == 0
    used_segments, segment_rows = np.unique(placement.offset_segment, return_counts=True)
    with_corrections = np.isin(used_segments, segment)
    return Corrections(
        macs=int((~power_of_two).sum()),
        shifts=int(power_of_two.sum()),
        sums=int(with_corrections.sum()),
        sum_adds=int((segment_rows[with_corrections] - 1).sum()),
        offset_width=int(magnitude.max()).bit_length() + 1,
        sum_width=activation_bits + int(segment_rows.max() - 1).bit_length(),
        stored=1 if (values == values[0]).all() else len(values),
    )


def layer_costs(mapped: MappedLayer, periphery: Periphery) -> dict:
    """Costs of one mapped layer per inference (one input sample), from its placement. Keys carry units."""
    placement = mapped.placement
    adc, dac = periphery.adc, periphery.dac
    positions = mapped.quantized.layer.out_positions
    per_inference = positions * periphery.input_cycles
    full_scale = placement.full_scale(dac.bits)  # (R, J)
    converted = full_scale > 0
    needed = lossless_bits(full_scale[converted])
    used = np.broadcast_to(np.asarray(adc.bits_for(full_scale), dtype=np.int64), full_scale.shape)[converted]
    reads_converted = converted.sum(axis=1)  # (R,)
    driven_rows = (placement.row >= 0).sum(axis=1)
    used_cols = (placement.col >= 0).sum(axis=1)
    crossbars = placement.crossbars
    crossbar_bits = np.zeros(crossbars, dtype=np.int64)  # ADC resolution each crossbar is built for
    np.maximum.at(crossbar_bits, np.broadcast_to(placement.crossbar[:, None], full_scale.shape)[converted], used)
    read_ns = np.maximum(READ_NS, reads_converted / ADC_RATE_GHZ)
    crossbar_ns = np.bincount(placement.crossbar, read_ns, minlength=crossbars)
    conversions = int(converted.sum()) * per_inference
    fix = corrections(placement, periphery.activation_bits)
    mul_pj, mul_um2 = multiplier_cost(fix.offset_width, fix.sum_width)
    acc_pj, acc_um2 = adder_cost(ACCUMULATOR_BITS)
    sum_pj, sum_um2 = adder_cost(fix.sum_width)
    offset_bits = fix.stored * fix.offset_width
    memory_bits = placement.index_bits + offset_bits
    size = placement.rows * placement.cols / ARRAY_CELLS
    energy_pj = {
        "adc": float(np.sum(adc.energy_pj(used))) * per_inference,
        "dac": float(driven_rows.sum()) * dac.energy_pj() * per_inference,
        "array": ARRAY_READ_PJ * float((driven_rows * used_cols).sum()) / ARRAY_CELLS * per_inference,
        "shift_add": SHIFT_ADD_PJ * conversions,
        "offset_correction": (fix.macs * (mul_pj + acc_pj) + fix.shifts * acc_pj + fix.sum_adds * sum_pj) * positions,
        "memory": EDRAM_PJ_PER_256_BITS * memory_bits / 256 * positions,
    }
    digital_units = max(crossbars, 1) if fix.macs + fix.shifts else 0
    digital_ns = (fix.macs + fix.shifts + fix.sum_adds) / max(digital_units, 1) / DIGITAL_CLOCK_GHZ
    area_um2 = (
        crossbars * (ARRAY_AREA_UM2 * size + placement.rows * dac.area_um2() + SHIFT_ADD_AREA_UM2)
        + float(np.sum(adc.area_um2(crossbar_bits)))
        + digital_units * (mul_um2 * (fix.macs > 0) + acc_um2 + sum_um2)
        + EDRAM_UM2_PER_BIT * memory_bits
    )
    analog = ("adc", "dac", "array", "shift_add")
    return {
        "crossbars": crossbars,
        "reads": placement.reads,
        "reads_per_crossbar_max": int(placement.reads_per_crossbar().max(initial=0)),
        "adc_bits_lossless_max": int(needed.max(initial=0)),
        "adc_bits_lossless_mean": round(float(needed.mean()), 3) if needed.size else 0.0,
        "adc_bits_used_max": int(used.max(initial=0)),
        "adc_bits_used_mean": round(float(used.mean()), 3) if used.size else 0.0,
        "lossy_reads_fraction": round(float((needed > used).mean()), 4) if needed.size else 0.0,
        "adc_conversions": conversions,
        "index_bits": placement.index_bits,
        "offset_bits": offset_bits,
        "offset_macs": fix.macs * positions,
        "offset_shifts": fix.shifts * positions,
        "input_sum_adds": fix.sum_adds * positions,
        "area_mm2": area_um2 * 1e-6,
        "energy_uj": sum(energy_pj.values()) * 1e-6,
        "energy_analog_uj": sum(energy_pj[k] for k in analog) * 1e-6,
        "energy_digital_uj": sum(v for k, v in energy_pj.items() if k not in analog) * 1e-6,
        "energy_breakdown_uj": {k: v * 1e-6 for k, v in energy_pj.items()},
        "latency_us": positions * max(periphery.input_cycles * float(crossbar_ns.max(initial=0.0)), digital_ns) * 1e-3,
    }


#: costs that add up over layers
ADDITIVE = ("crossbars", "reads", "adc_conversions", "index_bits", "offset_bits", "offset_macs", "offset_shifts",
            "input_sum_adds", "area_mm2", "energy_uj", "energy_analog_uj", "energy_digital_uj", "latency_us")


def total_costs(per_layer: list[dict]) -> dict:
    """Sum the additive costs of :func:`layer_costs` over layers (latency: layers run one after another)."""
    totals = {k: sum(c[k] for c in per_layer) for k in ADDITIVE}
    totals["adc_bits_lossless_max"] = max((c["adc_bits_lossless_max"] for c in per_layer), default=0)
    totals["adc_bits_used_max"] = max((c["adc_bits_used_max"] for c in per_layer), default=0)
    return totals
