"""Tests of sme_plugin.models: architectures, checkpoint loading, digits training and its cache."""

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from sme_plugin import models
from sme_plugin.datasets import DigitsDataset
from sme_plugin.errors import WeightsError
from sme_plugin.models import DigitsModel, DigitsNet, FashionMNISTModel, MobileNetV2Model, ModuleModel, ResNet50Model
from sme_plugin.pipeline import accuracy


def build(factory, **params):
    return factory(factory.Params(**params)).build()


def weight_count(module):
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.fixture(scope="module")
def resnet50():
    return build(ResNet50Model)


@pytest.fixture(scope="module")
def mobilenet_v2():
    return build(MobileNetV2Model)


def test_registered_names():
    found = {}
    models.sme_register_models(register=found.__setitem__)
    assert found == {"resnet50": ResNet50Model, "mobilenet_v2": MobileNetV2Model, "digits": DigitsModel,
                     "fmnist_cnn": FashionMNISTModel, "module": ModuleModel}


def test_resnet50_matches_torchvision(resnet50):
    module = resnet50.module
    assert sum(p.numel() for p in module.parameters()) == 25_557_032
    assert weight_count(module) == 25_502_912
    keys = module.state_dict().keys()
    assert len(keys) == 320
    for key in ("conv1.weight", "layer1.0.downsample.0.weight", "layer4.2.bn3.running_var", "fc.weight", "fc.bias"):
        assert key in keys
    assert (resnet50.name, resnet50.weights, resnet50.input_shape, resnet50.num_classes) == (
        "resnet50", "random", (3, 224, 224), 1000
    )
    assert not module.training


def test_mobilenet_v2_matches_torchvision(mobilenet_v2):
    module = mobilenet_v2.module
    assert sum(p.numel() for p in module.parameters()) == 3_504_872
    keys = module.state_dict().keys()
    assert len(keys) == 314
    for key in (
        "features.0.0.weight",
        "features.1.conv.0.0.weight",
        "features.2.conv.1.0.weight",
        "features.17.conv.3.running_mean",
        "features.18.0.weight",
        "classifier.1.weight",
    ):
        assert key in keys
    depthwise = module.get_submodule("features.2.conv.1.0")
    assert depthwise.groups == depthwise.in_channels == 96
    assert module(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
    assert mobilenet_v2.weights == "random" and not module.training


def test_random_init_is_seeded(mobilenet_v2):
    again, other = build(MobileNetV2Model), build(MobileNetV2Model, seed=1)
    w = "features.5.conv.0.0.weight"
    assert torch.equal(again.module.state_dict()[w], mobilenet_v2.module.state_dict()[w])
    assert not torch.equal(other.module.state_dict()[w], mobilenet_v2.module.state_dict()[w])


# ------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture
def state():
    torch.manual_seed(3)
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in DigitsNet().state_dict().items()}


def save(tmp_path, obj, name="ckpt.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "module-prefix", "no-bn-counters"])
def test_checkpoint_formats_load(tmp_path, state, wrap):
    obj = {
        "raw": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state},
        "module-prefix": {f"module.{k}": v for k, v in state.items()},
        "no-bn-counters": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
    }[wrap]
    path = save(tmp_path, obj)
    bundle = build(DigitsModel, weights=path)
    assert bundle.weights == path and bundle.input_shape == (1, 8, 8) and bundle.num_classes == 10
    for key in ("conv1.weight", "bn3.running_var", "fc.bias"):
        assert torch.equal(bundle.module.state_dict()[key], state[key])


