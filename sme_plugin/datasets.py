"""Datasets: labelled test data plus calibration samples, streamed in batches (:class:`~sme_plugin.types.Batches`).

Datasets deliver pixels: (b, C, H, W) float32 in [0, 1], grayscale (C = 1) or RGB (C = 3). What a model
needs on top (resize, channel conversion, normalisation) is the model's ``preprocess``, which the pipeline
hands to the dataset (:meth:`~sme_plugin.types.Dataset.with_preprocess`). Calibration samples come from
training data, never from the test data; a dataset without a training split holds its calibration samples
out of the test data and says how many (``details["calibration_held_out"]``). The labelled training data
fine-tuning learns from (:attr:`~sme_plugin.types.Dataset.train`) is the training split, or the held-out
calibration samples where there is none; it never overlaps the test data.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download), split once into a
  fixed stratified 70 % train / 30 % test split; pixels scaled from [0, 16] to [0, 1]. Train: the 1,257
  training images.
- ``fashion_mnist``: the Debian package ``dataset-fashion-mnist`` (60,000 train + 10,000 test 28x28
  grayscale images, IDX files read in chunks straight from their gzip streams). Train: the 60,000 training
  images, streamed.
- ``folder``: a user's ImageFolder-style tree (one subfolder per class; images read with Pillow). Train: the
  training tree ``calibration_root`` when given (and its class folders match), else the held-out images.
- ``imagenet_samples``: the 20 labelled ImageNet photos shipped in PyPI ``foolbox`` 3.3.4 (no training split:
  calibration photos are held out of the 20 and reported, and are the train photos too); class names from
  Debian ``opencv-doc`` when installed.
- ``photos``: every natural photo the offline packages ship (foolbox's ImageNet photos, scikit-learn's
  sample images, scikit-image's when installed), unlabelled: accuracy becomes top-1 agreement with the
  float model (:attr:`~sme_plugin.types.Dataset.labelled` False); no train data.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from .errors import ConfigError, InputError
from .hookspecs import hookimpl
from .params import StrategyParams

if TYPE_CHECKING:
    import torch

    from .types import Batches, Dataset

#: the digits split never changes: the built-in ``digits`` model trains on its train part.
DIGITS_TEST_FRACTION = 0.3
DIGITS_SPLIT_SEED = 0
#: where the Debian package ``dataset-fashion-mnist`` installs Fashion-MNIST.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
#: file suffixes the ``folder`` dataset reads as images.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"})
#: the 20 labelled ImageNet photos of PyPI ``foolbox`` (``foolbox/data/imagenet_NN_<label>.jpg``, 512x512 RGB).
FOOLBOX_INSTALL = "pip install --no-deps foolbox==3.3.4"
IMAGENET_FILE = re.compile(r"imagenet_(\d+)_(\d+)\.(?:jpe?g|png)", re.IGNORECASE)
#: ImageNet-1k class names in the standard order (Debian ``opencv-doc``; optional: names only).
IMAGENET_CLASSES_FILE = "/usr/share/doc/opencv-doc/examples/data/dnn/classification_classes_ILSVRC2012.txt"
IMAGENET_CLASSES_INSTALL = "apt-get install -y opencv-doc"
#: scikit-image's shipped natural colour photos (others in ``skimage/data`` are grayscale, synthetic,
#: microscopy or astronomy); used when scikit-image is installed.
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
PHOTO_SOURCES = ("foolbox", "sklearn", "skimage", "foolbox_cifar")
PHOTO_INSTALL = {"foolbox": FOOLBOX_INSTALL, "foolbox_cifar": FOOLBOX_INSTALL,
                 "sklearn": "pip install scikit-learn", "skimage": "pip install scikit-image"}
#: records read from a gzip stream at a time.
_CHUNK = 4096


def _pick(size: int, count: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``count`` of ``size`` items drawn without replacement (all when ``count`` is None)."""
    if count is None or count >= size:
        return np.arange(size)
    return np.sort(rng.choice(size, size=count, replace=False))


