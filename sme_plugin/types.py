"""Plain data passed between the stages of the data flow.

Shapes use: P parts of a layer (1 for dense layers; several for grouped/depthwise convs under the
``packed`` convention), N rows (inputs) and M columns (outputs) of each part's im2col matrix,
S sign sets, G cell groups of ``cell_bits`` bits each (group g weighs 2**(cell_bits*g)).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Crossbar geometry a mapper works with.

    rows, cols: crossbar size in cells; ou_rows: rows read together by one operation unit
    (only the ``ou`` packing uses it); cell_bits: bits stored per cell (from the cell model).
    """

    rows: int = 128
    cols: int = 128
    ou_rows: int = 16
    cell_bits: int = 1


@dataclass
class Layer:
    """One Conv2d/Linear of a model as im2col matrix parts.

    weight: (P, N, M) float32, BatchNorm already folded in. Part p holds the groups
    ``[p*groups_per_part, (p+1)*groups_per_part)`` of the conv as a block-diagonal matrix; rows are
    ordered (group, in-channel, kh, kw), columns (group, out-channel); the last part is zero-padded.
    mask: (P, N, M) bool, True where a weight exists (False: off-diagonal or padding entries).
    bias: (out_features,) float32 or None.
    out_positions: output pixels per sample (1 for Linear), for conversion and latency counts.
    """

    name: str
    kind: str  # "linear", "conv", "depthwise" or "grouped"
    weight: np.ndarray
    mask: np.ndarray
    bias: np.ndarray | None
    out_features: int
    groups: int = 1
    groups_per_part: int = 1
    out_positions: int = 1

    @property
    def parts(self) -> int:
        return self.weight.shape[0]

    @property
    def rows(self) -> int:
        return self.weight.shape[1]

    @property
    def cols(self) -> int:
        return self.weight.shape[2]

    @property
    def n_weights(self) -> int:
        return int(self.mask.sum())


@dataclass
class QuantizedLayer:
    """A layer's integer weights: ``weight ≈ scale * w_int``.

    w_int: (P, N, M) int64, sign-magnitude, |w_int| <= 2**(bits-1) - 1, zero where ``layer.mask`` is False.
    scale: (P, 1, M) float64 (per output channel) or broadcastable to it (per layer).
    bits: total weight bits including the sign.
    """

    layer: Layer
    w_int: np.ndarray
    scale: np.ndarray
    bits: int

    def with_weights(self, w_int: np.ndarray) -> "QuantizedLayer":
        return replace(self, w_int=w_int)

    def dequantized(self) -> np.ndarray:
        """(P, N, M) float64 weights ``scale * w_int``."""
        return self.scale * self.w_int


@dataclass
class Encoding:
    """Weights encoded as non-negative cell levels by a sign scheme.

    Invariant: ``w_int == offset + sum_s signs[s] * sum_g 2**(cell_bits*g) * levels[s, g]``.
    levels: (S, G, P, N, M) uint8 in [0, 2**cell_bits - 1], zero where the layer mask is False.
    signs: (S,) int64 of +1/-1.
    offset: (P, N, M) int64 digital offset, added back by the periphery as ``x @ offset``
    (zero for differential; ``-2**(bits-1)`` for ISAAC offset; a per-segment value for segment-offset).
    """

    levels: np.ndarray
    signs: np.ndarray
    offset: np.ndarray
    cell_bits: int

    def stored(self) -> np.ndarray:
        """(S, P, N, M) int64 non-negative value each sign set stores."""
        weights = 1 << (self.cell_bits * np.arange(self.levels.shape[1], dtype=np.int64))
        return np.tensordot(weights, self.levels.astype(np.int64), axes=([0], [1]))

    def decode(self) -> np.ndarray:
        """(P, N, M) int64 weights the encoding represents."""
        return self.offset + np.tensordot(self.signs, self.stored(), axes=([0], [0]))


