"""The standalone host's simulator: a model's layers run through their placements (torch).

Two replacement layers share one base (:class:`IntegerLayer`): activation quantization, im2col, the
parts layout of grouped convs and dequantization. :class:`DigitalLayer` multiplies the integer weights
exactly (the reference); :class:`CrossbarLayer` runs a :class:`CrossbarPlan` built once from the layer's
:class:`~sme_plugin.types.Placement`, the physical truth of the mapping:

- conductances: ``sim.cell.program(levels, present, generator)`` on the placement's (R, K, J) cells of
  R reads (K row slots x J column slots each); the checker guarantees that every physical cell sits in
  exactly one read, so programming noise is drawn once per physical cell;
- inputs: each read's row slots gather their logical inputs (``placement.input``), unused slots read 0;
  signed inputs run as two non-negative streams (x = x+ - x-); bit-serial DAC slices of ``sim.dac.bits``
  bits per cycle over ``sim.activation_bits`` magnitude bits; a cycle whose slices are zero for a whole
  chunk is skipped (its DAC drives nothing and no ADC fires);
- column sums: one batched GEMM over reads (``torch.bmm``), so the work grows with the reads (and the
  crossbars) the mapping uses; read noise per column sum (std = ``cell.read_noise`` x
  sqrt(sum of squared applied inputs x squared conductances));
- ADC: ``sim.adc.convert`` per read column with the placement's full scale (lossless range), or with
  the largest sum observed on calibration inputs when ``sim.adc.calibrated``; a column with no
  non-zero cell needs no conversion and is not simulated;
- splice: ``sum_t 2**(v*t) * code_t`` times the column's sign and cell-group weight
  (``placement.coefficients()``), added into its output (``placement.output``), then the digital offset
  ``x @ placement.offset``.

Three paths, chosen per layer from the components' behaviour (not their names):

- ``fused``: ideal cells (``program`` returns the levels, no read noise), an ideal DAC and a lossless ADC:
  one integer GEMM ``x_int @ placement.weights()``, bit-exact (float32 when every partial sum stays below
  2**24, else float64, exact below 2**53);
- ``integer``: ideal cells and DAC, any ADC: exact integer column sums per read; several input cycles
  share one float32 GEMM (each cycle's sums packed into its own bit field, then unpacked), exact;
- ``analog``: anything else: float32 column sums per cycle, read noise, DAC noise.

Memory: rows are processed in chunks of at most ``batch_rows`` rows, and each chunk's reads in slices,
so that the temporaries of one slice (gathered inputs, column sums, noise, ADC work, codes) stay under
``chunk_mib``. Exact paths give the same result for any chunking; noisy ones draw their noise in chunk
and slice order, so they are reproducible for the same seed, inputs, ``batch_rows`` and ``chunk_mib``.
On CUDA, exact GEMMs run in float64 when ``torch.backends.cuda.matmul.allow_tf32`` lets float32 ones
round through TF32.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConflictError
from .host import Simulation, layer_seed
from .layers import set_submodule
from .types import MappedLayer, QuantizedLayer

#: float32 represents every integer below this exactly
EXACT32 = float(1 << 24)
#: float64 represents every integer below this exactly
EXACT64 = float(1 << 53)
#: cells programmed per ``cell.program`` call (fixed, so conductances never depend on ``chunk_mib``)
PROGRAM_CELLS = 1 << 19
#: preferred size of one read slice's temporaries on the CPU: small enough to stay in cache and in the
#: allocator's reuse range (a GPU takes whole ``chunk_mib`` slices); ``chunk_mib`` caps it further
SLICE_BYTES = 12 << 20
PATHS = ("fused", "integer", "analog")


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


def input_batches(inputs, batch_size: int = 256):
    """Batches of ``inputs``: a tensor split into ``batch_size`` rows, or a (re-)iterable of input batches
    such as a dataset's :class:`~sme_plugin.types.Batches` (iterated as it is)."""
    return inputs.split(batch_size) if isinstance(inputs, torch.Tensor) else inputs


