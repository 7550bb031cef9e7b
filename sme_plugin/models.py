"""Model builders: ResNet-50 and MobileNet-v2 (torchvision layouts, written out here) and a small
digits CNN that trains itself on first use.

ResNet-50 and MobileNet-v2 are 224x224 RGB, 1000-class ImageNet networks whose module names and
state_dict keys match torchvision's, so torchvision checkpoints load unchanged. Without a checkpoint
they are randomly initialised (seeded) and reported as ``weights="random"``: good for crossbar
counts, meaningless for accuracy. The torch networks live in :mod:`~sme_plugin.networks`, imported
when a model is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from .hookspecs import hookimpl
from .params import StrategyParams

if TYPE_CHECKING:
    from torch import nn

    from .types import ModelBundle

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- builders
class ModelParams(StrategyParams):
    """
    Parameters
    ----------
    weights : str or None
        Path of a checkpoint (state_dict, or a dict with ``state_dict``/``model``); None: built-in weights.
    seed : int
        Seed of the random initialisation.
    """

    weights: str | None = Field(None, min_length=1, max_length=4096)
    seed: int = Field(0, ge=0, le=2**32 - 1)


class _Builder:
    """Common ``build()``: seeded init, then a checkpoint or the built-in weights."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    network: str  # class name in sme_plugin.networks

    def __init__(self, params: ModelParams):
        self.params = params

    def _builtin_weights(self, module: nn.Module) -> str:
        """Fill ``module`` with the built-in weights; return their label."""
        return "random"

    def build(self) -> ModelBundle:
        """The model in eval mode, with its weights' origin (``random``, ``trained`` or the path)."""
        import torch

        from . import networks
        from .types import ModelBundle

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.params.seed)
            module = getattr(networks, self.network)(self.num_classes)
            networks._init_weights(module)
        if self.params.weights is None:
            label = self._builtin_weights(module)
        else:
            networks.load_checkpoint(module, self.params.weights)
            label = self.params.weights
        return ModelBundle(self.name, module.eval(), label, self.input_shape, self.num_classes)


class ResNet50Model(_Builder):
    """ResNet-50 (ImageNet, 224x224 RGB); random weights unless a checkpoint is given."""

    Params = ModelParams
    name, input_shape, num_classes, network = "resnet50", (3, 224, 224), 1000, "ResNet50"


class MobileNetV2Model(_Builder):
    """MobileNet-v2 1.0 (ImageNet, 224x224 RGB); random weights unless a checkpoint is given."""

    Params = ModelParams
    name, input_shape, num_classes, network = "mobilenet_v2", (3, 224, 224), 1000, "MobileNetV2"


def cache_dir() -> Path:
    """Directory of trained built-in weights: ``$SME_CACHE_DIR``, default ``~/.cache/sme``."""
    return Path(os.environ.get("SME_CACHE_DIR") or Path.home() / ".cache" / "sme").expanduser()


def _save_atomically(state: dict, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class DigitsModel(_Builder):
    """Small CNN on scikit-learn's 8x8 digits, trained on first use (Adam, seeded) and cached."""

    class Params(ModelParams):
        """
        Parameters
        ----------
        weights : str or None
            Path of a checkpoint; None: train once (seconds) and reuse the cached state_dict.
        epochs : int
            Training epochs over the 1,257 training images (batch 32).
        seed : int
            Seed of the initialisation and of the training batch order.
        """

        epochs: int = Field(20, ge=1, le=1000)

    name, input_shape, num_classes, network = "digits", (1, 8, 8), 10, "DigitsNet"
    LEARNING_RATE = 3e-3
    BATCH_SIZE = 32

    def cache_path(self) -> Path:
        """Cache file of the trained state_dict, keyed by architecture and training settings."""
        settings = {
            "architecture": repr(_network("DigitsNet")(self.num_classes)),
            "epochs": self.params.epochs,
            "seed": self.params.seed,
            "lr": self.LEARNING_RATE,
            "batch": self.BATCH_SIZE,
            "init": "torchvision-style",
        }
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        return cache_dir() / f"digits-{key}.pt"

    def _builtin_weights(self, module: nn.Module) -> str:
        path = self.cache_path()
        if path.is_file():
            _network("load_checkpoint")(module, path)
            log.info("digits model: loaded trained weights from %s", path)
            return "trained"
        self._train(module)
        try:
            _save_atomically(module.state_dict(), path)
            log.info("digits model: trained and cached at %s", path)
        except OSError as error:
            log.warning("digits model: trained, but could not cache it at %s: %s", path, error)
        return "trained"

    def _train(self, module: nn.Module) -> None:
        """Train in place on the digits train split (cross-entropy, Adam); seeded and deterministic."""
        import torch
        from torch.nn import functional as F

        from .datasets import digits_train

        x, y = digits_train()
        generator = torch.Generator().manual_seed(self.params.seed)
        optimizer = torch.optim.Adam(module.parameters(), lr=self.LEARNING_RATE)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=self.params.epochs * math.ceil(len(x) / self.BATCH_SIZE)
        )
        module.train()
        for _ in range(self.params.epochs):
            for batch in torch.randperm(len(x), generator=generator).split(self.BATCH_SIZE):
                optimizer.zero_grad()
                F.cross_entropy(module(x[batch]), y[batch]).backward()
                optimizer.step()
                schedule.step()
        module.eval()


def _network(name: str):
    from . import networks

    return getattr(networks, name)


#: names that moved to :mod:`~sme_plugin.networks` (torch), still importable from here.
_MOVED = ("Bottleneck", "ResNet50", "InvertedResidual", "MobileNetV2", "DigitsNet", "load_checkpoint", "_init_weights")


def __getattr__(name: str):
    if name in _MOVED:
        return _network(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def sme_register_models(register):
    register("resnet50", ResNet50Model)
    register("mobilenet_v2", MobileNetV2Model)
    register("digits", DigitsModel)
