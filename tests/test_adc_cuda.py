"""ADC conversion and cell programming on CUDA agree with the CPU (skipped without a GPU)."""

import pytest
import torch
from sme_cell_models import MLCCell, SLCCell

from sme_plugin.converters import NoisyADC, UniformADC

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("adc", [UniformADC(UniformADC.Params(bits=6)), UniformADC(UniformADC.Params(bits="auto")),
                                 UniformADC(UniformADC.Params(bits=5, round_to_levels=True)),
                                 NoisyADC(NoisyADC.Params(bits="auto", noise_lsb=0.0, offset_levels=0.4)),
                                 NoisyADC(NoisyADC.Params(bits=7, noise_lsb=0.0, offset_lsb=-0.3))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_deterministic_conversions_match_cpu(adc, dtype):
    full_scale = torch.tensor([[0.0, 1.0, 15.0, 100.0, 255.0, 1000.0]], dtype=torch.float64)
    # continuous sums: exact ties between two codes (where CPU and GPU division may round apart) are
    # measure-zero; integer sums on these ranges hit them (50 * 63/100 = 31.5)
    sums = (torch.rand(512, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.2
            * full_scale).to(dtype)
    cpu = adc.convert(sums.clone(), full_scale, torch.Generator().manual_seed(1))
    gpu = adc.convert(sums.cuda(), full_scale.cuda(), torch.Generator("cuda").manual_seed(1))
    assert gpu.device.type == "cuda" and gpu.dtype == dtype
    differ = ~torch.isclose(gpu.cpu(), cpu, rtol=1e-6, atol=1e-5)
    assert not differ.any(), (sums[differ], cpu[differ], gpu.cpu()[differ])


@cuda
def test_noisy_conversion_and_programming_run_on_cuda():
    adc = NoisyADC(NoisyADC.Params(bits="auto", noise_levels=0.5))
    sums = torch.full((100_000,), 40.0, device="cuda")
    out = adc.convert(sums, torch.tensor(64.0, device="cuda"), torch.Generator("cuda").manual_seed(2))
    assert abs(float(out.mean()) - 40.0) < 0.05 and abs(float(out.std()) - (0.25 + 1 / 12) ** 0.5) < 0.05
    for cell in (SLCCell(SLCCell.Params()), MLCCell(MLCCell.Params(bits=3, preset="chen2015"))):
        levels = torch.randint(0, 1 << cell.bits, (1000, 64), device="cuda", dtype=torch.uint8)
        g = cell.program(levels, levels >= 0, torch.Generator("cuda").manual_seed(3))
        assert g.device.type == "cuda" and g.dtype == torch.float64
