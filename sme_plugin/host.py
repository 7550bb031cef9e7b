"""Standalone host: a functional simulator running a model's layers through mapped crossbars.

Two replacement layers share one base (:class:`IntegerLayer`): activation quantization, im2col,
the parts layout of grouped convs and dequantization. :class:`DigitalLayer` multiplies the integer
weights exactly (the reference); :class:`CrossbarLayer` runs :func:`crossbar_matmul`: bit-serial DAC
slices, cell conductances, read groups, read noise, ADC per column sum, and the digital splice.
"""

from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .errors import ConfigError
from .hookspecs import hookimpl
from .layers import set_submodule
from .params import StrategyParams
from .types import MappedLayer, QuantizedLayer


@dataclass
class Simulation:
    """What the crossbar simulation uses: component instances, activation bits A and the seed."""

    cell: object
    adc: object
    dac: object
    activation_bits: int
    seed: int = 0


def layer_seed(seed: int, name: str, stream: str) -> int:
    """Seed of one random stream (``program``, ``read``) of layer ``name``; stable across runs."""
    return (seed + zlib.crc32(f"{name}/{stream}".encode())) % (1 << 63)


def layer_modules(model: nn.Module, names) -> dict[str, nn.Module]:
    """The Conv2d/Linear submodules of ``model`` called ``names``; anything else is a ValueError."""
    known = dict(model.named_modules())
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"layers {missing} are not modules of the model")
    wrong = [n for n in names if not isinstance(known[n], (nn.Conv2d, nn.Linear))]
    if wrong:
        raise ValueError(f"layers {wrong} are not Conv2d/Linear modules")
    return {n: known[n] for n in names}


def with_layers_replaced(model: nn.Module, layers: dict[str, nn.Module]) -> nn.Module:
    """Deep copy of ``model`` with the named submodules replaced."""
    model = copy.deepcopy(model)
    for name, layer in layers.items():
        set_submodule(model, name, layer)
    return model


