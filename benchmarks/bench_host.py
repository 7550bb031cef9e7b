"""Speed of the standalone crossbar simulation against a float32 GEMM of the same layer.

Anchor workloads (issue 5): ``conv`` = Conv2d 3x3 32->64 on a 14x14 image with padding 1, one image
(196 im2col rows of 288 inputs, 64 outputs); ``mlp`` = Linear 784->256 -> Linear 256->10, batch 256
(both layers timed and added up). Weights N(0, 0.05), uniform per-channel 8-bit quantizer, no
orchestration or squeeze-out, ``sme`` mapper with differential signs on 128x128 SLC crossbars
(16-row operation units for ``ou`` packing); inputs uniform random 8-bit magnitudes 0..255 (no input
cycle is ever all zero), 1-bit DAC (8 input cycles).

Modes: ``ideal`` = ideal cell + ideal ADC (the fused one-GEMM path); ``adc`` = ideal cell + noisy
6-bit ADC (0.5 LSB noise; exact per-read integer column sums); ``program`` = SLC programming spread
(default preset), no read noise, + the noisy 6-bit ADC; ``program+read`` = the same with the cell's
read noise.

Each point times ``CrossbarLayer.integer_matmul`` (the host's crossbar simulation of the layer's integer
im2col rows; the conductances are programmed once, at build) and ``torch.mm`` of the same rows and
weights in float32 (warm, just before and just after the host), in the same process and on one thread:
the best of ``--repeats`` calls (more for calls under 50 ms) after a warm-up, in thread CPU time (wall time around synchronised
kernels on CUDA), so other processes sharing the cores do not count; ``ratio`` = host / float32 GEMM. ``exact``: the ideal mode reproduces ``x_int @ w_int``
bit for bit (None for noisy modes). ``conversions``: ADC conversions per call (input cycles x converted
read columns x rows); ``noise_floor``: the time ``torch.Tensor.normal_`` alone needs for the Gaussian draws
of those conversions (one per conversion for the ADC's noise, one more for read noise), as a ratio to the
same float32 GEMM: no simulation that draws its noise with torch's generator can be faster.

    python benchmarks/bench_host.py --anchors [--json] [--workloads conv mlp] [--modes ideal adc ...]
        [--packings column ou] [--repeats 5] [--chunk-mib 256] [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from functools import partial

import numpy as np
import torch
from bench_mapping import limit_threads, positive, print_table  # first: it puts the checkout on sys.path
from sme_cell_models import IdealCell, SLCCell
from torch import nn

from sme_plugin.converters import IdealADC, IdealDAC, NoisyADC
from sme_plugin.host import Simulation, StandaloneHost
from sme_plugin.layers import conv_layer, linear_layer
from sme_plugin.mapping import SmeMapper
from sme_plugin.quantize import UniformQuantizer
from sme_plugin.simulator import CrossbarLayer
from sme_plugin.types import Geometry

ACTIVATION_BITS = 8
GEOMETRY = Geometry(rows=128, cols=128, ou_rows=16, cell_bits=1)
MODES = ("ideal", "adc", "program", "program+read")
#: Gaussian draws per ADC conversion in each mode (the ADC's noise, the cell's read noise)
DRAWS = {"ideal": 0, "adc": 1, "program": 1, "program+read": 2}
WORKLOADS = ("conv", "mlp")


def simulation(mode: str) -> Simulation:
    dac = IdealDAC(IdealDAC.Params(bits=1))
    adc = NoisyADC(NoisyADC.Params(bits=6))
    if mode == "ideal":
        return Simulation(IdealCell(IdealCell.Params(bits=1)), IdealADC(IdealADC.Params()), dac, ACTIVATION_BITS)
    if mode == "adc":
        return Simulation(IdealCell(IdealCell.Params(bits=1)), adc, dac, ACTIVATION_BITS)
    read = {} if mode == "program+read" else {"read_sigma": 0.0}
    return Simulation(SLCCell(SLCCell.Params(**read)), adc, dac, ACTIVATION_BITS)


def workload(name: str, rng: np.random.Generator) -> list[tuple]:
    """[(module, Layer, im2col rows (R, 1, N) float64)] of a workload."""
    torch.manual_seed(0)
    if name == "conv":
        conv = nn.Conv2d(32, 64, 3, padding=1)
        modules = [(conv, conv_layer("conv", conv, "packed", GEOMETRY.rows, 14 * 14), 196)]
    else:
        fc1, fc2 = nn.Linear(784, 256), nn.Linear(256, 10)
        modules = [(fc1, linear_layer("fc1", fc1), 256), (fc2, linear_layer("fc2", fc2), 256)]
    out = []
    for module, layer, rows in modules:
        layer.weight = rng.normal(0.0, 0.05, layer.weight.shape).astype(np.float32) * layer.mask
        x = torch.as_tensor(rng.integers(0, 1 << ACTIVATION_BITS, (rows, 1, layer.rows)), dtype=torch.float64)
        out.append((module, layer, x))
    return out


def clock(device: torch.device):
    """Timer of one call: this thread's CPU time on the CPU (robust against other processes sharing the
    cores; the simulation runs on this one thread), wall time around synchronised kernels on CUDA."""
    if device.type == "cuda":
        def measure(fn):
            torch.cuda.synchronize()
            start = time.perf_counter()
            result = fn()
            torch.cuda.synchronize()
            return time.perf_counter() - start, result
    else:
        def measure(fn):
            start = time.thread_time()
            result = fn()
            return time.thread_time() - start, result
    return measure


def best_time(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    """(best seconds, last result) of ``fn`` over ``repeats`` calls after a warm-up, more calls (up to about
    half a second in all) when one call takes under 50 ms."""
    measure = clock(device)
    first, result = measure(fn)
    calls = repeats if first > 0.05 else min(500, max(repeats, int(0.5 / max(first, 1e-6))))
    times = []
    for _ in range(calls):
        took, result = measure(fn)
        times.append(took)
    return min(times), result


def bench_anchor(name: str, args, rng: np.random.Generator) -> list[dict]:
    layers = workload(name, rng)
    quantizer = UniformQuantizer(UniformQuantizer.Params(bits=8, granularity="channel"))
    quantized = [(module, quantizer.quantize(layer), x.to(args.device)) for module, layer, x in layers]
    buffer = torch.empty(1 << 20, device=args.device)
    generator = torch.Generator(args.device).manual_seed(0)
    normal_s = best_time(lambda: buffer.normal_(generator=generator), args.device, args.repeats)[0] / buffer.numel()
    results = []
    for packing, mode in itertools.product(args.packings, args.modes):
        mapper = SmeMapper(SmeMapper.Params(packing=packing, sign="differential"))
        sim = simulation(mode)
        seconds, reference, exact, crossbars, reads, conversions = 0.0, 0.0, True, 0, 0, 0
        for module, q, x in quantized:
            mapped = mapper.map(q, GEOMETRY)
            layer = CrossbarLayer(module, mapped, sim, 1.0, args.device, 4096, args.chunk_mib << 20)
            w32 = torch.as_tensor(q.w_int[0], dtype=torch.float32, device=args.device)
            gemm = partial(torch.mm, x[:, 0].to(torch.float32), w32)
            with torch.no_grad():  # the float GEMM warm, before and after the host (best of both)
                before = best_time(gemm, args.device, args.repeats)[0]
                took, y = best_time(partial(layer.integer_matmul, x), args.device, args.repeats)
                base = min(before, best_time(gemm, args.device, args.repeats)[0])
            seconds, reference = seconds + took, reference + base
            crossbars += mapped.crossbars
            reads += mapped.placement.reads
            conversions += layer.plan.columns * layer.plan.cycles * len(x)
            expected = torch.einsum("rpn,pnm->rpm", x, torch.as_tensor(q.w_int, dtype=torch.float64, device=args.device))
            exact = exact and torch.equal(y, expected)
        draws = conversions * DRAWS[mode]  # normals drawn per call: ADC noise, read noise
        results.append({"workload": name, "mode": mode, "packing": packing, "ratio": seconds / reference,
                        "exact": exact if mode == "ideal" else None, "seconds": seconds, "float_s": reference,
                        "crossbars": crossbars, "reads": reads, "conversions": conversions,
                        "noise_floor": draws * normal_s / reference, "path": layer.plan.path})
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anchors", action="store_true", help="the anchor workloads (the default and only mode)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--packings", nargs="+", default=["column", "ou"], choices=["tile", "column", "ou"])
    parser.add_argument("--chunk-mib", type=positive, default=StandaloneHost.Params().chunk_mib,
                        help="the standalone host's chunk_mib (memory cap of one chunk's temporaries)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=positive, default=3,
                        help="timed calls per point (best of; more for fast calls), after a warm-up")
    parser.add_argument("--threads", type=positive, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print a JSON list of points instead of a table")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_host: --device cuda requested but CUDA is not available; skipped")
        return
    limit_threads(args.threads)
    args.device = torch.device(args.device)
    rng = np.random.default_rng(args.seed)
    results = [row for name in args.workloads for row in bench_anchor(name, args, rng)]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print_table(results, f"anchor workloads on {args.device} ({args.threads} thread(s), {args.chunk_mib} MiB chunks); "
                         "ratio = host time / float32 GEMM time of the same layers")


if __name__ == "__main__":
    main()
