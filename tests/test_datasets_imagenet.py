"""Tests of the packaged-photo datasets: ``imagenet_samples`` (the 20 labelled ImageNet photos of PyPI
``foolbox`` 3.3.4) and ``photos`` (every natural photo the offline packages ship, unlabelled: accuracy
becomes top-1 agreement with the float model).

Tests marked ``needs_foolbox`` read the installed foolbox package (tox installs it with
``pip install --no-deps foolbox==3.3.4``); they skip without it. The others use generated files."""

import json

import pytest
import torch
from pydantic import ValidationError

from sme_plugin import datasets
from sme_plugin.datasets import (
    FOOLBOX_INSTALL,
    IMAGENET_CLASSES_FILE,
    ImageNetSamplesDataset,
    PhotosDataset,
    imagenet_class_names,
    imagenet_photo_files,
    package_dir,
    photo_files,
)
from sme_plugin.errors import ConfigError, InputError
from sme_plugin.networks import ImageTransform
from sme_plugin.pipeline import accuracy, agreement_batches
from sme_plugin.types import Batches

HAVE_FOOLBOX = package_dir("foolbox") is not None and bool(list((package_dir("foolbox") / "data").glob("imagenet_*")))
needs_foolbox = pytest.mark.skipif(not HAVE_FOOLBOX,
                                   reason=f"PyPI package foolbox not installed ({FOOLBOX_INSTALL})")
#: ImageNet-model-like preprocess: any size -> (3, 32, 32) (small, fast)
RESIZE = ImageTransform((3, 32, 32), mean=(0.5,), std=(0.5,), crop=0.875)


def imagenet(**params):
    return ImageNetSamplesDataset(ImageNetSamplesDataset.Params(**params)).load()


def photos(**params):
    return PhotosDataset(PhotosDataset.Params(**params)).load()


def gather(dataset):
    dataset = dataset.with_preprocess(RESIZE)
    x, y = (torch.cat(parts) for parts in zip(*dataset.test.batched(7)))
    return x, y, torch.cat(list(dataset.calibration.batched(3)))


