"""The run configuration: YAML -> validated, defaults filled, every strategy resolved by name.

Each strategy section is ``{name: ..., <params>}``; the params are validated against the
registered strategy's pydantic ``Params``. Every problem becomes one line naming the config path,
the bad value and the valid choices; all problems of a config (every section) are raised together as
one :class:`ConfigError` of at most :data:`MAX_ERROR_LINES` lines.

YAML is read defensively: a config file is at most :data:`MAX_CONFIG_BYTES` of UTF-8 text, at most
:data:`MAX_DEPTH` levels deep, and at most :data:`MAX_NODES` values once its aliases are expanded
(a "billion laughs" document is refused before it is built).
"""

from __future__ import annotations

import difflib
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError, InputError
from .params import StrategyParams
from .plugins import Registry
from .types import Geometry

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")

#: strategy sections in data-flow order (``dataset`` may be null: no accuracy run).
STRATEGY_SECTIONS = ("model", "dataset", "quantizer", "orchestrator", "mapper", "squeezer", "cell", "adc", "dac", "host")
#: every top-level key of a config.
TOP_KEYS = (*STRATEGY_SECTIONS, "activations", "finetune", "seed", "output", "plugins")

MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 20_000
MAX_ERROR_LINES = 20
MAX_NAME = 64
#: seeds are unsigned 32-bit integers (numpy's and torch's generators both take them).
MAX_SEED = 2**32 - 1

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = _short.maxdict = _short.maxtuple = _short.maxset = 4
_short.maxlevel = 2


def short(value: Any) -> str:
    """A bounded repr of a config value for error messages."""
    return _short.repr(value)


