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
from .errors import ConfigError, ConflictError, InputError
from .flow import LayerFlow, baseline_mappers, section
from .plugins import Registry

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
    """kind -> strategy object of every configured section (a null dataset is left out); one line per
    strategy that refuses its settings (a :class:`ConfigError`; anything else is a bug and propagates)."""
    stages, problems = {}, []
    for kind in STAGES:
        strategy = config.strategies.get(kind)
        if strategy is None:
            continue
        try:
            stages[kind] = strategy.build()
        except ConfigError as error:
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


def probe(config: Config, registry: Registry, stages: dict) -> None:
    """Push a synthetic layer through the mapping stages and the baselines, as ``run`` does per layer."""
    geometry = config.geometry(stages["cell"].bits)
    layer = probe_layer(min(geometry.rows + 7, 300), min(geometry.cols + 5, 300), config.seed)
    with section("quantizer"):
        q = stages["quantizer"].quantize(layer)
    flow = LayerFlow(stages["orchestrator"], stages["mapper"], stages["squeezer"],
                     baseline_mappers(registry, config.crossbar.baseline_sign), geometry)
    if getattr(stages["orchestrator"], "needs_inputs", False) and stages.get("dataset") is None:
        raise ConflictError("orchestrator.error: output needs a dataset (calibration inputs)")
    layout = flow.layout(q)
    flow.map(q, flow.orchestrate([q], [layout])[0], layout)


def check(config: Config, registry: Registry) -> None:
    """Raise what ``sme run`` would raise before running the model (ConfigError, InputError)."""
    check_inputs(config)
    stages = build_stages(config)
    probe(config, registry, stages)
