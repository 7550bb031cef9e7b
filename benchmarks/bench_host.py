"""Throughput of the standalone crossbar simulation against the digital integer matmul.

For each layer shape N x M (random 8-bit weights, quantized per channel and mapped by the ``sme``
mapper on 128x128 crossbars with 16-row operation units), each cell (SLC, 2-bit MLC), sign scheme
and packing, and each mode (``ideal``: ideal cell and ADC; ``noisy``: the cell model's default
variation and read noise, and a noisy ADC at the read group's lossless resolution with 0.5 LSB
noise), times :meth:`CrossbarLayer.integer_matmul` on R random non-negative 8-bit im2col rows
(1-bit DAC; R = ``--work`` / (N*M) rows, 4..4096) and reports im2col rows per second and column
sums (one ADC conversion each) per second, next to :class:`DigitalLayer` (exact float64 matmul) on
the same rows. Ideal results must equal the digital ones bit for bit (max |difference| = 0); noisy
ones report the relative RMS error ||y - y_digital|| / ||y_digital||.

    python benchmarks/bench_host.py [--shapes 144x32 1152x128 4608x512] [--cells slc mlc]
                                    [--signs differential segment-offset] [--packings column ou]
                                    [--modes ideal noisy] [--work 4194304] [--chunk-mib 256]
                                    [--device cpu|cuda] [--repeats 2] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch
from bench_mapping import limit_threads, positive, print_table  # first: it puts the checkout on sys.path
from torch import nn

from cell_models import IdealCell, MLCCell, SLCCell
from sme_plugin.converters import IdealADC, IdealDAC, NoisyADC, lossless_bits
from sme_plugin.host import CrossbarLayer, DigitalLayer, Simulation, StandaloneHost
from sme_plugin.mapping import SmeMapper
from sme_plugin.quantize import UniformQuantizer
from sme_plugin.types import Geometry, Layer

WEIGHT_BITS = ACTIVATION_BITS = 8
GEOMETRY = dict(rows=128, cols=128, ou_rows=16)


def shape(text: str) -> tuple[int, int]:
    """``"NxM"`` -> (N, M)."""
    rows, cols = text.lower().split("x")
    return int(rows), int(cols)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, torch.Tensor]:
    """(median seconds of ``repeats`` calls after one warm-up call, last result); waits for CUDA kernels."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    result = fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def simulation(cell: str, mode: str, read_rows: int) -> Simulation:
    """Ideal cell and ADC, or the cell's default physical model and a noisy ADC at lossless resolution."""
    bits = 1 if cell == "slc" else 2
    dac = IdealDAC(IdealDAC.Params(bits=1))
    if mode == "ideal":
        return Simulation(IdealCell(IdealCell.Params(bits=bits)), IdealADC(IdealADC.Params()), dac, ACTIVATION_BITS)
    physical = SLCCell(SLCCell.Params()) if cell == "slc" else MLCCell(MLCCell.Params(bits=bits))
    adc_bits = lossless_bits(read_rows * ((1 << bits) - 1) * ((1 << dac.bits) - 1))
    return Simulation(physical, NoisyADC(NoisyADC.Params(bits=adc_bits, noise_lsb=0.5)), dac, ACTIVATION_BITS)


