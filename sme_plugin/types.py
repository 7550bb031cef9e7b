"""Plain data passed between the stages of the data flow.

Shapes use: P parts of a layer (1 for dense layers; several for grouped/depthwise convs under the
``packed`` convention), N rows (inputs) and M columns (outputs) of each part's im2col matrix,
S sign sets, G cell groups of ``cell_bits`` bits each (group g weighs 2**(cell_bits*g)).
"""

from __future__ import annotations

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
class MappedLayer:
    """A layer placed on crossbars.

    quantized: the integer weights the crossbars reproduce (after orchestration and squeeze-out),
    in the layer's original row/column order.
    encoding: their cell levels in physical order:
    ``encoding.decode()[p, i, j] == quantized.w_int[p, row_order[p, i], col_order[p, j]]``.
    present: (S, G, P, N, M) bool, cells that exist on some crossbar (absent cells hold level 0 and
    draw no current: unallocated plane-tiles, plane-columns or compacted rows).
    read_rows: rows summed by one ADC read (crossbar rows, or OU rows); rows are grouped into read
    groups of ``read_rows`` consecutive physical rows.
    row_order: (P, N) int64 or None, original row index of each physical row.
    col_order: (P, M) int64 or None, original column index of each physical column.
    crossbars: crossbars this layer occupies.
    index_bits: extra index memory (bits) needed to route inputs/outputs (squeeze-out overhead).
    digital_ops: additions done in the digital periphery per output position (offset corrections).
    label: mapping label used in reports, e.g. "isaac", "sme".
    details: free-form facts for the report (packing, sign scheme, ...), JSON-serialisable.
    """

    quantized: QuantizedLayer
    encoding: Encoding
    present: np.ndarray
    geometry: Geometry
    read_rows: int
    crossbars: int
    label: str
    row_order: np.ndarray | None = None
    col_order: np.ndarray | None = None
    index_bits: int = 0
    digital_ops: int = 0
    details: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.quantized.layer.name


@dataclass(frozen=True)
class MappingContext:
    """What an orchestrator knows of the configured mapping (plain data, no mapper object).

    sign: the mapper's sign scheme (see :mod:`sme_plugin.signs`); packing: ``tile``, ``column`` or
    ``ou`` (``isaac``/``bitplane`` mappers report ``tile``).
    """

    geometry: Geometry
    sign: str = "differential"
    packing: str = "column"


@dataclass
class ModelBundle:
    """A model ready to analyse: module in eval mode (float32, CPU) and where its weights came from.

    weights: ``"random"``, ``"trained"`` (built-in training, cached) or the checkpoint path given.
    input_shape: (C, H, W) of one sample.
    """

    name: str
    module: "torch.nn.Module"  # noqa: F821
    weights: str
    input_shape: tuple
    num_classes: int


@dataclass
class Dataset:
    """Labelled test data and unlabelled calibration data, already normalised for the model.

    test_inputs: (n, C, H, W) float32; test_labels: (n,) int64; calibration_inputs: (k, C, H, W) float32
    drawn from training data (used for activation ranges, never for accuracy).
    """

    name: str
    test_inputs: "torch.Tensor"  # noqa: F821
    test_labels: "torch.Tensor"  # noqa: F821
    calibration_inputs: "torch.Tensor"  # noqa: F821
