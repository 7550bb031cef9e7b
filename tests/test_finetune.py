"""Tests of sme_plugin.finetune and the projection it shares with the orchestrators (bitsets.project_in_range,
orchestrate.project_weights / allowed_patterns), on the digits CNN."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from sme_plugin import finetune as ft
from sme_plugin.bitsets import project_in_range, project_to_mask
from sme_plugin.config import load_config
from sme_plugin.datasets import DigitsDataset, _digits_split, digits_train
from sme_plugin.errors import ConflictError
from sme_plugin.layers import extract_layers, fold_batchnorm
from sme_plugin.mapping import SmeMapper
from sme_plugin.models import DigitsModel
from sme_plugin.orchestrate import WindowOrchestrator, allowed_patterns, project_weights
from sme_plugin.pipeline import finetune_layers
from sme_plugin.plugins import build_registry, plugin_manager
from sme_plugin.quantize import UniformQuantizer
from sme_plugin.signs import encode, scheme_offsets
from sme_plugin.types import Batches, Dataset, Geometry

GEOMETRY = Geometry(rows=128, cols=128, ou_rows=16, cell_bits=1)


# ------------------------------------------------------------------------------------ shared projection
def brute_force(x, mask, low, high, n_bits):
    """Nearest member (ties down) of {v fits mask, max(low,0) <= v <= high, v < 2**n_bits}; None if empty."""
    members = [v for v in range(max(low, 0), min(high, (1 << n_bits) - 1) + 1) if v & ~mask == 0]
    return min(members, key=lambda v: (abs(v - x), v)) if members else None


@pytest.mark.parametrize("n_bits", [4, 12])  # lookup-table and bit-arithmetic widths
def test_project_in_range_is_the_nearest_allowed_value(n_bits):
    rng = np.random.default_rng(n_bits)
    size = 300
    mask = rng.integers(0, 1 << n_bits, size)
    low = rng.integers(-4, 1 << (n_bits - 2), size)
    high = low + rng.integers(0, 1 << (n_bits - 1), size)
    real = rng.uniform(-3, (1 << n_bits) + 3, size)
    integer = rng.integers(0, 1 << n_bits, size)
    out_real, bad_real = project_in_range(torch.from_numpy(real), torch.from_numpy(mask), torch.from_numpy(low),
                                          torch.from_numpy(high), n_bits)
    out_int, bad_int = project_in_range(integer, mask, low, high, n_bits)
    out_int_torch, _ = project_in_range(torch.from_numpy(integer), torch.from_numpy(mask), torch.from_numpy(low),
                                        torch.from_numpy(high), n_bits)
    assert np.array_equal(out_int_torch.numpy(), out_int)  # one code path on numpy and torch
    for i in range(size):
        for x, out, bad in ((real[i], out_real[i].item(), bad_real[i].item()), (integer[i], out_int[i], bad_int[i])):
            expected = brute_force(x, mask[i], low[i], high[i], n_bits)
            assert bad == (expected is None)
            if expected is not None:
                assert out == expected or math.isclose(abs(out - x), abs(expected - x)), (x, mask[i], out, expected)


def test_project_to_mask_same_on_numpy_and_torch():
    rng = np.random.default_rng(0)
    values, mask = rng.integers(0, 1 << 12, 500), rng.integers(0, 1 << 12, 500)
    for rounding in ("nearest", "floor", "ceil"):
        for n_bits in (12, None):
            expected = project_to_mask(values, mask, rounding, n_bits)
            got = project_to_mask(torch.from_numpy(values), torch.from_numpy(mask), rounding, n_bits)
            assert np.array_equal(got.numpy(), expected)


# --------------------------------------------------------------------------------------- digits setup
@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(1)
    bundle = DigitsModel(DigitsModel.Params()).build()
    model = fold_batchnorm(bundle.module)
    layers = extract_layers(model, bundle.input_shape)
    quantized = [UniformQuantizer(UniformQuantizer.Params(bits=8)).quantize(layer) for layer in layers]
    _, _, x_test, y_test = _digits_split()
    return model, quantized, digits_train(), (torch.from_numpy(x_test), torch.from_numpy(y_test))


def accuracy(model, test):
    with torch.no_grad():
        return 100.0 * float((model(test[0]).argmax(1) == test[1]).float().mean())


def with_weights(model, quantized):
    """``model`` with each layer's weights set to ``scale * w_int`` (the orchestrated model, weight-only)."""
    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for q in quantized:
            module = modules[q.layer.name]
            module.weight.copy_(torch.from_numpy(ft.to_module_layout((q.scale * q.w_int).astype(np.float32), q,
                                                                     module)))
    return model


