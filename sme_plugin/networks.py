"""The torch networks of the built-in models (torchvision layouts, written out here), checkpoint loading
and random initialisation. Imported by :mod:`~sme_plugin.models` only when a model is built, so that
listing or validating configs does not import torch."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .errors import WeightsError

#: the largest weight magnitude a checkpoint may hold (folded BatchNorm scales included).
MAX_WEIGHT = 1e6


# ---------------------------------------------------------------------------------------------- ResNet-50
class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), torchvision names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNet50(nn.Module):
    """ResNet-50 for 224x224 RGB input (25,557,032 parameters with 1000 classes)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for index, (planes, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]):
            layer = []
            for block in range(blocks):
                layer.append(Bottleneck(inplanes, planes, stride if block == 0 else 1))
                inplanes = planes * Bottleneck.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ------------------------------------------------------------------------------------------- MobileNet-v2
def _conv_bn_relu6(inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: keys ``0`` (conv), ``1`` (BatchNorm), ``2`` (ReLU6)."""
    conv = nn.Conv2d(inp, out, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNet-v2 block: 1x1 expand (if ``expand_ratio`` > 1), 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, inp: int, out: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == out
        layers = [_conv_bn_relu6(inp, hidden, kernel=1)] if expand_ratio != 1 else []
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.use_res_connect else y


class MobileNetV2(nn.Module):
    """MobileNet-v2 1.0 for 224x224 RGB input (3,504,872 parameters with 1000 classes)."""

    #: (expand ratio t, output channels c, repeats n, first stride s), as in the paper and torchvision.
    SETTINGS = (
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers = [_conv_bn_relu6(3, 32, stride=2)]
        inp = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(_conv_bn_relu6(inp, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# ------------------------------------------------------------------------------------------------- digits
class DigitsNet(nn.Module):
    """Small CNN for 1x8x8 digits: three 3x3 conv+BN+ReLU (16, 32, 32 channels; 2x2 max-pool after the
    second), then a linear classifier over the 32x4x4 features."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(x, 1))


# ------------------------------------------------------------------------------------------ Fashion-MNIST
class FashionNet(nn.Module):
    """Small CNN for 1x28x28 Fashion-MNIST: a 5x5 stride-2 conv (32 channels, 14x14) and a 3x3 stride-2
    conv (64 channels, 7x7), each with BatchNorm and ReLU, then a linear classifier over the 64x7x7
    features (no pooling layers: cheap to train on a CPU)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64 * 7 * 7, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


# ------------------------------------------------------------------------------------------- preprocessing
class ImageTransform:
    """A model's ``preprocess`` (:data:`sme_plugin.types.Preprocess`): batches of [0, 1] pixels of any size,
    grayscale or RGB -> inputs of ``input_shape`` (C, H, W).

    Channels are converted (RGB -> gray by ITU-R 601 luma, gray -> RGB by repetition); images are resized
    (bilinear, antialiased) so that they cover (H / crop, W / crop) with their aspect ratio kept, then
    cropped centrally to (H, W) (``crop=0.875``: torchvision's resize 256 / crop 224); finally each channel
    is normalised ``(x - mean) / std``. Steps not needed are skipped: inputs that already fit pass as
    they are (apart from the normalisation).
    """

    LUMA = (0.299, 0.587, 0.114)

    def __init__(self, input_shape, mean=None, std=None, crop: float = 1.0):
        self.input_shape = tuple(int(v) for v in input_shape)
        channels = self.input_shape[0]
        self.mean = None if mean is None else torch.tensor(_per_channel(mean, channels, "mean"), dtype=torch.float32)
        self.std = None if std is None else torch.tensor(_per_channel(std, channels, "std"), dtype=torch.float32)
        if self.std is not None and not bool((self.std > 0).all()):
            raise ValueError("std must be positive")
        if not 0 < crop <= 1:
            raise ValueError("crop must lie in (0, 1]")
        self.crop = float(crop)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        channels, height, width = self.input_shape
        x = x.to(torch.float32)
        if x.shape[1] != channels:
            if x.shape[1] == 3 and channels == 1:
                x = torch.tensordot(x, torch.tensor(self.LUMA), dims=([1], [0])).unsqueeze(1)
            elif x.shape[1] == 1:
                x = x.expand(-1, channels, -1, -1)
            else:
                raise ValueError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
        if tuple(x.shape[2:]) != (height, width):
            h, w = x.shape[2:]
            scale = max(height / (self.crop * h), width / (self.crop * w))
            size = (max(height, round(h * scale)), max(width, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            top, left = (size[0] - height) // 2, (size[1] - width) // 2
            x = x[:, :, top : top + height, left : left + width]
        if self.mean is not None:
            x = x - self.mean.view(1, -1, 1, 1)
        if self.std is not None:
            x = x / self.std.view(1, -1, 1, 1)
        return x.contiguous()

    def describe(self) -> dict:
        """The transform's settings (JSON-serialisable)."""
        return {"input_shape": list(self.input_shape), "crop": self.crop,
                "mean": None if self.mean is None else self.mean.tolist(),
                "std": None if self.std is None else self.std.tolist()}

    def __repr__(self) -> str:
        return f"ImageTransform({', '.join(f'{k}={v}' for k, v in self.describe().items())})"


def _per_channel(values, channels: int, name: str) -> list[float]:
    values = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"{name} needs 1 or {channels} values, got {len(values)}")
    return values


# --------------------------------------------------------------------------------------------- checkpoints
def _few(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:5]) + (f" (and {len(keys) - 5} more)" if len(keys) > 5 else "")


