"""Tests of sme_plugin.datasets: the scikit-learn digits dataset and the streamed Batches interface
(Fashion-MNIST and folder trees: tests/test_datasets_files.py)."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from sme_plugin import datasets
from sme_plugin.datasets import DigitsDataset, digits_train
from sme_plugin.errors import ConfigError


class Loaded:
    """A loaded dataset with its streams gathered into whole tensors (digits is small)."""

    def __init__(self, dataset):
        self.name = dataset.name
        self.dataset = dataset
        self.test_inputs, self.test_labels = (torch.cat(parts) for parts in zip(*dataset.test))
        self.calibration_inputs = torch.cat(list(dataset.calibration))


def load(**params):
    return Loaded(DigitsDataset(DigitsDataset.Params(**params)).load())


def test_registered_under_digits():
    found = {}
    datasets.sme_register_datasets(register=found.__setitem__)
    assert found == {"digits": DigitsDataset, "fashion_mnist": datasets.FashionMNISTDataset,
                     "folder": datasets.FolderDataset, "imagenet_samples": datasets.ImageNetSamplesDataset,
                     "photos": datasets.PhotosDataset}


def test_shapes_dtypes_and_normalisation():
    data = load()
    assert data.name == "digits"
    assert data.test_inputs.shape == (540, 1, 8, 8) and data.test_inputs.dtype == torch.float32
    assert data.test_labels.shape == (540,) and data.test_labels.dtype == torch.int64
    assert data.calibration_inputs.shape == (256, 1, 8, 8) and data.calibration_inputs.dtype == torch.float32
    for x in (data.test_inputs, data.calibration_inputs):
        assert x.min() >= 0 and x.max() <= 1 and x.max() == 1


def test_split_is_fixed_stratified_and_disjoint_in_size():
    x_train, y_train = digits_train()
    data = load()
    assert len(x_train) + len(data.test_inputs) == 1797
    assert x_train.shape[1:] == (1, 8, 8) and y_train.dtype == torch.int64
    test_counts = np.bincount(data.test_labels.numpy(), minlength=10)
    all_counts = test_counts + np.bincount(y_train.numpy(), minlength=10)
    assert np.abs(test_counts - 0.3 * all_counts).max() <= 1
    # the split does not depend on the dataset seed
    assert torch.equal(load(seed=5).test_labels, data.test_labels)
    assert torch.equal(digits_train()[0], x_train)


def test_train_split_is_labelled_disjoint_from_test_and_holds_calibration():
    data = DigitsDataset(DigitsDataset.Params(calibration=100)).load()
    x_train, y_train = (torch.cat(parts) for parts in zip(*data.train.batched(500)))
    assert data.train.samples == len(x_train) == 1257 and len(data.train.batched(500)) == 3
    assert x_train.shape == (1257, 1, 8, 8) and x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert torch.equal(x_train, digits_train()[0]) and torch.equal(y_train, digits_train()[1])
    assert np.bincount(y_train.numpy(), minlength=10).min() > 100  # every class, with its labels
    loaded, train = Loaded(data), {x.numpy().tobytes() for x in x_train}
    assert len(train) == 1257 and not train & {x.numpy().tobytes() for x in loaded.test_inputs}
    assert {x.numpy().tobytes() for x in loaded.calibration_inputs} <= train
    assert data.details["train_from"] == "train split"


def test_calibration_draw_is_seeded():
    a, b, c = load(seed=1), load(seed=1), load(seed=2)
    assert torch.equal(a.calibration_inputs, b.calibration_inputs)
    assert not torch.equal(a.calibration_inputs, c.calibration_inputs)
    assert len(load(calibration=7).calibration_inputs) == 7


def test_samples_caps_the_test_set():
    data = load(samples=100)
    assert data.test_inputs.shape == (100, 1, 8, 8) and data.test_labels.shape == (100,)
    assert len(load(samples=10_000).test_inputs) == 540


def test_bad_params_are_rejected():
    with pytest.raises(ConfigError, match="dataset.calibration.*5000"):
        load(calibration=5000)
    with pytest.raises(ValidationError):
        DigitsDataset.Params(samples=0)
    with pytest.raises(ValidationError):
        DigitsDataset.Params(bogus=1)


def test_streams_are_re_iterable_batches_with_sizes():
    data = DigitsDataset(DigitsDataset.Params(samples=100, calibration=50)).load()
    assert (data.test.samples, data.calibration.samples) == (100, 50)
    sizes = [len(y) for _, y in data.test.batched(32)]
    assert sizes == [32, 32, 32, 4] and len(data.test.batched(32)) == 4
    first, again = torch.cat([x for x, _ in data.test]), torch.cat([x for x, _ in data.test])
    assert torch.equal(first, again)
    assert data.details["calibration_held_out"] == 0 and data.classes[3] == "3"


def test_preprocess_applies_to_every_streamed_sample():
    data = DigitsDataset(DigitsDataset.Params(samples=10, calibration=5)).load()
    doubled = data.with_preprocess(lambda x: 2 * x + 1)
    assert torch.equal(torch.cat([x for x, _ in doubled.test]), 2 * torch.cat([x for x, _ in data.test]) + 1)
    assert torch.equal(torch.cat(list(doubled.calibration)), 2 * torch.cat(list(data.calibration)) + 1)
    assert torch.equal(torch.cat([y for _, y in doubled.test]), torch.cat([y for _, y in data.test]))
    (x_train, y_train), (x_doubled, y_doubled) = next(iter(data.train)), next(iter(doubled.train))
    assert torch.equal(x_doubled, 2 * x_train + 1) and torch.equal(y_doubled, y_train)