def _pixels(images: np.ndarray) -> torch.Tensor:
    """(b, H, W) or (b, C, H, W) uint8 -> (b, C, H, W) float32 in [0, 1]."""
    import torch

    x = torch.from_numpy(np.asarray(images).astype(np.float32)).div_(255.0)
    return x[:, None] if x.dim() == 3 else x


# ------------------------------------------------------------------------------------------------ digits
@lru_cache(maxsize=1)
def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): x (n, 1, 8, 8) float32 in [0, 1], y (n,) int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return x_train, y_train, x_test, y_test


def digits_train() -> tuple[torch.Tensor, torch.Tensor]:
    """Training split of ``digits``: inputs (n, 1, 8, 8) float32 in [0, 1] and labels (n,) int64."""
    import torch

    x_train, y_train, _, _ = _digits_split()
    return torch.from_numpy(x_train.copy()), torch.from_numpy(y_train.copy())


class SampledParams(StrategyParams):
    """What every dataset section has.

    Parameters
    ----------
    samples : int or None
        Cap on the number of test images, a seeded subset (None: all of them).
    calibration : int
        Calibration images: drawn from the training data, or held out of the test images where there is none.
    seed : int
        Seed of the calibration draw (or hold-out) and of the capped test subset.
    """

    samples: int | None = Field(None, ge=1)
    calibration: int = Field(256, ge=1, le=1_000_000)
    seed: int = Field(0, ge=0, le=2**32 - 1)


class DigitsDataset:
    """scikit-learn 8x8 digits: test split for accuracy, the train split for fine-tuning and a draw of it for
    calibration."""

    class Params(SampledParams):
        """:class:`SampledParams` (the whole test split: 540 images)."""

    def __init__(self, params: Params):
        self.params = params

    def load(self) -> Dataset:
        """The test split (capped to ``samples``), the train split and ``calibration`` of its images (small: in
        memory)."""
        import torch

        from .types import Dataset

        x_train, y_train, x_test, y_test = _digits_split()
        p = self.params
        if p.calibration > len(x_train):
            raise ConfigError(
                f"dataset.calibration: {p.calibration} calibration samples requested, "
                f"but the digits train split has only {len(x_train)}"
            )
        rng = np.random.default_rng(p.seed)
        calibration = rng.choice(len(x_train), size=p.calibration, replace=False)
        test = np.sort(rng.permutation(len(x_test))[: p.samples]) if p.samples else np.arange(len(x_test))
        return Dataset.of_tensors(
            "digits", torch.from_numpy(x_test[test]), torch.from_numpy(y_test[test]),
            torch.from_numpy(x_train[calibration]), train=(torch.from_numpy(x_train), torch.from_numpy(y_train)),
            classes=tuple(str(d) for d in range(10)),
            details={"calibration_from": "train split", "calibration_held_out": 0, "train_from": "train split"},
        )


