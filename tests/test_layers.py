"""Tests of sme_plugin.layers: BatchNorm folding and im2col layer extraction."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from sme_plugin.layers import extract_layers, fold_batchnorm, unfolded_batchnorms
from sme_plugin.models import MobileNetV2Model, ResNet50Model


def randomise_batchnorm(model, seed=0):
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


class Mixed(nn.Module):
    """Foldable and non-foldable conv/BN pairs; modules defined out of call order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6 * 4 * 4, 5)
        self.shared_bn = nn.BatchNorm2d(6)  # follows a conv whose output is also used elsewhere
        self.conv_b = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.block = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=True), nn.BatchNorm2d(6), nn.ReLU())
        self.plain_bn = nn.BatchNorm2d(6, affine=False)  # follows a ReLU, not a conv
        self.conv_c = nn.Conv2d(6, 6, 1, groups=3)
        self.bn_c = nn.BatchNorm2d(6, affine=False)

    def forward(self, x):
        x = self.plain_bn(self.block(x))
        y = self.conv_b(x)
        x = self.shared_bn(y) + y
        x = self.bn_c(self.conv_c(x))
        return self.head(torch.flatten(x, 1))


def test_fold_batchnorm_matches_and_keeps_names():
    model = randomise_batchnorm(Mixed()).train()
    folded = fold_batchnorm(model)
    assert isinstance(folded.block[1], nn.Identity) and isinstance(folded.bn_c, nn.Identity)
    assert isinstance(folded.shared_bn, nn.BatchNorm2d) and isinstance(folded.plain_bn, nn.BatchNorm2d)
    assert folded.conv_b.bias is None and folded.conv_c.bias is not None
    assert unfolded_batchnorms(folded) == ["shared_bn", "plain_bn"]  # reported, never skipped silently
    assert isinstance(folded.get_submodule("block.0"), nn.Conv2d)
    # the original is untouched (still in training mode, BatchNorm in place)
    assert model.training and isinstance(model.block[1], nn.BatchNorm2d) and not folded.training
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = model.eval()(x)
        torch.testing.assert_close(folded(x), expected, atol=1e-4, rtol=1e-4)


def test_fold_batchnorm_mobilenet_v2():
    model = randomise_batchnorm(MobileNetV2Model(MobileNetV2Model.Params()).build().module)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert isinstance(folded.get_submodule("features.2.conv.1.1"), nn.Identity)
    assert folded.get_submodule("features.2.conv.1.0").bias is not None
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert expected.abs().max() > 1e-3  # the comparison below is not trivially small numbers
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_fold_batchnorm_untraceable_model_is_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(ValueError, match="cannot trace Branchy"):
        fold_batchnorm(Branchy())


# --------------------------------------------------------------------------------------- layer extraction
def conv_through_parts(x, conv, layer):
    """Conv output (without bias) computed from unfolded input parts @ the layer's weight parts."""
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (B, Cin*kh*kw, L)
    parts, rows, out_cols = layer.weight.shape
    cols = F.pad(cols, (0, 0, 0, parts * rows - cols.shape[1])).reshape(x.shape[0], parts, rows, -1)
    out = torch.einsum("bpnl,pnm->bpml", cols, torch.from_numpy(layer.weight)).reshape(x.shape[0], parts * out_cols, -1)
    return out[:, : conv.out_channels]


def check_conv(conv, depthwise, crossbar_rows, hw=(7, 6)):
    torch.manual_seed(0)
    (layer,) = extract_layers(conv, (conv.in_channels, *hw), depthwise, crossbar_rows)
    x = torch.randn(2, conv.in_channels, *hw)
    with torch.no_grad():
        expected = conv(x)
        if conv.bias is not None:
            expected = expected - conv.bias[:, None, None]
    got = conv_through_parts(x, conv, layer)
    torch.testing.assert_close(got, expected.flatten(2), atol=1e-4, rtol=1e-4)
    assert layer.weight.dtype == np.float32 and layer.mask.dtype == bool
    assert layer.n_weights == conv.weight.numel()
    assert not layer.weight[~layer.mask].any()
    assert layer.out_positions == expected.shape[2] * expected.shape[3]
    assert layer.groups == conv.groups and layer.out_features == conv.out_channels
    return layer


def test_dense_conv_layout_matches_unfold():
    conv = nn.Conv2d(5, 7, (3, 2), stride=2, padding=1, bias=True)
    layer = check_conv(conv, "packed", 128)
    assert (layer.kind, layer.weight.shape, layer.groups_per_part) == ("conv", (1, 30, 7), 1)
    np.testing.assert_array_equal(layer.bias, conv.bias.detach().numpy())
    np.testing.assert_array_equal(layer.weight[0], conv.weight.detach().reshape(7, -1).T.numpy())


