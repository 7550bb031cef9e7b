"""The data flow of one run: model -> layers -> quantize -> orchestrate -> map -> squeeze -> costs
-> host -> report dict. Each stage is a strategy resolved from the config."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from . import __version__
from .config import Config
from .costs import Periphery, layer_costs, total_costs
from .errors import ConfigError, ConflictError, WeightsError
from .finetune import PATTERN_METHODS, finetune
from .flow import LayerFlow, baseline_mappers, section
from .host import Simulation
from .layers import extract_layers, fold_batchnorm, unfolded_batchnorms
from .orchestrate import relative_error
from .plugins import Registry
from .simulator import calibrate_activations, digital_model, run_batches
from .types import Batches, Dataset, Layer, MappedLayer, ModelBundle, QuantizedLayer
from .validate import build_stages

#: mappings whose accuracy the host measures: SME and the ISAAC mapping of the same weights on the same cells
SIMULATED = ("sme", "isaac")
#: the accuracy figures :func:`run` can measure: float model, digital integer models (the quantizer's and
#: SME's final weights), each simulated mapping of :data:`SIMULATED`, and each layer's output error.
MEASURES = frozenset({"float", "quantizer_only", "quantized", *SIMULATED, "output_error"})
log = logging.getLogger(__name__)
#: progress bars go to stderr (results go to stdout)
STDERR = Console(stderr=True)


@dataclass
class Stages:
    """The strategy objects of a run, built from the config."""

    model: object
    dataset: object | None
    quantizer: object
    orchestrator: object
    mapper: object
    squeezer: object
    cell: object
    adc: object
    dac: object
    host: object

    @classmethod
    def build(cls, config: Config) -> "Stages":
        """Every strategy object of ``config`` (:func:`sme_plugin.validate.build_stages`)."""
        built = build_stages(config)
        return cls(**{kind: built.get(kind) for kind in cls.__dataclass_fields__})


def load_dataset(stages: "Stages", bundle: ModelBundle) -> Dataset | None:
    """The configured dataset (None when ``dataset: null``), checked against the model's input shape."""
    strategy = stages.dataset
    if strategy is None:
        return None
    dataset = strategy.load().with_preprocess(bundle.preprocess)
    first = next(iter(dataset.test.batched(1)), None)
    if first is None:
        raise ConfigError(f"dataset.name: {dataset.name!r} has no test samples")
    sample = tuple(first[0].shape[1:])
    if sample != tuple(bundle.input_shape):
        raise ConfigError(
            f"dataset.name: {dataset.name!r} gives samples of shape {sample} but model {bundle.name!r} takes "
            f"{tuple(bundle.input_shape)}; choose a matching dataset or dataset: null"
        )
    return dataset


def check_finite(layers: list[Layer]) -> None:
    for layer in layers:
        if not np.isfinite(layer.weight).all():
            raise WeightsError(f"layer {layer.name}: weights contain NaN or Inf")
        if layer.bias is not None and not np.isfinite(layer.bias).all():
            raise WeightsError(f"layer {layer.name}: bias contains NaN or Inf")


def bit_sparsity(q: QuantizedLayer) -> list[float]:
    """Zero fraction of each magnitude bit plane (LSB first) over the layer's existing weights."""
    counts = np.bincount(np.abs(q.w_int[q.layer.mask]), minlength=1 << (q.bits - 1))  # weights per magnitude
    if not counts.sum():
        return []
    ones = (np.arange(counts.size)[:, None] >> np.arange(q.bits - 1)) & 1  # (magnitudes, planes)
    return [round(float(v), 4) for v in 1.0 - counts @ ones / counts.sum()]


def stored_sparsity(mapped: MappedLayer) -> list[float]:
    """Zero fraction of the cells of each cell group (LSB group first) that the mapping stores, over every
    sign set and existing weight: the sparsity SME squeezes out (orchestrated, sign-encoded planes).
    Levels are 0 where the layer has no weight, so those positions only add to the zero count."""
    levels = mapped.encoding.levels  # (S, G, P, N, M)
    cells = levels.shape[0] * int(mapped.quantized.layer.mask.sum())
    if not cells:
        return []
    nonzero = np.count_nonzero(levels.reshape(levels.shape[0], levels.shape[1], -1), axis=2).sum(axis=0)
    return [round(float(v), 4) for v in 1.0 - nonzero / cells]