def orchestrated(quantized, sign, packing, budget):
    mapper = SmeMapper(SmeMapper.Params(sign=sign, packing=packing))
    layouts = [mapper.layout(q, GEOMETRY) for q in quantized]
    # spend the whole budget (not only where it frees crossbars): the tests need orchestration to cost accuracy
    out = WindowOrchestrator(WindowOrchestrator.Params(budget=budget, spend="budget")).orchestrate(quantized, layouts)
    return mapper, layouts, out


def used_groups(q, layout, rows, cols):
    """(S, G, P, N, M) bool: group g of set s is used somewhere in each entry's (rows x cols) block, from the
    mapper's own encoding (independent of the fine-tuning code)."""
    levels = encode(q.w_int, q.layer.mask, q.bits, 1, layout.sign, layout.read_rows).levels != 0
    *lead, n, m = levels.shape
    padded = np.zeros((*lead, -(-n // rows) * rows, -(-m // cols) * cols), dtype=bool)
    padded[..., :n, :m] = levels
    blocks = padded.reshape(*lead, -1, rows, padded.shape[-1] // cols, cols).any(axis=(-3, -1))
    return np.repeat(np.repeat(blocks, rows, axis=-2), cols, axis=-1)[..., :n, :m]


@pytest.mark.parametrize("method", ["ste", "admm"])
@pytest.mark.parametrize("sign,packing", [("differential", "column"), ("segment-offset", "ou")])
def test_finetuned_weights_keep_the_orchestrated_patterns(digits, method, sign, packing):
    model, quantized, train, _ = digits
    mapper, layouts, orch = orchestrated(quantized, sign, packing, 0.3)
    params = ft.FinetuneParams(method=method, epochs=1, polish_epochs=1, seed=0)
    result = ft.finetune(model, orch, layouts, params, train)
    for before, after, layout in zip(orch, result.quantized, layouts):
        top = (1 << (after.bits - 1)) - 1
        assert after.w_int.dtype == np.int64 and np.abs(after.w_int).max() <= top
        assert (after.w_int[~after.layer.mask] == 0).all()
        # the same offsets: the mapper re-derives exactly the orchestrated ones
        assert np.array_equal(scheme_offsets(sign, after.w_int, after.layer.mask, after.bits, layout.read_rows),
                              scheme_offsets(sign, before.w_int, before.layer.mask, before.bits, layout.read_rows))
        # every cell group used after fine-tuning was used in its region and its plane-tile row before
        used_after = used_groups(after, layout, 1, 1)
        allowed = used_groups(before, layout, *layout.region) & used_groups(before, layout, 1, GEOMETRY.cols)
        assert not (used_after & ~allowed).any()
        assert allowed_patterns(before, layout).contains(after.w_int).all()
        assert mapper.map(after, GEOMETRY, layout).crossbars <= mapper.map(before, GEOMETRY, layout).crossbars
        # the returned model computes with exactly these integer weights
        module = dict(result.model.named_modules())[after.layer.name]
        expected = ft.to_module_layout((after.scale * after.w_int).astype(np.float32), after, module)
        assert torch.equal(module.weight.detach(), torch.from_numpy(expected))


@pytest.mark.parametrize("method", ["ste", "admm"])
def test_fine_tuning_starts_from_the_orchestrated_weights(digits, method):
    """Zero epochs give back the orchestrated layers and their model exactly (not the float weights projected
    onto the patterns, which are a different, often much worse, point)."""
    model, quantized, _, test = digits
    _, layouts, orch = orchestrated(quantized, "segment-offset", "ou", 0.3)
    params = ft.FinetuneParams(method=method, epochs=0, polish_epochs=0, seed=0)
    result = ft.finetune(model, orch, layouts, params, (test[0], test[1]))
    for before, after in zip(orch, result.quantized):
        assert np.array_equal(after.w_int, before.w_int)
    projected = ft.finetune(copy.deepcopy(model), quantized, layouts, params, test).quantized  # float start
    assert any(not np.array_equal(a.w_int, b.w_int) for a, b in zip(projected, orch))
    assert accuracy(result.model, test) == accuracy(with_weights(model, orch), test)


def test_ste_recovers_accuracy_lost_by_orchestration(digits):
    model, quantized, train, test = digits
    _, layouts, orch = orchestrated(quantized, "differential", "column", 0.3)
    lost = accuracy(with_weights(model, orch), test)
    assert lost < accuracy(model, test) - 1.0  # a 30 % weight-error budget costs accuracy
    result = ft.finetune(model, orch, layouts, ft.FinetuneParams(method="ste", epochs=2, seed=0), train)
    assert accuracy(result.model, test) > lost + 1.0


def test_distillation_on_unlabelled_inputs(digits):
    model, quantized, train, test = digits
    _, layouts, orch = orchestrated(quantized, "differential", "column", 0.3)
    params = ft.FinetuneParams(method="ste", epochs=3, data="distill", seed=0)
    result = ft.finetune(model, orch, layouts, params, train[0])  # inputs only
    assert accuracy(result.model, test) > accuracy(with_weights(model, orch), test)
    with pytest.raises(ValueError, match="labelled"):
        ft.finetune(model, orch, layouts, ft.FinetuneParams(method="ste", epochs=1), train[0])


def test_training_on_the_digits_train_stream_keeps_the_patterns_and_accuracy(digits):
    """``data: train`` on the dataset's labelled train stream (as ``sme run`` does): accuracy of the orchestrated
    weights is kept or improved, within their patterns."""
    model, quantized, _, test = digits
    _, layouts, orch = orchestrated(quantized, "differential", "column", 0.3)
    train = DigitsDataset(DigitsDataset.Params()).load().train
    params = ft.FinetuneParams(method="ste", epochs=2, data="train", batch_size=64, seed=0)
    result = ft.finetune(model, orch, layouts, params, train)
    assert accuracy(result.model, test) >= accuracy(with_weights(model, orch), test)
    assert [h["epoch"] for h in result.history] == [1, 2] and result.history[1]["loss"] < result.history[0]["loss"]
    for before, after, layout in zip(orch, result.quantized, layouts):
        assert allowed_patterns(before, layout).contains(after.w_int).all()
    assert any(not np.array_equal(a.w_int, b.w_int) for a, b in zip(orch, result.quantized))


@pytest.mark.parametrize("in_memory", [True, False])
def test_batches_are_rebatched_and_shuffled_by_seed(monkeypatch, in_memory):
    inputs, labels = torch.arange(100.0).reshape(100, 1), torch.arange(100)
    data = (inputs, labels) if in_memory else Batches.of_tensors(inputs, labels, batch_size=7)
    monkeypatch.setattr(ft, "SHUFFLE_BYTES", 40 * 4)  # streams: windows of 40 float32 samples

    def epoch(seed):
        return list(ft._batches(data, ft.FinetuneParams(batch_size=16), torch.Generator().manual_seed(seed)))

    batches = epoch(0)
    assert [len(y) for _, y in batches] == [16] * 6 + [4]
    assert ft._steps_per_epoch(data, ft.FinetuneParams(batch_size=16)) == 7
    x, y = (torch.cat(parts) for parts in zip(*batches))
    assert torch.equal(x[:, 0].long(), y) and sorted(y.tolist()) == list(range(100))  # every sample once, labelled
    assert not torch.equal(y, labels)  # shuffled ...
    assert torch.equal(torch.cat([b[1] for b in epoch(0)]), y)  # ... by the seed
    assert not torch.equal(torch.cat([b[1] for b in epoch(1)]), y)
    if not in_memory:  # read in batches of 16, the first window holds 48 samples: the first 2 batches come from it
        assert set(torch.cat([b[1] for b in batches[:2]]).tolist()) <= set(range(48))


def test_train_data_is_refused_only_for_a_dataset_without_training_data():
    registry = build_registry(plugin_manager(load_entrypoints=False))
    config = load_config({"finetune": {"method": "ste", "data": "train"}}, registry)
    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64)
    without = Dataset.of_tensors("unlabelled_photos", x, y, x)
    with pytest.raises(ConflictError, match=r"^finetune.data: 'train' needs labelled training data, which dataset "
                                            r"'unlabelled_photos' does not have; use data: distill") as info:
        finetune_layers(config, None, [], None, without, None)
    assert "\n" not in str(info.value)


def test_bitslice_l1_makes_slices_sparser_than_plain_training(digits):
    model, quantized, train, _ = digits
    plain = ft.finetune(model, quantized, None, ft.FinetuneParams(method="l1", alpha=0.0, epochs=1), train)
    sliced = ft.finetune(model, quantized, None, ft.FinetuneParams(method="l1-bitslice", epochs=1), train)
    zeros_plain = np.mean(ft.bitslice_sparsity(plain.quantized, 2))
    zeros_sliced = np.mean(ft.bitslice_sparsity(sliced.quantized, 2))
    assert zeros_sliced > zeros_plain + 0.1


def test_bitslice_l1_counts_slices():
    x = torch.tensor([5.0, -6.0, 0.0], requires_grad=True)  # 2-bit slices of 5 = (1, 1), of 6 = (1, 2)
    total = ft.bitslice_l1(x, 2, 15)
    assert float(total.detach()) == 5.0
    total.backward()
    assert x.grad.tolist() == [1.25, -1.25, 0.0]  # straight-through: 1/4 (high slice) + 1 (low slice)


def test_params_validation():
    assert ft.FinetuneParams().method == "ste"
    for bad in ({"lr": float("nan")}, {"rho": float("inf")}, {"method": "sgd"}, {"epochs": -1},
                {"data": "test"}, {"unknown": 1}, {"reuse": True}, {"rho_growth": 0.5}):
        with pytest.raises(ValidationError):
            ft.FinetuneParams(**bad)


def test_checkpoint_round_trip_and_reuse(digits, tmp_path):
    model, quantized, train, test = digits
    _, layouts, orch = orchestrated(quantized, "differential", "column", 0.3)
    path = tmp_path / "ft" / "digits.pt"
    params = ft.FinetuneParams(method="ste", epochs=1, checkpoint=str(path), reuse=True)
    first = ft.finetune(model, orch, layouts, params, train, recipe={"model": "digits"})
    recipe = json.loads(ft.recipe_path(path).read_text())
    assert recipe["params"]["method"] == "ste" and recipe["recipe"] == {"model": "digits"}
    assert [layer["name"] for layer in recipe["layers"]] == [q.layer.name for q in orch]
    assert not list(path.parent.glob("*.tmp"))
    again = ft.finetune(model, orch, layouts, params, train)
    assert again.reused and accuracy(again.model, test) == accuracy(first.model, test)
    for a, b in zip(first.quantized, again.quantized):
        assert np.array_equal(a.w_int, b.w_int) and np.array_equal(a.layer.bias, b.layer.bias)
    path.write_bytes(path.read_bytes() + b"x")  # a changed file no longer matches its recipe: trained again
    assert not ft.finetune(model, orch, layouts, params, train).reused


def test_project_weights_differential_and_offsets():
    masks = np.array([[0b0110], [0b0001]])  # positive values may use bits 1-2, negative ones bit 0
    x = np.array([[5.2], [-3.0]])
    w, bad = project_weights(torch.tensor(x), torch.tensor(masks)[:, None].expand(2, 2, 1).clone(),
                             torch.zeros(2, 1, dtype=torch.int64), 7, 3)
    assert w.tolist() == [[6], [-1]] and not bad.any()
