"""The per-layer mapping flow shared by ``sme run`` and ``sme validate`` (numpy only, no torch):
layout, orchestration, placement, squeeze-out, and the baseline mappings of the same layer."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from .errors import ConflictError
from .types import Geometry, Layout, MappedLayer, QuantizedLayer

#: The baselines every run reports next to the configured mapping: label -> (mapper, params);
#: ``isaac`` takes the mapper section's ``baseline_sign``.
BASELINES = {
    "isaac": ("isaac", {}),  # ISAAC dense mapping at the quantizer's width, same cells
    "isaac16": ("isaac", {"weight_bits": 16, "cell_bits": 2, "sign": "offset"}),  # ISAAC's own design point
    "bitplane": ("bitplane", {}),  # bit-slice, every plane-tile allocated
}


@contextmanager
def section(name: str):
    """Name the config section at fault in a strategy's :class:`ConflictError` (settings that cannot work
    together). Any other exception is a bug and passes through unchanged."""
    try:
        yield
    except ConflictError as error:
        message = str(error)
        raise ConflictError(message if message.startswith(name) else f"{name}: {message}") from None


def baseline_mappers(registry, baseline_sign: str) -> dict[str, tuple[object, dict]]:
    """label -> (mapper object, its params) of each of :data:`BASELINES`."""
    mappers = {}
    for label, (name, params) in BASELINES.items():
        if label == "isaac":
            params = {"sign": baseline_sign}
        factory = registry.get("mapper", name).factory
        mappers[label] = (factory(factory.Params(**params)), {"mapper": name, **params})
    return mappers


@dataclass
class LayerFlow:
    """The mapping stages of a run: the configured orchestrator, mapper and squeezer and the baselines."""

    orchestrator: object
    mapper: object
    squeezer: object
    baselines: dict
    geometry: Geometry

    def layout(self, q: QuantizedLayer) -> Layout:
        with section("mapper"):
            return self.mapper.layout(q, self.geometry)

    def orchestrate(self, layers: list[QuantizedLayer], layouts: list[Layout], grams=None) -> list[QuantizedLayer]:
        """The orchestrated layers; ``grams`` (name -> (P, N, N) input second moments) only for an orchestrator
        that ``needs_inputs`` (others keep the two-argument call)."""
        with section("orchestrator"):
            if grams is None:
                return self.orchestrator.orchestrate(layers, layouts)
            own = {q.layer.name: grams.get(q.layer.name) for q in layers}
            return self.orchestrator.orchestrate(layers, layouts, grams=own)

    def map(self, before: QuantizedLayer, after: QuantizedLayer, layout: Layout) -> dict[str, MappedLayer]:
        """label -> mapping of one layer: ``sme`` = the configured mapper and squeezer on the orchestrated
        weights ``after``, each baseline on the quantizer's weights ``before``."""
        with section("mapper"):
            placed = self.mapper.map(after, self.geometry, layout)
        with section("squeezer"):
            mappings = {"sme": self.squeezer.squeeze(placed, self.mapper)}
        for label, (mapper, _) in self.baselines.items():
            with section(f"mapper (baseline {label})"):
                mappings[label] = mapper.map(before, self.geometry)
        return mappings
