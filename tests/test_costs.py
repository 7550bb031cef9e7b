"""Cost model: ADC resolution, conversions, energy, area and latency from hand-computed cases."""

import numpy as np
import pytest
from test_mapping import GEOMETRY, quantized, sme

from sme_plugin.converters import DAC_1BIT, IdealADC, IdealDAC, UniformADC, adc_cost
from sme_plugin.costs import (
    ARRAY_AREA_UM2,
    ARRAY_CELLS,
    EDRAM_UM2_PER_BIT,
    SHIFT_ADD_AREA_UM2,
    Periphery,
    active_rows,
    layer_costs,
    lossless_bits,
    total_costs,
)
from sme_plugin.mapping import IsaacMapper

IDEAL = Periphery(adc=IdealADC(IdealADC.Params()), dac=IdealDAC(IdealDAC.Params(bits=1)), activation_bits=8)


def test_lossless_bits_rule():
    active = np.array([0, 1, 64, 128])
    assert lossless_bits(active, 1, 1).tolist() == [0, 1, 7, 8]
    assert lossless_bits(active, 2, 1).tolist() == [0, 2, 8, 9]  # 128 * 3 = 384 -> 9 bits
    assert lossless_bits(active, 1, 2).tolist() == [0, 2, 8, 9]  # 2-bit DAC: inputs up to 3


def test_dense_isaac_costs_by_hand():
    q = quantized(np.ones((2, 300, 70)))
    mapped = IsaacMapper(IsaacMapper.Params(weight_bits=16, cell_bits=2)).map(q, GEOMETRY)  # 64x32 crossbars
    cost = layer_costs(mapped, IDEAL)
    reads = 1 * 8 * 2 * 5 * 70  # sign sets x cell groups x parts x row blocks x columns
    assert cost["crossbars"] == 180
    assert cost["adc_conversions"] == reads * 8  # 8 input cycles of a 1-bit DAC, one output position
    # full row blocks hold 64 rows of 2-bit cells: 64 * 3 = 192 -> 8 bits; the last block 44 rows -> 8 bits
    assert cost["adc_bits_lossless_max"] == 8 and cost["lossy_reads_fraction"] == 0.0
    assert cost["energy_breakdown_uj"]["adc"] == pytest.approx(reads * 8 * adc_cost(8)[0] * 1e-6)
    size = 64 * 32 / ARRAY_CELLS
    per_crossbar = ARRAY_AREA_UM2 * size + adc_cost(8)[1] + 64 * DAC_1BIT[1] + SHIFT_ADD_AREA_UM2
    assert cost["offset_bits"] == 17  # one register for ISAAC's constant offset -2**15
    assert cost["area_mm2"] == pytest.approx((180 * per_crossbar + 17 * EDRAM_UM2_PER_BIT) * 1e-6)
    assert cost["latency_us"] == pytest.approx(8 * 0.1)  # 8 cycles of 100 ns
    assert cost["digital_ops"] == mapped.digital_ops


def test_ou_reads_take_longer_and_need_fewer_adc_bits():
    rng = np.random.default_rng(0)
    q = quantized(rng.integers(-127, 128, (1, 128, 32)))
    column = layer_costs(sme("column").map(q, GEOMETRY), IDEAL)
    ou = layer_costs(sme("ou").map(q, GEOMETRY), IDEAL)
    assert ou["latency_us"] == pytest.approx(4 * column["latency_us"])  # 64 rows read 16 at a time
    assert ou["adc_bits_lossless_max"] == 5 < column["adc_bits_lossless_max"] == 7


def test_a_coarse_adc_is_reported_lossy():
    q = quantized(np.ones((1, 64, 4)))
    cost = layer_costs(sme("column").map(q, GEOMETRY), Periphery(UniformADC(UniformADC.Params(bits=4)), IdealDAC(IdealDAC.Params()), activation_bits=8))
    assert cost["adc_bits_lossless_max"] == 7 and cost["adc_bits_used_max"] == 4
    assert cost["lossy_reads_fraction"] == 1.0


def test_active_rows_counts_present_cells_per_read_group():
    w = np.zeros((1, 100, 3), dtype=np.int64)
    w[0, :70, 1] = 1
    active = active_rows(sme("column").map(quantized(w), GEOMETRY))
    assert active.shape == (2, 7, 1, 2, 3)
    # a non-empty plane-column keeps all its cells (zeros included): 64 + 36 rows
    assert active[0, 0, 0, :, 1].tolist() == [64, 36] and active.sum() == 100


def test_totals_add_up():
    q = quantized(np.ones((1, 64, 8)))
    costs = [layer_costs(sme("column").map(q, GEOMETRY), IDEAL)] * 3
    totals = total_costs(costs)
    assert totals["crossbars"] == 3 * costs[0]["crossbars"]
    assert totals["energy_uj"] == pytest.approx(3 * costs[0]["energy_uj"])


def test_segment_offsets_are_stored_and_read_digitally():
    w = np.arange(-64, 64, dtype=np.int64).reshape(1, 128, 1).repeat(3, axis=2)
    mapped = sme("ou", sign="segment-offset").map(quantized(w), GEOMETRY)
    cost = layer_costs(mapped, IDEAL)
    assert cost["offset_bits"] == mapped.digital_ops * 8 > 0  # offsets down to -64 take 8 signed bits
    assert cost["energy_breakdown_uj"]["memory"] > 0
