"""Tests of the file-backed datasets: Fashion-MNIST (IDX gzip files, streamed) and ``folder`` (an
ImageFolder-style tree), plus the images' way through a model's preprocess.

Most tests use small generated files. The tests marked ``needs_fashion_mnist`` read the Debian package
``dataset-fashion-mnist``; they skip without it, except where ``SME_REQUIRE_FASHION_MNIST=1`` (set by
``.ci/run``, which installs the package): there they fail."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sme_plugin.datasets import (
    FASHION_MNIST_DIR,
    FashionMNISTDataset,
    FolderDataset,
    fashion_mnist_arrays,
)
from sme_plugin.errors import ConfigError, InputError
from sme_plugin.networks import ImageTransform

HAVE_FASHION_MNIST = (Path(FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz").is_file()
needs_fashion_mnist = pytest.mark.skipif(
    not HAVE_FASHION_MNIST and os.environ.get("SME_REQUIRE_FASHION_MNIST") != "1",
    reason="Debian package dataset-fashion-mnist not installed (apt-get install -y dataset-fashion-mnist)",
)


def write_idx(path, array):
    dims = array.ndim
    header = b"\0\0\x08" + bytes([dims]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(root, train=300, test=100, seed=0):
    """A Fashion-MNIST-shaped IDX tree; train images are odd-valued, test images even-valued."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train": (rng.integers(0, 128, (train, 28, 28)) * 2 + 1, rng.integers(0, 10, train)),
        "t10k": (rng.integers(0, 128, (test, 28, 28)) * 2, rng.integers(0, 10, test)),
    }
    for split, (images, labels) in arrays.items():
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return {k: (v[0].astype(np.uint8), v[1].astype(np.int64)) for k, v in arrays.items()}


def fashion(root, **params):
    return FashionMNISTDataset(FashionMNISTDataset.Params(root=str(root), **params)).load()


def gather(dataset):
    x, y = (torch.cat(parts) for parts in zip(*dataset.test))
    return x, y, torch.cat(list(dataset.calibration))


# ----------------------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_streams_test_split_and_calibrates_from_train(tmp_path):
    arrays = fake_fashion_mnist(tmp_path)
    data = fashion(tmp_path, calibration=40)
    assert (data.name, data.test.samples, data.calibration.samples) == ("fashion_mnist", 100, 40)
    assert [len(y) for _, y in data.test.batched(32)] == [32, 32, 32, 4]
    x, y, calibration = gather(data)
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(arrays["t10k"][0])[:, None] / 255.0)
    assert torch.equal(y, torch.from_numpy(arrays["t10k"][1]))
    # calibration images come from the training split (odd pixel values), never from the test split
    values = (calibration * 255).round().to(torch.int64)
    assert calibration.shape == (40, 1, 28, 28) and bool((values % 2 == 1).all())
    train = {img.tobytes() for img in arrays["train"][0]}
    assert all(v[0].numpy().astype(np.uint8).tobytes() in train for v in values)
    assert data.details["calibration_held_out"] == 0 and data.classes[0] == "T-shirt/top"


def test_fashion_mnist_streams_the_labelled_train_split(tmp_path):
    arrays = fake_fashion_mnist(tmp_path)
    data = fashion(tmp_path, samples=10, calibration=40)
    assert data.train.samples == 300 and data.details["train_from"] == "train split"
    batches = list(data.train.batched(128))
    assert [len(y) for _, y in batches] == [128, 128, 44]
    x, y = (torch.cat(parts) for parts in zip(*batches))
    assert torch.equal(x, torch.from_numpy(arrays["train"][0])[:, None] / 255.0)
    assert torch.equal(y, torch.from_numpy(arrays["train"][1])) and y.dtype == torch.int64
    x_pre, y_pre = next(iter(data.with_preprocess(ImageTransform((3, 32, 32))).train))
    assert x_pre.shape == (256, 3, 32, 32) and torch.equal(y_pre, y[:256])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", arrays["train"][1][:299])
    with pytest.raises(InputError, match="disagree in length"):
        fashion(tmp_path)


