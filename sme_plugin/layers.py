"""From a torch model to :class:`~sme_plugin.types.Layer`: BatchNorm folding and im2col extraction.

Grouped convolutions (depthwise included) follow one of two conventions (it moves crossbar counts
several-fold, so reports should state it):
``packed``: ``groups_per_part = max(1, crossbar_rows // (in_channels_per_group*kh*kw))`` groups share
one part on disjoint rows and columns, so a crossbar holds several groups; ``block-diagonal``: all
groups form one part, a block-diagonal matrix of size (in_channels*kh*kw) x out_channels.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from typing import Literal

import numpy as np
import torch
from torch import fx, nn

from .types import Layer

DEPTHWISE_CONVENTIONS = ("packed", "block-diagonal")


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule of ``model`` called ``name`` (a qualified name such as ``layer1.0.conv1``)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every BatchNorm2d that directly follows a Conv2d
    (the conv's only user, each module called once) folded into that conv's weight and bias.

    The folded BatchNorm becomes ``nn.Identity``; every module keeps its qualified name. BatchNorms
    without running statistics are left as they are. Raises ValueError if torch.fx cannot trace the model.
    """
    folded = copy.deepcopy(model).eval()
    try:
        graph = fx.symbolic_trace(folded).graph
    except Exception as error:  # fx raises TraceError, TypeError, ... on data-dependent control flow
        raise ValueError(f"fold_batchnorm: torch.fx cannot trace {type(model).__name__}: {error}") from error
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    for node in graph.nodes:
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        conv, bn = folded.get_submodule(source.target), folded.get_submodule(node.target)
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None):
            continue
        if calls[source.target] != 1 or calls[node.target] != 1:
            continue
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            shift = -bn.running_mean * scale
            if bn.affine:
                scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
            bias = shift if conv.bias is None else conv.bias * scale + shift
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
        set_submodule(folded, node.target, nn.Identity())
    return folded


def unfolded_batchnorms(folded: nn.Module) -> list[str]:
    """Names of the BatchNorm layers :func:`fold_batchnorm` left in ``folded`` (not right after a Conv2d
    that only they use, a module called more than once, or no running statistics): they run as float
    operations between the mapped layers, whose weights stay unfolded."""
    return [name for name, module in folded.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Run ``model`` in eval mode (BatchNorm statistics untouched), restoring every module's flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _output_shapes(model: nn.Module, input_shape: tuple) -> dict[str, tuple]:
    """Output shape (batch 1) of each Conv2d/Linear at its first call, in call order."""
    shapes: dict[str, tuple] = {}

    def record(name):
        def hook(_module, _inputs, output):
            shapes.setdefault(name, tuple(output.shape))

        return hook

    hooks = [
        module.register_forward_hook(record(name))
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    try:
        with _eval_mode(model), torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def _block_diagonal(blocks: np.ndarray, groups_per_part: int) -> np.ndarray:
    """(g, n, m) group blocks -> (P, gpp*n, gpp*m) block-diagonal parts, P = ceil(g/gpp); padding is zero."""
    groups, n, m = blocks.shape
    parts = -(-groups // groups_per_part)
    padded = np.zeros((parts * groups_per_part, n, m), blocks.dtype)
    padded[:groups] = blocks
    out = np.zeros((parts, groups_per_part, n, groups_per_part, m), blocks.dtype)
    diagonal = np.arange(groups_per_part)
    out[:, diagonal, :, diagonal, :] = padded.reshape(parts, groups_per_part, n, m).transpose(1, 0, 2, 3)
    return out.reshape(parts, groups_per_part * n, groups_per_part * m)


def conv_layer(name: str, conv: nn.Conv2d, depthwise: str, crossbar_rows: int, out_positions: int) -> Layer:
    """One Conv2d as im2col parts; rows per group ordered (in-channel, kh, kw) like ``F.unfold``."""
    weight = conv.weight.detach().cpu().numpy().astype(np.float32)
    out_channels, in_per_group, kh, kw = weight.shape
    groups = conv.groups
    blocks = weight.reshape(groups, out_channels // groups, in_per_group * kh * kw).transpose(0, 2, 1)
    if groups == 1:
        kind, per_part = "conv", 1
    else:
        kind = "depthwise" if in_per_group == 1 else "grouped"
        per_part = groups if depthwise == "block-diagonal" else max(1, crossbar_rows // (in_per_group * kh * kw))
    per_part = min(per_part, groups)
    bias = None if conv.bias is None else conv.bias.detach().cpu().numpy().astype(np.float32)
    return Layer(
        name=name,
        kind=kind,
        weight=_block_diagonal(blocks, per_part),
        mask=_block_diagonal(np.ones(blocks.shape, bool), per_part),
        bias=bias,
        out_features=out_channels,
        groups=groups,
        groups_per_part=per_part,
        out_positions=out_positions,
    )


def linear_layer(name: str, linear: nn.Linear, out_positions: int = 1) -> Layer:
    """One Linear as a single (1, in_features, out_features) part."""
    weight = linear.weight.detach().cpu().numpy().astype(np.float32).T[None].copy()
    bias = None if linear.bias is None else linear.bias.detach().cpu().numpy().astype(np.float32)
    mask = np.ones(weight.shape, bool)
    return Layer(name, "linear", weight, mask, bias, linear.out_features, out_positions=out_positions)


def extract_layers(
    model: nn.Module,
    input_shape: tuple,
    depthwise: Literal["packed", "block-diagonal"] = "packed",
    crossbar_rows: int = 128,
) -> list[Layer]:
    """Every Conv2d and Linear that ``model`` calls on one ``input_shape`` (C, H, W) sample, in call order.

    Names are the modules' qualified names; ``out_positions`` is H'*W' for a conv and the product of
    the leading (non-feature) output dims for a Linear (1 for a flat input). Weights are taken as they
    are: fold BatchNorm first (:func:`fold_batchnorm`). ``depthwise`` and ``crossbar_rows`` (cells) set
    how grouped convs are split into parts. The model runs once in eval mode; its flags are restored.
    """
    if depthwise not in DEPTHWISE_CONVENTIONS:
        choices = ", ".join(DEPTHWISE_CONVENTIONS)
        raise ValueError(f"depthwise: unknown convention {depthwise!r}; choose one of {choices}")
    if not isinstance(crossbar_rows, int) or crossbar_rows < 1:
        raise ValueError(f"crossbar_rows must be a positive integer, got {crossbar_rows!r}")
    shapes = _output_shapes(model, tuple(input_shape))
    layers = []
    for name, shape in shapes.items():
        module = model.get_submodule(name)
        if isinstance(module, nn.Conv2d):
            layers.append(conv_layer(name, module, depthwise, crossbar_rows, int(np.prod(shape[2:]))))
        else:
            layers.append(linear_layer(name, module, int(np.prod(shape[1:-1]))))
    return layers
