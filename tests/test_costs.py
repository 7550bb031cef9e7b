"""Cost model: every figure from the placement, checked against hand-computed cases."""

import numpy as np
import pytest
from test_mapping import GEOMETRY, quantized, sme

from sme_plugin.converters import DAC_1BIT, IdealADC, IdealDAC, UniformADC, adc_cost
from sme_plugin.costs import (
    ACCUMULATOR_BITS,
    ARRAY_AREA_UM2,
    ARRAY_CELLS,
    ARRAY_READ_PJ,
    EDRAM_UM2_PER_BIT,
    SHIFT_ADD_AREA_UM2,
    Periphery,
    adder_cost,
    corrections,
    layer_costs,
    lossless_bits,
    multiplier_cost,
    total_costs,
)
from sme_plugin.mapping import IsaacMapper
from sme_plugin.squeeze import row_compact
from sme_plugin.types import Geometry

IDEAL = Periphery(adc=IdealADC(IdealADC.Params()), dac=IdealDAC(IdealDAC.Params(bits=1)), activation_bits=8)


def test_lossless_bits_rule():
    assert lossless_bits(np.array([0, 1, 64, 128, 384])).tolist() == [0, 1, 7, 8, 9]


def test_dense_isaac_costs_by_hand():
    q = quantized(np.ones((2, 300, 70)))
    mapped = IsaacMapper(IsaacMapper.Params(weight_bits=16, cell_bits=2)).map(q, GEOMETRY)  # 64x32 crossbars
    cost = layer_costs(mapped, IDEAL)
    # u = 1 + 2**15 on 2-bit cells: group 0 holds 1, group 7 holds 2, groups 1..6 are empty columns
    conversions = 2 * 5 * 70 * 2  # parts x row blocks x weight columns x non-empty groups
    assert cost["crossbars"] == cost["reads"] == 180
    assert cost["adc_conversions"] == conversions * 8  # 8 input cycles of a 1-bit DAC, one output position
    # 64 (last block: 44) non-zero 2-bit cells per column: 192 (132) -> 8 bits
    assert cost["adc_bits_lossless_max"] == 8 and cost["lossy_reads_fraction"] == 0.0
    assert cost["energy_breakdown_uj"]["adc"] == pytest.approx(conversions * 8 * adc_cost(8)[0] * 1e-6)
    driven = 2 * 300 * 18  # every row of every crossbar column block is driven once per cycle
    assert cost["energy_breakdown_uj"]["dac"] == pytest.approx(driven * 8 * DAC_1BIT[0] * 1e-6)
    cells_read = 2 * 300 * (17 * 32 + 8 * 2)  # 17 full column blocks of 4 weights, one of 2 (70 = 17*4 + 2)
    assert cost["energy_breakdown_uj"]["array"] == pytest.approx(ARRAY_READ_PJ * cells_read / ARRAY_CELLS * 8e-6)
    # ISAAC's constant offset -2**15: one 17-bit register, a shift per (row block, column), input sums per block
    assert cost["offset_bits"] == 17 and cost["offset_macs"] == 0 and cost["offset_shifts"] == 2 * 5 * 70
    assert cost["input_sum_adds"] == 2 * (4 * 63 + 43)
    size = 64 * 32 / ARRAY_CELLS
    per_crossbar = ARRAY_AREA_UM2 * size + adc_cost(8)[1] + 64 * DAC_1BIT[1] + SHIFT_ADD_AREA_UM2
    digital = adder_cost(ACCUMULATOR_BITS)[1] + adder_cost(8 + 6)[1]  # accumulator, 14-bit input-sum adder
    assert cost["area_mm2"] == pytest.approx((180 * (per_crossbar + digital) + 17 * EDRAM_UM2_PER_BIT) * 1e-6)
    assert cost["latency_us"] == pytest.approx(8 * 0.1)  # 8 cycles of one 100 ns read


def test_ou_reads_take_longer_and_need_fewer_adc_bits():
    rng = np.random.default_rng(0)
    q = quantized(rng.integers(-127, 128, (1, 128, 32)))
    column = layer_costs(sme("column").map(q, GEOMETRY), IDEAL)
    ou_mapped = sme("ou").map(q, GEOMETRY)
    ou = layer_costs(ou_mapped, IDEAL)
    assert column["reads_per_crossbar_max"] == 1 and ou["reads_per_crossbar_max"] == 4  # 64 rows, 16 at a time
    assert ou["latency_us"] == pytest.approx(4 * column["latency_us"])
    # full scale = non-zero cells of the read column: at most 16 of an OU read, 64 of a column read
    assert ou["adc_bits_lossless_max"] <= 5 and column["adc_bits_lossless_max"] <= 7
    assert ou["adc_bits_lossless_mean"] < column["adc_bits_lossless_mean"]


def test_adc_bits_auto_charges_each_conversion_its_own_resolution():
    w = np.zeros((1, 64, 2), dtype=np.int64)
    w[0, :, 0] = 1  # 64 cells in one column: 7 bits
    w[0, :3, 1] = 1  # 3 cells: 2 bits
    mapped = sme("column").map(quantized(w), GEOMETRY)
    auto = Periphery(UniformADC(UniformADC.Params(bits="auto")), IdealDAC(IdealDAC.Params()), 1)
    cost = layer_costs(mapped, auto)
    assert cost["adc_conversions"] == 2
    assert cost["energy_breakdown_uj"]["adc"] == pytest.approx((adc_cost(7)[0] + adc_cost(2)[0]) * 1e-6)
    assert cost["adc_bits_used_mean"] == 4.5


