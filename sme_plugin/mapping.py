"""Crossbar mappers: place a layer's cell levels on ``rows x cols`` crossbars.

Every mapper owns its layout rules and offers

- ``layout(q, geometry) -> Layout``: the rules orchestrators and squeezers ask for (sign scheme,
  allocation unit, read height = segment of the segment-offset scheme, packing capacity);
- ``encode(q, layout) -> Encoding``: :func:`sme_plugin.signs.encode` under the layout's sign scheme;
- ``place(q, encoding, layout) -> MappedLayer``: the explicit :class:`~sme_plugin.types.Placement` of
  the encoding's cells (squeezers call it after changing levels);
- ``map(q, geometry, layout=None)`` = ``place(q, encode(q, layout), layout)``;
- attributes ``label`` (report label), ``sign`` and ``packing``.

Mappers (parts never share a crossbar; rows are tiled in row blocks of the read height):

- ``isaac``: dense; a weight's ``S*G`` cells adjacent in one crossbar row, ``cols // (S*G)`` weights per
  row, one read of all rows per crossbar;
- ``bitplane``: dense bit-slice; one crossbar per (sign set, cell group, row block, column block);
- ``sme``: sparse bit-slice, only occupied allocation units placed:
  ``tile``: one crossbar per non-empty plane-tile; ``column``: the non-empty plane-columns of each row
  block packed densely, ``cols`` to a crossbar; ``ou``: the non-empty segment-columns of each
  ``ou_rows``-row segment packed into bands of ``cols`` columns, ``rows // ou_rows`` bands stacked per
  crossbar, one read per band;
- ``hybrid``: per layer, before any error is spent, the cheaper of ``isaac`` and ``sme`` on the
  quantizer's weights; a layer that goes dense keeps its exact weights (its layout is ``dense``).

Routing memory (``index_bits``): ``column`` and ``ou`` packing tag every used column slot with its output
column, cell group and sign set (``ceil(log2 M) + ceil(log2 G) + ceil(log2 S)`` bits); ``ou`` bands also
select the input of every used row slot (``ceil(log2 N)`` bits). Fixed wiring (tiles, dense) needs none.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np
from pydantic import Field

from . import signs
from .errors import ConflictError
from .hookspecs import hookimpl
from .params import StrategyParams
from .placement import assemble, bands_on_crossbars, block_rows, ceil_div, index_bits_for, pack_columns
from .types import Encoding, Geometry, Layout, MappedLayer, QuantizedLayer

SignScheme = Literal["differential", "offset", "segment-offset"]
Packing = Literal["tile", "column", "ou"]


def region_shape(packing: str, geometry: Geometry) -> tuple[int, int]:
    """(rows, cols) of the unit a packing allocates: plane-tile, plane-column of a row block, or segment-column."""
    if geometry.rows < 1 or geometry.cols < 1:
        raise ConflictError(f"crossbar must have at least one row and column, got {geometry.rows}x{geometry.cols}")
    if packing in ("tile", "dense"):
        return geometry.rows, geometry.cols
    if packing == "column":
        return geometry.rows, 1
    if packing == "ou":
        if geometry.ou_rows < 1 or geometry.rows % geometry.ou_rows:
            raise ConflictError(f"ou_rows={geometry.ou_rows} must divide the crossbar rows ({geometry.rows})")
        return geometry.ou_rows, 1
    raise ValueError(f"unknown packing {packing!r}; choose tile, column or ou")


def block_any(array: np.ndarray, block_rows_: int, block_cols: int) -> np.ndarray:
    """(..., N, M) bool -> (..., ceil(N/block_rows), ceil(M/block_cols)): any True in each block."""
    *lead, rows, cols = array.shape
    blocks_r, blocks_c = ceil_div(rows, block_rows_), ceil_div(cols, block_cols)
    pad = [(0, 0)] * len(lead) + [(0, blocks_r * block_rows_ - rows), (0, blocks_c * block_cols - cols)]
    return np.pad(array, pad).reshape(*lead, blocks_r, block_rows_, blocks_c, block_cols).any(axis=(-3, -1))


def _check_cell_bits(cell_bits: int) -> int:
    if not 1 <= cell_bits <= 8:
        raise ConflictError(f"cell_bits must be in 1..8, got {cell_bits}")
    return cell_bits


def tile_reads(encoding: Encoding, layout: Layout, tiles: np.ndarray) -> dict:
    """Reads of whole plane-tiles: one crossbar per True entry of ``tiles`` (S, G, P, RB, CB)."""
    rows, cols = layout.geometry.rows, layout.geometry.cols
    _, _, _, n_rows, n_cols = encoding.levels.shape
    s, g, p, rb, cb = np.nonzero(tiles)
    column = cb[:, None] * cols + np.arange(cols)
    logical = block_rows(rb, rows, n_rows)
    return dict(
        part=p,
        logical_rows=logical,
        physical_rows=np.broadcast_to(np.arange(rows), logical.shape),
        crossbar=np.arange(len(p)),
        crossbars=len(p),
        column=np.where(column < n_cols, column, -1),
        sign_set=np.broadcast_to(s[:, None], column.shape),
        group=np.broadcast_to(g[:, None], column.shape),
    )


class _Mapper:
    """Shared construction, ``encode`` and ``map`` of every mapper."""

    packing = "dense"

    def __init__(self, params):
        self.params = params
        self.sign = params.sign

    def layout(self, q: QuantizedLayer, geometry: Geometry) -> Layout:
        """The layout rules this mapper places ``q`` under."""
        region = region_shape(self.packing, geometry)
        _check_cell_bits(geometry.cell_bits)
        read_rows = geometry.ou_rows if self.packing == "ou" else geometry.rows
        capacity = geometry.cols if self.packing in ("column", "ou") else None
        return Layout(sign=self.sign, packing=self.packing, geometry=geometry, read_rows=read_rows,
                      region=region, capacity=capacity)

    def encode(self, q: QuantizedLayer, layout: Layout) -> Encoding:
        """``q.w_int`` as cell levels of the layout's cells under its sign scheme."""
        return signs.encode(q.w_int, q.layer.mask, q.bits, layout.geometry.cell_bits, layout.sign, layout.read_rows)

    def map(self, q: QuantizedLayer, geometry: Geometry, layout: Layout | None = None) -> MappedLayer:
        """Encode and place ``q`` (under ``layout``, default: this mapper's layout for ``q``)."""
        layout = self.layout(q, geometry) if layout is None else layout
        return self.place(q, self.encode(q, layout), layout)

    def _mapped(self, q, encoding, layout, reads: dict, index_bits: int = 0, **details) -> MappedLayer:
        geometry = layout.geometry
        placement = assemble(encoding, rows=geometry.rows, cols=geometry.cols, segment_rows=layout.read_rows,
                             index_bits=index_bits, **reads)
        return MappedLayer(
            quantized=q, encoding=encoding, placement=placement, layout=layout, label=self.label,
            details={"packing": layout.packing, "sign": layout.sign, "cell_bits": encoding.cell_bits,
                     "crossbar": f"{geometry.rows}x{geometry.cols}", **details},
        )