class Section(BaseModel):
    """A strategy section before its params are checked: ``name`` plus anything."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str = Field(min_length=1, max_length=MAX_NAME)


class CrossbarParams(BaseModel):
    """Keys of the ``mapper`` section shared by every mapper (removed before the mapper's own params).

    rows, cols: crossbar size in cells; ou_rows: rows per operation unit; depthwise: how grouped convs
    are laid out (``packed``: floor(rows / (k_h*k_w*c_in)) groups per crossbar on disjoint rows and
    columns; ``block-diagonal``: one block-diagonal matrix); baseline_sign: sign scheme of the ISAAC
    baseline at the same weight width (``offset`` is ISAAC's own).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    rows: int = Field(128, ge=2, le=4096)
    cols: int = Field(128, ge=2, le=4096)
    ou_rows: int | None = Field(None, ge=1, le=4096)
    depthwise: Literal["packed", "block-diagonal"] = "packed"
    baseline_sign: Literal["differential", "offset", "segment-offset"] = "offset"

    @model_validator(mode="after")
    def _ou_rows_tile_the_crossbar(self):
        if self.ou_rows is None:  # not given: the largest divisor of rows up to 16
            object.__setattr__(self, "ou_rows", max(d for d in range(1, 17) if self.rows % d == 0))
        if self.rows % self.ou_rows:
            raise ValueError(f"ou_rows = {self.ou_rows} must divide rows = {self.rows}")
        return self


class ActivationParams(BaseModel):
    """Activation quantization: ``bits`` magnitude bits per input, streamed through the DAC
    (signed inputs take two passes); each layer's static range comes from the calibration data."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    bits: int = Field(8, ge=1, le=16)


class FinetuneParams(StrategyParams):
    """The ``finetune:`` section (null: no fine-tuning); run by :func:`sme_plugin.finetune.finetune`.

    Attributes
    ----------
    method : {"ste", "admm", "l1-bitslice", "l1"}
        See the module docstring.
    epochs : int
        Passes over the training data (ADMM: before the hard projection).
    lr : float
        Adam learning rate.
    rho, rho_growth : float
        ADMM penalty (integer units, summed over weights) and its growth factor per Z/U update.
    admm_steps : int
        Optimiser steps between two ADMM Z/U updates.
    polish_epochs : int
        ADMM: STE epochs after the hard projection (the masked fine-tune).
    alpha : float
        Weight of the (bit-slice) L1 term of ``l1-bitslice`` / ``l1``.
    slice_bits : int
        Bits per slice of ``l1-bitslice`` (2 in the paper; the cell bits of the crossbars).
    batch_size : int
        Samples per step (in-memory data and streams that can be re-batched).
    seed : int
        Seed of the batch order, the augmentation and anything else random.
    data : {"train", "distill"}
        Labelled cross-entropy, or distillation from the float model on unlabelled inputs.
    temperature : float
        Distillation temperature.
    augment : bool
        Distillation: random shifts (up to 1/8 of the image) and horizontal flips of the inputs.
    checkpoint : str or None
        Where the fine-tuned state is written (``.pt`` plus a ``.json`` recipe next to it); None: nowhere.
    reuse : bool
        Load ``checkpoint`` instead of training when it exists and its recipe matches.
    """

    method: Literal["ste", "admm", "l1-bitslice", "l1"] = "ste"
    epochs: int = Field(2, ge=0, le=10_000)
    lr: float = Field(1e-3, gt=0, le=10)
    rho: float = Field(1e-3, gt=0)
    rho_growth: float = Field(1.3, ge=1)
    admm_steps: int = Field(10, ge=1)
    polish_epochs: int = Field(1, ge=0, le=10_000)
    alpha: float = Field(1.0, ge=0)
    slice_bits: int = Field(2, ge=1, le=8)
    batch_size: int = Field(32, ge=1, le=1 << 20)
    seed: int = Field(0, ge=0)
    data: Literal["train", "distill"] = "train"
    temperature: float = Field(1.0, gt=0, le=100)
    augment: bool = True
    checkpoint: str | None = None
    reuse: bool = False

    @model_validator(mode="after")
    def _reuse_needs_checkpoint(self):
        if self.reuse and self.checkpoint is None:
            raise ValueError("reuse: true needs a checkpoint path")
        return self


class Scalars(BaseModel):
    """The top-level keys that are not strategy sections."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    activations: ActivationParams = ActivationParams()
    finetune: FinetuneParams | None = None
    seed: int = Field(0, ge=0, le=MAX_SEED, strict=True)
    output: str = Field("sme-out", strict=True)


@dataclass
class Strategy:
    """A resolved strategy: registered name, validated params, and the factory to build it."""

    kind: str
    name: str
    params: BaseModel
    factory: Any
    plugin: str

    def build(self):
        """The strategy object, checked against its kind's contract (:mod:`~sme_plugin.contracts`)."""
        from .contracts import check_strategy

        built = self.factory(self.params)
        check_strategy(self.kind, self.name, built, self.plugin)
        return built

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
    plugins: tuple[str, ...] = field(default=())
    finetune: FinetuneParams | None = None

    def geometry(self, cell_bits: int) -> Geometry:
        c = self.crossbar
        return Geometry(rows=c.rows, cols=c.cols, ou_rows=c.ou_rows, cell_bits=cell_bits)

    def as_dict(self) -> dict:
        out = {kind: (s.as_dict() if s else None) for kind, s in self.strategies.items()}
        out["mapper"].update(self.crossbar.model_dump(mode="json"))
        out.update(activations=self.activations.model_dump(), seed=self.seed, output=self.output,
                   finetune=self.finetune.model_dump(mode="json") if self.finetune else None)
        if self.plugins:
            out["plugins"] = list(self.plugins)
        return out


def _suggest(value: Any, choices) -> str:
    close = difflib.get_close_matches(str(value)[:MAX_NAME], [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _lines(error: ValidationError, prefix: str, model: type[BaseModel] | None, shared=()) -> list[str]:
    """One line per pydantic error: path, bad value, valid choices (``shared``: keys valid besides the model's)."""
    lines = []
    for item in error.errors():
        path = ".".join([prefix] * bool(prefix) + [str(p)[:MAX_NAME] for p in item["loc"]])
        if item["type"] == "extra_forbidden":
            fields = [*model.model_fields, *shared] if model is not None and len(item["loc"]) == 1 else []
            valid = f"; valid keys: {', '.join(fields)}" if fields else ""
            lines.append(f"{path}: unknown key{_suggest(item['loc'][-1], fields)}{valid}")
        elif item["type"] == "literal_error":
            choices = re.findall(r"'([^']*)'", item["ctx"]["expected"])
            lines.append(
                f"{path}: {short(item['input'])} is not one of {', '.join(choices)}{_suggest(item['input'], choices)}"
            )
        elif item["type"] == "missing":
            lines.append(f"{path}: missing")
        elif item["type"] == "value_error":
            lines.append(f"{path}: {item['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{path}: {item['msg']} (got {short(item['input'])})")
    return lines


def _bounded(lines: list[str]) -> str:
    """At most :data:`MAX_ERROR_LINES` lines of at most 300 characters each."""
    lines = [line if len(line) <= 300 else line[:297] + "..." for line in lines]
    if len(lines) > MAX_ERROR_LINES:
        lines = [*lines[: MAX_ERROR_LINES - 1], f"... and {len(lines) - MAX_ERROR_LINES + 1} more problems"]
    return "\n".join(lines)


def _resolve(kind: str, section: Section, registry: Registry, shared=()) -> Strategy:
    params = dict(section.model_extra or {})
    bad_keys = [key for key in params if not isinstance(key, str)]
    if bad_keys:
        raise ConfigError(f"{kind}: keys must be names, got {short(bad_keys[0])}")
    registration = registry.get(kind, section.name, path=f"{kind}.name")
    params_model = registration.factory.Params
    try:
        validated = params_model.model_validate(params)
    except ValidationError as error:
        raise ConfigError("\n".join(_lines(error, kind, params_model, shared))) from None
    return Strategy(kind, section.name, validated, registration.factory, registration.plugin)


def _check_tree(node: yaml.Node, where: str) -> None:
    """Refuse documents nested deeper than MAX_DEPTH or with more than MAX_NODES values once aliases
    are expanded (aliases share nodes, so a few lines can stand for billions of values)."""
    stack, count = [(node, 1)], 0
    while stack:
        current, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ConfigError(f"{where}: config too large: more than {MAX_NODES} values once YAML aliases are expanded")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: config nested deeper than {MAX_DEPTH} levels")
        if isinstance(current, yaml.MappingNode):
            stack.extend((child, depth + 1) for pair in current.value for child in pair)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in current.value)


def parse_yaml(text: str, where: str) -> Any:
    """Parse one YAML document defensively (depth, expanded size); errors name ``where`` (and line)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_tree(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}:{line} invalid YAML ({short(problem)[1:-1]})") from None
    except RecursionError:
        raise ConfigError(f"{where}: config nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML config file into a dict; errors name the file (and line).

    A file that cannot be read, is larger than MAX_CONFIG_BYTES or is not UTF-8 is an
    :class:`InputError`; a file that is not YAML or not a mapping is a :class:`ConfigError`.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise InputError(f"{path}: cannot read config ({error.strerror or error})") from None
    except ValueError as error:  # e.g. a NUL in the path
        raise InputError(f"{short(str(path))}: cannot read config ({error})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise InputError(f"{path}: config larger than {MAX_CONFIG_BYTES // 1024} KiB; is it really a config file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: config is not UTF-8 text (byte {raw[error.start]:#04x} at offset {error.start})") from None
    data = parse_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections, got {type(data).__name__}")
    return data


def output_problem(value: Any) -> str | None:
    """Why ``value`` cannot be an output directory path (None when it can)."""
    if not isinstance(value, str):
        return f"must be a directory path, got {short(value)}"
    if not value.strip():
        return "must not be empty (use '.' for the current directory)"
    if "\0" in value:
        return f"contains a NUL character: {short(value)}"
    encoded = value.encode("utf-8", "surrogateescape")
    if len(encoded) > 4096:
        return f"path longer than 4096 bytes ({short(value)})"
    long_parts = [part for part in Path(value).parts if len(part.encode("utf-8", "surrogateescape")) > 255]
    if long_parts:
        return f"path component longer than 255 bytes ({short(long_parts[0])})"
    return None


_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def plugin_modules(data: dict) -> list[str]:
    """The ``plugins:`` list of a config document (module names to load as plugins); checked here
    because plugins must be registered before the rest of the config can be validated."""
    modules = data.get("plugins", []) if isinstance(data, dict) else []
    if modules is None:
        return []
    if not isinstance(modules, list) or len(modules) > 32:
        raise ConfigError(f"plugins: must be a list of at most 32 module names, got {short(modules)}")
    bad = [m for m in modules if not isinstance(m, str) or len(m) > 200 or not _MODULE.match(m)]
    if bad:
        raise ConfigError(f"plugins: {short(bad[0])} is not a module name (e.g. my_package.sme_plugin)")
    return list(modules)


def merge(base: dict, override: dict) -> dict:
    """Sections of ``override`` replace or update those of ``base``: a section naming a different
    strategy replaces the base section; one naming the same strategy (or no name) updates its params.

    A mapper section that sets ``rows`` but not ``ou_rows`` drops the base's ``ou_rows``, so that it
    defaults to the largest divisor of ``rows`` up to 16 (``rows: 2`` then just works)."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and value.get("name", old.get("name")) == old.get("name"):
            merged[key] = {**old, **value}
            if key == "mapper" and "rows" in value and "ou_rows" not in value:
                merged[key].pop("ou_rows", None)
        else:
            merged[key] = value
    return merged


def load_config(data: dict | str | Path | None, registry: Registry, source: str | None = None) -> Config:
    """Validate a config (a dict, a YAML path, or None for the embedded default) over the defaults.

    Raises :class:`ConfigError` with one line per problem, every section checked.
    """
    defaults = read_yaml(DEFAULT_CONFIG)
    if data is None:
        data, source = {}, source or "embedded default"
    elif not isinstance(data, dict):
        source = source or str(data)
        data = read_yaml(data)
    raw = merge(defaults, data)
    problems: list[str] = []
    unknown = [key for key in raw if key not in TOP_KEYS]
    for key in unknown:
        problems.append(f"{short(key)[1:-1] if isinstance(key, str) else short(key)}: unknown key"
                        f"{_suggest(key, TOP_KEYS)}; valid keys: {', '.join(TOP_KEYS)}")
    scalars_data = {key: raw[key] for key in Scalars.model_fields if key in raw}
    try:
        scalars = Scalars.model_validate(scalars_data)
    except ValidationError as error:
        problems += _lines(error, "", Scalars)
        scalars = None
    if scalars is not None:
        why = output_problem(scalars.output)
        if why:
            problems.append(f"output: {why}")
    try:
        plugins = plugin_modules(raw)
    except ConfigError as error:
        problems.append(str(error))

    sections: dict[str, Section | None] = {}
    for kind in STRATEGY_SECTIONS:
        value = raw.get(kind)
        if value is None and kind == "dataset":
            sections[kind] = None
            continue
        if not isinstance(value, dict):
            problems.append(f"{kind}: must be a section {{name: ..., <params>}}, got {short(value)}")
            continue
        try:
            sections[kind] = Section.model_validate(value)
        except ValidationError as error:
            problems += _lines(error, kind, None)

    crossbar = None
    if "mapper" in sections:
        mapper_params = dict(sections["mapper"].model_extra or {})
        crossbar_keys = {k: mapper_params.pop(k) for k in list(mapper_params) if k in CrossbarParams.model_fields}
        try:
            crossbar = CrossbarParams.model_validate(crossbar_keys)
        except ValidationError as error:
            problems += _lines(error, "mapper", CrossbarParams)
        sections["mapper"] = Section(name=sections["mapper"].name, **mapper_params)

    strategies: dict[str, Strategy | None] = {}
    for kind, section in sections.items():
        if section is None:
            strategies[kind] = None
            continue
        try:
            shared = CrossbarParams.model_fields if kind == "mapper" else ()
            strategies[kind] = _resolve(kind, section, registry, shared)
        except ConfigError as error:
            problems += str(error).splitlines()
    if problems:
        raise ConfigError(_bounded(problems))
    return Config(strategies, crossbar, scalars.activations, scalars.seed, scalars.output, source or "dict",
                  tuple(plugins), scalars.finetune)