def fake_imagenet(root, labels=(3, 999, 0, 17, 3, 512), sizes=((20, 24), (30, 30))):
    """``imagenet_NN_<label>.jpg`` files of solid colours (file k: value 10*k), in shuffled creation order."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for k in reversed(range(len(labels))):
        h, w = sizes[k % len(sizes)]
        Image.new("RGB", (w, h), (10 * k,) * 3).save(root / f"imagenet_{k:02d}_{labels[k]}.png")
    (root / "imagenet_readme.txt").write_text("not an image")
    (root / "cifar10_00_3.png").write_bytes(b"")
    return root


def test_registered():
    found = {}
    datasets.sme_register_datasets(register=found.__setitem__)
    assert found["imagenet_samples"] is ImageNetSamplesDataset and found["photos"] is PhotosDataset


# ------------------------------------------------------------------------------------------ imagenet_samples
@needs_foolbox
def test_foolbox_imagenet_photos_labels_and_hold_out():
    files, labels = imagenet_photo_files()
    assert len(files) == 20 and [int(f.name.split("_")[1]) for f in files] == list(range(20))
    assert labels.tolist() == [int(f.stem.split("_")[2]) for f in files] and labels[0] == 243
    data = imagenet()
    assert data.name == "imagenet_samples" and data.labelled
    assert data.test.samples == 16 and data.calibration.samples == 4
    assert data.details["calibration_held_out"] == 4 and data.details["images"] == 20
    x, y, calibration = gather(data)
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and calibration.shape == (4, 3, 32, 32)
    assert set(y.tolist()) <= set(labels.tolist()) and y.dtype == torch.int64
    # held-out photos are not in the test set (the 20 photos are all different)
    assert not any(torch.equal(c, t) for c in calibration for t in x)
    if data.classes is not None:
        assert len(data.classes) == 1000 and data.classes[0].startswith("tench")
        assert data.details["class_names"] == IMAGENET_CLASSES_FILE
    else:
        assert "opencv-doc" in data.details["class_names"]
    json.dumps(data.details)


@needs_foolbox
def test_foolbox_hold_out_is_seeded_and_capped():
    a, b, c = gather(imagenet(seed=1)), gather(imagenet(seed=1)), gather(imagenet(seed=2))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[2], c[2])
    capped = imagenet(samples=5, calibration=2)
    assert capped.test.samples == 5 and capped.calibration.samples == 2 and capped.details["calibration_held_out"] == 2


def test_imagenet_samples_from_a_folder(tmp_path):
    root = fake_imagenet(tmp_path / "photos")
    files, labels = imagenet_photo_files(root)
    assert [f.name for f in files][:2] == ["imagenet_00_3.png", "imagenet_01_999.png"]
    assert labels.tolist() == [3, 999, 0, 17, 3, 512]
    data = imagenet(root=str(root), calibration=2, class_names=None)
    x, y, calibration = gather(data)
    assert len(x) == 4 and len(calibration) == 2 and data.details["calibration_held_out"] == 2
    # every test photo keeps its file's label (solid colour 10*k identifies file k)
    values = (x[:, 0, 0, 0] * 0.5 + 0.5) * 255
    k = torch.round(values / 10).long()
    assert y.tolist() == [labels[i] for i in k.tolist()]
    # the held-out photos, with their labels, are the train photos (there is no other labelled photo)
    x_train, y_train = (torch.cat(parts) for parts in zip(*data.with_preprocess(RESIZE).train))
    k_train = torch.round((x_train[:, 0, 0, 0] * 0.5 + 0.5) * 255 / 10).long()
    assert torch.equal(x_train, calibration) and y_train.tolist() == [labels[i] for i in k_train.tolist()]
    assert not set(k_train.tolist()) & set(k.tolist()) and "held-out calibration photos" in data.details["train_from"]


def test_imagenet_class_names(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class {i}, other name\n" for i in range(1000)))
    assert imagenet_class_names(names)[:2] == ("class 0, other name", "class 1, other name")
    data = imagenet(root=str(fake_imagenet(tmp_path / "photos")), class_names=str(names), calibration=1)
    assert data.classes[999] == "class 999, other name" and data.details["class_names"] == str(names)
    names.write_text("a\nb\n")
    with pytest.raises(InputError, match="holds 2 class names, not ImageNet's 1000"):
        imagenet_class_names(names)
    with pytest.raises(InputError, match="cannot be read"):
        imagenet_class_names(tmp_path / "missing.txt")


def test_missing_foolbox_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "package_dir", lambda name: None)
    with pytest.raises(InputError, match=r"install it with: pip install --no-deps foolbox==3\.3\.4") as info:
        imagenet()
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match=r"'foolbox' is not installed; install it with: pip install --no-deps foolbox"):
        photos()
    with pytest.raises(InputError, match="no ImageNet photos .* fix dataset.root"):
        imagenet(root=str(tmp_path))


def test_hold_out_must_leave_a_test_photo(tmp_path):
    root = fake_imagenet(tmp_path / "photos", labels=(1, 2, 3))
    with pytest.raises(ConfigError, match="3 images to hold out for calibration, but 3 ImageNet photos has only 3"):
        imagenet(root=str(root), calibration=3)
    with pytest.raises(ValidationError):
        ImageNetSamplesDataset.Params(calibration=0)


# -------------------------------------------------------------------------------------------------- photos
@needs_foolbox
def test_photos_gathers_every_installed_source_unlabelled():
    data = photos()
    counts = data.details["sources"]
    assert counts["foolbox"] == 20 and counts["sklearn"] == 2 and not data.labelled
    assert data.details["images"] == sum(counts.values())
    assert data.test.samples == data.details["images"] - 4 and data.details["calibration_held_out"] == 4
    if "skimage" not in counts:
        assert data.details["sources_missing"] == ["skimage (not installed: pip install scikit-image)"]
    x, y, calibration = gather(data)
    assert x.shape == (data.test.samples, 3, 32, 32) and calibration.shape == (4, 3, 32, 32)
    assert (y == -1).all()
    json.dumps(data.details)
    cifar = photos(sources=["foolbox_cifar"], calibration=8)
    assert cifar.details["sources"] == {"foolbox_cifar": 40} and cifar.test.samples == 32


def test_photos_sources_and_missing_ones(tmp_path, monkeypatch):
    sklearn_only = photos(sources=["sklearn"], calibration=1)
    assert sklearn_only.details["sources"] == {"sklearn": 2} and sklearn_only.test.samples == 1
    assert sklearn_only.train is None  # unlabelled: nothing to train on
    assert {f.name for f in photo_files("sklearn")} == {"china.jpg", "flower.jpg"}
    # scikit-image: its shipped colour photos only, found without importing it
    fake = tmp_path / "skimage"
    (fake / "data").mkdir(parents=True)
    from PIL import Image

    for name in ("astronaut.png", "coffee.png", "camera.png"):
        Image.new("RGB", (16, 12)).save(fake / "data" / name)
    real = datasets.package_dir
    monkeypatch.setattr(datasets, "package_dir", lambda name: fake if name == "skimage" else real(name))
    assert [f.name for f in photo_files("skimage")] == ["astronaut.png", "coffee.png"]
    both = photos(sources=["sklearn", "skimage", "sklearn"], calibration=1)
    assert both.details["sources"] == {"sklearn": 2, "skimage": 2} and both.test.samples == 3
    monkeypatch.setattr(datasets, "package_dir", lambda name: None if name == "skimage" else real(name))
    with pytest.raises(InputError, match="source 'skimage' is not installed; install it with: pip install scikit-image"):
        photos(sources=["skimage"])
    with pytest.raises(ValidationError):
        PhotosDataset.Params(sources=["imagenet"])
    with pytest.raises(ValidationError):
        PhotosDataset.Params(sources=[])


# ----------------------------------------------------------------------------------------------- agreement
def test_agreement_batches_relabel_with_the_model_predictions():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4)
    inputs = torch.randn(23, 5)
    batches = Batches.of_tensors(inputs, torch.full((23,), -1), batch_size=4)
    agreed = agreement_batches(model, batches)
    assert agreed.samples == 23 and accuracy(model, agreed) == 100.0
    labels = torch.cat([y for _, y in agreed.batched(10)])
    assert torch.equal(labels, model(inputs).argmax(1))
    other = torch.nn.Linear(5, 4)
    expected = 100.0 * float((other(inputs).argmax(1) == labels).float().mean())
    assert accuracy(other, agreed.batched(7)) == pytest.approx(expected, abs=1e-3)


def test_unlabelled_dataset_reports_agreement_end_to_end(tmp_path, monkeypatch):
    """A user module on scikit-learn's two photos: every accuracy is agreement with the float model."""
    import yaml

    from sme_plugin.cli import main

    factory = tmp_path / "tiny.py"
    factory.write_text("import torch\nfrom torch import nn\n\ndef build():\n    torch.manual_seed(0)\n"
                       "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))\n")
    config, out = tmp_path / "config.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump({
        "model": {"name": "module", "factory": f"{factory}:build", "input_shape": [3, 16, 16], "num_classes": 10},
        "dataset": {"name": "photos", "sources": ["sklearn"], "calibration": 1},
        "cell": {"name": "ideal"}, "adc": {"name": "ideal"}, "dac": {"name": "ideal"},
    }))
    assert main(["run", str(config), "--output", str(out), "--no-progress"]) == 0
    acc = json.loads((out / "report.json").read_text())["accuracy"]
    assert acc["metric"] == "top-1 agreement with the float model" and acc["float"] == 100.0
    assert acc["dataset"] == "photos" and acc["samples"] == 1 and acc["dataset_details"]["calibration_held_out"] == 1
    assert acc["sme"] == acc["quantized"]
