"""Model builders: ResNet-50 and MobileNet-v2 (torchvision layouts, written out here), small digits and
Fashion-MNIST CNNs that train themselves on first use, and ``module``: any user ``nn.Module``.

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
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from .datasets import FASHION_MNIST_DIR
from .errors import ConfigError
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

    def preprocess(self):
        """The model's :data:`~sme_plugin.types.Preprocess` (None: [0, 1] pixels of ``input_shape`` as they are)."""

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
        return ModelBundle(self.name, module.eval(), label, self.input_shape, self.num_classes, self.preprocess())


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


class _TrainedBuilder(_Builder, ABC):
    """A built-in model that trains itself on first use (seeded, deterministic) and caches the result
    under :func:`cache_dir` as ``<name>-<key>.pt``: ``{"state_dict", "recipe", "results"}``, written
    atomically, the key a hash of the recipe (architecture and every training setting)."""

    @abstractmethod
    def recipe(self) -> dict:
        """Everything the trained weights depend on (JSON-serialisable)."""

    @abstractmethod
    def _train(self, module: nn.Module) -> dict:
        """Train ``module`` in place; return results worth keeping next to the weights."""

    def cache_path(self) -> Path:
        """Cache file of the trained state_dict, keyed by architecture and training settings."""
        key = hashlib.sha256(json.dumps(self.recipe(), sort_keys=True).encode()).hexdigest()[:16]
        return cache_dir() / f"{self.name}-{key}.pt"

    def _builtin_weights(self, module: nn.Module) -> str:
        path = self.cache_path()
        if path.is_file():
            _network("load_checkpoint")(module, path)
            log.info("%s model: loaded trained weights from %s", self.name, path)
            return "trained"
        log.info("%s model: training (first use; cached afterwards)", self.name)
        results = self._train(module) or {}
        try:
            _save_atomically({"state_dict": module.state_dict(), "recipe": self.recipe(), "results": results}, path)
            log.info("%s model: trained and cached at %s", self.name, path)
        except OSError as error:
            log.warning("%s model: trained, but could not cache it at %s: %s", self.name, path, error)
        return "trained"


class DigitsModel(_TrainedBuilder):
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

    def recipe(self) -> dict:
        return {
            "architecture": repr(_network("DigitsNet")(self.num_classes)),
            "epochs": self.params.epochs,
            "seed": self.params.seed,
            "lr": self.LEARNING_RATE,
            "batch": self.BATCH_SIZE,
            "init": "torchvision-style",
        }

    def _train(self, module: nn.Module) -> dict:
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
        return {}


