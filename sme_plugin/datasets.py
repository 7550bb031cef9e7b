"""Datasets: labelled test data plus calibration samples, normalised for the matching model.

``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download), split once
into a fixed stratified 70 % train / 30 % test split; pixels scaled from [0, 16] to [0, 1].
"""

from __future__ import annotations

from functools import lru_cache

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from .errors import ConfigError
from .hookspecs import hookimpl
from .params import StrategyParams

if TYPE_CHECKING:
    import torch

    from .types import Dataset

#: the digits split never changes: the built-in ``digits`` model trains on its train part.
DIGITS_TEST_FRACTION = 0.3
DIGITS_SPLIT_SEED = 0


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


class DigitsDataset:
    """scikit-learn 8x8 digits: test split for accuracy, train samples for calibration."""

    class Params(StrategyParams):
        """
        Parameters
        ----------
        samples : int or None
            Cap on the number of test images (None: the whole test split, 540 images).
        calibration : int
            Training images drawn (without replacement) for activation calibration.
        seed : int
            Seed of the draw of calibration images and of the capped test subset.
        """

        samples: int | None = Field(None, ge=1)
        calibration: int = Field(256, ge=1, le=1_000_000)
        seed: int = Field(0, ge=0, le=2**32 - 1)

    def __init__(self, params: Params):
        self.params = params

    def load(self) -> Dataset:
        """The test split (capped to ``samples``) and ``calibration`` training images."""
        import torch

        from .types import Dataset

        x_train, _, x_test, y_test = _digits_split()
        p = self.params
        if p.calibration > len(x_train):
            raise ConfigError(
                f"dataset.calibration: {p.calibration} calibration samples requested, "
                f"but the digits train split has only {len(x_train)}"
            )
        rng = np.random.default_rng(p.seed)
        calibration = rng.choice(len(x_train), size=p.calibration, replace=False)
        test = np.sort(rng.permutation(len(x_test))[: p.samples]) if p.samples else np.arange(len(x_test))
        return Dataset(
            name="digits",
            test_inputs=torch.from_numpy(x_test[test]),
            test_labels=torch.from_numpy(y_test[test]),
            calibration_inputs=torch.from_numpy(x_train[calibration]),
        )


@hookimpl
def sme_register_datasets(register):
    register("digits", DigitsDataset)