@dataclass
class Placement:
    """The physical placement of one mapped layer: every occupied cell of every crossbar, read by read.

    The one physical truth behind a mapping: crossbar counts, reads, ADC conversions and resolution,
    latency, energy, area, index memory and the host's simulation all derive from it.

    A *read* drives up to K rows of one crossbar together (each row from one input, through its wordline)
    and converts up to J of that crossbar's columns, one ADC conversion per non-empty column sum. A column
    slot of a read holds cells of one sign set and one cell group of one logical output column, so a
    column sum never mixes cells whose currents carry different weights. The cell of read r, row slot k,
    column slot j sits at (``crossbar[r]``, ``row[r, k]``, ``col[r, j]``); it exists iff both slots are used
    (``row >= 0`` and ``col >= 0``) and is programmed to ``levels[r, k, j]`` (level-0 cells exist and
    conduct the off current). It stores group ``group[r, j]`` of sign set ``sign_set[r, j]`` of the weight
    at logical (part p, row n, column m) with ``input[r, k] == p*N + n`` and ``output[r, j] == p*M + m``.

    Shapes: R reads, K row slots and J column slots per read (unused slots are -1), (P, N, M) the layer's
    logical weight shape, S sign sets.

    Attributes
    ----------
    shape : (P, N, M) logical weight shape.
    rows, cols : crossbar size in cells.
    crossbars : number of physical crossbars (ids 0 .. crossbars-1).
    crossbar : (R,) int64 crossbar of each read.
    row, col : (R, K), (R, J) int32 physical row / column of each slot in its crossbar, -1 unused.
    input, output : (R, K), (R, J) int64 flat logical input (p*N + n) / output (p*M + m), -1 unused.
    sign_set, group : (R, J) int8 sign set and cell group of each column slot (0 where unused).
    levels : (R, K, J) uint8 programmed cell levels (0 in unused slots).
    signs : (S,) int64 sign (+1/-1) of each sign set.
    cell_bits : bits per cell; group g weighs ``2**(cell_bits*g)``.
    offset : (P, N, M) int64 digital offset of each weight (added back as ``x @ offset`` by the periphery).
    offset_segment : (P, N) int64 correction segment of each logical row: one correction
        ``o * sum(x over the segment's rows)`` per (segment, column, distinct non-zero offset o).
    index_bits : routing memory in bits (row-select indices, column tags) this arrangement needs.
    """

    shape: tuple
    rows: int
    cols: int
    crossbars: int
    crossbar: np.ndarray
    row: np.ndarray
    col: np.ndarray
    input: np.ndarray
    output: np.ndarray
    sign_set: np.ndarray
    group: np.ndarray
    levels: np.ndarray
    signs: np.ndarray
    cell_bits: int
    offset: np.ndarray
    offset_segment: np.ndarray
    index_bits: int = 0

    @property
    def reads(self) -> int:
        return len(self.crossbar)

    def present(self) -> np.ndarray:
        """(R, K, J) bool: the cells that exist (row and column slot both used)."""
        return (self.row >= 0)[:, :, None] & (self.col >= 0)[:, None, :]

    def coefficients(self) -> np.ndarray:
        """(R, J) int64 splice weight of each column slot: ``sign * 2**(cell_bits*group)`` (0 unused)."""
        weight = self.signs[self.sign_set] << (self.cell_bits * self.group.astype(np.int64))
        return np.where(self.col >= 0, weight, 0)

    def active_cells(self) -> np.ndarray:
        """(R, J) int64 non-zero cells each column sum adds (0: the column needs no conversion)."""
        return np.count_nonzero(self.levels, axis=1)

    def full_scale(self, dac_bits: int) -> np.ndarray:
        """(R, J) float64 largest ideal column sum of each read column, in level*input units:
        active cells * (2**cell_bits - 1) * (2**dac_bits - 1) (the lossless ADC range)."""
        return self.active_cells() * float(((1 << self.cell_bits) - 1) * ((1 << dac_bits) - 1))

    def reads_per_crossbar(self) -> np.ndarray:
        """(crossbars,) int64 reads each crossbar performs per input cycle."""
        return np.bincount(self.crossbar, minlength=self.crossbars)

    def weights(self) -> np.ndarray:
        """(P, N, M) int64 weights the cells and offsets represent (vectorized; the placement checker
        rebuilds them independently, read by read)."""
        parts, rows, cols = self.shape
        flat = self.offset.astype(np.int64).ravel().copy()
        value = self.levels.astype(np.int64) * self.coefficients()[:, None, :]
        r, k, j = np.nonzero(value)
        part, n = np.divmod(self.input[r, k], rows)
        np.add.at(flat, (part * rows + n) * cols + self.output[r, j] % cols, value[r, k, j])
        return flat.reshape(self.shape)


@dataclass
class MappedLayer:
    """A layer placed on crossbars.

    quantized: the integer weights the crossbars reproduce (after orchestration and squeeze-out).
    encoding: their cell levels in logical order (``encoding.decode() == quantized.w_int``).
    placement: where every cell sits and how it is read (the physical truth of every count and cost).
    layout: the mapper's layout rules the placement follows (squeezers re-place under the same rules).
    label: mapping label used in reports, e.g. "isaac", "sme".
    details: facts for the report (packing, sign scheme, squeeze steps, ...), JSON-serialisable.
    """

    quantized: QuantizedLayer
    encoding: Encoding
    placement: Placement
    layout: "Layout"
    label: str
    details: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.quantized.layer.name

    @property
    def crossbars(self) -> int:
        return self.placement.crossbars


@dataclass(frozen=True)
class Layout:
    """The layout rules of a mapping that orchestrators and squeezers ask for (owned by the mapper).

    sign: sign scheme (:mod:`sme_plugin.signs`); packing: allocation unit of a sparse mapping (``tile``:
    plane-tile, ``column``: plane-column of a row block, ``ou``: segment-column of an operation unit) or
    ``dense`` (every cell allocated: orchestration and squeeze-out save nothing there).
    geometry: crossbar size and cell bits; read_rows: rows summed by one read, also the segment height of
    the ``segment-offset`` scheme; region: (rows, cols) of the allocation unit; capacity: allocation units
    sharing one crossbar (column packing) or one band (OU packing), None for tile packing.
    """

    sign: str
    packing: str
    geometry: Geometry
    read_rows: int
    region: tuple
    capacity: int | None

    @property
    def sparse(self) -> bool:
        return self.packing != "dense"


