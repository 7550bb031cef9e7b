"""Quantizers: float weights -> sign-magnitude integers, ``weight ≈ scale * w_int``.

Every quantizer maps the largest existing magnitude of a channel (or of the layer) to its largest level
and rounds each weight to the nearest level; masked-out entries stay 0 and an all-zero channel gets
scale 1.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import numpy as np
from pydantic import Field

from .errors import WeightsError
from .hookspecs import hookimpl
from .params import StrategyParams
from .types import Layer, QuantizedLayer


class QuantizerParams(StrategyParams):
    """Parameters every quantizer takes.

    Attributes
    ----------
    bits : int
        Total weight bits including the sign; magnitudes stay <= 2**(bits-1) - 1.
    granularity : {"channel", "layer"}
        ``channel``: one scale per output column of each part, shape (P, 1, M); ``layer``: one scale, (1, 1, 1).
    """

    bits: int = Field(8, ge=2, le=16)
    granularity: Literal["channel", "layer"] = "channel"


def apot_levels(bits: int, terms: int) -> np.ndarray:
    """Sorted int64 magnitudes that are a sum of one element (or 0) of each of ``terms`` additive sets.

    Set i holds ``2**e`` for ``e % terms == i``, ``0 <= e <= bits-2``; so a magnitude qualifies when each
    residue class of its bit positions holds at most one set bit. ``terms=1`` gives the powers of two.
    """
    magnitudes = np.arange(1 << (bits - 1), dtype=np.int64)
    exponents = np.arange(bits - 1, dtype=np.int64)
    member = exponents[None] % terms == np.arange(terms)[:, None]  # (terms, bits-1)
    class_masks = (member * (np.int64(1) << exponents)).sum(axis=1)
    return magnitudes[(np.bitwise_count(magnitudes[:, None] & class_masks[None]) <= 1).all(axis=1)]


def nearest_level(x: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Nearest member of the sorted int64 ``levels`` (0 first) to each real ``x`` in [0, levels[-1]]
    (ties go down), as int64; through floor/ceil tables over the integers 0 .. levels[-1]."""
    top = int(levels[-1])
    grid = np.arange(top + 1)
    floor_table = levels[np.searchsorted(levels, grid, side="right") - 1]  # largest level <= i
    ceil_table = levels[np.searchsorted(levels, grid, side="left")]  # smallest level >= i
    x = np.clip(x, 0.0, top)
    below = floor_table[np.floor(x).astype(np.int32)]
    above = ceil_table[np.ceil(x).astype(np.int32)]
    return np.where(above - x < x - below, above, below)


def _check(layer: Layer) -> None:
    if layer.weight.ndim != 3 or layer.mask.shape != layer.weight.shape:
        raise ValueError(
            f"layer {layer.name!r}: weight must be (P, N, M) with a mask of the same shape, "
            f"got {layer.weight.shape} and {layer.mask.shape}"
        )
    if not np.isfinite(layer.weight[layer.mask]).all():
        raise WeightsError(f"layer {layer.name!r}: weights contain NaN or Inf")


def _scale(layer: Layer, granularity: str, top: float) -> np.ndarray:
    """Scale mapping max|W| (per channel (P, 1, M) or per layer (1, 1, 1)) to ``top``; 1 where max|W| is 0."""
    magnitude = np.where(layer.mask, np.abs(layer.weight), 0).astype(np.float64)
    axes = (1,) if granularity == "channel" else (0, 1, 2)
    peak = magnitude.max(axis=axes, keepdims=True)
    return np.where(peak > 0, peak / top, 1.0)


