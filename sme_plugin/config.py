"""The run configuration: YAML -> validated, defaults filled, every strategy resolved by name.

Each strategy section is ``{name: ..., <params>}``; the params are validated against the
registered strategy's pydantic ``Params``. Every problem becomes one line naming the config path,
the bad value and the valid choices, raised together as one :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError
from .plugins import Registry
from .types import Geometry

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")

#: strategy sections in data-flow order (``dataset`` may be null: no accuracy run).
STRATEGY_SECTIONS = ("model", "dataset", "quantizer", "orchestrator", "mapper", "squeezer", "cell", "adc", "dac", "host")


class Section(BaseModel):
    """A strategy section before its params are checked: ``name`` plus anything."""

    model_config = ConfigDict(extra="allow")
    name: str


class CrossbarParams(BaseModel):
    """Keys of the ``mapper`` section shared by every mapper (removed before the mapper's own params).

    rows, cols: crossbar size in cells; ou_rows: rows per operation unit; depthwise: how grouped convs
    are laid out (``packed``: floor(rows / (k_h*k_w*c_in)) groups per crossbar on disjoint rows and
    columns; ``block-diagonal``: one block-diagonal matrix); baseline_sign: sign scheme of the ISAAC
    baseline at the same weight width (``offset`` is ISAAC's own).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    rows: int = Field(128, ge=2, le=4096)
    cols: int = Field(128, ge=2, le=4096)
    ou_rows: int = Field(16, ge=1, le=4096)
    depthwise: Literal["packed", "block-diagonal"] = "packed"
    baseline_sign: Literal["differential", "offset", "segment-offset"] = "offset"

    @model_validator(mode="after")
    def _ou_rows_tile_the_crossbar(self):
        if self.rows % self.ou_rows:
            raise ValueError(f"ou_rows = {self.ou_rows} must divide rows = {self.rows}")
        return self


class ActivationParams(BaseModel):
    """Activation quantization: ``bits`` magnitude bits per input, streamed through the DAC
    (signed inputs take two passes); each layer's static range comes from the calibration data."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    bits: int = Field(8, ge=1, le=16)


class RawConfig(BaseModel):
    """Top level of a config file."""

    model_config = ConfigDict(extra="forbid")
    model: Section
    dataset: Section | None
    quantizer: Section
    orchestrator: Section
    mapper: Section
    squeezer: Section
    cell: Section
    adc: Section
    dac: Section
    host: Section
    activations: ActivationParams = ActivationParams()
    seed: int = Field(0, ge=0)
    output: str = "sme-out"


@dataclass
class Strategy:
    """A resolved strategy: registered name, validated params, and the factory to build it."""

    kind: str
    name: str
    params: BaseModel
    factory: Any
    plugin: str

    def build(self):
        return self.factory(self.params)

    def as_dict(self) -> dict:
        return {"name": self.name, **self.params.model_dump(mode="json")}


@dataclass
class Config:
    """A validated configuration."""

    strategies: dict[str, Strategy | None]
    crossbar: CrossbarParams
    activations: ActivationParams
    seed: int
    output: str
    source: str

    def geometry(self, cell_bits: int) -> Geometry:
        c = self.crossbar
        return Geometry(rows=c.rows, cols=c.cols, ou_rows=c.ou_rows, cell_bits=cell_bits)

    def as_dict(self) -> dict:
        out = {kind: (s.as_dict() if s else None) for kind, s in self.strategies.items()}
        out["mapper"].update(self.crossbar.model_dump(mode="json"))
        out.update(activations=self.activations.model_dump(), seed=self.seed, output=self.output)
        return out


def _suggest(value: Any, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _lines(error: ValidationError, prefix: str, model: type[BaseModel], shared=()) -> list[str]:
    """One line per pydantic error: path, bad value, valid choices (``shared``: keys valid besides the model's)."""
    lines = []
    for item in error.errors():
        path = ".".join([prefix] * bool(prefix) + [str(p) for p in item["loc"]])
        if item["type"] == "extra_forbidden":
            fields = [*model.model_fields, *shared] if len(item["loc"]) == 1 else []
            valid = f"; valid keys: {', '.join(fields)}" if fields else ""
            lines.append(f"{path}: unknown key{_suggest(item['loc'][-1], fields)}{valid}")
        elif item["type"] == "literal_error":
            choices = re.findall(r"'([^']*)'", item["ctx"]["expected"])
            lines.append(
                f"{path}: {item['input']!r} is not one of {', '.join(choices)}{_suggest(item['input'], choices)}"
            )
        elif item["type"] == "missing":
            lines.append(f"{path}: missing")
        elif item["type"] == "value_error":
            lines.append(f"{path}: {item['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{path}: {item['msg']} (got {item['input']!r})")
    return lines


def _resolve(kind: str, section: Section, registry: Registry, shared=()) -> Strategy:
    params = dict(section.model_extra or {})
    registration = registry.get(kind, section.name, path=f"{kind}.name")
    params_model = registration.factory.Params
    try:
        validated = params_model.model_validate(params)
    except ValidationError as error:
        raise ConfigError("\n".join(_lines(error, kind, params_model, shared))) from None
    return Strategy(kind, section.name, validated, registration.factory, registration.plugin)


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML config file into a dict; errors name the file (and line)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(error, 'problem', error)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections, got {type(data).__name__}")
    return data


def merge(base: dict, override: dict) -> dict:
    """Sections of ``override`` replace or update those of ``base``: a section naming a different
    strategy replaces the base section; one naming the same strategy (or no name) updates its params."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and value.get("name", old.get("name")) == old.get("name"):
            merged[key] = {**old, **value}
        else:
            merged[key] = value
    return merged


def load_config(data: dict | str | Path | None, registry: Registry, source: str | None = None) -> Config:
    """Validate a config (a dict, a YAML path, or None for the embedded default) over the defaults.

    Raises :class:`ConfigError` with one line per problem.
    """
    defaults = read_yaml(DEFAULT_CONFIG)
    if data is None:
        data, source = {}, source or "embedded default"
    elif not isinstance(data, dict):
        source = source or str(data)
        data = read_yaml(data)
    raw_dict = merge(defaults, data)
    try:
        raw = RawConfig.model_validate(raw_dict)
    except ValidationError as error:
        raise ConfigError("\n".join(_lines(error, "", RawConfig))) from None
    mapper_params = dict(raw.mapper.model_extra or {})
    crossbar_keys = {k: mapper_params.pop(k) for k in list(mapper_params) if k in CrossbarParams.model_fields}
    try:
        crossbar = CrossbarParams.model_validate(crossbar_keys)
    except ValidationError as error:
        raise ConfigError("\n".join(_lines(error, "mapper", CrossbarParams))) from None
    raw.mapper = Section(name=raw.mapper.name, **mapper_params)
    strategies, problems = {}, []
    for kind in STRATEGY_SECTIONS:
        section = getattr(raw, kind)
        if section is None:
            strategies[kind] = None
            continue
        try:
            shared = CrossbarParams.model_fields if kind == "mapper" else ()
            strategies[kind] = _resolve(kind, section, registry, shared)
        except ConfigError as error:
            problems.append(str(error))
    if problems:
        raise ConfigError("\n".join(problems))
    return Config(strategies, crossbar, raw.activations, raw.seed, raw.output, source or "dict")
