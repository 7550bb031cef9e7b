"""Tests of the Fashion-MNIST model (training path on a tiny generated split, cache with its recipe) and of
``module``: any user nn.Module built from a factory string, loaded through the checked loader."""

import sys
import textwrap

import pytest
import torch
from pydantic import ValidationError
from test_datasets_files import fake_fashion_mnist
from torch import nn

from sme_plugin.errors import ConfigError, InputError, WeightsError
from sme_plugin.models import FashionMNISTModel, ModuleModel
from sme_plugin.networks import FashionNet, ImageTransform


def build(builder, **params):
    return builder(builder.Params(**params)).build()


# -------------------------------------------------------------------------------------------- fmnist_cnn
@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    fake_fashion_mnist(root, train=256, test=64)
    return str(root)


def test_fmnist_cnn_trains_caches_recipe_and_reuses(tmp_path, monkeypatch, fake_root):
    monkeypatch.setenv("SME_CACHE_DIR", str(tmp_path))
    bundle = build(FashionMNISTModel, data_root=fake_root, epochs=1, train_samples=200)
    assert (bundle.name, bundle.weights, bundle.input_shape, bundle.num_classes) == ("fmnist_cnn", "trained",
                                                                                    (1, 28, 28), 10)
    assert isinstance(bundle.module, FashionNet) and not bundle.module.training
    # the model's preprocess normalises [0, 1] pixels with the training statistics
    mean = torch.full((1, 1, 28, 28), FashionMNISTModel.MEAN)
    assert torch.allclose(bundle.preprocess(mean), torch.zeros(1, 1, 28, 28), atol=1e-6)

    (cached,) = tmp_path.iterdir()
    assert cached.name.startswith("fmnist_cnn-") and cached.suffix == ".pt"
    saved = torch.load(cached, weights_only=True)
    assert saved["recipe"]["epochs"] == 1 and saved["recipe"]["train_samples"] == 200
    assert saved["recipe"]["normalise"] == [FashionMNISTModel.MEAN, FashionMNISTModel.STD]
    assert 0 <= saved["results"]["test_accuracy"] <= 100 and saved["results"]["train_seconds"] >= 0

    def no_training(self, module):
        raise AssertionError("the cached weights should have been used")

    monkeypatch.setattr(FashionMNISTModel, "_train", no_training)
    again = build(FashionMNISTModel, data_root=fake_root, epochs=1, train_samples=200)
    for key, value in bundle.module.state_dict().items():
        assert torch.equal(again.module.state_dict()[key], value)