#: ``preprocess(x) -> model inputs``: x is a batch (n, C, H, W) float32 of pixel intensities in [0, 1] as a
#: dataset reads them (grayscale C=1 or RGB C=3, any H, W); the result is (n, *input_shape) float32.
Preprocess = Callable[["torch.Tensor"], "torch.Tensor"]  # noqa: F821


@dataclass
class ModelBundle:
    """A model ready to analyse: module in eval mode (float32, CPU) and where its weights came from.

    weights: ``"random"``, ``"trained"`` (built-in training, cached) or the checkpoint path given.
    input_shape: (C, H, W) of one sample.
    preprocess: what turns a dataset's pixels into this model's inputs (:data:`Preprocess`: resize,
    channel conversion, normalisation); datasets apply it to every sample they stream. None: the model
    takes [0, 1] pixels of exactly ``input_shape`` as they are.
    """

    name: str
    module: "torch.nn.Module"  # noqa: F821
    weights: str
    input_shape: tuple
    num_classes: int
    preprocess: Preprocess | None = None


#: ``read(batch_size, preprocess) -> iterator`` of batches; ``preprocess`` (or None) is applied to every
#: sample before it is batched (a reader of images of different sizes applies it image by image).
Reader = Callable[[int, "Preprocess | None"], Iterator]


@dataclass(frozen=True)
class Batches:
    """A re-iterable stream of batches: every ``iter()`` reads the data again from its start, so a split is
    never held in memory as a whole. Test and train splits yield ``(inputs, labels)``, calibration splits
    ``inputs``; inputs (b, C, H, W) float32 (after ``preprocess``), labels (b,) int64.

    samples: number of samples the stream yields; batch_size: samples per batch (the last may be smaller).
    """

    read: Reader
    samples: int
    batch_size: int = 256
    preprocess: Preprocess | None = None

    def __iter__(self) -> Iterator:
        return iter(self.read(self.batch_size, self.preprocess))

    def __len__(self) -> int:
        """Number of batches."""
        return (self.samples + self.batch_size - 1) // self.batch_size

    def batched(self, batch_size: int) -> "Batches":
        return replace(self, batch_size=batch_size)

    @classmethod
    def of_tensors(cls, *tensors: "torch.Tensor", batch_size: int = 256) -> "Batches":  # noqa: F821
        """Batches of in-memory tensors (inputs first; ``preprocess`` applies to the inputs only); one
        tensor gives input batches, several give tuples."""

        def read(size, preprocess):
            for start in range(0, len(tensors[0]), size):
                parts = [t[start : start + size] for t in tensors]
                if preprocess is not None:
                    parts[0] = preprocess(parts[0])
                yield parts[0] if len(parts) == 1 else tuple(parts)

        return cls(read, len(tensors[0]), batch_size)


@dataclass
class Dataset:
    """Labelled test data, unlabelled calibration data and (optionally) labelled training data, streamed in
    batches.

    test: (inputs, labels) batches for accuracy. calibration: input batches for activation and ADC ranges,
    drawn from training data, or held out of the test data where there is no training split (never both:
    ``details["calibration_held_out"]`` says how many were held out). train: (inputs, labels) batches of
    training data for fine-tuning (``finetune.data: train``), disjoint from ``test`` and holding the
    calibration samples; None where the dataset has no labelled training data.
    classes: class names by label index (None: unnamed). details: facts for the report (source,
    splits, preprocessing), JSON-serialisable. labelled: False for photos without labels (their test
    labels are placeholders, -1): accuracy is then top-1 agreement with the float model's predictions.
    """

    name: str
    test: Batches
    calibration: Batches
    classes: tuple | None = None
    details: dict = field(default_factory=dict)
    labelled: bool = True
    train: Batches | None = None

    def with_preprocess(self, preprocess: Preprocess | None) -> "Dataset":
        """The same data, with every sample passed through a model's ``preprocess``."""
        return replace(self, test=replace(self.test, preprocess=preprocess),
                       calibration=replace(self.calibration, preprocess=preprocess),
                       train=None if self.train is None else replace(self.train, preprocess=preprocess))

    @classmethod
    def of_tensors(cls, name: str, test_inputs, test_labels, calibration_inputs, train=None, **kwargs) -> "Dataset":
        """A dataset of in-memory tensors (small data, tests, third-party plugins); train: None or the tensors
        (inputs, labels) of a training split."""
        return cls(name, Batches.of_tensors(test_inputs, test_labels), Batches.of_tensors(calibration_inputs),
                   train=None if train is None else Batches.of_tensors(*train), **kwargs)