# ----------------------------------------------------------------------------------------- Fashion-MNIST
def fashion_mnist_files(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(images, labels) IDX files of ``split`` (``train`` or ``t10k``); :class:`InputError` naming the
    install command when they are missing."""
    root = Path(root).expanduser()
    files = root / f"{split}-images-idx3-ubyte.gz", root / f"{split}-labels-idx1-ubyte.gz"
    for path in files:
        if not path.is_file():
            hint = FASHION_MNIST_INSTALL if str(root) == FASHION_MNIST_DIR else f"{FASHION_MNIST_INSTALL} (or fix dataset.root)"
            raise InputError(f"Fashion-MNIST file {str(path)!r} not found; install it with: {hint}")
    return files


def _idx_header(stream, path: Path, dims: int) -> tuple[int, ...]:
    """Shape stored in an IDX header of unsigned bytes with ``dims`` dimensions (checked)."""
    head = stream.read(4 + 4 * dims)
    if len(head) != 4 + 4 * dims or head[:3] != b"\0\0\x08" or head[3] != dims:
        raise InputError(f"Fashion-MNIST file {str(path)!r} is not an IDX file of {dims}-d unsigned bytes")
    return tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))


def _read_idx(path: Path, dims: int, keep: np.ndarray | None = None, chunk: int = _CHUNK):
    """Yield the records of an IDX gzip file, ``chunk`` records at a time (only the sorted indices ``keep``
    when given), as uint8 arrays; the file is never held whole."""
    try:
        with gzip.open(path, "rb") as stream:
            shape = _idx_header(stream, path, dims)
            record = int(np.prod(shape[1:], dtype=np.int64))
            for start in range(0, shape[0], chunk):
                count = min(chunk, shape[0] - start)
                data = stream.read(count * record)
                if len(data) != count * record:
                    raise InputError(f"Fashion-MNIST file {str(path)!r} is truncated")
                block = np.frombuffer(data, np.uint8).reshape(count, *shape[1:])
                if keep is not None:
                    lo, hi = np.searchsorted(keep, [start, start + count])
                    block = block[keep[lo:hi] - start]
                if len(block):
                    yield block
    except (OSError, EOFError) as error:
        raise InputError(f"Fashion-MNIST file {str(path)!r} cannot be read: {error}") from None


def _idx_count(path: Path, dims: int) -> int:
    try:
        with gzip.open(path, "rb") as stream:
            return _idx_header(stream, path, dims)[0]
    except (OSError, EOFError) as error:
        raise InputError(f"Fashion-MNIST file {str(path)!r} cannot be read: {error}") from None


def _idx_pair_count(images: Path, labels: Path) -> int:
    """Number of records of an IDX image file and its label file (:class:`InputError` when they disagree)."""
    count = _idx_count(images, 3)
    if _idx_count(labels, 1) != count:
        raise InputError(f"Fashion-MNIST files {str(images)!r} and {str(labels)!r} disagree in length")
    return count


def _idx_labels(path: Path) -> np.ndarray:
    return np.concatenate([*_read_idx(path, 1, chunk=1 << 16), np.zeros(0, np.uint8)]).astype(np.int64)


def _rebatch(blocks, batch_size: int):
    """Regroup a stream of arrays (first axis: samples) into arrays of ``batch_size`` (the last smaller)."""
    pending, held = [], 0
    for block in blocks:
        while len(block):
            take = block[: batch_size - held]
            block = block[len(take):]
            pending.append(take)
            held += len(take)
            if held == batch_size:
                yield np.concatenate(pending)
                pending, held = [], 0
    if held:
        yield np.concatenate(pending)


def _read_labelled(images: Path, labels: Path, keep: np.ndarray | None, batch_size: int, preprocess):
    """Yield (inputs (b, 1, 28, 28) float32 through ``preprocess``, labels (b,) int64) batches of the records
    ``keep`` (sorted indices; None: all) of an IDX image file and its label file, read side by side."""
    import torch

    pairs = zip(_rebatch(_read_idx(images, 3, keep), batch_size), _rebatch(_read_idx(labels, 1, keep), batch_size))
    for pixels, y in pairs:
        x = _pixels(pixels)
        yield (x if preprocess is None else preprocess(x)), torch.from_numpy(y.astype(np.int64))


def fashion_mnist_arrays(root: str | os.PathLike = FASHION_MNIST_DIR, split: str = "train",
                         limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) uint8, labels (n,) int64) of a whole split (first ``limit`` samples), in memory
    (model training)."""
    images_path, labels_path = fashion_mnist_files(root, split)
    labels = _idx_labels(labels_path)[:limit]
    keep = np.arange(len(labels))
    blocks = list(_read_idx(images_path, 3, keep if limit is not None else None))
    images = np.concatenate(blocks) if blocks else np.zeros((0, 28, 28), np.uint8)
    if len(images) != len(labels):
        raise InputError(f"Fashion-MNIST files {str(images_path)!r} and {str(labels_path)!r} disagree in length")
    return images, labels


class FashionMNISTDataset:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist``: the 10,000 test images for accuracy,
    the 60,000 training images for fine-tuning and calibration images drawn from them."""

    class Params(SampledParams):
        """:class:`SampledParams` (10,000 test images, 60,000 training images) and

        Parameters
        ----------
        root : str
            Folder of the four ``*-ubyte.gz`` IDX files (default: the Debian package's).
        """

        root: str = Field(FASHION_MNIST_DIR, min_length=1, max_length=4096)
        calibration: int = Field(256, ge=1, le=60_000)

    def __init__(self, params: Params):
        self.params = params

    def load(self) -> Dataset:
        """Streams of the (capped) test split, of the train split and of ``calibration`` training images."""
        from .types import Batches, Dataset

        p = self.params
        test_files = fashion_mnist_files(p.root, "t10k")
        train_files = fashion_mnist_files(p.root, "train")
        train_size = _idx_pair_count(*train_files)
        if p.calibration > train_size:
            raise ConfigError(f"dataset.calibration: {p.calibration} calibration samples requested, but the "
                              f"Fashion-MNIST train split has only {train_size}")
        rng = np.random.default_rng(p.seed)
        calibration = _pick(train_size, p.calibration, rng)
        test = _pick(_idx_pair_count(*test_files), p.samples, rng)

        def read_calibration(batch_size, preprocess):
            for images in _rebatch(_read_idx(train_files[0], 3, calibration), batch_size):
                x = _pixels(images)
                yield x if preprocess is None else preprocess(x)

        return Dataset(
            "fashion_mnist", Batches(lambda size, pre: _read_labelled(*test_files, test, size, pre), len(test)),
            Batches(read_calibration, len(calibration)),
            train=Batches(lambda size, pre: _read_labelled(*train_files, None, size, pre), train_size),
            classes=FASHION_MNIST_CLASSES,
            details={"source": str(Path(p.root).expanduser()), "calibration_from": "train split",
                     "calibration_held_out": 0, "train_from": "train split"},
        )


# -------------------------------------------------------------------------------------------------- folder
def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("dataset folder: reading images needs Pillow; install it with: "
                          "pip install 'sme-reram[zoo]' (or pip install pillow)") from None
    return Image


def folder_tree(root: str | os.PathLike) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """(image files, labels, class names) of an ImageFolder-style tree: one subfolder per class (searched
    recursively for image files). Labels follow the sorted class names (torchvision's ImageFolder), or the
    numbers themselves when every class folder is named by an integer."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise InputError(f"dataset.root: {str(path)!r} is not a directory")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes and all(c.isdigit() for c in classes):
        classes = sorted(classes, key=int)
        label_of = {c: int(c) for c in classes}
    else:
        label_of = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for name in classes:
        found = sorted(f for f in (path / name).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        files += found
        labels += [label_of[name]] * len(found)
    if not files:
        raise InputError(f"dataset.root: {str(path)!r} holds no images in class subfolders "
                         f"(expected {path}/<class>/<image>, suffixes {', '.join(sorted(IMAGE_SUFFIXES))})")
    names = tuple(classes) if not all(c.isdigit() for c in classes) else None
    return files, np.asarray(labels, dtype=np.int64), names


def _read_images(files, channels: int, preprocess):
    """Yield each image as a (1, C, H, W) float32 batch in [0, 1], passed through ``preprocess``."""
    image_module = _pillow()
    mode = "L" if channels == 1 else "RGB"
    for file in files:
        try:
            with image_module.open(file) as image:
                pixels = np.asarray(image.convert(mode))
        except (OSError, ValueError, image_module.DecompressionBombError) as error:
            raise InputError(f"image {str(file)!r} cannot be read: {error}") from None
        x = _pixels(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)[None])
        yield (x if preprocess is None else preprocess(x)), file


def _stack(images, dataset: str = "folder"):
    """Concatenate (1, C, H, W) batches; one clear error when their sizes differ."""
    import torch

    shapes = {tuple(x.shape[1:]) for x, _ in images}
    if len(shapes) > 1:
        (x0, f0), other = images[0], next((x, f) for x, f in images if x.shape != images[0][0].shape)
        raise ConfigError(
            f"dataset {dataset}: images of different sizes ({f0.name}: {tuple(x0.shape[1:])}, {other[1].name}: "
            f"{tuple(other[0].shape[1:])}) and the model's preprocess does not resize them; resize the images "
            "or use a model with a resizing preprocess (e.g. model: {name: module, ...})")
    return torch.cat([x for x, _ in images])


class FolderDataset:
    """A user's ImageFolder-style tree (``root/<class>/<image>``): test images for accuracy; calibration
    images from ``calibration_root`` (a training tree) when given, else held out of ``root`` (reported).
    Train (fine-tuning) images: the whole ``calibration_root`` tree when its class folders are named as
    ``root``'s (the same labels), else none; without ``calibration_root``, the held-out images."""

    class Params(SampledParams):
        """:class:`SampledParams` and

        Parameters
        ----------
        root : str
            The tree of test images, one subfolder per class (class index: sorted folder names, or the
            folder names themselves when all are integers).
        calibration_root : str or None
            A tree of training images to draw calibration images from and to fine-tune on; None: hold the
            calibration images out of ``root`` (they are then the fine-tuning images too).
        channels : int
            1 (grayscale) or 3 (RGB): how images are read (the model's preprocess converts further).
        calibration : int
            Calibration images (drawn from ``calibration_root``, or held out of ``root``).
        """

        root: str = Field(min_length=1, max_length=4096)
        calibration_root: str | None = Field(None, min_length=1, max_length=4096)
        channels: Literal[1, 3] = 3
        calibration: int = Field(32, ge=1, le=1_000_000)

    def __init__(self, params: Params):
        self.params = params

    def load(self) -> Dataset:
        p = self.params
        _pillow()
        files, labels, classes = folder_tree(p.root)
        rng = np.random.default_rng(p.seed)
        if p.calibration_root is None:
            calibration, test = _hold_out(len(files), p.calibration, p.samples, rng, repr(p.root))
            calibration_files = [files[i] for i in calibration]
            held_out, source = p.calibration, f"held out of {p.root}"
            train, train_from = (calibration_files, labels[calibration]), f"the calibration images, {source}"
        else:
            train_files, train_labels, train_classes = folder_tree(p.calibration_root)
            if p.calibration > len(train_files):
                raise ConfigError(f"dataset.calibration: {p.calibration} calibration samples requested, but "
                                  f"{p.calibration_root!r} has only {len(train_files)} images")
            calibration_files = [train_files[i] for i in _pick(len(train_files), p.calibration, rng)]
            test = _pick(len(files), p.samples, rng)
            held_out, source = 0, p.calibration_root
            same = train_classes == classes  # named classes label by sorted name, numbered ones by number
            train = (train_files, train_labels) if same else None
            train_from = p.calibration_root if same else "none: calibration_root's class folders are not root's"
        return _image_dataset(
            "folder", [files[i] for i in test], labels[test], calibration_files, p.channels, train, classes=classes,
            details={"source": str(Path(p.root).expanduser()), "images": len(files),
                     "calibration_from": source, "calibration_held_out": held_out, "train_from": train_from},
        )


# ------------------------------------------------------------------------------------ packaged photos
def package_dir(package: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it (None: not installed)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def imagenet_photo_files(root: str | os.PathLike | None = None) -> tuple[list[Path], np.ndarray]:
    """(files, labels) of the labelled ImageNet photos ``imagenet_NN_<label>.jpg`` in ``root`` (None: the
    ``data`` folder of the installed ``foolbox`` package), in file-number order; :class:`InputError`
    naming the install command when there are none."""
    if root is None:
        folder = package_dir("foolbox")
        if folder is None:
            raise InputError(f"the foolbox package (its 20 ImageNet photos) is not installed; install it with: "
                             f"{FOOLBOX_INSTALL}")
        folder = folder / "data"
    else:
        folder = Path(root).expanduser()
    found = sorted((int(m[1]), int(m[2]), f) for f in (folder.iterdir() if folder.is_dir() else ())
                   if (m := IMAGENET_FILE.fullmatch(f.name)) and f.is_file())
    if not found:
        hint = FOOLBOX_INSTALL if root is None else f"{FOOLBOX_INSTALL} (or fix dataset.root)"
        raise InputError(f"no ImageNet photos (imagenet_NN_<label>.jpg) in {str(folder)!r}; install them with: {hint}")
    return [f for _, _, f in found], np.asarray([label for _, label, _ in found], dtype=np.int64)


def imagenet_class_names(path: str | os.PathLike | None = None) -> tuple[str, ...] | None:
    """The 1,000 ImageNet class names in label order from ``path`` (None: Debian ``opencv-doc``'s list when
    installed, else no names); a given path must hold 1,000 lines."""
    file = Path(path).expanduser() if path is not None else Path(IMAGENET_CLASSES_FILE)
    try:
        names = tuple(line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as error:
        if path is None:
            return None
        raise InputError(f"dataset.class_names: {str(file)!r} cannot be read: {error}") from None
    if len(names) != 1000:
        if path is None:
            return None
        raise InputError(f"dataset.class_names: {str(file)!r} holds {len(names)} class names, not ImageNet's 1000")
    return names


def photo_files(source: str) -> list[Path] | None:
    """The natural photos a package ships (None: the package is not installed)."""
    if source in ("foolbox", "foolbox_cifar"):
        folder = package_dir("foolbox")
        if folder is None:
            return None
        if source == "foolbox":
            return imagenet_photo_files(folder / "data")[0]
        return sorted(f for f in (folder / "data").glob("cifar*_*.png") if f.is_file())
    if source == "sklearn":
        folder = package_dir("sklearn")
        return None if folder is None else sorted((folder / "datasets" / "images").glob("*.jpg"))
    folder = package_dir("skimage")
    return None if folder is None else [folder / "data" / n for n in SKIMAGE_PHOTOS if (folder / "data" / n).is_file()]


def _hold_out(size: int, calibration: int, samples: int | None, rng: np.random.Generator, what: str):
    """(calibration indices, test indices), both sorted: ``calibration`` of ``size`` items held out, the
    test subset (capped to ``samples``) drawn from the rest."""
    if calibration >= size:
        raise ConfigError(f"dataset.calibration: {calibration} images to hold out for calibration, but {what} has "
                          f"only {size} (at least one must remain for testing)")
    order = rng.permutation(size)
    remaining = np.sort(order[calibration:])
    return np.sort(order[:calibration]), remaining[_pick(len(remaining), samples, rng)]


def _image_batches(files: list[Path], labels: np.ndarray | None, channels: int, name: str) -> Batches:
    """A stream of the image files ``files``, read image by image as ``channels``-channel pixels (the model's
    preprocess applied per image): (inputs, labels) batches when ``labels`` (n,) are given, else inputs."""
    import torch

    from .types import Batches

    def read(batch_size, preprocess):
        for start in range(0, len(files), batch_size):
            x = _stack(list(_read_images(files[start : start + batch_size], channels, preprocess)), name)
            yield x if labels is None else (x, torch.from_numpy(labels[start : start + batch_size]))

    return Batches(read, len(files))


def _image_dataset(name: str, files: list[Path], labels: np.ndarray, calibration: list[Path], channels: int = 3,
                   train: tuple[list[Path], np.ndarray] | None = None, **kwargs) -> Dataset:
    """A dataset streaming the image files ``files`` (labels ``labels``), ``calibration`` and the labelled
    ``train`` files (files, labels; None: no train data) image by image, as ``channels``-channel pixels."""
    from .types import Dataset

    return Dataset(name, _image_batches(files, labels, channels, name),
                   _image_batches(calibration, None, channels, name),
                   train=None if train is None else _image_batches(*train, channels, name), **kwargs)


class ImageNetSamplesDataset:
    """The 20 labelled ImageNet photos of PyPI ``foolbox`` 3.3.4 (512x512 RGB, label in the file name).
    There is no training split: ``calibration`` photos are held out of the 20 (reported), the rest are the
    test set, and the held-out photos with their labels are the train (fine-tuning) photos. A demonstration of accuracy on real photos (one photo is 5-6 points), not a benchmark."""

    class Params(SampledParams):
        """:class:`SampledParams` and

        Parameters
        ----------
        root : str or None
            Folder of ``imagenet_NN_<label>.jpg`` files (None: the installed foolbox package's ``data``).
        class_names : str or None
            File of the 1,000 class names, one per line in label order (None: Debian ``opencv-doc``'s list
            when installed, else unnamed classes).
        calibration : int
            Photos held out of the test photos for calibration (and fine-tuning).
        """

        root: str | None = Field(None, min_length=1, max_length=4096)
        class_names: str | None = Field(None, min_length=1, max_length=4096)
        calibration: int = Field(4, ge=1, le=1_000)

    def __init__(self, params: Params):
        self.params = params

    def load(self) -> Dataset:
        p = self.params
        files, labels = imagenet_photo_files(p.root)
        _pillow()
        calibration, test = _hold_out(len(files), p.calibration, p.samples, np.random.default_rng(p.seed),
                                      f"{len(files)} ImageNet photos")
        classes = imagenet_class_names(p.class_names)
        names_from = (p.class_names or IMAGENET_CLASSES_FILE) if classes else \
            f"not installed ({IMAGENET_CLASSES_INSTALL} names the classes)"
        return _image_dataset(
            "imagenet_samples", [files[i] for i in test], labels[test], [files[i] for i in calibration],
            train=([files[i] for i in calibration], labels[calibration]), classes=classes,
            details={"source": str(files[0].parent), "images": len(files), "calibration_from": "held out of the photos",
                     "calibration_held_out": len(calibration), "class_names": names_from,
                     "train_from": "the held-out calibration photos (the only labelled photos not in the test set)"},
        )


class PhotosDataset:
    """Every natural photo the offline packages ship, unlabelled: each accuracy becomes top-1 agreement with
    the float model. ``calibration`` photos are held out (reported); the rest are the test set."""

    class Params(SampledParams):
        """:class:`SampledParams` and

        Parameters
        ----------
        sources : list of str or None
            Packages to take photos from: ``foolbox`` (20 ImageNet photos, 512x512), ``sklearn`` (china.jpg,
            flower.jpg), ``skimage`` (astronaut, chelsea, coffee, rocket, motorcycle), ``foolbox_cifar``
            (40 CIFAR-10/100 photos, 32x32). None: foolbox and sklearn (required) and skimage when
            installed. A source named here must be installed.
        calibration : int
            Photos held out of the test photos for calibration (and fine-tuning).
        """

        sources: list[Literal["foolbox", "sklearn", "skimage", "foolbox_cifar"]] | None = Field(None, min_length=1)
        calibration: int = Field(4, ge=1, le=1_000)

    def __init__(self, params: Params):
        self.params = params

    def load(self) -> Dataset:
        p = self.params
        wanted = list(dict.fromkeys(p.sources)) if p.sources else ["foolbox", "sklearn", "skimage"]
        optional = set() if p.sources else {"skimage"}
        files, counts, missing = [], {}, []
        for source in wanted:
            found = photo_files(source)
            if found is None and source not in optional:
                raise InputError(f"dataset photos: source {source!r} is not installed; install it with: "
                                 f"{PHOTO_INSTALL[source]}")
            if found is None:
                missing.append(f"{source} (not installed: {PHOTO_INSTALL[source]})")
                continue
            counts[source] = len(found)
            files += found
        _pillow()
        calibration, test = _hold_out(len(files), p.calibration, p.samples, np.random.default_rng(p.seed),
                                      f"the {len(files)} photos of {', '.join(counts)}")
        return _image_dataset(
            "photos", [files[i] for i in test], np.full(len(test), -1, dtype=np.int64),
            [files[i] for i in calibration], labelled=False,
            details={"sources": counts, **({"sources_missing": missing} if missing else {}), "images": len(files),
                     "labels": "none: accuracy is top-1 agreement with the float model",
                     "calibration_from": "held out of the photos", "calibration_held_out": len(calibration)},
        )


@hookimpl
def sme_register_datasets(register):
    register("digits", DigitsDataset)
    register("fashion_mnist", FashionMNISTDataset)
    register("folder", FolderDataset)
    register("imagenet_samples", ImageNetSamplesDataset)
    register("photos", PhotosDataset)