def test_a_coarse_adc_is_reported_lossy():
    q = quantized(np.ones((1, 64, 4)))
    coarse = Periphery(UniformADC(UniformADC.Params(bits=4)), IdealDAC(IdealDAC.Params()), activation_bits=8)
    cost = layer_costs(sme("column").map(q, GEOMETRY), coarse)
    assert cost["adc_bits_lossless_max"] == 7 and cost["adc_bits_used_max"] == 4
    assert cost["lossy_reads_fraction"] == 1.0


def test_full_scale_counts_the_nonzero_cells_of_each_read_column():
    w = np.zeros((1, 100, 3), dtype=np.int64)
    w[0, :70, 1] = 1
    placement = sme("column").map(quantized(w), GEOMETRY).placement
    # plane 0 of column 1 is non-empty in both row blocks (64 + 6 ones); the other slots are unused
    assert sorted(placement.full_scale(1)[placement.col >= 0].tolist()) == [6.0, 64.0]
    assert placement.full_scale(2).max() == 64 * 3


def test_row_compaction_pays_a_read_per_cell_group():
    w = np.zeros((1, 64, 32), dtype=np.int64)
    w[0, :4, :] = 5  # planes 0 and 2 of four rows
    mapped = sme("tile").map(quantized(w), GEOMETRY)
    compact = row_compact(mapped)
    assert (mapped.crossbars, compact.crossbars) == (2, 1)
    before, after = layer_costs(mapped, IDEAL), layer_costs(compact, IDEAL)
    assert after["reads"] == 2 and after["reads_per_crossbar_max"] == 2  # plane 0 and plane 2 rows read apart
    assert after["latency_us"] == pytest.approx(2 * before["latency_us"])
    assert after["adc_conversions"] == before["adc_conversions"]
    assert after["index_bits"] == 8 * 6  # 8 surviving rows select one of 64 inputs


def test_totals_add_up():
    q = quantized(np.ones((1, 64, 8)))
    costs = [layer_costs(sme("column").map(q, GEOMETRY), IDEAL)] * 3
    totals = total_costs(costs)
    assert totals["crossbars"] == 3 * costs[0]["crossbars"]
    assert totals["energy_uj"] == pytest.approx(3 * costs[0]["energy_uj"])
    assert totals["energy_uj"] == pytest.approx(totals["energy_analog_uj"] + totals["energy_digital_uj"])


def test_segment_offsets_are_multiply_accumulates():
    w = np.arange(-64, 64, dtype=np.int64).reshape(1, 128, 1).repeat(3, axis=2)
    mapped = sme("ou", sign="segment-offset").map(quantized(w), GEOMETRY)
    fix = corrections(mapped.placement, activation_bits=8)
    # segment minima -64 -48 -32 -16 0 16 32 48: 7 corrections per column, 48 twice not a power of two
    assert (fix.macs, fix.shifts, fix.sums) == (2 * 3, 5 * 3, 7)
    assert fix.offset_width == 8 and fix.sum_width == 8 + 4 and fix.sum_adds == 7 * 15
    cost = layer_costs(mapped, IDEAL)
    assert cost["offset_bits"] == 21 * 8  # every (segment, column) correction keeps its offset
    mul, acc, add = multiplier_cost(8, 12)[0], adder_cost(32)[0], adder_cost(12)[0]
    expected = 6 * (mul + acc) + 15 * acc + 7 * 15 * add
    assert cost["energy_breakdown_uj"]["offset_correction"] == pytest.approx(expected * 1e-6)


def test_moving_weights_into_the_periphery_is_not_free():
    """One-row segments store every weight as a digital offset: no crossbar, but a MAC per weight."""
    rng = np.random.default_rng(3)
    q = quantized(rng.integers(-127, 128, (1, 128, 64)))
    geometry = Geometry(rows=128, cols=128, ou_rows=1, cell_bits=1)
    digital = layer_costs(sme("ou", sign="segment-offset").map(q, geometry), IDEAL)
    isaac = layer_costs(IsaacMapper(IsaacMapper.Params()).map(q, geometry), IDEAL)
    weights = int((q.w_int != 0).sum())
    assert digital["crossbars"] == 0 and digital["offset_macs"] + digital["offset_shifts"] == weights
    # each weight: a multiply-accumulate and an 8-bit offset fetched from eDRAM, on one digital unit
    per_weight_pj = multiplier_cost(8, 8)[0] + adder_cost(32)[0] + 20.45 * 8 / 256
    assert digital["energy_digital_uj"] >= 0.95 * weights * per_weight_pj * 1e-6
    assert digital["energy_digital_uj"] > 0.5 * isaac["energy_uj"]
    assert digital["latency_us"] == pytest.approx(weights / 1.2 * 1e-3)
    assert digital["latency_us"] > 5 * isaac["latency_us"]