class FashionMNISTModel(_TrainedBuilder):
    """Small CNN on Fashion-MNIST (Debian ``dataset-fashion-mnist``), trained on first use (AdamW with a
    one-cycle schedule, random horizontal flips, seeded) and cached with its recipe and test accuracy.
    Its preprocess normalises [0, 1] pixels with the training set's mean and std (and converts/resizes
    other images to 1x28x28)."""

    class Params(ModelParams):
        """
        Parameters
        ----------
        weights : str or None
            Path of a checkpoint; None: train once (minutes on one CPU thread) and reuse the cached weights.
        epochs : int
            Training epochs (batch 128).
        train_samples : int or None
            Train on the first ``train_samples`` training images only (None: all 60,000).
        data_root : str
            Folder of the Fashion-MNIST IDX files (default: the Debian package's).
        seed : int
            Seed of the initialisation, the batch order and the flips.
        """

        epochs: int = Field(8, ge=1, le=1000)
        train_samples: int | None = Field(None, ge=1, le=60_000)
        data_root: str = Field(FASHION_MNIST_DIR, min_length=1, max_length=4096)

    name, input_shape, num_classes, network = "fmnist_cnn", (1, 28, 28), 10, "FashionNet"
    #: pixel mean and std of the 60,000 training images (the model's input normalisation)
    MEAN, STD = 0.2860, 0.3530
    LEARNING_RATE = 3e-3
    WEIGHT_DECAY = 1e-4
    BATCH_SIZE = 128

    def preprocess(self):
        return _network("ImageTransform")(self.input_shape, mean=self.MEAN, std=self.STD)

    def recipe(self) -> dict:
        return {
            "architecture": repr(_network("FashionNet")(self.num_classes)),
            "data": "fashion-mnist train split (Debian dataset-fashion-mnist)",
            "train_samples": self.params.train_samples,
            "epochs": self.params.epochs,
            "seed": self.params.seed,
            "optimizer": "AdamW",
            "lr": self.LEARNING_RATE,
            "weight_decay": self.WEIGHT_DECAY,
            "schedule": "one-cycle",
            "batch": self.BATCH_SIZE,
            "augment": "horizontal flip p=0.5",
            "normalise": [self.MEAN, self.STD],
            "init": "torchvision-style",
        }

    def _train(self, module: nn.Module) -> dict:
        """Train in place on the training split; returns the time taken and the test accuracy."""
        import time

        import torch
        from torch.nn import functional as F

        from .datasets import fashion_mnist_arrays

        started = time.perf_counter()
        images, labels = fashion_mnist_arrays(self.params.data_root, "train", self.params.train_samples)
        images, labels = torch.from_numpy(images), torch.from_numpy(labels)
        preprocess = self.preprocess()
        generator = torch.Generator().manual_seed(self.params.seed)
        optimizer = torch.optim.AdamW(module.parameters(), lr=self.LEARNING_RATE, weight_decay=self.WEIGHT_DECAY)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.LEARNING_RATE, total_steps=self.params.epochs * math.ceil(len(images) / self.BATCH_SIZE)
        )
        module.train()
        for _ in range(self.params.epochs):
            for batch in torch.randperm(len(images), generator=generator).split(self.BATCH_SIZE):
                x = preprocess(images[batch, None].float().div_(255.0))
                flip = torch.rand(len(batch), generator=generator) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
                optimizer.zero_grad()
                F.cross_entropy(module(x), labels[batch]).backward()
                optimizer.step()
                schedule.step()
        module.eval()
        seconds = time.perf_counter() - started
        test_images, test_labels = fashion_mnist_arrays(self.params.data_root, "t10k")
        correct = 0
        with torch.no_grad():
            for x, y in zip(torch.from_numpy(test_images).split(1000), torch.from_numpy(test_labels).split(1000)):
                correct += int((module(preprocess(x[:, None].float() / 255.0)).argmax(1) == y).sum())
        accuracy = round(100.0 * correct / max(len(test_labels), 1), 3)
        log.info("fmnist_cnn model: trained in %.0f s, test accuracy %.2f %%", seconds, accuracy)
        return {"train_seconds": round(seconds, 1), "test_accuracy": accuracy, "threads": torch.get_num_threads()}