@pytest.mark.parametrize("groups", [2, 4])
@pytest.mark.parametrize("depthwise", ["packed", "block-diagonal"])
def test_grouped_conv(groups, depthwise):
    conv = nn.Conv2d(8, 12, 3, padding=1, groups=groups, bias=False)
    layer = check_conv(conv, depthwise, crossbar_rows=40)  # 2 in-channels x 9 taps per group at groups=4
    per_group_rows = 8 // groups * 9
    expected_gpp = groups if depthwise == "block-diagonal" else max(1, 40 // per_group_rows)
    assert layer.kind == "grouped" and layer.groups_per_part == expected_gpp
    parts = math.ceil(groups / expected_gpp)
    assert layer.weight.shape == (parts, expected_gpp * per_group_rows, expected_gpp * 12 // groups)
    assert layer.bias is None


def test_depthwise_packed_pads_last_part():
    conv = nn.Conv2d(10, 10, 3, padding=1, groups=10)
    layer = check_conv(conv, "packed", crossbar_rows=36)  # 4 channels of 9 taps per part: 4 + 4 + 2
    assert (layer.kind, layer.groups_per_part, layer.weight.shape) == ("depthwise", 4, (3, 36, 4))
    assert layer.mask[2].sum() == 18 and not layer.mask[2, 18:].any() and not layer.mask[2, :, 2:].any()
    assert layer.mask[0].sum() == 36


def test_depthwise_block_diagonal_is_one_part():
    conv = nn.Conv2d(6, 12, 3, stride=2, groups=6)  # channel multiplier 2
    layer = check_conv(conv, "block-diagonal", crossbar_rows=128)
    assert (layer.kind, layer.groups_per_part, layer.weight.shape) == ("depthwise", 6, (1, 54, 12))


@settings(max_examples=30, deadline=None)
@given(
    groups=st.integers(1, 4),
    in_per_group=st.integers(1, 3),
    out_per_group=st.integers(1, 3),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    dilation=st.integers(1, 2),
    depthwise=st.sampled_from(["packed", "block-diagonal"]),
    crossbar_rows=st.integers(1, 30),
    bias=st.booleans(),
)
def test_any_conv_equals_unfold_times_parts(
    groups, in_per_group, out_per_group, kernel, stride, padding, dilation, depthwise, crossbar_rows, bias
):
    conv = nn.Conv2d(
        groups * in_per_group, groups * out_per_group, kernel, stride, padding, dilation, groups=groups, bias=bias
    )
    layer = check_conv(conv, depthwise, crossbar_rows)
    assert layer.parts * layer.groups_per_part >= groups > (layer.parts - 1) * layer.groups_per_part


class Net(nn.Module):
    """Modules registered in a different order from the one they are called in."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.first = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.unused = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.token = nn.Linear(4, 8)

    def forward(self, x):
        x = self.dw(self.bn(self.first(x)))  # (B, 4, 5, 5)
        x = self.token(x.flatten(2).transpose(1, 2))  # (B, 25, 8): a Linear over 25 positions
        return self.fc(x.mean(1))


def test_extract_layers_order_kinds_and_positions():
    model = Net().train()
    before = model.bn.running_mean.clone()
    layers = extract_layers(model, (2, 10, 10), "packed", 128)
    assert [(l.name, l.kind, l.out_positions) for l in layers] == [
        ("first", "conv", 25),
        ("dw", "depthwise", 25),
        ("token", "linear", 25),
        ("fc", "linear", 1),
    ]
    assert model.training and model.bn.training and torch.equal(model.bn.running_mean, before)
    fc = layers[-1]
    assert fc.weight.shape == (1, 8, 3) and fc.mask.all()
    np.testing.assert_array_equal(fc.weight[0], model.fc.weight.detach().numpy().T)
    np.testing.assert_array_equal(fc.bias, model.fc.bias.detach().numpy())


def test_extract_layers_rejects_bad_arguments():
    with pytest.raises(ValueError, match="depthwise.*'diagonal'.*packed, block-diagonal"):
        extract_layers(Net(), (2, 10, 10), "diagonal", 128)
    with pytest.raises(ValueError, match="crossbar_rows.*0"):
        extract_layers(Net(), (2, 10, 10), "packed", 0)


def dense_bitplane_crossbars(layers, size=128, planes=8):
    """Crossbars of the paper's 'SLC bit-plane per crossbar (8 planes)' column: 8 * sum ceil(N/128)*ceil(M/128)."""
    return planes * sum(l.parts * math.ceil(l.rows / size) * math.ceil(l.cols / size) for l in layers)


def test_resnet50_dense_crossbar_count_matches_paper():
    bundle = ResNet50Model(ResNet50Model.Params()).build()
    layers = extract_layers(fold_batchnorm(bundle.module), bundle.input_shape, "packed", 128)
    assert len(layers) == 54 and layers[0].name == "conv1" and layers[-1].name == "fc"
    assert sum(l.n_weights for l in layers) == 25_502_912
    assert layers[0].out_positions == 112 * 112 and layers[-1].out_positions == 1
    assert dense_bitplane_crossbars(layers) == 12_608


@pytest.mark.parametrize("depthwise, crossbars", [("block-diagonal", 24_048), ("packed", 6_528)])
def test_mobilenet_v2_dense_crossbar_counts_match_paper(depthwise, crossbars):
    bundle = MobileNetV2Model(MobileNetV2Model.Params()).build()
    layers = extract_layers(fold_batchnorm(bundle.module), bundle.input_shape, depthwise, 128)
    assert len(layers) == 53 and sum(l.n_weights for l in layers) == 3_469_760
    assert sum(l.kind == "depthwise" for l in layers) == 17
    assert dense_bitplane_crossbars(layers) == crossbars
