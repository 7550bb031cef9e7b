"""Fine-tuning: recover the accuracy orchestration and squeeze-out cost, keeping their bit patterns.

Methods (``FinetuneParams.method``):

- ``ste``: the forward pass uses the projected weights ``scale * P(W / scale)`` (``P``: nearest allowed
  integer weight, :func:`sme_plugin.orchestrate.project_weights`); gradients pass straight through to the
  latent float weights ``W``.
- ``admm``: trains ``W`` with ``rho/2 * ||W/scale - Z + U||^2`` added to the loss; every ``admm_steps``
  steps ``Z = P(W/scale + U)``, ``U += W/scale - Z`` and ``rho *= rho_growth``; then ``W`` is projected
  hard and ``polish_epochs`` of STE (at ``lr / 10``) fine-tune the projected model.
- ``l1-bitslice`` (Zhang, Yang et al. 2019, "Exploring bit-slice sparsity in deep neural networks for
  efficient ReRAM-based deployment"): training-time regulariser on the quantizer's weights: the forward
  pass uses uniformly quantized weights (STE) and ``alpha * sum_k |slice_k| / (slices * weights)`` is added,
  ``slice_k`` the k-th ``slice_bits``-bit slice of ``|round(W/scale)|`` with straight-through floors, as in
  the authors' code (a slice is the rest of the magnitude minus the detached higher slices). ``l1`` is the
  plain L1 of ``|W/scale|`` with the same ``alpha`` normalisation, for comparison.

The allowed patterns of ``ste``/``admm`` are what the orchestrator and squeezer produced
(:func:`sme_plugin.orchestrate.allowed_patterns`): each weight keeps to the cell groups its region and its
plane-tile row already use, under the layout's sign scheme and offsets, so the fine-tuned layer never needs
a crossbar column, region or compacted row more. Under ``segment-offset`` each offset segment keeps one
weight at ``u = 0`` (the cheapest one when the projection moved them all), so the mapper re-derives the
same offsets. Scales stay the quantizer's.

``data``: ``train`` minimises cross-entropy on labelled batches (a dataset's training data,
:attr:`sme_plugin.types.Dataset.train`), as they are (a mirrored digit is no longer its label, and on digits
random shifts cost accuracy); ``distill`` minimises the KL divergence to the float model's softmax
(temperature ``temperature``) on unlabelled inputs, randomly shifted and flipped when ``augment`` is set.
Batches of ``batch_size`` samples are drawn in a seeded random order (streams: within windows of
:data:`SHUFFLE_BYTES`). The model is kept in eval mode (BatchNorm statistics frozen, no dropout).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from .config import FinetuneParams
from .layers import _block_diagonal
from .orchestrate import AllowedPatterns, allowed_patterns, project_weights
from .types import Layout, QuantizedLayer

METHODS = ("ste", "admm", "l1-bitslice", "l1")
#: methods that keep the orchestrated bit patterns (run after orchestration and squeeze-out)
PATTERN_METHODS = ("ste", "admm")
#: bytes of inputs a stream of training data is shuffled within (a window; in-memory data: all of it)
SHUFFLE_BYTES = 64 << 20


@dataclass
class FinetuneResult:
    """model: the fine-tuned float model (its Conv/Linear weights are ``scale * w_int``); quantized: the
    layers' new integer weights (same scales; ``layer.weight``/``layer.bias`` updated); history: loss per
    epoch; reused: loaded from a checkpoint instead of trained."""

    model: nn.Module
    quantized: list[QuantizedLayer]
    history: list[dict] = field(default_factory=list)
    reused: bool = False


# ------------------------------------------------------------------------------------ layout conversion
def to_module_layout(array: np.ndarray, q: QuantizedLayer, module: nn.Module) -> np.ndarray:
    """(P, N, M) array of a layer -> the module's weight layout (Linear (out, in); Conv2d (out, in/g, kh, kw)):
    the inverse of :func:`sme_plugin.layers.extract_layers` (padding and off-diagonal entries dropped)."""
    layer = q.layer
    if isinstance(module, nn.Linear):
        return np.ascontiguousarray(array[0].T)
    out_channels, in_per_group, kh, kw = module.weight.shape
    groups, per_part = layer.groups, layer.groups_per_part
    n, m = in_per_group * kh * kw, out_channels // groups
    parts = array.shape[0]
    shaped = array.reshape(parts, per_part, n, per_part, m)
    diagonal = np.arange(per_part)
    blocks = shaped[:, diagonal, :, diagonal, :]  # (per_part, P, n, m)
    blocks = blocks.transpose(1, 0, 2, 3).reshape(parts * per_part, n, m)[:groups]
    return np.ascontiguousarray(blocks.transpose(0, 2, 1).reshape(out_channels, in_per_group, kh, kw))


def from_module_layout(array: np.ndarray, q: QuantizedLayer, module: nn.Module) -> np.ndarray:
    """A module-layout weight array -> (P, N, M) of the layer (zeros where the layer has no weight)."""
    layer = q.layer
    if isinstance(module, nn.Linear):
        return np.ascontiguousarray(array.T[None])
    out_channels = array.shape[0]
    blocks = array.reshape(layer.groups, out_channels // layer.groups, -1).transpose(0, 2, 1)
    return _block_diagonal(blocks, layer.groups_per_part)


# ------------------------------------------------------------------------------------------ projectors
class _Projector:
    """One layer's projection onto its allowed integer weights, in the module's weight layout (torch)."""

    def __init__(self, q: QuantizedLayer, module: nn.Module, patterns: AllowedPatterns | None):
        device = module.weight.device
        tensor = lambda a, dtype=torch.int64: torch.as_tensor(to_module_layout(np.asarray(a), q, module),
                                                              dtype=dtype, device=device)
        full = np.broadcast_to(q.scale, q.w_int.shape)
        self.scale = tensor(full, module.weight.dtype)
        self.top = (1 << (q.bits - 1)) - 1
        self.patterns = patterns
        if patterns is not None:
            self.masks = torch.stack([tensor(m) for m in patterns.masks])
            self.offset = tensor(patterns.offset)
            self.segments = None if patterns.segments is None else tensor(patterns.segments).ravel()
            self.n_bits = patterns.n_bits

    def integers(self, x: torch.Tensor) -> torch.Tensor:
        """int64 nearest allowed weights to ``x`` (module layout, integer units)."""
        x = x.detach()
        if self.patterns is None:  # the quantizer's uniform grid
            return torch.clamp(torch.round(x), -self.top, self.top).to(torch.int64)
        w, _ = project_weights(x, self.masks, self.offset, self.top, self.n_bits)
        if self.segments is not None:
            w = self._pin(x, w)
        return w

    def _pin(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Keep ``u = 0`` in every offset segment: where the projection moved a segment's every weight above
        its offset, its cheapest weight (least added squared error) returns to the offset."""
        flat_x, flat_w, offset, seg = x.ravel(), w.ravel(), self.offset.ravel(), self.segments
        n_seg = int(seg.max()) + 1 if seg.numel() else 0
        zeros = torch.zeros(n_seg, device=x.device).index_add_(0, seg, (flat_w == offset).float())
        need = zeros[seg] == 0
        if not bool(need.any()):
            return w
        cost = (flat_x - offset).square() - (flat_x - flat_w).square()
        cost = torch.where(need, cost, torch.full_like(cost, math.inf))
        best = torch.full((n_seg,), math.inf, device=x.device).scatter_reduce(0, seg, cost, "amin")
        candidate = need & (cost == best[seg])
        index = torch.arange(len(flat_w), device=x.device)
        first = torch.full((n_seg,), len(flat_w), device=x.device).scatter_reduce(
            0, seg, torch.where(candidate, index, len(flat_w)), "amin")
        chosen = candidate & (index == first[seg])
        return torch.where(chosen, offset, flat_w).reshape(w.shape)

    def dequantized(self, weight: torch.Tensor) -> torch.Tensor:
        return self.scale * self.integers(weight / self.scale).to(weight.dtype)