def load_checkpoint(module: nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint file into ``module`` after checking it fully.

    Accepts a raw state_dict or a dict holding one under ``"state_dict"`` or ``"model"``; a
    ``"module."`` prefix (DataParallel) is stripped. Raises :class:`WeightsError` naming the file and
    the problem: missing or unreadable file, missing/unexpected keys, shape mismatches, NaN/Inf values.
    BatchNorm ``num_batches_tracked`` counters may be absent.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or pickled-object files
        raise WeightsError(
            f"weights file {str(path)!r} is not a readable torch checkpoint ({type(error).__name__}); "
            "expected a state_dict of tensors saved with torch.save (loaded with weights_only=True)"
        ) from None
    if isinstance(state, dict):
        state = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), dict)), state)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {str(path)!r} does not hold a state_dict of tensors")
    odd = [k for k, v in state.items() if v.layout != torch.strided or v.is_complex() or v.is_quantized]
    if odd:
        raise WeightsError(f"weights file {str(path)!r}: {_few(map(str, odd))} are sparse, complex or quantized "
                           "tensors; expected dense real tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}

    expected = module.state_dict()
    missing = {k for k in expected.keys() - state.keys() if not k.endswith("num_batches_tracked")}
    unexpected = state.keys() - expected.keys()
    if missing or unexpected:
        problems = ([f"missing keys {_few(missing)}"] if missing else []) + (
            [f"unexpected keys {_few(unexpected)}"] if unexpected else []
        )
        raise WeightsError(f"weights file {str(path)!r} does not match the model: {'; '.join(problems)}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise WeightsError(
                f"weights file {str(path)!r}: {key} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(expected[key].shape)}"
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise WeightsError(f"weights file {str(path)!r}: {key} contains NaN or Inf")
        if value.is_floating_point() and value.numel() and float(value.abs().max()) > MAX_WEIGHT:
            raise WeightsError(f"weights file {str(path)!r}: {key} holds values up to {float(value.abs().max()):.3g}, "
                               f"implausible for a trained network (limit {MAX_WEIGHT:g})")
    weights = [k for k in state if k.endswith("weight") and isinstance(_owner(module, k), (nn.Conv2d, nn.Linear))]
    if weights and all(not state[k].any() for k in weights):
        raise WeightsError(f"weights file {str(path)!r}: every Conv2d/Linear weight is zero")
    module.load_state_dict({**expected, **state})


def _owner(module: nn.Module, key: str):
    try:
        return module.get_submodule(key.rpartition(".")[0])
    except AttributeError:
        return None


def _init_weights(module: nn.Module) -> None:
    """torchvision-style random init: Kaiming (fan-out) convs, unit BatchNorm, N(0, 0.01) linear layers."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
        if getattr(m, "bias", None) is not None and not isinstance(m, nn.BatchNorm2d):
            nn.init.zeros_(m.bias)