def run_batches(model: nn.Module, inputs, batch_size: int = 256, pre_hooks: dict | None = None,
                hooks: dict | None = None) -> None:
    """Run ``inputs`` (a tensor or input batches, see :func:`input_batches`) through ``model`` without
    gradients, for what its calibrating layers or the given hooks record.

    pre_hooks / hooks: submodule -> ``fn(module, args)`` / ``fn(module, args, output)``, registered for the
    run only (torch forward pre-hooks / forward hooks)."""
    handles = [m.register_forward_pre_hook(fn) for m, fn in (pre_hooks or {}).items()]
    handles += [m.register_forward_hook(fn) for m, fn in (hooks or {}).items()]
    try:
        with torch.no_grad():
            for batch in input_batches(inputs, batch_size):
                model(batch)
    finally:
        for handle in handles:
            handle.remove()


def calibrate_activations(model: nn.Module, layer_names, inputs, batch_size: int = 256) -> dict[str, float]:
    """max |input| of each named Conv2d/Linear over ``inputs`` (a tensor or input batches, see
    :func:`input_batches`; the model runs as given, e.g. eval mode)."""
    modules = layer_modules(model, list(layer_names))
    peaks = dict.fromkeys(modules, 0.0)

    def hook(name):
        def record(module, args):
            peaks[name] = max(peaks[name], float(args[0].detach().abs().max()))

        return record

    run_batches(model, inputs, batch_size, pre_hooks={m: hook(n) for n, m in modules.items()})
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
            self.unfold = {"kernel_size": module.kernel_size, "dilation": module.dilation,
                           "padding": module.padding, "stride": module.stride}
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


class ExactMatmul:
    """``x @ w`` of integer-valued inputs (R, P, N) and integer weights (P, N, M), exact.

    float32 when every partial sum is provably below 2**24 (max |x| times the largest column L1 norm
    of w), else float64 (exact below 2**53); batched over parts."""

    def __init__(self, weight: np.ndarray, device):
        self.reach = float(np.abs(weight).sum(axis=1).max()) if weight.size else 0.0  # max_m sum_n |w|
        self.w64 = torch.as_tensor(weight, dtype=torch.float64, device=device)
        self.w32 = self.w64.to(torch.float32) if float(np.abs(weight).max(initial=0)) < EXACT32 else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.reach == 0 or x.numel() == 0:
            return x.new_zeros(len(x), self.w64.shape[0], self.w64.shape[2])
        low, high = torch.aminmax(x)
        bound = max(-float(low), float(high)) * self.reach
        if bound >= EXACT64:
            raise ValueError(f"x @ w may reach {bound:.3g}, beyond float64's exact integers (2**53)")
        w = self.w32 if self.w32 is not None and bound < EXACT32 and not _tf32(x.device) else self.w64
        xs = x.to(w.dtype)
        if w.shape[0] == 1:
            return torch.mm(xs[:, 0], w[0]).to(torch.float64).unsqueeze(1)
        return torch.bmm(xs.transpose(0, 1), w).transpose(0, 1).to(torch.float64)


def _tf32(device: torch.device) -> bool:
    """Whether float32 GEMMs on ``device`` may round through TF32 (then exact integer GEMMs use float64)."""
    return device.type == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32)


@contextmanager
def _deterministic(device: torch.device):
    """CUDA's ``index_add_`` adds with atomics in any order; its deterministic variant keeps noisy
    (non-integer) results reproducible. A no-op on the CPU, where ``index_add_`` is deterministic."""
    if device.type != "cuda" or torch.are_deterministic_algorithms_enabled():
        yield
        return
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def _pow2(n: np.ndarray) -> np.ndarray:
    """Smallest power of two >= n (1 for n <= 1)."""
    return np.left_shift(1, np.ceil(np.log2(np.maximum(n, 1))).astype(np.int64))


