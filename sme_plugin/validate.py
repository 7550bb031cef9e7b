"""``sme validate``: reject what ``sme run`` would reject, without running the model.

Beyond the config checks of :func:`~sme_plugin.config.load_config` this builds every strategy
object (a strategy's constructor refuses settings it cannot work with), checks the input files the
config names, and pushes a small synthetic layer through quantize -> orchestrate -> map -> squeeze and
through every baseline mapping: that catches settings that only conflict across sections (``kbits``
k=2 with 2-bit weights, a crossbar too narrow for the ISAAC baseline). It needs numpy only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .config import Config, short
from .errors import ConfigError, InputError
from .plugins import Registry

#: the baselines every run maps next to the configured mapping (as ``pipeline.BASELINES``).
BASELINES = {
    "isaac": ("isaac", None),  # ``sign`` = the mapper section's baseline_sign
    "isaac16": ("isaac", {"weight_bits": 16, "cell_bits": 2, "sign": "offset"}),
    "bitplane": ("bitplane", {}),
}
#: stages built from the config, in data-flow order.
STAGES = ("quantizer", "orchestrator", "mapper", "squeezer", "cell", "adc", "dac", "host", "model", "dataset")


def _problem(kind: str, error: Exception) -> str:
    text = " ".join(str(error).split())[:300]
    return text if text.startswith(f"{kind}") else f"{kind}: {text}"


def check_inputs(config: Config) -> None:
    """The files a config names exist and can be read (model weights)."""
    model = config.strategies.get("model")
    weights = getattr(model.params, "weights", None) if model else None
    if isinstance(weights, (str, os.PathLike)) and str(weights):
        path = Path(weights)
        if not path.is_file():
            raise InputError(f"model.weights: {short(str(path))} is not a file")
        if not os.access(path, os.R_OK):
            raise InputError(f"model.weights: {short(str(path))} cannot be read")


def build_stages(config: Config) -> dict:
    """Every strategy object of the config; one line per strategy that refuses its settings."""
    stages, problems = {}, []
    for kind in STAGES:
        strategy = config.strategies.get(kind)
        if strategy is None:
            continue
        try:
            stages[kind] = strategy.build()
        except (ValueError, ConfigError) as error:
            problems.append(_problem(kind, error))
    if problems:
        raise ConfigError("\n".join(problems))
    return stages


def probe_layer(rows: int, cols: int, seed: int = 0):
    """A synthetic Linear layer of ``rows`` x ``cols`` weights (spanning several crossbar blocks)."""
    from .types import Layer

    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((1, rows, cols)).astype(np.float32) * 0.1
    weight[0, rng.random((rows, cols)) < 0.3] = 0.0  # some sparsity, like real weights
    return Layer(name="probe", kind="linear", weight=weight, mask=np.ones_like(weight, dtype=bool), bias=None,
                 out_features=cols)


def _stage(kind: str, call, *args):
    try:
        return call(*args)
    except (ValueError, ConfigError) as error:
        raise ConfigError(_problem(kind, error)) from None


def probe(config: Config, registry: Registry, stages: dict) -> None:
    """Push a synthetic layer through the mapping stages and the baselines, as ``run`` does per layer."""
    geometry = config.geometry(stages["cell"].bits)
    layer = probe_layer(min(geometry.rows + 7, 300), min(geometry.cols + 5, 300), config.seed)
    mapper, quantizer = stages["mapper"], stages["quantizer"]
    q = _stage("quantizer", quantizer.quantize, layer)
    if callable(getattr(mapper, "layout", None)):
        layouts = [_stage("mapper", mapper.layout, q, geometry)]
        orchestrated = _stage("orchestrator", stages["orchestrator"].orchestrate, [q], layouts)
    else:  # mappers without layout(): the orchestrator gets the mapping context
        from . import types

        context = types.MappingContext(geometry=geometry, sign=mapper.sign, packing=mapper.packing)
        orchestrated = _stage("orchestrator", stages["orchestrator"].orchestrate, [q], context)
    mapped = _stage("mapper", mapper.map, orchestrated[0], geometry)
    _stage("squeezer", stages["squeezer"].squeeze, mapped, mapper)
    for label, (name, params) in BASELINES.items():
        if params is None:
            params = {"sign": config.crossbar.baseline_sign}
        factory = registry.get("mapper", name).factory
        baseline = factory(factory.Params(**params))
        _stage(f"mapper (baseline {label})", baseline.map, q, geometry)


def check(config: Config, registry: Registry) -> None:
    """Raise what ``sme run`` would raise before running the model (ConfigError, InputError)."""
    check_inputs(config)
    stages = build_stages(config)
    probe(config, registry, stages)