def test_fashion_mnist_samples_and_calibration_are_seeded(tmp_path):
    arrays = fake_fashion_mnist(tmp_path)
    a, b, c = (gather(fashion(tmp_path, samples=30, calibration=10, seed=s)) for s in (1, 1, 2))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[2], c[2]) and not torch.equal(a[1], c[1]) or not torch.equal(a[0], c[0])
    assert len(a[0]) == 30 and len(a[2]) == 10
    # the capped test subset keeps each image with its own label
    index = {img.tobytes(): label for img, label in zip(*arrays["t10k"])}
    for image, label in zip(a[0], a[1]):
        assert index[(image[0] * 255).round().numpy().astype(np.uint8).tobytes()] == int(label)


def test_fashion_mnist_preprocess_runs_on_streamed_batches(tmp_path):
    fake_fashion_mnist(tmp_path)
    transform = ImageTransform((3, 32, 32), mean=0.5, std=0.25)
    data = fashion(tmp_path, samples=10, calibration=5).with_preprocess(transform)
    x, y, calibration = gather(data)
    assert x.shape == (10, 3, 32, 32) and calibration.shape == (5, 3, 32, 32) and y.shape == (10,)


def test_fashion_mnist_missing_names_the_install_command(tmp_path):
    with pytest.raises(InputError, match=r"not found; install it with: apt-get install -y dataset-fashion-mnist"):
        fashion(tmp_path / "absent")
    with pytest.raises(InputError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist_arrays(tmp_path / "absent")


def test_fashion_mnist_bad_files_and_params(tmp_path):
    fake_fashion_mnist(tmp_path)
    with pytest.raises(ConfigError, match=r"dataset.calibration: 500 .* only 300"):
        fashion(tmp_path, calibration=500)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01" + b"\0" * 8))
    with pytest.raises(InputError, match=r"t10k-images-idx3-ubyte\.gz.*not an IDX file of 3-d"):
        list(fashion(tmp_path).test)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.random.default_rng(0).integers(0, 255, (100, 28, 28)))
    with open(tmp_path / "t10k-images-idx3-ubyte.gz", "r+b") as f:
        f.truncate(200)
    with pytest.raises(InputError, match=r"t10k-images-idx3-ubyte\.gz"):
        list(fashion(tmp_path).test)