class IsaacMapper(_Mapper):
    """ISAAC-style dense mapping: a weight's ``S*G`` cells adjacent in one crossbar row."""

    class Params(StrategyParams):
        """sign: sign scheme. weight_bits: bits per weight incl. sign (None: the quantizer's bits;
        16 for the original ISAAC). cell_bits: bits per cell (None: the cell model's; 2 for ISAAC)."""

        sign: SignScheme = "offset"
        weight_bits: int | None = Field(None, ge=2, le=32)
        cell_bits: int | None = Field(None, ge=1, le=8)

    label = "isaac"

    def _weight_bits(self, q: QuantizedLayer) -> int:
        weight_bits = self.params.weight_bits or q.bits
        if weight_bits < q.bits:
            raise ConflictError(f"isaac weight_bits={weight_bits} is below the quantizer's {q.bits} bits")
        return weight_bits

    def cells_per_weight(self, q: QuantizedLayer, layout: Layout) -> int:
        """Adjacent cells one weight takes in a crossbar row: sign sets x cell groups."""
        sets = 2 if layout.sign == "differential" else 1
        return sets * -(-signs.encoded_bits(layout.sign, self._weight_bits(q)) // layout.geometry.cell_bits)

    def layout(self, q: QuantizedLayer, geometry: Geometry) -> Layout:
        cell_bits = self.params.cell_bits or geometry.cell_bits
        return super().layout(q, replace(geometry, cell_bits=_check_cell_bits(cell_bits)))

    def encode(self, q: QuantizedLayer, layout: Layout) -> Encoding:
        """``q.w_int`` re-encoded at ``weight_bits`` bits on the layout's cells."""
        return signs.encode(q.w_int, q.layer.mask, self._weight_bits(q), layout.geometry.cell_bits, layout.sign,
                            layout.read_rows)

    def place(self, q: QuantizedLayer, encoding: Encoding, layout: Layout) -> MappedLayer:
        n_sets, n_groups, parts, n_rows, n_cols = encoding.levels.shape
        rows, cols = layout.geometry.rows, layout.geometry.cols
        cells = n_sets * n_groups
        per_row = cols // cells
        if per_row == 0:
            raise ConflictError(f"isaac: a weight needs {cells} cells, more than the {cols} crossbar columns")
        row_blocks, col_blocks = ceil_div(n_rows, rows), ceil_div(n_cols, per_row)
        p, rb, cb = (a.ravel() for a in np.indices((parts, row_blocks, col_blocks)))
        slot = np.arange(per_row * cells)
        column = cb[:, None] * per_row + slot // cells
        logical = block_rows(rb, rows, n_rows)
        reads = dict(
            part=p, logical_rows=logical, physical_rows=np.broadcast_to(np.arange(rows), logical.shape),
            crossbar=np.arange(len(p)), crossbars=len(p), column=np.where(column < n_cols, column, -1),
            sign_set=np.broadcast_to(slot // n_groups % n_sets, column.shape),
            group=np.broadcast_to(slot % n_groups, column.shape),
        )
        return self._mapped(q, encoding, layout, reads, weight_bits=self._weight_bits(q), weights_per_row=per_row)


class BitplaneMapper(_Mapper):
    """Dense bit-slice mapping: one crossbar per (sign set, cell group, part, row block, column block)."""

    class Params(StrategyParams):
        """sign: sign scheme."""

        sign: SignScheme = "differential"

    label = "bitplane"

    def place(self, q: QuantizedLayer, encoding: Encoding, layout: Layout) -> MappedLayer:
        n_sets, n_groups, parts, n_rows, n_cols = encoding.levels.shape
        rows, cols = layout.region
        tiles = np.ones((n_sets, n_groups, parts, ceil_div(n_rows, rows), ceil_div(n_cols, cols)), dtype=bool)
        return self._mapped(q, encoding, layout, tile_reads(encoding, layout, tiles))


class SmeMapper(_Mapper):
    """Sparse bit-slice mapping: only the occupied allocation units of the packing are placed."""

    class Params(StrategyParams):
        """sign: sign scheme. packing: allocation unit (plane-tile, plane-column, operation-unit band)."""

        sign: SignScheme = "differential"
        packing: Packing = "column"

    label = "sme"

    def __init__(self, params: Params):
        super().__init__(params)
        self.packing = params.packing

    def place(self, q: QuantizedLayer, encoding: Encoding, layout: Layout) -> MappedLayer:
        n_sets, n_groups, parts, n_rows, n_cols = encoding.levels.shape
        geometry, (region_rows, region_cols) = layout.geometry, layout.region
        occupied = block_any(encoding.levels != 0, region_rows, region_cols)  # (S, G, P, NB, MB)
        if layout.packing == "tile":
            return self._mapped(q, encoding, layout, tile_reads(encoding, layout, occupied))
        part, block, column, sign_set, group = pack_columns(occupied, layout.capacity)
        logical = block_rows(block, region_rows, n_rows)
        tag_bits = index_bits_for(n_cols) + index_bits_for(n_groups) + index_bits_for(n_sets)
        index_bits = int((column >= 0).sum()) * tag_bits
        if layout.packing == "column":
            crossbar, band, crossbars = np.arange(len(part)), np.zeros(len(part), dtype=np.int64), len(part)
        else:  # ou: bands stacked on crossbars; each band row selects its input
            crossbar, band, crossbars = bands_on_crossbars(part, parts, geometry.rows // region_rows)
            index_bits += int((logical >= 0).sum()) * index_bits_for(n_rows)
        reads = dict(part=part, logical_rows=logical, physical_rows=band[:, None] * region_rows + np.arange(region_rows),
                     crossbar=crossbar, crossbars=crossbars, column=column, sign_set=sign_set, group=group)
        return self._mapped(q, encoding, layout, reads, index_bits, ou_rows=geometry.ou_rows)


class HybridMapper(_Mapper):
    """Per layer the cheaper (fewer crossbars) of ``isaac`` (same weight bits) and ``sme``, decided on the
    weights ``layout`` is asked for (the quantizer's, before orchestration spends error): a layer that
    goes dense gets the ``dense`` layout, which orchestrators and squeezers leave exact."""

    class Params(StrategyParams):
        """sign, packing: of the ``sme`` candidate. isaac_sign: sign scheme of the ``isaac`` candidate."""

        sign: SignScheme = "differential"
        packing: Packing = "column"
        isaac_sign: SignScheme = "offset"

    label = "hybrid"

    def __init__(self, params: Params):
        super().__init__(params)
        self.packing = params.packing
        self.isaac = IsaacMapper(IsaacMapper.Params(sign=params.isaac_sign))
        self.sme = SmeMapper(SmeMapper.Params(sign=params.sign, packing=params.packing))

    def _choice(self, layout: Layout) -> _Mapper:
        return self.isaac if layout.packing == "dense" else self.sme

    def layout(self, q: QuantizedLayer, geometry: Geometry) -> Layout:
        """The ``isaac`` layout where it needs no more crossbars than ``sme`` (and fits the crossbar)."""
        sparse, dense = self.sme.layout(q, geometry), self.isaac.layout(q, geometry)
        if dense.geometry.cols < self.isaac.cells_per_weight(q, dense):
            return sparse
        return sparse if self.sme.map(q, geometry, sparse).crossbars < self.isaac.map(q, geometry, dense).crossbars \
            else dense

    def encode(self, q: QuantizedLayer, layout: Layout) -> Encoding:
        return self._choice(layout).encode(q, layout)

    def place(self, q: QuantizedLayer, encoding: Encoding, layout: Layout) -> MappedLayer:
        mapped = self._choice(layout).place(q, encoding, layout)
        mapped.details["chosen"] = mapped.label
        mapped.label = self.label
        return mapped


@hookimpl
def sme_register_mappers(register):
    register("isaac", IsaacMapper)
    register("bitplane", BitplaneMapper)
    register("sme", SmeMapper)
    register("hybrid", HybridMapper)