def test_fmnist_cnn_training_is_seeded(tmp_path, monkeypatch, fake_root):
    runs = []
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        monkeypatch.setenv("SME_CACHE_DIR", str(tmp_path / run))
        runs.append(build(FashionMNISTModel, data_root=fake_root, epochs=1, train_samples=64, seed=seed)
                    .module.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not torch.equal(runs[0]["conv1.weight"], runs[2]["conv1.weight"])


def test_fmnist_cnn_cache_key_follows_the_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("SME_CACHE_DIR", str(tmp_path))
    settings = ({}, {"epochs": 3}, {"seed": 1}, {"train_samples": 100}, {})
    paths = {FashionMNISTModel(FashionMNISTModel.Params(**p)).cache_path() for p in settings}
    assert len(paths) == 4 and all(p.parent == tmp_path for p in paths)


def test_fmnist_cnn_without_data_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SME_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(InputError, match="apt-get install -y dataset-fashion-mnist"):
        build(FashionMNISTModel, data_root=str(tmp_path / "absent"))


def test_fmnist_cnn_loads_a_checkpoint_without_data(tmp_path):
    path = tmp_path / "fm.pt"
    torch.save(FashionNet().state_dict(), path)
    bundle = build(FashionMNISTModel, weights=str(path), data_root=str(tmp_path / "absent"))
    assert bundle.weights == str(path)


# ------------------------------------------------------------------------------------------------- module
USER_MODULE = """
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self, classes=3, width=4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.fc = nn.Linear(width * 8 * 8, classes)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))

def build(classes=3, width=4):
    return Tiny(classes, width)

class Factories:
    nested = staticmethod(build)

def not_a_module():
    return 42

def broken():
    raise RuntimeError("no GPU here")

NUMBER = 7
"""


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "user_model.py"
    path.write_text(textwrap.dedent(USER_MODULE))
    return path


def module(**params):
    return build(ModuleModel, **{"input_shape": [1, 8, 8], "num_classes": 3, **params})


def test_module_from_a_file_with_checked_weights(tmp_path, user_file):
    bundle = module(factory=f"{user_file}:build", seed=3)
    assert (bundle.name, bundle.weights, bundle.input_shape, bundle.num_classes) == ("module", "random", (1, 8, 8), 3)
    assert not bundle.module.training
    checkpoint = tmp_path / "tiny.pt"
    state = {k: torch.randn_like(v) for k, v in bundle.module.state_dict().items()}
    torch.save({"state_dict": state}, checkpoint)
    loaded = module(factory=f"{user_file}:build", weights=str(checkpoint))
    assert loaded.weights == str(checkpoint) and torch.equal(loaded.module.conv.weight, state["conv.weight"])
    with pytest.raises(WeightsError, match=r"tiny\.pt.*conv\.weight has shape"):
        module(factory=f"{user_file}:build", kwargs={"width": 5}, weights=str(checkpoint))
    # the seed makes the factory's own initialisation reproducible
    again = module(factory=f"{user_file}:build", seed=3)
    assert torch.equal(again.module.conv.weight, bundle.module.conv.weight)


def test_module_from_an_importable_package_and_nested_attribute(tmp_path, monkeypatch, user_file):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(user_file.read_text())
    monkeypatch.chdir(tmp_path)  # the current directory is searched like a plugin's folder
    monkeypatch.delitem(sys.modules, "userpkg", raising=False)
    monkeypatch.delitem(sys.modules, "userpkg.nets", raising=False)
    bundle = module(factory="userpkg.nets:Factories.nested", kwargs={"classes": 5}, num_classes=5, mean=[0.5],
                    std=[0.25])
    assert bundle.num_classes == 5 and isinstance(bundle.module, nn.Module)
    assert isinstance(bundle.preprocess, ImageTransform)
    x = bundle.preprocess(torch.full((2, 3, 16, 16), 0.5))  # RGB 16x16 -> gray 8x8, normalised
    assert x.shape == (2, 1, 8, 8) and torch.allclose(x, torch.zeros_like(x), atol=1e-5)
    assert str(tmp_path) not in sys.path


@pytest.mark.parametrize("factory, message", [
    ("no_such_pkg_xyz.mod:build", r"cannot import 'no_such_pkg_xyz.mod' \(ModuleNotFoundError"),
    ("{file}:missing", r"has no attribute 'missing'"),
    ("{file}:NUMBER", r"is a int, not a callable"),
    ("{file}:not_a_module", r"returned a int, expected a torch.nn.Module"),
    ("{file}:broken", r"raised RuntimeError: no GPU here"),
    ("{dir}/absent.py:build", r"absent\.py.* does not exist"),
])
def test_module_factory_errors_are_one_line(tmp_path, user_file, factory, message):
    spec = factory.format(file=user_file, dir=tmp_path)
    with pytest.raises(ConfigError, match=r"model.factory: .*" + message) as caught:
        module(factory=spec)
    assert "\n" not in str(caught.value)


def test_module_import_error_inside_user_code(tmp_path):
    bad = tmp_path / "bad_model.py"
    bad.write_text("import torch\nraise ImportError('needs timm')\n")
    with pytest.raises(ConfigError, match=r"cannot import .*bad_model\.py.*ImportError: needs timm"):
        module(factory=f"{bad}:build")


@pytest.mark.parametrize("spec", ["pkg.mod", "pkg.mod:", ":build", "pkg mod:build", "pkg.mod:bu-ild", "a:b:c d"])
def test_module_bad_factory_strings_fail_validation(spec):
    with pytest.raises(ValidationError, match="package.module:callable"):
        ModuleModel.Params(factory=spec, input_shape=[1, 8, 8], num_classes=3)


def test_module_shape_errors(user_file):
    with pytest.raises(ConfigError, match=r"model.input_shape: \[3, 8, 8\].*fails on a \(1, 3, 8, 8\) input"):
        module(factory=f"{user_file}:build", input_shape=[3, 8, 8])
    with pytest.raises(ConfigError, match=r"model.num_classes: .*\(1, 3\), expected logits of shape \(1, 10\)"):
        module(factory=f"{user_file}:build", num_classes=10)
    with pytest.raises(ConfigError, match=r"model.mean/std: mean needs 1 or 1 values"):
        module(factory=f"{user_file}:build", mean=[0.1, 0.2])
    with pytest.raises(ValidationError):
        ModuleModel.Params(factory="a:b", input_shape=[1, 0, 8], num_classes=3)
    with pytest.raises(ValidationError):
        ModuleModel.Params(factory="a:b", input_shape=[1, 8], num_classes=3)
    with pytest.raises(ValidationError):
        ModuleModel.Params(factory="a:b", input_shape=[1, 8, 8], num_classes=3, std=[0.0])


# ---------------------------------------------------------------------------------------------- end to end
def run_cli(tmp_path, data):
    import json

    import yaml

    from sme_plugin.cli import main

    config, out = tmp_path / "config.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump(data))
    assert main(["run", str(config), "--output", str(out), "--no-progress"]) == 0
    return json.loads((out / "report.json").read_text())


def test_user_module_on_a_folder_tree_end_to_end(tmp_path, user_file):
    from test_datasets_files import make_tree

    make_tree(tmp_path / "images", ["a", "b", "c"], per_class=4, sizes=((12, 12), (10, 16)))
    report = run_cli(tmp_path, {
        "model": {"name": "module", "factory": f"{user_file}:build", "input_shape": [1, 8, 8], "num_classes": 3},
        "dataset": {"name": "folder", "root": str(tmp_path / "images"), "calibration": 4},
    })
    acc = report["accuracy"]
    assert report["model"]["name"] == "module" and report["model"]["weights"] == "random"
    assert acc["dataset"] == "folder" and acc["samples"] == 8 and acc["calibration_samples"] == 4
    assert acc["dataset_details"]["calibration_held_out"] == 4
    assert report["totals"]["crossbars"]["sme"] >= 1


@pytest.mark.skipif(not __import__("test_datasets_files").HAVE_FASHION_MNIST
                    and __import__("os").environ.get("SME_REQUIRE_FASHION_MNIST") != "1",
                    reason="Debian package dataset-fashion-mnist not installed (apt-get install -y dataset-fashion-mnist)")
def test_fmnist_cnn_on_fashion_mnist_end_to_end(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "fm.pt"
    torch.save(FashionNet().state_dict(), path)
    report = run_cli(tmp_path, {"model": {"name": "fmnist_cnn", "weights": str(path)},
                                "dataset": {"name": "fashion_mnist", "samples": 40, "calibration": 16}})
    acc = report["accuracy"]
    assert (acc["dataset"], acc["samples"], acc["calibration_samples"]) == ("fashion_mnist", 40, 16)
    assert acc["dataset_details"]["calibration_from"] == "train split"