class _Bucket:
    """Reads of one size class: row slots (Rb, Kb) and column slots (Rb, Jb), compacted and padded."""

    def __init__(self, **tensors):
        self.__dict__.update(tensors)
        self.reads, self.width = self.inputs.shape[0], self.outputs.shape[1]
        self.height = self.inputs.shape[1]


class CrossbarPlan:
    """A placement's tensors prepared once for repeated crossbar matmuls (module docstring).

    mapped: the layer and its placement. sim: cell, ADC, DAC, activation bits, seed.
    device: where the simulation runs. generator: draws the programming noise (default: seeded
    from ``sim.seed`` and the layer name). conductance: (R, K, J) conductances (level units) to use instead of
    programming the cell model (tests, adapters). path: force ``integer`` or ``analog`` (default: the
    fastest path the components allow; ``fused`` needs ideal cells and DAC and a lossless ADC,
    ``integer`` ideal cells and DAC).
    """

    def __init__(self, mapped: MappedLayer, sim: Simulation, device="cpu", generator: torch.Generator | None = None,
                 conductance: torch.Tensor | None = None, path: str | None = None):
        p = mapped.placement
        self.name, self.sim = mapped.name, sim
        self.device = device = torch.device(device)
        if p.cell_bits != sim.cell.bits:
            raise ConflictError(f"layer {mapped.name}: mapped for {p.cell_bits}-bit cells, "
                             f"but the cell model stores {sim.cell.bits} bits")
        if path is not None and path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        self.shape = tuple(int(s) for s in p.shape)
        reads, height, width = p.levels.shape
        self.slots = (reads, width)
        v = sim.dac.bits
        self.v, self.digit_mask = v, (1 << v) - 1
        self.cycles = -(-sim.activation_bits // v)
        levels = torch.as_tensor(p.levels, device=device)
        present = torch.as_tensor(p.present(), device=device)
        if conductance is None:
            if generator is None:
                generator = torch.Generator(device).manual_seed(layer_seed(sim.seed, mapped.name, "program"))
            conductance = self._program(sim.cell, levels, present, generator)
        elif tuple(conductance.shape) != (reads, height, width):
            raise ValueError(f"layer {mapped.name}: conductance {tuple(conductance.shape)} must have the placement's "
                             f"(reads, row slots, column slots) shape {(reads, height, width)}")
        conductance = conductance.to(device, torch.float32)
        ideal_cell = sim.cell.read_noise == 0 and torch.equal(conductance, torch.where(present, levels.float(), 0.0))
        ideal_dac = self._dac_is_ideal(sim.dac, device)
        fused_ok = ideal_cell and ideal_dac and bool(getattr(sim.adc, "lossless", False)) \
            and not getattr(sim.adc, "calibrated", False)
        if path is None:
            path = "fused" if fused_ok else "integer" if ideal_cell and ideal_dac else "analog"
        elif (path == "fused" and not fused_ok) or (path == "integer" and not (ideal_cell and ideal_dac)):
            raise ValueError(f"layer {mapped.name}: the {path} path needs ideal cells and DAC"
                             + (" and a lossless ADC" if path == "fused" else ""))
        self.path, self.ideal_dac = path, ideal_dac
        self.read_noise = float(sim.cell.read_noise)
        self.offset = ExactMatmul(p.offset, device) if p.offset.any() else None
        self.fused = ExactMatmul(p.weights(), device) if path == "fused" else None
        self.buckets: list[_Bucket] = []
        self.columns = 0
        if path != "fused":
            self._build_buckets(p, conductance, ideal_cell)
        self.observed = None  # per-bucket (Rb, Jb) maxima while calibrating the ADC

    @staticmethod
    def _program(cell, levels, present, generator) -> torch.Tensor:
        """float32 conductances of the (R, K, J) cells, programmed in blocks of whole reads (float32 holds
        every integer level exactly and any programmed value far below any noise)."""
        per_read = max(1, levels.shape[1] * levels.shape[2])
        step = max(1, PROGRAM_CELLS // per_read)
        out = torch.empty(levels.shape, dtype=torch.float32, device=levels.device)
        for start in range(0, len(levels), step):
            out[start:start + step] = cell.program(levels[start:start + step], present[start:start + step], generator)
        return out

    @staticmethod
    def _dac_is_ideal(dac, device) -> bool:
        probe = torch.arange((1 << dac.bits), dtype=torch.float32, device=device).repeat(8)
        applied = dac.apply(probe.clone(), torch.Generator(device).manual_seed(0))
        return torch.equal(applied, probe)

    def _build_buckets(self, p, conductance: torch.Tensor, ideal_cell: bool) -> None:
        """Compact each read's slots (drop unused row slots, columns without a non-zero cell, and with ideal
        cells rows without one) and group reads by (row slots, column slots) rounded up to powers of two."""
        parts, n_rows, n_cols = self.shape
        keep_col = (p.col >= 0) & (p.active_cells() > 0)  # a column with no non-zero cell is never converted
        keep_row = p.row >= 0
        if ideal_cell:
            keep_row &= (p.levels != 0).any(axis=2)
        live = keep_col.any(axis=1) & keep_row.any(axis=1)
        n_k, n_j = keep_row.sum(1), keep_col.sum(1)
        self.columns = int(n_j[live].sum())  # ADC conversions per input cycle and stream row
        keys = np.stack([_pow2(n_k), _pow2(n_j)], axis=1)[live]
        reads_live = np.nonzero(live)[0]
        full_scale = p.full_scale(self.v)
        coefficients = p.coefficients()
        dev = self.device
        exact32 = self._fs_max(full_scale) < EXACT32 and not _tf32(self.device)
        conductance = conductance.to(torch.float32 if not ideal_cell or exact32 else torch.float64)
        self.gemm_dtype = conductance.dtype
        for key in np.unique(keys, axis=0) if len(keys) else []:
            reads = reads_live[(keys == key).all(axis=1)]
            kb, jb = int(min(key[0], n_k[reads].max())), int(min(key[1], n_j[reads].max()))
            rows = np.argsort(~keep_row[reads], axis=1, kind="stable")[:, :kb]  # kept slots first
            cols = np.argsort(~keep_col[reads], axis=1, kind="stable")[:, :jb]
            row_ok = np.take_along_axis(keep_row[reads], rows, 1)
            col_ok = np.take_along_axis(keep_col[reads], cols, 1)
            inputs = np.where(row_ok, np.take_along_axis(p.input[reads], rows, 1), parts * n_rows)
            outputs = np.where(col_ok, np.take_along_axis(p.output[reads], cols, 1), parts * n_cols)
            coef = np.where(col_ok, np.take_along_axis(coefficients[reads], cols, 1), 0)
            scale = np.where(col_ok, np.take_along_axis(full_scale[reads], cols, 1), 0.0)
            t = lambda a, dtype=torch.int64: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=dev)
            r_idx, k_idx, j_idx = t(reads)[:, None, None], t(rows)[:, :, None], t(cols)[:, None, :]
            g = conductance[r_idx, k_idx, j_idx] * t(row_ok[:, :, None] & col_ok[:, None, :], conductance.dtype)
            g_t = g.transpose(1, 2).contiguous()  # (Rb, Jb, Kb): sums = g_t @ slices
            pack, field = 1, 0
            if self.path == "integer":
                top = float(scale.max()) if scale.size else 0.0
                field = max(1, math.ceil(math.log2(top + 1)))
                # packing cycles saves CPU GEMM work; on a GPU the GEMMs are cheap and the unpacking is not
                cpu32 = self.gemm_dtype == torch.float32 and dev.type == "cpu"
                pack = max(1, min(self.cycles, int(math.log2(EXACT32)) // field)) if cpu32 else 1
            self.buckets.append(_Bucket(
                read_ids=t(reads), slot_rows=t(rows), slot_cols=t(cols),
                inputs=t(inputs), outputs=t(outputs), coef=t(coef, torch.float32)[:, :, None],
                lossless_scale=t(scale, torch.float32)[:, :, None], full_scale=None,
                conductance_t=g_t, squared_t=g_t.square() if self.read_noise > 0 else None,
                pack=pack, field=field,
            ))
        splice_top = self._fs_max(full_scale) / max(1, self.digit_mask) * float((1 << (self.v * self.cycles)) - 1)
        exact32 = splice_top < EXACT32 and not _tf32(self.device)
        self.splice_dtype = torch.float32 if not ideal_cell or exact32 else torch.float64

    @staticmethod
    def _fs_max(full_scale: np.ndarray) -> float:
        return float(full_scale.max()) if full_scale.size else 0.0

    # -- inspection -------------------------------------------------------------------------------

    @property
    def reads(self) -> int:
        """Reads simulated per input cycle (after dropping reads that convert nothing)."""
        return sum(b.reads for b in self.buckets)

    def column_scales(self, which: str = "full") -> torch.Tensor:
        """(R, J) float64 full scale of every read column in placement order (0: never converted).

        which: ``lossless`` (the placement's), ``full`` (in use: calibrated where calibrated)."""
        reads, width = self.slots
        out = torch.zeros(reads, width, dtype=torch.float64, device=self.device)
        for b in self.buckets:
            scale = b.lossless_scale if which == "lossless" or b.full_scale is None else b.full_scale
            valid = b.outputs < self.shape[0] * self.shape[2]
            out[b.read_ids[:, None].expand_as(b.slot_cols)[valid], b.slot_cols[valid]] = scale[..., 0][valid].double()
        return out

    # -- simulation -------------------------------------------------------------------------------

    def matmul(self, x_int: torch.Tensor, generator: torch.Generator, batch_rows: int = 4096,
               chunk_bytes: int = 256 << 20, calibrate: bool = False) -> torch.Tensor:
        """Integer inputs (rows, P, N) float64 -> y (rows, P, M) float64 (exact on exact paths).

        Rows run in chunks of at most ``batch_rows``; one chunk's reads in slices whose temporaries stay
        under ``chunk_bytes``. ``calibrate``: record each read column's largest column sum (ADC
        calibration) into :attr:`observed`.
        """
        parts, n_rows, n_cols = self.shape
        if x_int.dim() != 3 or tuple(x_int.shape[1:]) != (parts, n_rows):
            raise ValueError(f"layer {self.name}: inputs must be (rows, {parts}, {n_rows}), got {tuple(x_int.shape)}")
        x_int = x_int.to(self.device, torch.float64)
        if self.path == "fused":
            return self._chunked(x_int, batch_rows, chunk_bytes, self.fused)
        if calibrate and self.observed is None:
            self.observed = [torch.zeros(b.reads, b.width, dtype=torch.float32, device=self.device)
                             for b in self.buckets]
        flat = x_int.reshape(len(x_int), parts * n_rows)
        signed = bool((flat < 0).any())
        rows = len(flat)
        y = torch.empty(rows, parts * n_cols, dtype=torch.float64, device=self.device)
        chunk = self._chunk_rows(batch_rows, chunk_bytes, 2 if signed else 1)
        for start in range(0, rows, chunk):
            part = flat[start: start + chunk]
            streams = torch.cat([part.clamp_min(0), part.neg().clamp_min_(0)]) if signed else part
            out = self._crossbars(streams, generator, chunk_bytes, calibrate)
            y[start: start + chunk] = out[: len(part)] - out[len(part):] if signed else out
        y = y.view(rows, parts, n_cols)
        if self.offset is not None:
            y += self._chunked(x_int, batch_rows, chunk_bytes, self.offset)
        return y

    def _chunked(self, x, batch_rows, chunk_bytes, matmul) -> torch.Tensor:
        parts, n_rows, n_cols = self.shape
        per_row = 8 * parts * (2 * n_rows + 2 * n_cols)  # x and y, float64 and float32 copies
        step = max(1, min(batch_rows, chunk_bytes // per_row))
        return matmul(x) if len(x) <= step else torch.cat([matmul(part) for part in x.split(step)])

    # memory per row of a chunk outside the read slices: transposed inputs, digits, slices, outputs
    def _chunk_row_bytes(self, streams: int) -> int:
        parts, n_rows, n_cols = self.shape
        return streams * (parts * n_rows * (8 + 4 + 4 * 2 * self.cycles) + parts * n_cols * 8 * 2) + \
            parts * n_rows * 8 * 2

    def _slice_row_bytes(self, b: _Bucket) -> int:
        """Bytes one read of bucket ``b`` needs per stream row: gathered slices (and DAC noise), column
        sums, read-noise variance and draws, the ADC's work tensor, packed sums, spliced values."""
        t, k, j = self.cycles, b.height, b.width
        inputs = 4 * k * t * (3 if not self.ideal_dac else 1)
        sums = 4 * j * t * (2 + (2 if self.read_noise > 0 else 0))
        packed = 4 * j * (2 * -(-t // b.pack) + b.pack) if b.pack > 1 else 0
        return inputs + sums + packed + 16 * j

    def _chunk_rows(self, batch_rows: int, chunk_bytes: int, streams: int) -> int:
        smallest = min((self._slice_row_bytes(b) for b in self.buckets), default=0)
        rows = chunk_bytes // max(1, self._chunk_row_bytes(streams) + streams * smallest)
        return int(max(1, min(batch_rows, rows)))

    def _crossbars(self, x: torch.Tensor, generator, chunk_bytes: int, calibrate: bool) -> torch.Tensor:
        """Non-negative integer inputs (b, P*N) float64 -> spliced crossbar outputs (b, P*M) float64.

        Layout: every tensor of a read slice is (reads, slots, cycles, rows), rows innermost, so each
        cycle's block is contiguous for the DAC, the unpacking and the splice."""
        parts, _n_rows, n_cols = self.shape
        rows = len(x)
        xi = torch.cat([x.to(torch.int32).t(), x.new_zeros(1, rows, dtype=torch.int32)])  # (PN+1, b), row PN = 0
        shifts = self.v * torch.arange(self.cycles, device=self.device, dtype=torch.int32)
        digits = torch.bitwise_right_shift(xi.unsqueeze(1), shifts[:, None]).bitwise_and_(self.digit_mask)  # (PN+1, T, b)
        active = torch.nonzero(digits.amax(dim=(0, 2)) > 0).flatten()
        y = torch.zeros(parts * n_cols + 1, rows, dtype=torch.float64, device=self.device)
        if len(active) == 0:  # every cycle zero: no read fires
            return y[:-1].t()
        cycles = active.tolist()
        weights = torch.tensor([[float(1 << (self.v * c)) for c in cycles]], dtype=self.splice_dtype, device=self.device)
        if len(active) < self.cycles:
            digits = digits[:, active]
        fixed = self._chunk_row_bytes(1) * rows
        sources = {}
        for index, b in enumerate(self.buckets):
            key = (b.pack, b.field)
            if key not in sources:
                sources[key] = self._packed(digits, b.pack, b.field)
            source = sources[key]
            per_read = max(1, self._slice_row_bytes(b) * rows)
            budget = chunk_bytes - fixed if self.device.type == "cuda" else min(chunk_bytes - fixed, SLICE_BYTES)
            step = max(1, min(b.reads, budget // per_read))
            for start in range(0, b.reads, step):
                stop = min(start + step, b.reads)
                codes = self._convert(index, start, stop, source, len(cycles), generator, calibrate)
                codes = codes.view((stop - start) * b.width, len(cycles), rows).to(self.splice_dtype)
                values = torch.matmul(weights, codes).view(stop - start, b.width, rows)  # sum_t 2**(v t) code_t
                values.mul_(b.coef[start:stop].to(self.splice_dtype))
                with _deterministic(self.device):
                    y.index_add_(0, b.outputs[start:stop].flatten(), values.view(-1, rows).to(torch.float64))
        return y[:-1].t()

    def _convert(self, index: int, start: int, stop: int, source: torch.Tensor, cycles: int, generator,
                 calibrate: bool) -> torch.Tensor:
        """ADC outputs (r, Jb, T'*b) of reads [start, stop) of bucket ``index``: column sums, then the ADC
        at each read column's full scale (calibration records the sums' maxima first)."""
        b = self.buckets[index]
        sums = self._sums(b, start, stop, source, cycles, generator)  # (r, Jb, T'*b)
        if calibrate:
            seen = sums.amax(dim=2).to(torch.float32)
            torch.maximum(self.observed[index][start:stop], seen, out=self.observed[index][start:stop])
        scale = b.lossless_scale if b.full_scale is None else b.full_scale
        return self.sim.adc.convert(sums, scale[start:stop], generator)

    def _gather(self, b: _Bucket, start: int, stop: int, source: torch.Tensor) -> torch.Tensor:
        """(r, Kb, T'*b) input slices of reads [start, stop) of bucket ``b`` (unused row slots read 0)."""
        return source.index_select(0, b.inputs[start:stop].flatten()).view(stop - start, b.height, source.shape[1])

    def _packed(self, digits: torch.Tensor, pack: int, field: int) -> torch.Tensor:
        """(PN+1, T', b) digits -> (PN+1, ceil(T'/pack) * b) GEMM operand: ``pack`` consecutive cycles per
        value, cycle i of a group in bits [field*i, field*(i+1)), so that their column sums stay in their
        own fields below 2**24 (float32-exact)."""
        n, cycles, rows = digits.shape
        if pack == 1:
            return digits.to(self.gemm_dtype).view(n, cycles * rows)
        groups = -(-cycles // pack)
        padded = F.pad(digits, (0, 0, 0, groups * pack - cycles)).to(torch.float32).view(n * groups, pack, rows)
        fields = torch.tensor([[float(1 << (field * i)) for i in range(pack)]], device=digits.device)
        return torch.matmul(fields, padded).view(n, groups * rows)  # exact: every value below 2**24

    def _sums(self, b: _Bucket, start: int, stop: int, source: torch.Tensor, cycles: int, generator) -> torch.Tensor:
        """Column sums (r, Jb, T'*b) of reads [start, stop) of bucket ``b`` for every active cycle."""
        r = stop - start
        slices = self._gather(b, start, stop, source)
        g_t = b.conductance_t[start:stop]
        if self.path == "integer":
            packed = torch.bmm(g_t, slices)  # (r, Jb, groups*b): exact integers below 2**24
            if b.pack == 1:
                return packed
            rows = source.shape[1] // -(-cycles // b.pack)
            packed = packed.view(r, b.width, -1, rows)
            sums = torch.empty(r, b.width, cycles, rows, dtype=packed.dtype, device=self.device)
            unit, inverse = float(1 << b.field), 1.0 / float(1 << b.field)
            for cycle in range(cycles):  # peel the fields off, lowest first: exact float arithmetic
                group, i = divmod(cycle, b.pack)
                if i == 0:
                    rest = packed[:, :, group]
                if i == b.pack - 1 or cycle == cycles - 1:
                    sums[:, :, cycle] = rest
                    continue
                high = torch.mul(rest, inverse).floor_()
                torch.sub(rest, high, alpha=unit, out=sums[:, :, cycle])
                rest = high
            return sums.view(r, b.width, -1)
        if not self.ideal_dac:
            slices = self.sim.dac.apply(slices, generator)
        sums = torch.bmm(g_t, slices)
        if self.read_noise > 0:
            squared = slices if self.ideal_dac and self.v == 1 else slices.square()  # 0/1 slices: x**2 = x
            std = torch.bmm(b.squared_t[start:stop], squared).clamp_min_(0).sqrt_()
            noise = torch.randn(std.shape, generator=generator, dtype=std.dtype, device=std.device)
            sums.addcmul_(std, noise, value=self.read_noise)
        return sums

    def calibrated(self) -> None:
        """Adopt the recorded maxima as each read column's full scale (columns never seen keep theirs)."""
        if self.observed is None:
            return
        for b, seen in zip(self.buckets, self.observed):
            b.full_scale = torch.where(seen > 0, seen, b.lossless_scale[..., 0])[:, :, None]
        self.observed = None


def crossbar_matmul(x_int: torch.Tensor, mapped: MappedLayer, sim: Simulation, generator: torch.Generator | None = None,
                    *, conductance: torch.Tensor | None = None, path: str | None = None, device="cpu",
                    batch_rows: int = 4096, chunk_mib: float = 256) -> torch.Tensor:
    """y_int (rows, P, M) float64 of integer inputs x_int (rows, P, N) through the crossbars of ``mapped``.

    Programs the cells (``sim.seed``-derived stream, or ``conductance`` (R, K, J) as given); ``generator``
    (default: seeded with ``sim.seed``) drives DAC, read and ADC noise. ``path`` forces a simulation path.
    """
    top = (1 << sim.activation_bits) - 1
    if x_int.numel() and float(x_int.abs().max()) > top:
        raise ValueError(f"inputs exceed the {sim.activation_bits}-bit activation range |x| <= {top}")
    plan = CrossbarPlan(mapped, sim, device, conductance=conductance, path=path)
    if generator is None:
        generator = torch.Generator(plan.device).manual_seed(sim.seed)
    return plan.matmul(torch.as_tensor(x_int), generator, batch_rows, int(chunk_mib * (1 << 20)))


class CrossbarLayer(IntegerLayer):
    """Layer simulated on the crossbars of a :class:`MappedLayer` (conductances programmed once)."""

    def __init__(self, module, mapped: MappedLayer, sim: Simulation, activation_scale: float, device,
                 batch_rows: int = 4096, chunk_bytes: int = 256 << 20, path: str | None = None):
        super().__init__(module, mapped.quantized, sim.activation_bits, activation_scale, device)
        self.plan = CrossbarPlan(mapped, sim, self.device, path=path)
        self.generator = torch.Generator(self.device).manual_seed(layer_seed(sim.seed, mapped.name, "read"))
        self.batch_rows, self.chunk_bytes = batch_rows, chunk_bytes
        self.calibrating = False

    def integer_matmul(self, x_int):
        return self.plan.matmul(x_int, self.generator, self.batch_rows, self.chunk_bytes, self.calibrating)


def calibrate_adc(model: nn.Module, inputs, batch_size: int = 256) -> None:
    """Run ``inputs`` (a tensor or input batches) through ``model`` recording every crossbar layer's
    read-column maxima, then adopt them as full scales (the layers' read noise streams advance as in any
    run)."""
    layers = [m for m in model.modules() if isinstance(m, CrossbarLayer)]
    for layer in layers:
        layer.calibrating = True
    try:
        run_batches(model, inputs, batch_size)
    finally:
        for layer in layers:
            layer.calibrating = False
    for layer in layers:
        if layer.plan.path != "fused":
            layer.plan.calibrated()


def build_crossbar_model(model: nn.Module, mapped: dict[str, MappedLayer], sim: Simulation,
                         activation_scales: dict[str, float], device: torch.device, batch_rows: int, chunk_bytes: int,
                         calibration_inputs=None, batch_size: int = 256) -> nn.Module:
    """Deep copy of ``model`` with each named layer replaced by a :class:`CrossbarLayer`.

    An ADC with ``calibrated = True`` needs ``calibration_inputs`` (a tensor or input batches): they run
    once through the copy to record each read column's largest sum, which becomes its full scale.
    """
    modules = layer_modules(model, list(mapped))
    check_activation_scales(mapped, activation_scales)
    calibrated = bool(getattr(sim.adc, "calibrated", False))
    if calibrated and calibration_inputs is None:
        raise ValueError("a calibrated ADC needs calibration_inputs")
    layers = {n: CrossbarLayer(modules[n], m, sim, activation_scales[n], device, batch_rows, chunk_bytes)
              for n, m in mapped.items()}
    built = with_layers_replaced(model, layers)
    if calibrated:
        calibrate_adc(built, calibration_inputs, batch_size)
    return built
