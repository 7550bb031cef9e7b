"""Second moments of the layers' inputs on calibration data, for data-aware orchestration.

``input_gram`` gives, per layer and part, ``H = sum over calibration positions of x x^T`` of the im2col
input rows ``x`` the layer's (P, N, M) weight parts multiply, so that the output error of a weight change
``D`` of part p is ``||X_p D||^2 = tr(D^T H_p D)``. The rows follow :mod:`sme_plugin.layers` exactly:
per part, the groups ``[p*groups_per_part, (p+1)*groups_per_part)`` in order, each (in-channel, kh, kw)
like ``F.unfold``; groups past the last one (the padding of the last part) have zero inputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .simulator import layer_modules, run_batches


def _rows(module: nn.Module, x: torch.Tensor, parts: int, per_part: int) -> torch.Tensor:
    """(R, P, N) float64 im2col input rows of ``module`` for its input ``x``, in the weight parts' order."""
    x = x.detach().to(torch.float64)
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise ValueError(f"input_gram: only numeric zero padding is supported, got padding={module.padding!r}, "
                             f"padding_mode={module.padding_mode!r}")
        cols = F.unfold(x, kernel_size=module.kernel_size, dilation=module.dilation, padding=module.padding,
                        stride=module.stride)  # (B, Cin*kh*kw, L)
        groups = module.groups
        group_rows = module.in_channels // groups * math.prod(module.kernel_size)
        rows = cols.transpose(1, 2).reshape(-1, groups, group_rows)
    elif isinstance(module, nn.Linear):
        groups = 1
        rows = x.reshape(-1, 1, module.in_features)
    else:
        raise TypeError(f"input_gram: expected a Conv2d or Linear, got {type(module).__name__}")
    rows = F.pad(rows, (0, 0, 0, parts * per_part - groups))
    return rows.reshape(len(rows), parts, -1)


def input_gram(model: nn.Module, layers, inputs, batch_size: int = 256) -> dict[str, np.ndarray]:
    """name -> (P, N, N) float64 ``sum x x^T`` of each layer's im2col inputs over ``inputs``.

    layers: :class:`~sme_plugin.types.Layer` (or :class:`~sme_plugin.types.QuantizedLayer`) objects whose
    names are Conv2d/Linear modules of ``model`` (e.g. the BatchNorm-folded float model they were
    extracted from); their ``parts`` and ``groups_per_part`` set the row layout. inputs: a tensor or an
    iterable of input batches (:func:`sme_plugin.simulator.input_batches`), streamed once; the model runs
    as given (e.g. eval mode), without gradients. A module called several times accumulates every call.
    """
    layers = [getattr(layer, "layer", layer) for layer in layers]
    modules = layer_modules(model, [layer.name for layer in layers])
    grams = {layer.name: torch.zeros((layer.parts, layer.rows, layer.rows), dtype=torch.float64) for layer in layers}
    shape = {layer.name: (layer.parts, layer.groups_per_part, layer.rows) for layer in layers}

    def hook(name):
        def record(module, args):
            parts, per_part, n = shape[name]
            rows = _rows(module, args[0], parts, per_part)
            if rows.shape[2] != n:
                raise ValueError(f"input_gram: layer {name!r} has {n} rows per part but its module gives "
                                 f"{rows.shape[2]} inputs per part")
            grams[name] += torch.einsum("rpn,rpk->pnk", rows, rows)

        return record

    run_batches(model, inputs, batch_size, pre_hooks={module: hook(name) for name, module in modules.items()})
    return {name: gram.numpy() for name, gram in grams.items()}