class _LevelQuantizer(ABC):
    """A quantizer whose magnitudes are the nearest member of a fixed level set."""

    Params = QuantizerParams

    def __init__(self, params: QuantizerParams):
        self.params = params

    @abstractmethod
    def levels(self) -> np.ndarray:
        """Sorted int64 magnitudes allowed, from 0 up to at most 2**(bits-1) - 1."""

    def quantize(self, layer: Layer) -> QuantizedLayer:
        _check(layer)
        levels = self.levels()
        scale = _scale(layer, self.params.granularity, float(levels[-1]))
        weight = np.where(layer.mask, layer.weight, 0)
        magnitude = nearest_level(np.abs(weight) / scale, levels)
        w_int = np.sign(weight).astype(np.int64) * magnitude
        return QuantizedLayer(layer=layer, w_int=w_int, scale=scale, bits=self.params.bits)


class UniformQuantizer(_LevelQuantizer):
    """Symmetric uniform quantizer: magnitudes 0 .. 2**(bits-1) - 1."""

    def levels(self) -> np.ndarray:
        return np.arange(1 << (self.params.bits - 1), dtype=np.int64)


class Pow2Quantizer(_LevelQuantizer):
    """Power-of-two quantizer: magnitudes {0} ∪ {2**e : 0 <= e <= bits-2}."""

    def levels(self) -> np.ndarray:
        return apot_levels(self.params.bits, 1)


class APoTQuantizer(_LevelQuantizer):
    """Additive powers-of-two quantizer (Li et al., ICLR 2020); levels from :func:`apot_levels`."""

    class Params(QuantizerParams):
        """APoT parameters.

        Attributes
        ----------
        terms : int
            Number of interleaved additive sets, i.e. at most this many power-of-two terms per magnitude.
        """

        terms: int = Field(2, ge=1, le=15)

    def levels(self) -> np.ndarray:
        return apot_levels(self.params.bits, self.params.terms)


class KMeansQuantizer:
    """Weight sharing: k-means centroids of the layer's weights, snapped to the uniform ``bits`` grid.

    Each weight takes its nearest centroid (in real units), then ``w_int = round(centroid / scale)``
    with the uniform quantizer's scale.
    """

    class Params(QuantizerParams):
        """K-means parameters.

        Attributes
        ----------
        clusters : int
            Number of shared values (fewer when the layer has fewer distinct weights).
        seed : int
            Seed of the subsampling and of KMeans.
        sample : int
            Weights (subsampled without replacement) used to fit the centroids.
        """

        clusters: int = Field(16, ge=2, le=256)
        seed: int = Field(0, ge=0)
        sample: int = Field(20000, ge=2)

    def __init__(self, params: Params):
        self.params = params

    def centroids(self, layer: Layer) -> np.ndarray:
        """Sorted float64 centroids fitted on (a sample of) the layer's existing weights."""
        existing = layer.weight[layer.mask].astype(np.float64)
        rng = np.random.default_rng(self.params.seed)
        if existing.size > self.params.sample:
            existing = rng.choice(existing, self.params.sample, replace=False)
        clusters = min(self.params.clusters, np.unique(existing).size)
        from sklearn.cluster import KMeans

        fit = KMeans(n_clusters=clusters, n_init=2, random_state=self.params.seed).fit(existing[:, None])
        return np.sort(fit.cluster_centers_.ravel())

    def quantize(self, layer: Layer) -> QuantizedLayer:
        _check(layer)
        top = (1 << (self.params.bits - 1)) - 1
        scale = _scale(layer, self.params.granularity, float(top))
        if not layer.mask.any():
            return QuantizedLayer(layer, np.zeros(layer.weight.shape, np.int64), scale, self.params.bits)
        centroids = self.centroids(layer)
        weight = np.where(layer.mask, layer.weight, 0)
        nearest = centroids[np.searchsorted((centroids[1:] + centroids[:-1]) / 2, weight)]
        w_int = np.clip(np.rint(nearest / scale), -top, top).astype(np.int64)
        return QuantizedLayer(layer, np.where(layer.mask, w_int, 0), scale, self.params.bits)


@hookimpl
def sme_register_quantizers(register):
    register("uniform", UniformQuantizer)
    register("pow2", Pow2Quantizer)
    register("apot", APoTQuantizer)
    register("kmeans", KMeansQuantizer)