def squared_errors(before: QuantizedLayer, after: QuantizedLayer) -> tuple[float, float]:
    """(||W' - W||^2, ||W||^2) of one layer in real units; summed over layers they give the model's
    relative weight error without holding every layer's weights."""
    return (float(np.square(after.dequantized() - before.dequantized()).sum()),
            float(np.square(before.dequantized()).sum()))


#: what the report's accuracy figures measure, by whether the dataset is labelled
METRICS = {True: "top-1 accuracy", False: "top-1 agreement with the float model"}


def agreement_batches(model: torch.nn.Module, batches: Batches) -> Batches:
    """``batches`` of (inputs, labels) relabelled with ``model``'s top-1 predictions (computed once), so
    that :func:`accuracy` on them is top-1 agreement with ``model`` (unlabelled data)."""
    model.eval()
    with torch.no_grad():
        reference = torch.cat([model(inputs).argmax(dim=1) for inputs, _ in batches] or [torch.zeros(0, dtype=torch.long)])

    def read(batch_size, preprocess):
        offset = 0
        for inputs, _ in batches.batched(batch_size):
            yield inputs, reference[offset : offset + len(inputs)]
            offset += len(inputs)

    return Batches(read, batches.samples, batches.batch_size)


def accuracy(model: torch.nn.Module, batches, label: str = "evaluate", progress: bool = False) -> float:
    """Top-1 accuracy in percent over ``batches`` of (inputs, labels) (e.g. a dataset's ``test``)."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for inputs, labels in track(batches, label, disable=not progress, console=STDERR):
            correct += int((model(inputs).argmax(dim=1) == labels).sum())
            total += len(labels)
    return round(100.0 * correct / max(total, 1), 3)


def layer_report(before: QuantizedLayer, sme: MappedLayer, costs: dict[str, dict]) -> dict:
    """The report entry of one layer: shape, crossbars per mapping label, ADC bits, sparsity, costs."""
    layer, own = before.layer, costs["sme"]
    return {
        "name": layer.name,
        "kind": layer.kind,
        "rows": layer.rows,
        "cols": layer.cols,
        "parts": layer.parts,
        "weights": layer.n_weights,
        "crossbars": {label: c["crossbars"] for label, c in costs.items()},
        "adc_bits": {
            "lossless_max": own["adc_bits_lossless_max"],
            "lossless_mean": own["adc_bits_lossless_mean"],
            "used_max": own["adc_bits_used_max"],
            "lossy_reads_fraction": own["lossy_reads_fraction"],
            "baseline_lossless_max": costs["isaac"]["adc_bits_lossless_max"],
        },
        "bit_sparsity": bit_sparsity(sme.quantized),
        "bit_sparsity_before": bit_sparsity(before),
        "stored_sparsity": stored_sparsity(sme),
        "weight_error": round(relative_error(before, sme.quantized), 5),
        "mapping": sme.details,
        "index_bits": sme.placement.index_bits,
        "costs": costs,
    }


def crossbar_totals(costs_by_label: dict[str, list[dict]]) -> tuple[dict, dict]:
    """(crossbars per label plus ``baseline`` = ``isaac``, reductions ``vs_<label>`` = label / sme)."""
    crossbars = {label: sum(c["crossbars"] for c in costs) for label, costs in costs_by_label.items()}
    crossbars["baseline"] = crossbars["isaac"]
    sme = crossbars["sme"]
    reductions = {f"vs_{label}": round(n / sme, 4) if sme else None
                  for label, n in crossbars.items() if label not in ("sme", "baseline")}
    return crossbars, reductions


def run(config: Config, registry: Registry, progress: bool = False, measure: frozenset[str] = MEASURES) -> dict:
    """Run the whole pipeline for a validated config; returns the report dict.

    measure: the accuracy figures to compute when a dataset is configured (a subset of :data:`MEASURES`;
    the others stay None); empty: none (the dataset then only feeds calibration: data-aware
    orchestration, fine-tuning)."""
    timing, started = {}, time.perf_counter()

    def lap(name):
        nonlocal started
        now = time.perf_counter()
        timing[name] = round(now - started, 3)
        started = now

    torch.manual_seed(config.seed)
    stages = Stages.build(config)
    bundle = stages.model.build()
    folded = fold_batchnorm(bundle.module)
    unfolded = unfolded_batchnorms(folded)
    if unfolded:
        log.warning("%d BatchNorm layer(s) could not be folded into a preceding conv and run unfolded, in float: %s",
                    len(unfolded), ", ".join(unfolded[:5]) + (" ..." if len(unfolded) > 5 else ""))
    layers = extract_layers(folded, bundle.input_shape, config.crossbar.depthwise, config.crossbar.rows)
    check_finite(layers)
    dataset = load_dataset(stages, bundle)
    lap("model")

    geometry = config.geometry(stages.cell.bits)
    log.info("quantize %d layers", len(layers))
    with section("quantizer"):
        quantized = [stages.quantizer.quantize(layer) for layer in track(layers, "quantize", disable=not progress,
                                                                          console=STDERR)]
    baselines = baseline_mappers(registry, config.crossbar.baseline_sign)
    flow = LayerFlow(stages.orchestrator, stages.mapper, stages.squeezer, baselines, geometry)
    tuned = None
    if config.finetune is not None and config.finetune.method not in PATTERN_METHODS:  # training-time methods
        tuned = finetune_layers(config, folded, quantized, None, dataset, bundle, progress)
        folded, quantized = tuned.model, tuned.quantized
    layouts = [flow.layout(q) for q in quantized]
    grams = None
    if getattr(stages.orchestrator, "needs_inputs", False):  # data-aware orchestration: calibration inputs' H
        if dataset is None:
            raise ConflictError("orchestrator.error: output needs a dataset (calibration inputs)")
        from .activations import input_gram

        log.info("input second moments of %d layers on the calibration inputs", len(quantized))
        grams = input_gram(folded, [q for q, layout in zip(quantized, layouts) if layout.sparse], dataset.calibration)
    keep_patterns = config.finetune is not None and config.finetune.method in PATTERN_METHODS
    joint = not stages.orchestrator.per_layer or keep_patterns
    if joint:  # a model-wide budget, or fine-tuning within the bit patterns, needs every layer at once
        log.info("orchestrate all layers together")
        orchestrated = flow.orchestrate(quantized, layouts, grams)
        if keep_patterns:
            tuned = finetune_layers(config, folded, orchestrated, layouts, dataset, bundle, progress)
            orchestrated = tuned.quantized
    lap("quantize+layout")

    log.info("map, squeeze and cost %d layers", len(layers))
    periphery = Periphery(adc=stages.adc, dac=stages.dac, activation_bits=config.activations.bits)
    simulate = dataset is not None and bool(measure)
    kept = [label for label in SIMULATED if label == "sme" or label in measure or "output_error" in measure]
    mapped = {label: {} for label in kept}
    layer_reports, error_sums = [], np.zeros(2)
    costs_by_label = {label: [] for label in [*baselines, "sme"]}
    steps = track(list(zip(quantized, layouts)), "map + squeeze", disable=not progress, console=STDERR)
    for index, (before, layout) in enumerate(steps):
        # one layer at a time: only this layer's orchestration state and placements are held
        after = orchestrated[index] if joint else flow.orchestrate([before], [layout], grams)[0]
        layer_mappings = flow.map(before, after, layout)
        costs = {label: layer_costs(m, periphery) for label, m in layer_mappings.items()}
        for label, cost in costs.items():
            costs_by_label[label].append(cost)
        sme = layer_mappings["sme"]
        layer_reports.append(layer_report(before, sme, costs))
        error_sums += squared_errors(before, sme.quantized)
        if simulate:  # placements are only kept when the host needs them
            for label in kept:
                mapped[label][sme.name] = layer_mappings[label]
    lap("map+squeeze+costs")

    crossbars, reductions = crossbar_totals(costs_by_label)
    report = {
        "sme_version": __version__,
        "config_source": config.source,
        "config": config.as_dict(),
        "model": {
            "name": bundle.name,
            "weights": bundle.weights,
            "input_shape": list(bundle.input_shape),
            "layers": len(layers),
            "depthwise": config.crossbar.depthwise,
            "batchnorm_unfolded": unfolded,
            **({"details": bundle.details} if getattr(bundle, "details", None) else {}),
        },
        "geometry": {**asdict(geometry), "cell": config.strategies["cell"].name},
        "mappings": {
            "sme": {"mapper": config.strategies["mapper"].as_dict(), "squeezer": config.strategies["squeezer"].as_dict()},
            **{label: params for label, (_, params) in baselines.items()},
        },
        "layers": layer_reports,
        "totals": {
            "weights": sum(layer.n_weights for layer in layers),
            "crossbars": crossbars,
            "reduction": reductions["vs_isaac"],
            "reductions": reductions,
            "weight_error": round(float(np.sqrt(error_sums[0] / error_sums[1])) if error_sums[1] else 0.0, 5),
        },
        "costs": {label: total_costs(costs) for label, costs in costs_by_label.items()},
        "accuracy": {"float": None, "quantizer_only": None, "quantized": None, **dict.fromkeys(SIMULATED), "samples": 0,
                     "dataset": None, "metric": None,
                     "skipped": "not evaluated" if dataset is not None else "no dataset configured (dataset: null)"},
        "timing_s": timing,
    }
    if tuned is not None:
        report["finetune"] = {"params": config.finetune.model_dump(mode="json"), "history": tuned.history,
                              "reused": tuned.reused}
    if simulate:
        log.info("simulate %s through the crossbars on %d samples", ", ".join(kept), dataset.test.samples)
        report["accuracy"] = evaluate(config, stages, folded, quantized, mapped, dataset, progress,
                                      tuned.model if keep_patterns else None, measure)
        errors = report["accuracy"].pop("output_error")
        for entry in layer_reports:
            if errors:
                entry["output_error"] = {label: errors[label][entry["name"]] for label in errors}
        lap("accuracy")
    return report


def output_errors(simulated: torch.nn.Module, reference: torch.nn.Module, names, inputs,
                  batch_size: int = 256) -> dict[str, float]:
    """Relative RMS error of each named layer's simulated output against the exact integer layer of
    ``reference`` fed the same input: ``||y - y_ref|| / ||y_ref - bias||`` over ``inputs`` (a tensor or
    input batches; exactly 0 only where every output is exact: 6 significant digits, not decimals)."""
    simulated_layers, reference_layers = dict(simulated.named_modules()), dict(reference.named_modules())
    totals = {name: [0.0, 0.0] for name in names}

    def hook(name):
        def record(module, args, output):
            exact = reference_layers[name](args[0])
            signal = exact - reference_layers[name].bias.reshape((-1,) + (1,) * (exact.dim() - 2)).to(exact.dtype)
            totals[name][0] += float((output.double() - exact.double()).square().sum())
            totals[name][1] += float(signal.double().square().sum())

        return record

    run_batches(simulated, inputs, batch_size, hooks={simulated_layers[name]: hook(name) for name in names})
    return {name: float(f"{(error / norm) ** 0.5:.6g}") if norm else 0.0 for name, (error, norm) in totals.items()}


def finetune_layers(config: Config, model, layers: list[QuantizedLayer], layouts, dataset, bundle,
                    progress: bool = False):
    """Run the ``finetune:`` section on ``layers`` (within the bit patterns of ``layouts`` for ``ste``/``admm``,
    the quantizer's layers for the training-time L1 methods): on the dataset's labelled training data
    (``data: train``) or distilling from ``model`` on its calibration inputs, drawn from its training data
    (``data: distill``); returns :class:`sme_plugin.finetune.FinetuneResult`."""
    params = config.finetune
    if dataset is None:
        raise ConflictError("finetune: fine-tuning needs data; configure a dataset (its training data or its "
                            "calibration inputs are what the model is fine-tuned on)")
    if params.data == "train" and dataset.train is None:
        raise ConflictError(f"finetune.data: 'train' needs labelled training data, which dataset {dataset.name!r} "
                            "does not have; use data: distill (its calibration inputs)")
    data = dataset.train if params.data == "train" else dataset.calibration
    log.info("fine-tune %d layers (%s, %d epochs, %s on %d samples)", len(layers), params.method, params.epochs,
             params.data, data.samples)
    return finetune(model, layers, layouts, params, data, teacher=model, progress=progress,
                    recipe={"model": bundle.name, "weights": bundle.weights, "dataset": dataset.name,
                            "config": config.source})


def evaluate(config: Config, stages: Stages, model, quantized, mapped, dataset, progress: bool = False,
             tuned_model=None, measure: frozenset[str] = MEASURES) -> dict:
    """Accuracy of the float model, the digital integer models and every simulated mapping, and each
    simulated layer's output error on the calibration inputs. On unlabelled data (``dataset.labelled``
    False) every accuracy is top-1 agreement with the float model (``metric`` says which).

    mapped: label -> {layer name: MappedLayer} for ``sme`` and each other label of :data:`SIMULATED` to
    simulate; each runs through the same cells, ADC and DAC (with the same seed). measure: the figures to
    compute (:data:`MEASURES`; the others are None). tuned_model: the fine-tuned float model SME's layers
    come from (its biases and the other layers), None without fine-tuning within the bit patterns.
    Returns the accuracy section of the report, its ``output_error`` being label -> {layer name: relative
    RMS error}."""
    names = [q.layer.name for q in quantized]
    bits = config.activations.bits
    test = dataset.test.batched(128)
    if not dataset.labelled:
        test = agreement_batches(model, test)
    simulation = Simulation(cell=stages.cell, adc=stages.adc, dac=stages.dac, activation_bits=bits, seed=config.seed)
    models = {"isaac": model, "sme": model if tuned_model is None else tuned_model}
    needed = {"isaac": {"isaac", "quantizer_only"}, "sme": {"sme", "quantized"}}
    models = {label: m for label, m in models.items() if needed[label] & measure or label in mapped}
    scales = {label: calibrate_activations(m, names, dataset.calibration) for label, m in models.items()}
    weights = {"isaac": {q.layer.name: q for q in quantized}, "sme": {n: m.quantized for n, m in mapped["sme"].items()}}
    digital = {label: digital_model(models[label], weights[label], bits, scales[label]) for label in models}
    result = {
        "dataset": dataset.name,
        "metric": METRICS[dataset.labelled],
        "samples": test.samples,
        "calibration_samples": dataset.calibration.samples,
        **({"dataset_details": dataset.details} if dataset.details else {}),
        **dict.fromkeys(sorted(MEASURES - {"output_error"})),
        "output_error": {},
    }
    if "float" in measure:
        result["float"] = accuracy(model, test)
        if tuned_model is not None:
            result["float_finetuned"] = accuracy(tuned_model, test)
    for key, label in (("quantizer_only", "isaac"), ("quantized", "sme")):
        if key in measure:
            result[key] = accuracy(digital[label], test)
    for label, layers in mapped.items():
        if label not in measure and "output_error" not in measure:
            continue
        with section("host"):
            simulated = stages.host.build(models[label], layers, simulation, scales[label],
                                          calibration_inputs=dataset.calibration)
        if label in measure:
            result[label] = accuracy(simulated, test, f"simulate {label} crossbars", progress)
        if "output_error" in measure:
            result["output_error"][label] = output_errors(simulated, digital[label], list(layers), dataset.calibration)
    return result