def test_checkpoint_errors_name_file_and_problem(tmp_path, state):
    missing = save(tmp_path, {k: v for k, v in state.items() if k != "conv2.weight"}, "missing.pt")
    with pytest.raises(WeightsError, match=r"missing\.pt.*missing keys conv2\.weight"):
        build(DigitsModel, weights=missing)

    extra = save(tmp_path, {**state, "head.weight": torch.zeros(2)}, "extra.pt")
    with pytest.raises(WeightsError, match=r"extra\.pt.*unexpected keys head\.weight"):
        build(DigitsModel, weights=extra)

    shape = save(tmp_path, {**state, "fc.weight": torch.zeros(10, 100)}, "shape.pt")
    with pytest.raises(WeightsError, match=r"shape\.pt.*fc\.weight has shape \(10, 100\).*\(10, 512\)"):
        build(DigitsModel, weights=shape)

    bad = dict(state)
    bad["bn2.running_var"] = bad["bn2.running_var"].clone()
    bad["bn2.running_var"][4] = math.nan
    nan = save(tmp_path, bad, "nan.pt")
    with pytest.raises(WeightsError, match=r"nan\.pt.*bn2\.running_var contains NaN or Inf"):
        build(DigitsModel, weights=nan)

    with pytest.raises(WeightsError, match=r"absent\.pt.*does not exist"):
        build(DigitsModel, weights=str(tmp_path / "absent.pt"))

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"garbage\.pt.*not a readable"):
        build(DigitsModel, weights=str(garbage))

    listing = save(tmp_path, [1, 2, 3], "list.pt")
    with pytest.raises(WeightsError, match=r"list\.pt.*state_dict"):
        build(DigitsModel, weights=listing)


def test_checkpoints_with_unusable_tensors_are_refused(tmp_path, state):
    sparse = save(tmp_path, {**state, "fc.weight": state["fc.weight"].to_sparse()}, "sparse.pt")
    with pytest.raises(WeightsError, match=r"sparse\.pt.*fc\.weight are sparse, complex or quantized"):
        build(DigitsModel, weights=sparse)
    complex_ = save(tmp_path, {**state, "fc.weight": state["fc.weight"].to(torch.complex64)}, "complex.pt")
    with pytest.raises(WeightsError, match=r"complex\.pt.*fc\.weight are sparse, complex or quantized"):
        build(DigitsModel, weights=complex_)
    huge = save(tmp_path, {**state, "bn1.running_var": torch.full_like(state["bn1.running_var"], 1e30)}, "huge.pt")
    with pytest.raises(WeightsError, match=r"huge\.pt.*bn1\.running_var holds values up to 1e\+30"):
        build(DigitsModel, weights=huge)
    zeros = {k: torch.zeros_like(v) if k.endswith("weight") else v for k, v in state.items()}
    with pytest.raises(WeightsError, match=r"zeros\.pt.*every Conv2d/Linear weight is zero"):
        build(DigitsModel, weights=save(tmp_path, zeros, "zeros.pt"))


def test_resnet_checkpoint_mismatch_lists_a_few_keys(tmp_path, mobilenet_v2):
    path = save(tmp_path, mobilenet_v2.module.state_dict(), "mnv2.pt")
    with pytest.raises(WeightsError, match=r"mnv2\.pt.*missing keys .*and \d+ more.*unexpected keys"):
        build(ResNet50Model, weights=path)


def test_params_are_validated():
    with pytest.raises(ValidationError):
        DigitsModel.Params(epochs=0)
    with pytest.raises(ValidationError):
        ResNet50Model.Params(pretrained=True)


# --------------------------------------------------------------------------------------- digits training
def test_digits_trains_caches_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("SME_CACHE_DIR", str(tmp_path))
    bundle = build(DigitsModel)
    assert bundle.weights == "trained" and not bundle.module.training
    data = DigitsDataset(DigitsDataset.Params()).load()
    assert accuracy(bundle.module, data.test) >= 95

    cached = sorted(p.name for p in tmp_path.iterdir())
    assert len(cached) == 1 and cached[0].startswith("digits-") and cached[0].endswith(".pt")

    def no_training(self, module):
        raise AssertionError("the cached weights should have been used")

    monkeypatch.setattr(DigitsModel, "_train", no_training)
    again = build(DigitsModel)
    for key, value in bundle.module.state_dict().items():
        assert torch.equal(again.module.state_dict()[key], value)


def test_digits_training_is_deterministic(tmp_path, monkeypatch):
    runs = []
    for run in ("a", "b"):
        monkeypatch.setenv("SME_CACHE_DIR", str(tmp_path / run))
        runs.append(build(DigitsModel, epochs=1).module.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_cache_key_follows_training_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("SME_CACHE_DIR", str(tmp_path))
    paths = {DigitsModel(DigitsModel.Params(**p)).cache_path() for p in ({}, {"epochs": 3}, {"seed": 1}, {})}
    assert len(paths) == 3 and all(p.parent == tmp_path for p in paths)


def test_unwritable_cache_still_returns_trained_model(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    monkeypatch.setenv("SME_CACHE_DIR", str(blocker / "cache"))
    assert build(DigitsModel, epochs=1).weights == "trained"