def calibrate_activations(model: nn.Module, layer_names, inputs: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """max |input| of each named Conv2d/Linear over ``inputs`` (the model runs as given, e.g. eval mode)."""
    modules = layer_modules(model, list(layer_names))
    peaks = dict.fromkeys(modules, 0.0)

    def hook(name):
        def record(module, args):
            peaks[name] = max(peaks[name], float(args[0].detach().abs().max()))

        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            for batch in inputs.split(batch_size):
                model(batch)
    finally:
        for h in handles:
            h.remove()
    return peaks


class IntegerLayer(nn.Module):
    """Replacement of a Conv2d/Linear computing ``y = s_x * scale[m] * (x_int @ w_int) + bias``.

    x_int = round(clamp(x / s_x, -(2**A-1), 2**A-1)), s_x = activation_scale / (2**A - 1).
    Subclasses define ``integer_matmul``: (R, P, N) float64 integer inputs -> (R, P, M).
    """

    def __init__(self, module: nn.Module, qlayer: QuantizedLayer, activation_bits: int, activation_scale: float, device):
        super().__init__()
        layer = qlayer.layer
        self.device = torch.device(device)
        self.is_conv = isinstance(module, nn.Conv2d)
        if self.is_conv:
            if isinstance(module.padding, str) or module.padding_mode != "zeros":
                raise ValueError(f"layer {layer.name}: only numeric zero padding is supported, got "
                                 f"padding={module.padding!r}, padding_mode={module.padding_mode!r}")
            self.unfold = dict(kernel_size=module.kernel_size, dilation=module.dilation,
                               padding=module.padding, stride=module.stride)
            self.groups, self.out_features = module.groups, module.out_channels
            self.group_rows = module.in_channels // module.groups * math.prod(module.kernel_size)
        else:
            self.groups, self.out_features, self.group_rows = 1, module.out_features, module.in_features
        self.parts, self.per_part = layer.parts, layer.groups_per_part
        out_per_group = self.out_features // self.groups
        if (self.parts * self.per_part < self.groups or layer.rows != self.per_part * self.group_rows
                or layer.cols != self.per_part * out_per_group):
            raise ValueError(f"layer {layer.name}: weight parts {layer.weight.shape} with {self.per_part} groups "
                             f"per part do not fit the module {module}")
        if activation_bits < 1:
            raise ValueError(f"activation_bits must be >= 1, got {activation_bits}")
        self.top = float((1 << activation_bits) - 1)
        self.step = activation_scale / self.top if activation_scale > 0 else 1.0
        scale = np.broadcast_to(qlayer.scale, (self.parts, 1, layer.cols)).reshape(-1)[: self.out_features]
        bias = layer.bias if layer.bias is not None else np.zeros(self.out_features)
        self.register_buffer("scale", torch.as_tensor(scale * self.step, dtype=torch.float64, device=self.device))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float64, device=self.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x64 = x.to(self.device, torch.float64)
        x_int = torch.round(torch.clamp(x64 / self.step, -self.top, self.top))
        if self.is_conv:
            cols = F.unfold(x_int, **self.unfold)  # (B, Cin*kh*kw, L)
            batch, _, positions = cols.shape
            rows = cols.transpose(1, 2).reshape(-1, self.groups, self.group_rows)
        else:
            rows = x_int.reshape(-1, 1, self.group_rows)
        rows = F.pad(rows, (0, 0, 0, self.parts * self.per_part - self.groups)).reshape(len(rows), self.parts, -1)
        y = self.integer_matmul(rows).reshape(len(rows), -1)[:, : self.out_features] * self.scale + self.bias
        if self.is_conv:
            u = self.unfold
            size = [(n + 2 * p - d * (k - 1) - 1) // s + 1
                    for n, p, d, k, s in zip(x.shape[-2:], u["padding"], u["dilation"], u["kernel_size"], u["stride"])]
            y = y.reshape(batch, positions, -1).transpose(1, 2).reshape(batch, -1, *size)
        else:
            y = y.reshape(*x.shape[:-1], -1)
        return y.to(x.device, x.dtype)


class DigitalLayer(IntegerLayer):
    """Exact integer layer: ``x_int @ w_int`` in float64 (exact while values stay below 2**53)."""

    def __init__(self, module, qlayer: QuantizedLayer, activation_bits, activation_scale, device="cpu"):
        super().__init__(module, qlayer, activation_bits, activation_scale, device)
        self.register_buffer("w_int", torch.as_tensor(qlayer.w_int, dtype=torch.float64, device=self.device))

    def integer_matmul(self, x_int):
        return torch.einsum("rpn,pnm->rpm", x_int, self.w_int)


def digital_model(model: nn.Module, quantized: dict[str, QuantizedLayer], activation_bits: int,
                  activation_scales: dict[str, float]) -> nn.Module:
    """Deep copy of ``model`` with each named Conv2d/Linear replaced by an exact :class:`DigitalLayer`."""
    modules = layer_modules(model, list(quantized))
    check_activation_scales(quantized, activation_scales)
    return with_layers_replaced(model, {
        n: DigitalLayer(modules[n], q, activation_bits, activation_scales[n]) for n, q in quantized.items()
    })


def check_activation_scales(layers, activation_scales) -> None:
    """ValueError naming the layers that have no calibrated activation scale."""
    missing = [n for n in layers if n not in activation_scales]
    if missing:
        raise ValueError(f"no activation scale for layers {missing}")


class CrossbarPlan:
    """A mapped layer's tensors prepared once for repeated crossbar matmuls (on ``conductance.device``).

    Shapes: S sign sets, G cell groups, P parts, Q read groups of K = ``read_rows`` physical rows
    (the last padded with absent rows), M columns, T = ceil(A / v) input cycles of a v-bit DAC.
    """

    def __init__(self, mapped: MappedLayer, conductance: torch.Tensor, sim: Simulation):
        enc = mapped.encoding
        shape = enc.levels.shape
        if tuple(conductance.shape) != shape or mapped.present.shape != shape:
            raise ValueError(f"layer {mapped.name}: conductance {tuple(conductance.shape)} and present "
                             f"{mapped.present.shape} must both have the levels' shape {shape}")
        if mapped.read_rows < 1:
            raise ValueError(f"layer {mapped.name}: read_rows must be >= 1, got {mapped.read_rows}")
        device = conductance.device
        S, G, P, N, M = shape
        self.sim, self.read_rows = sim, mapped.read_rows
        self.groups = -(-N // self.read_rows)
        self.pad = self.groups * self.read_rows - N
        blocks = (S, G, P, self.groups, self.read_rows, M)
        # Column sums run in float32: integer sums stay below 2**24 (rows <= 4096, 4-bit cells,
        # 8-bit DAC), so they are exact for ideal cells; the splice runs in float64.
        self.conductance = F.pad(conductance.to(torch.float32), (0, 0, 0, self.pad)).reshape(blocks)
        self.conductance_squared = self.conductance.square()
        present = torch.as_tensor(mapped.present, device=device)
        active = F.pad(present.to(torch.float64), (0, 0, 0, self.pad)).reshape(blocks).sum(4)  # (S, G, P, Q, M)
        v, c = sim.dac.bits, enc.cell_bits
        self.lossless_scale = active * ((1 << c) - 1) * ((1 << v) - 1)
        self.offset = torch.as_tensor(enc.offset, dtype=torch.float64, device=device)
        self.parts = torch.arange(P, device=device)[:, None]
        identity = lambda n: np.tile(np.arange(n), (P, 1))  # noqa: E731
        row_order = identity(N) if mapped.row_order is None else mapped.row_order
        col_order = identity(M) if mapped.col_order is None else mapped.col_order
        self.row_order = torch.as_tensor(row_order, dtype=torch.long, device=device)
        self.col_inverse = torch.as_tensor(np.argsort(col_order, axis=1), dtype=torch.long, device=device)
        cycles = -(-sim.activation_bits // v)
        self.shifts = (v * torch.arange(cycles, device=device)).reshape(-1, 1, 1, 1, 1)
        self.mask = (1 << v) - 1
        weight = lambda base, n: torch.pow(2.0, base * torch.arange(n, dtype=torch.float64, device=device))  # noqa: E731
        signs = torch.as_tensor(enc.signs, dtype=torch.float64, device=device)
        self.splice = weight(v, cycles)[:, None, None] * signs[None, :, None] * weight(c, G)[None, None, :]  # (T, S, G)
        self.sums_per_row = cycles * S * G * P * self.groups * M

    def column_path(self, x: torch.Tensor, generator, full_scale, observed) -> torch.Tensor:
        """Non-negative physical inputs (r, P, N) -> spliced crossbar outputs (r, P, M)."""
        sim = self.sim
        x = F.pad(x, (0, self.pad)).reshape(len(x), -1, self.groups, self.read_rows).long()
        slices = sim.dac.apply(((x[None] >> self.shifts) & self.mask).to(torch.float32), generator)  # (T, r, P, Q, K)
        sums = torch.einsum("trpqk,sgpqkm->trsgpqm", slices, self.conductance)
        if sim.cell.read_noise > 0:
            std = torch.einsum("trpqk,sgpqkm->trsgpqm", slices.square(), self.conductance_squared).sqrt_()
            noise = torch.randn(sums.shape, generator=generator, dtype=sums.dtype, device=sums.device)
            sums.addcmul_(std, noise, value=sim.cell.read_noise)
        if observed is not None:
            torch.maximum(observed, sums.amax(dim=(0, 1)).to(observed.dtype), out=observed)
        codes = sim.adc.convert(sums, full_scale, generator).to(torch.float64)
        return torch.einsum("trsgpqm,tsg->rpm", codes, self.splice)

    def matmul(self, x_int: torch.Tensor, generator: torch.Generator, batch_rows: int = 4096,
               max_elements: int = 1 << 25, full_scale: torch.Tensor | None = None,
               observed: torch.Tensor | None = None) -> torch.Tensor:
        """Integer inputs (R, P, N) float64 in original row order -> y_int (R, P, M) in original column order.

        Negative inputs run as a second non-negative stream (x = x+ - x-). Rows are processed in
        chunks of at most ``batch_rows`` and ``max_elements`` column sums. ``full_scale``
        (S, G, P, Q, M) defaults to the lossless maximum; ``observed`` (same shape), when given, is
        raised in place to the largest column sum seen (ADC calibration).
        """
        full_scale = self.lossless_scale if full_scale is None else full_scale
        x = x_int[:, self.parts, self.row_order]  # physical row order
        streams = torch.cat([x.clamp_min(0), (-x).clamp_min(0)]) if bool((x < 0).any()) else x
        chunk = max(1, min(batch_rows, max_elements // self.sums_per_row))
        y = torch.cat([self.column_path(part, generator, full_scale, observed) for part in streams.split(chunk)])
        if len(streams) > len(x):
            y = y[: len(x)] - y[len(x):]
        y = y + torch.einsum("rpn,pnm->rpm", x, self.offset)
        return y[:, self.parts, self.col_inverse]


def crossbar_matmul(x_int: torch.Tensor, mapped: MappedLayer, conductance: torch.Tensor, sim: Simulation,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """y_int (R, P, M) of integer inputs x_int (R, P, N) through the crossbars of ``mapped``.

    conductance: (S, G, P, N, M) float64 from ``sim.cell.program``; ``generator`` (default: seeded
    with ``sim.seed``) drives DAC, read and ADC noise.
    """
    top = (1 << sim.activation_bits) - 1
    if x_int.numel() and float(x_int.abs().max()) > top:
        raise ValueError(f"inputs exceed the {sim.activation_bits}-bit activation range |x| <= {top}")
    if generator is None:
        generator = torch.Generator(conductance.device).manual_seed(sim.seed)
    return CrossbarPlan(mapped, conductance, sim).matmul(x_int.to(conductance.device, torch.float64), generator)


class CrossbarLayer(IntegerLayer):
    """Layer simulated on the crossbars of a :class:`MappedLayer` (conductances programmed once)."""

    def __init__(self, module, mapped: MappedLayer, sim: Simulation, activation_scale: float, device,
                 batch_rows: int, max_elements: int):
        super().__init__(module, mapped.quantized, sim.activation_bits, activation_scale, device)
        if mapped.encoding.cell_bits != sim.cell.bits:
            raise ValueError(f"layer {mapped.name}: mapped for {mapped.encoding.cell_bits}-bit cells, "
                             f"but the cell model stores {sim.cell.bits} bits")
        program = torch.Generator(self.device).manual_seed(layer_seed(sim.seed, mapped.name, "program"))
        levels = torch.as_tensor(mapped.encoding.levels, device=self.device)
        present = torch.as_tensor(mapped.present, device=self.device)
        self.plan = CrossbarPlan(mapped, sim.cell.program(levels, present, program), sim)
        self.generator = torch.Generator(self.device).manual_seed(layer_seed(sim.seed, mapped.name, "read"))
        self.batch_rows, self.max_elements = batch_rows, max_elements
        self.full_scale = None  # None: lossless; else calibrated (S, G, P, Q, M)
        self.observed = None  # set during ADC calibration

    def integer_matmul(self, x_int):
        return self.plan.matmul(x_int, self.generator, self.batch_rows, self.max_elements,
                                self.full_scale, self.observed)


class StandaloneHost:
    """Runs models through simulated crossbars with no external simulator."""

    class Params(StrategyParams):
        """device: where the simulation runs (``auto``: CUDA when present).
        batch_rows: most im2col rows per chunk. chunk_mib: memory cap (MiB) of one chunk's column sums."""

        device: Literal["cpu", "cuda", "auto"] = "cpu"
        batch_rows: int = Field(4096, ge=1)
        chunk_mib: int = Field(256, ge=1)

    def __init__(self, params: Params):
        self.params = params
        if params.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("host.device: 'cuda' requested but CUDA is not available")
        cuda = params.device == "cuda" or (params.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if cuda else "cpu")

    def build(self, model: nn.Module, mapped: dict[str, MappedLayer], sim: Simulation,
              activation_scales: dict[str, float], calibration_inputs: torch.Tensor | None = None,
              batch_size: int = 256) -> nn.Module:
        """Deep copy of ``model`` with each named layer replaced by a :class:`CrossbarLayer`.

        An ADC with ``calibrated = True`` needs ``calibration_inputs``: they run once through the
        copy to record each column group's largest sum, which becomes its full scale.
        """
        modules = layer_modules(model, list(mapped))
        check_activation_scales(mapped, activation_scales)
        max_elements = self.params.chunk_mib * (1 << 20) // 8
        layers = {
            n: CrossbarLayer(modules[n], m, sim, activation_scales[n], self.device, self.params.batch_rows, max_elements)
            for n, m in mapped.items()
        }
        built = with_layers_replaced(model, layers)
        if getattr(sim.adc, "calibrated", False):
            if calibration_inputs is None:
                raise ValueError("a calibrated ADC needs calibration_inputs")
            self._calibrate_adc(built, calibration_inputs, batch_size)
        return built

    @staticmethod
    def _calibrate_adc(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> None:
        layers = [m for m in model.modules() if isinstance(m, CrossbarLayer)]
        for layer in layers:
            layer.observed = torch.zeros_like(layer.plan.lossless_scale)
        with torch.no_grad():
            for batch in inputs.split(batch_size):
                model(batch)
        for layer in layers:
            layer.full_scale, layer.observed = layer.observed, None


@hookimpl
def sme_register_hosts(register):
    register("standalone", StandaloneHost)