class ModuleModel:
    """Any user ``nn.Module``: ``factory`` ("package.module:callable" or "path/to/file.py:callable") is
    imported and called with ``kwargs``; the result is loaded from ``weights`` (the checked loader of
    :func:`~sme_plugin.networks.load_checkpoint`) and checked on one ``input_shape`` sample. Its
    preprocess resizes and converts dataset images to ``input_shape`` and normalises them with
    ``mean``/``std``."""

    class Params(StrategyParams):
        """
        Parameters
        ----------
        factory : str
            ``package.module:callable`` (importable, the current directory searched first) or
            ``path/to/file.py:callable``; dotted attribute paths allowed after the colon.
        kwargs : dict
            Keyword arguments of the factory call.
        weights : str or None
            Checkpoint (state_dict, or a dict with ``state_dict``/``model``); None: the factory's own
            (e.g. random) weights, reported as ``random``.
        input_shape : [C, H, W]
            Shape of one input sample.
        num_classes : int
            Number of outputs (logits) per sample.
        mean, std : list of float or None
            Per-channel normalisation of [0, 1] pixels, ``(x - mean) / std`` (one value: every channel).
        crop : float
            Central crop fraction after resizing (1: resize only; 0.875: resize 256 / crop 224).
        seed : int
            Torch seed while the factory builds the module (its random initialisation).
        """

        factory: str = Field(min_length=3, max_length=4096)
        kwargs: dict = Field(default_factory=dict)
        weights: str | None = Field(None, min_length=1, max_length=4096)
        input_shape: tuple[int, int, int]
        num_classes: int = Field(ge=1, le=1_000_000)
        mean: list[float] | None = Field(None, min_length=1, max_length=4)
        std: list[float] | None = Field(None, min_length=1, max_length=4)
        crop: float = Field(1.0, gt=0, le=1)
        seed: int = Field(0, ge=0, le=2**32 - 1)

        @field_validator("factory")
        @classmethod
        def _factory_form(cls, value: str) -> str:
            module, colon, attr = value.rpartition(":")
            if not colon or not module or not all(part.isidentifier() for part in attr.split(".")) or not (
                module.endswith(".py") or all(part.isidentifier() for part in module.split("."))
            ):
                raise ValueError(f"expected 'package.module:callable' or 'path/file.py:callable', got {value!r}")
            return value

        @field_validator("input_shape")
        @classmethod
        def _positive_shape(cls, value):
            if not all(1 <= v <= 100_000 for v in value):
                raise ValueError(f"expected [C, H, W] of positive sizes, got {list(value)}")
            return value

        @field_validator("std")
        @classmethod
        def _positive_std(cls, value):
            if value is not None and not all(v > 0 for v in value):
                raise ValueError(f"std must be positive, got {value}")
            return value

    name = "module"

    def __init__(self, params: Params):
        self.params = params

    def _factory(self):
        """The callable named by ``factory`` (ConfigError naming the problem)."""
        import importlib
        import importlib.util
        import sys

        spec = self.params.factory
        module_name, _, attr = spec.rpartition(":")
        try:
            if module_name.endswith(".py"):
                path = Path(module_name).expanduser()
                if not path.is_file():
                    raise ConfigError(f"model.factory: {spec!r}: file {str(path)!r} does not exist")
                loader_spec = importlib.util.spec_from_file_location(f"_sme_user_model_{path.stem}", path)
                module = importlib.util.module_from_spec(loader_spec)
                loader_spec.loader.exec_module(module)
            else:
                cwd = os.getcwd()
                added = cwd not in sys.path
                if added:
                    sys.path.insert(0, cwd)
                try:
                    module = importlib.import_module(module_name)
                finally:
                    if added:
                        sys.path.remove(cwd)
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001 (user code: any exception while importing it)
            raise ConfigError(f"model.factory: {spec!r}: cannot import {module_name!r} "
                              f"({type(error).__name__}: {error})") from None
        target = module
        for part in attr.split("."):
            if not hasattr(target, part):
                raise ConfigError(f"model.factory: {spec!r}: {module_name!r} has no attribute {attr!r}")
            target = getattr(target, part)
        if not callable(target):
            raise ConfigError(f"model.factory: {spec!r} is a {type(target).__name__}, not a callable")
        return target

    def build(self) -> ModelBundle:
        import torch

        from . import networks
        from .types import ModelBundle

        p = self.params
        factory = self._factory()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(p.seed)
            try:
                module = factory(**p.kwargs)
            except Exception as error:  # noqa: BLE001 (user code)
                raise ConfigError(f"model.factory: {p.factory}(**{p.kwargs!r}) raised "
                                  f"{type(error).__name__}: {error}") from None
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"model.factory: {p.factory} returned a {type(module).__name__}, "
                              "expected a torch.nn.Module")
        module = module.float().cpu().eval()
        if p.weights is None:
            label = "random"
            log.warning("model module: no weights given; %s's own (untrained) weights are used", p.factory)
        else:
            networks.load_checkpoint(module, p.weights)
            label = p.weights
        try:
            preprocess = networks.ImageTransform(p.input_shape, p.mean, p.std, p.crop)
        except ValueError as error:
            raise ConfigError(f"model.mean/std: {error} (input_shape {list(p.input_shape)})") from None
        try:
            with torch.no_grad():
                out = module(torch.zeros(1, *p.input_shape))
        except Exception as error:  # noqa: BLE001 (user code)
            raise ConfigError(f"model.input_shape: {list(p.input_shape)}: the module fails on a "
                              f"{(1, *p.input_shape)} input ({type(error).__name__}: {error})") from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, p.num_classes):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"model.num_classes: the module maps a {(1, *p.input_shape)} input to {got}, "
                              f"expected logits of shape (1, {p.num_classes})")
        return ModelBundle(self.name, module, label, tuple(p.input_shape), p.num_classes, preprocess)


def _network(name: str):
    from . import networks

    return getattr(networks, name)


#: names that moved to :mod:`~sme_plugin.networks` (torch), still importable from here.
_MOVED = ("Bottleneck", "ResNet50", "InvertedResidual", "MobileNetV2", "DigitsNet", "FashionNet", "ImageTransform",
          "load_checkpoint", "_init_weights")


def __getattr__(name: str):
    if name in _MOVED:
        return _network(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def sme_register_models(register):
    register("resnet50", ResNet50Model)
    register("mobilenet_v2", MobileNetV2Model)
    register("digits", DigitsModel)
    register("fmnist_cnn", FashionMNISTModel)
    register("module", ModuleModel)