@needs_fashion_mnist
def test_real_fashion_mnist_package():
    data = FashionMNISTDataset(FashionMNISTDataset.Params(calibration=64)).load()
    assert (data.test.samples, data.calibration.samples) == (10_000, 64)
    labels = torch.cat([y for _, y in data.test.batched(5000)])
    assert labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert torch.bincount(labels).tolist() == [1000] * 10
    x = next(iter(data.calibration))
    assert x.shape == (64, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1
    images, train_labels = fashion_mnist_arrays(limit=100)
    assert images.shape == (100, 28, 28) and train_labels[:5].tolist() == [9, 0, 0, 3, 0]
    assert data.train.samples == 60_000
    train = iter(data.train.batched(1000))  # streamed: the first batches only are read
    (x, y), _ = next(train), next(train)
    assert x.shape == (1000, 1, 28, 28) and torch.equal(x[:100, 0], torch.from_numpy(images) / 255.0)
    assert y[:5].tolist() == [9, 0, 0, 3, 0] and torch.bincount(y, minlength=10).min() > 50


# -------------------------------------------------------------------------------------------------- folder
def make_tree(root, classes, per_class=5, sizes=((12, 12),), suffix=".png", mode="RGB"):
    """Class folders of solid-colour images; image k of class c has value 10*c + k in every channel."""
    from PIL import Image

    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            h, w = sizes[k % len(sizes)]
            value = 10 * c + k
            Image.new(mode, (w, h), (value,) * len(mode) if mode != "L" else value).save(folder / f"{k}{suffix}")
    return root


def folder(root, **params):
    return FolderDataset(FolderDataset.Params(root=str(root), **params)).load()


def test_folder_holds_calibration_out_and_reports_it(tmp_path):
    make_tree(tmp_path, ["dog", "cat"])  # labels follow sorted names: cat 0, dog 1
    data = folder(tmp_path, calibration=3)
    assert (data.test.samples, data.calibration.samples) == (7, 3)
    assert data.details["calibration_held_out"] == 3 and data.details["images"] == 10
    assert data.classes == ("cat", "dog")
    x, y, calibration = gather(data)
    assert x.shape == (7, 3, 12, 12) and calibration.shape == (3, 3, 12, 12)
    test_values = set((x[:, 0, 0, 0] * 255).round().int().tolist())
    held_values = set((calibration[:, 0, 0, 0] * 255).round().int().tolist())
    assert not test_values & held_values and len(test_values | held_values) == 10
    # the held-out images, with their labels, are the train images
    x_train, y_train = (torch.cat(parts) for parts in zip(*data.train))
    train_values = (x_train[:, 0, 0, 0] * 255).round().int().tolist()
    assert torch.equal(x_train, calibration) and y_train.tolist() == [int(v < 10) for v in train_values]
    assert data.details["train_from"] == f"the calibration images, held out of {tmp_path}"
    # labels match the folder each image came from (cat: values 10..14 as created second)
    for value, label in zip((x[:, 0, 0, 0] * 255).round().int().tolist(), y.tolist()):
        assert label == (0 if value >= 10 else 1)


def test_folder_with_numbered_classes_calibration_tree_and_preprocess(tmp_path):
    make_tree(tmp_path / "test", ["0", "2", "10"], per_class=3, sizes=((20, 30), (16, 16)), suffix=".jpg")
    make_tree(tmp_path / "train", ["0", "2", "10"], per_class=4, mode="L")
    data = FolderDataset(FolderDataset.Params(root=str(tmp_path / "test"), calibration_root=str(tmp_path / "train"),
                                              calibration=5, channels=1)).load()
    assert data.details["calibration_held_out"] == 0 and data.test.samples == 9 and data.classes is None
    with pytest.raises(ConfigError, match="images of different sizes"):
        list(data.test)
    x, y, calibration = gather(data.with_preprocess(ImageTransform((1, 8, 8))))
    assert x.shape == (9, 1, 8, 8) and calibration.shape == (5, 1, 8, 8)
    assert sorted(set(y.tolist())) == [0, 2, 10]
    assert len(folder(tmp_path / "test", samples=4, calibration=2).test.batched(3)) == 2
    # the whole training tree is the train data, labelled by its (numbered) folders
    x_train, y_train = (torch.cat(parts) for parts in zip(*data.with_preprocess(ImageTransform((1, 8, 8))).train))
    assert x_train.shape == (12, 1, 8, 8) and y_train.tolist() == [0] * 4 + [2] * 4 + [10] * 4
    assert data.details["train_from"] == str(tmp_path / "train")
    # named class folders other than the test tree's would label differently: no train data
    make_tree(tmp_path / "named", ["cat", "dog"])
    make_tree(tmp_path / "other", ["cat", "cow", "dog"])
    mismatched = FolderDataset(FolderDataset.Params(root=str(tmp_path / "named"),
                                                    calibration_root=str(tmp_path / "other"), calibration=4)).load()
    assert mismatched.train is None and mismatched.details["train_from"].startswith("none:")


def test_folder_errors_are_one_clear_line(tmp_path):
    with pytest.raises(InputError, match="is not a directory"):
        folder(tmp_path / "absent")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(InputError, match="holds no images in class subfolders"):
        folder(tmp_path / "empty")
    make_tree(tmp_path / "few", ["a"], per_class=2)
    with pytest.raises(ConfigError, match=r"dataset.calibration: 2 .* only 2 \(at least one must remain"):
        folder(tmp_path / "few", calibration=2)
    (tmp_path / "few" / "a" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"broken\.png.*cannot be read"):
        gather(folder(tmp_path / "few", calibration=1))


# ------------------------------------------------------------------------------------------ ImageTransform
def test_image_transform_converts_resizes_crops_and_normalises():
    rgb = torch.rand(2, 3, 40, 60)
    out = ImageTransform((1, 28, 28))(rgb)
    assert out.shape == (2, 1, 28, 28)
    flat = ImageTransform((3, 10, 10), mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])(torch.full((1, 1, 20, 20), 0.75))
    assert flat.shape == (1, 3, 10, 10) and torch.allclose(flat, torch.full_like(flat, 0.5))
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(ImageTransform((1, 8, 8))(x), x)
    assert ImageTransform((3, 224, 224), crop=0.875)(torch.rand(1, 3, 300, 400)).shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match="mean needs 1 or 3 values"):
        ImageTransform((3, 8, 8), mean=[0.1, 0.2])