class _StraightThrough(nn.Module):
    """Parametrization: forward ``scale * P(W / scale)``, gradient identity to ``W``."""

    def __init__(self, projector: _Projector):
        super().__init__()
        self.projector = projector

    def forward(self, weight):
        return weight + (self.projector.dequantized(weight) - weight).detach()


# ----------------------------------------------------------------------------------------------- losses
def bitslice_l1(x: torch.Tensor, slice_bits: int, top: int) -> torch.Tensor:
    """Sum over weights and slices of the ``slice_bits``-bit slices of ``|round(x)|`` (x in integer units),
    with straight-through rounding and floors (Zhang, Yang et al. 2019)."""
    magnitude = _ste_round(torch.clamp(x.abs(), max=top))
    slices = -(-max(top.bit_length(), 1) // slice_bits)
    total, rest = x.new_zeros(()), magnitude
    for k in reversed(range(slices)):
        weight = float(1 << (slice_bits * k))
        digit = _ste_floor(rest / weight) if k else rest
        total = total + digit.abs().sum()
        rest = rest - digit.detach() * weight
    return total


def _ste_round(x):
    return x + (torch.round(x) - x).detach()


def _ste_floor(x):
    return x + (torch.floor(x) - x).detach()


def bitslice_sparsity(layers: list[QuantizedLayer], slice_bits: int) -> list[float]:
    """Zero fraction of each ``slice_bits``-bit slice of the magnitudes (LSB slice first) over every existing
    weight of ``layers``."""
    magnitudes = np.concatenate([np.abs(q.w_int[q.layer.mask]).ravel() for q in layers])
    bits = max(int(max(((1 << (q.bits - 1)) - 1) for q in layers)).bit_length(), 1)
    slices = -(-bits // slice_bits)
    digits = (magnitudes[:, None] >> (slice_bits * np.arange(slices))) & ((1 << slice_bits) - 1)
    return [round(float(v), 4) for v in (digits == 0).mean(axis=0)]


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shift (one per batch, up to 1/8 of each side, zero fill) and per-sample horizontal flips."""
    if x.dim() != 4:
        return x
    h, w = x.shape[-2:]
    dy, dx = (int(torch.randint(-(s // 8), s // 8 + 1, (1,), generator=generator)) for s in (h, w))
    shifted = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    if dy > 0:
        shifted[..., :dy, :] = 0
    elif dy < 0:
        shifted[..., dy:, :] = 0
    if dx > 0:
        shifted[..., :dx] = 0
    elif dx < 0:
        shifted[..., dx:] = 0
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip.reshape(-1, 1, 1, 1), shifted.flip(-1), shifted)


# --------------------------------------------------------------------------------------------- training
def _batches(data, params: FinetuneParams, generator: torch.Generator):
    """One epoch of batches of ``params.batch_size`` samples (the last may be smaller) in a random order:
    ``data`` is a tensor of inputs, a tuple (inputs, labels) of tensors (shuffled as a whole) or a
    re-iterable of input or (inputs, labels) batches, e.g. :class:`sme_plugin.types.Batches` (shuffled
    within windows of :data:`SHUFFLE_BYTES` of inputs, read in order). Yields inputs or (inputs, labels)."""
    if isinstance(data, torch.Tensor) or (isinstance(data, tuple) and all(isinstance(t, torch.Tensor) for t in data)):
        data = [data]
    elif hasattr(data, "batched"):
        data = data.batched(params.batch_size)
    window, held = [], 0
    for batch in data:
        window.append(tuple(batch) if isinstance(batch, (tuple, list)) else (batch,))
        held += window[-1][0].nbytes
        if held >= SHUFFLE_BYTES:
            *full, rest = _shuffled(window, params.batch_size, generator)
            yield from full
            window, held = [rest], rest[0].nbytes
    if window:
        yield from _shuffled(window, params.batch_size, generator)


def _shuffled(window: list[tuple], batch_size: int, generator: torch.Generator) -> list:
    """The samples of ``window`` (batches as tuples of tensors) in a random order, in batches of
    ``batch_size`` (the last may be smaller): inputs, or tuples when the batches hold more than inputs."""
    parts = [torch.cat(tensors) for tensors in zip(*window)]
    order = torch.randperm(len(parts[0]), generator=generator)
    return [tuple(t[i] for t in parts) if len(parts) > 1 else parts[0][i] for i in order.split(batch_size)]


def _steps_per_epoch(data, params: FinetuneParams) -> int | None:
    """Batches :func:`_batches` yields per epoch (None: unknown)."""
    if isinstance(data, torch.Tensor):
        samples = len(data)
    elif isinstance(data, tuple) and data and isinstance(data[0], torch.Tensor):
        samples = len(data[0])
    else:
        samples = getattr(data, "samples", None)
    return None if samples is None else -(-samples // params.batch_size)


def _loss(model, teacher, batch, params: FinetuneParams, generator) -> torch.Tensor:
    if params.data == "distill":
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        if params.augment:
            inputs = _augment(inputs, generator)
        with torch.no_grad():
            target = F.log_softmax(teacher(inputs) / params.temperature, dim=1)
        student = F.log_softmax(model(inputs) / params.temperature, dim=1)
        return F.kl_div(student, target, log_target=True, reduction="batchmean") * params.temperature**2
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError("finetune.data: 'train' needs labelled (inputs, labels) batches; use data: distill "
                         "for unlabelled inputs")
    inputs, labels = batch[0], batch[1]
    return F.cross_entropy(model(inputs), labels)


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[loss]}"), console=console,
                    disable=not (enabled and console.is_terminal and sys.stderr.isatty()))


def _modules(model: nn.Module, quantized: list[QuantizedLayer]) -> list[nn.Module]:
    found = dict(model.named_modules())
    modules = []
    for q in quantized:
        module = found.get(q.layer.name)
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise ValueError(f"finetune: the model has no Conv2d/Linear called {q.layer.name!r}")  # noqa: TRY004
        modules.append(module)
    return modules


def finetune(model: nn.Module, quantized: list[QuantizedLayer], layouts: list[Layout] | None,
             params: FinetuneParams, data, *, teacher: nn.Module | None = None,
             patterns: list[AllowedPatterns] | None = None, progress: bool = False,
             recipe: dict | None = None) -> FinetuneResult:
    """Fine-tune ``model`` (float, BatchNorm folded: the model the layers were extracted from) so that its
    layers' integer weights stay in their allowed patterns (``ste``/``admm``) or become bit-slice sparse
    (``l1-bitslice``/``l1``).

    quantized: each layer's integer weights and scales (``ste``/``admm``: after orchestration and
    squeeze-out, defining the allowed patterns with ``layouts``, or give ``patterns``; ``l1*``: the
    quantizer's). data: training batches (see :func:`_batches`); teacher: the float model distillation
    follows (default: a copy of ``model`` as given). The latent weights start from the orchestrated weights
    ``scale * w_int`` of ``quantized`` (``ste``/``admm``: zero epochs give back exactly those layers) or from
    ``model``'s float weights (``l1*``). recipe: facts to record in the checkpoint (model, dataset, config
    hash). ``model`` is not changed.
    """
    if params.reuse and params.checkpoint and Path(params.checkpoint).exists():
        loaded = load_checkpoint(params.checkpoint, model, quantized)
        if loaded is not None and loaded[2].get("params") == params.model_dump(mode="json"):
            return FinetuneResult(loaded[0], loaded[1], loaded[2].get("history", []), reused=True)
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    student = copy.deepcopy(model).eval()
    teacher = (copy.deepcopy(model) if teacher is None else teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    modules = _modules(student, quantized)
    keep = params.method in PATTERN_METHODS
    if keep and patterns is None:
        if layouts is None:
            raise ValueError(f"finetune: method {params.method!r} needs the layers' layouts or patterns")
        patterns = [allowed_patterns(q, layout) for q, layout in zip(quantized, layouts)]
    projectors = [_Projector(q, m, p if keep else None)
                  for q, m, p in zip(quantized, modules, patterns if keep else [None] * len(quantized))]
    if keep:
        _load_integers(modules, quantized)
    history: list[dict] = []
    with _progress(progress) as bar:
        if params.method == "ste":
            _parametrize(modules, projectors)
            _train(student, teacher, data, params, params.epochs, params.lr, bar, history, generator, "ste")
        elif params.method == "admm":
            _admm(student, teacher, modules, projectors, data, params, bar, history, generator)
            _parametrize(modules, projectors)
            _train(student, teacher, data, params, params.polish_epochs, params.lr / 10, bar, history, generator,
                   "polish")
        else:
            _parametrize(modules, projectors)
            penalty = _l1_penalty(modules, projectors, params)
            _train(student, teacher, data, params, params.epochs, params.lr, bar, history, generator,
                   params.method, penalty)
    result_layers = []
    with torch.no_grad():
        for q, module, projector in zip(quantized, modules, projectors):
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            w_int = projector.integers(module.weight / projector.scale)
            result_layers.append(_with_weights(q, module, w_int))
    _load_integers(modules, result_layers)
    for p in student.parameters():
        p.requires_grad_(True)
    result = FinetuneResult(student, result_layers, history)
    if params.checkpoint:
        save_checkpoint(params.checkpoint, result, params, recipe)
    return result


def _load_integers(modules, quantized: list[QuantizedLayer]) -> None:
    """Set each module's weight to its layer's ``scale * w_int`` (float32, module layout)."""
    with torch.no_grad():
        for module, q in zip(modules, quantized):
            exact = to_module_layout((q.scale * q.w_int).astype(np.float32), q, module)
            module.weight.copy_(torch.from_numpy(exact).to(module.weight.device, module.weight.dtype))


def _with_weights(q: QuantizedLayer, module: nn.Module, w_int: torch.Tensor) -> QuantizedLayer:
    """``q`` with the fine-tuned integer weights, float weights and bias of ``module``."""
    w = from_module_layout(w_int.cpu().numpy().astype(np.int64), q, module)
    weight = (q.scale * w).astype(np.float32)
    bias = None if module.bias is None else module.bias.detach().cpu().numpy().astype(np.float32)
    return QuantizedLayer(replace(q.layer, weight=weight, bias=bias), w, q.scale, q.bits)


def _parametrize(modules, projectors) -> None:
    for module, projector in zip(modules, projectors):
        if not parametrize.is_parametrized(module, "weight"):
            parametrize.register_parametrization(module, "weight", _StraightThrough(projector))


def _l1_penalty(modules, projectors, params: FinetuneParams):
    count = sum(m.weight.numel() for m in modules)

    def penalty():
        total = 0.0
        for module, projector in zip(modules, projectors):
            x = module.parametrizations.weight.original / projector.scale
            if params.method == "l1":
                total = total + x.abs().sum()
            else:
                total = total + bitslice_l1(x, params.slice_bits, projector.top)
        slices = 1 if params.method == "l1" else -(-max(projectors[0].top.bit_length(), 1) // params.slice_bits)
        return params.alpha * total / (count * slices)

    return penalty


def _train(model, teacher, data, params, epochs, lr, bar, history, generator, label, penalty=None,
           on_step=None) -> None:
    if epochs == 0:
        return
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    total = _steps_per_epoch(data, params)
    task = bar.add_task(f"finetune {label}", total=None if total is None else total * epochs, loss="")
    for epoch in range(epochs):
        losses = []
        for batch in _batches(data, params, generator):
            optimizer.zero_grad()
            loss = _loss(model, teacher, batch, params, generator)
            if penalty is not None:
                loss = loss + penalty()
            if on_step is not None:
                loss = loss + on_step()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(task, advance=1, loss=f"loss {losses[-1]:.4f}")
        history.append({"phase": label, "epoch": epoch + 1, "loss": round(float(np.mean(losses)), 6) if losses else None})


def _admm(model, teacher, modules, projectors, data, params, bar, history, generator) -> None:
    """ADMM epochs: Z = P(W/scale + U), U += W/scale - Z every ``admm_steps`` steps, rho growing."""
    state = {"rho": params.rho, "step": 0}
    with torch.no_grad():
        z = [p.integers(m.weight / p.scale).to(m.weight.dtype) for m, p in zip(modules, projectors)]
        u = [torch.zeros_like(m.weight) for m in modules]

    def penalty():
        state["step"] += 1
        if state["step"] % params.admm_steps == 0:
            with torch.no_grad():
                for i, (m, p) in enumerate(zip(modules, projectors)):
                    x = m.weight / p.scale
                    z[i] = p.integers(x + u[i]).to(x.dtype)
                    u[i] += x - z[i]
            state["rho"] *= params.rho_growth
        return 0.5 * state["rho"] * sum(((m.weight / p.scale) - zi + ui).square().sum()
                                        for m, p, zi, ui in zip(modules, projectors, z, u))

    _train(model, teacher, data, params, params.epochs, params.lr, bar, history, generator, "admm",
           on_step=penalty)


# ------------------------------------------------------------------------------------------- checkpoint
def _write_atomically(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def recipe_path(path) -> Path:
    """The JSON recipe written next to a checkpoint ``path``."""
    return Path(path).with_suffix(".json")


def save_checkpoint(path, result: FinetuneResult, params: FinetuneParams, recipe: dict | None = None) -> Path:
    """Write ``{"state_dict", "quantized": {name: {"w_int", "scale", "bits"}}}`` to ``path`` and the recipe
    (params, layers, history, file hash, ``recipe``) to ``path.json``, each atomically. Returns ``path``."""
    path = Path(path)
    state = {
        "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        "quantized": {q.layer.name: {"w_int": torch.from_numpy(q.w_int.astype(np.int32)),
                                     "scale": torch.from_numpy(np.asarray(q.scale, dtype=np.float64)),
                                     "bits": q.bits} for q in result.quantized},
    }
    _write_atomically(path, lambda tmp: torch.save(state, tmp))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    from . import __version__

    info = {
        "sme_version": __version__,
        "checkpoint": path.name,
        "sha256": digest,
        "params": params.model_dump(mode="json"),
        "layers": [{"name": q.layer.name, "shape": list(q.w_int.shape), "bits": q.bits} for q in result.quantized],
        "history": result.history,
        **({"recipe": recipe} if recipe else {}),
    }
    text = json.dumps(info, indent=2) + "\n"
    _write_atomically(recipe_path(path), lambda tmp: Path(tmp).write_text(text))
    return path


def load_checkpoint(path, model: nn.Module, quantized: list[QuantizedLayer]):
    """(model copy with the checkpoint's state, layers with its integer weights, recipe) or None when the
    checkpoint does not fit (other layers, shapes, bits, scales, or a hash that does not match its recipe)."""
    path = Path(path)
    info_path = recipe_path(path)
    if not info_path.exists():
        return None
    info = json.loads(info_path.read_text())
    if info.get("sha256") != hashlib.sha256(path.read_bytes()).hexdigest():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    stored = state["quantized"]
    if [q.layer.name for q in quantized] != list(stored):
        return None
    layers = []
    loaded = copy.deepcopy(model).eval()
    try:
        loaded.load_state_dict(state["state_dict"])
    except RuntimeError:
        return None
    modules = _modules(loaded, quantized)
    for q, module in zip(quantized, modules):
        entry = stored[q.layer.name]
        w_int = entry["w_int"].numpy().astype(np.int64)
        if w_int.shape != q.w_int.shape or entry["bits"] != q.bits or \
                not np.array_equal(entry["scale"].numpy(), np.asarray(q.scale, dtype=np.float64)):
            return None
        w_module = torch.from_numpy(to_module_layout(w_int, q, module))
        layers.append(_with_weights(q, module, w_module))
    return loaded, layers, info
