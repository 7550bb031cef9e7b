"""Tests of sme_plugin.datasets: the scikit-learn digits dataset."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from sme_plugin import datasets
from sme_plugin.datasets import DigitsDataset, digits_train
from sme_plugin.errors import ConfigError


def load(**params):
    return DigitsDataset(DigitsDataset.Params(**params)).load()


def test_registered_under_digits():
    found = {}
    datasets.sme_register_datasets(register=found.__setitem__)
    assert found == {"digits": DigitsDataset}


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