def bench_shape(n: int, m: int, args, rng: np.random.Generator) -> list[dict]:
    """Digital and crossbar rows for one N x M layer."""
    weight = rng.standard_normal((1, n, m)).astype(np.float32)
    layer = Layer(f"fc{n}x{m}", "linear", weight, np.ones(weight.shape, bool), None, m)
    q = UniformQuantizer(UniformQuantizer.Params(bits=WEIGHT_BITS)).quantize(layer)
    module = nn.Linear(n, m)
    rows = int(np.clip(args.work // (n * m), 4, 4096))
    x = torch.as_tensor(rng.integers(0, 1 << ACTIVATION_BITS, (rows, 1, n)), dtype=torch.float64, device=args.device)
    digital = DigitalLayer(module, q, ACTIVATION_BITS, 1.0, args.device)
    seconds, reference = timed(lambda: digital.integer_matmul(x), args.device, args.repeats)
    shape_row = {"shape": f"{n}x{m}", "rows": rows}
    results = [{**shape_row, "cell": "-", "sign": "-", "packing": "digital", "mode": "exact", "seconds": seconds,
                "rows/s": rows / seconds, "sums/s": None, "slowdown": 1.0, "max |diff|": 0.0, "rel rms err": 0.0}]
    for cell, sign, packing, mode in itertools.product(args.cells, args.signs, args.packings, args.modes):
        geometry = Geometry(**GEOMETRY, cell_bits=1 if cell == "slc" else 2)
        mapped = SmeMapper(SmeMapper.Params(sign=sign, packing=packing)).map(q, geometry)
        sim = simulation(cell, mode, mapped.read_rows)
        crossbar = CrossbarLayer(module, mapped, sim, 1.0, args.device, batch_rows=4096,
                                 max_elements=args.chunk_mib * 2**20 // 8)  # as StandaloneHost sizes chunks
        seconds, y = timed(lambda: crossbar.integer_matmul(x), args.device, args.repeats)
        diff = y - reference
        results.append({
            **shape_row, "cell": cell, "sign": sign, "packing": packing, "mode": mode, "seconds": seconds,
            "rows/s": rows / seconds, "sums/s": rows * crossbar.plan.sums_per_row / seconds,
            "slowdown": seconds / results[0]["seconds"], "max |diff|": float(diff.abs().max()),
            "rel rms err": float(diff.norm() / reference.norm()),
        })
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=shape, default=[(144, 32), (1152, 128), (4608, 512)],
                        help="layer shapes NxM (N inputs, M outputs)")
    parser.add_argument("--cells", nargs="+", default=["slc", "mlc"], choices=["slc", "mlc"], help="mlc: 2-bit cells")
    parser.add_argument("--signs", nargs="+", default=["differential", "segment-offset"],
                        choices=["differential", "offset", "segment-offset"])
    parser.add_argument("--packings", nargs="+", default=["column", "ou"], choices=["tile", "column", "ou"])
    parser.add_argument("--modes", nargs="+", default=["ideal", "noisy"], choices=["ideal", "noisy"])
    parser.add_argument("--work", type=positive, default=2**22, help="im2col rows R = work / (N*M), clipped to 4..4096")
    parser.add_argument("--chunk-mib", type=positive, default=StandaloneHost.Params().chunk_mib,
                        help="memory cap (MiB) of one chunk's column sums (the standalone host's chunk_mib)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=positive, default=2, help="timed calls per point (median), after one warm-up")
    parser.add_argument("--threads", type=positive, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_host: --device cuda requested but CUDA is not available; skipped")
        return
    limit_threads(args.threads)
    args.device = torch.device(args.device)
    rng = np.random.default_rng(args.seed)
    results = [row for n, m in args.shapes for row in bench_shape(n, m, args, rng)]
    ideal = [r for r in results if r["mode"] == "ideal"]
    inexact = [r for r in ideal if r["max |diff|"] != 0]
    if args.json:
        print(json.dumps({"device": str(args.device), "threads": args.threads, "results": results,
                          "ideal_bit_exact": len(ideal) - len(inexact), "ideal_points": len(ideal)}, indent=1))
        return
    print_table(results, f"crossbar simulation throughput on {args.device} ({args.threads} thread(s), "
                         f"{args.chunk_mib} MiB chunks); sums/s = column sums (ADC conversions) per second, "
                         "slowdown = seconds / digital seconds")
    print(f"\nideal results bit-exact (max |difference| = 0): {len(ideal) - len(inexact)} of {len(ideal)}")
    for r in inexact:
        print(f"  NOT exact: {r['shape']} {r['cell']} {r['sign']} {r['packing']}: max |difference| {r['max |diff|']}")


if __name__ == "__main__":
    main()
