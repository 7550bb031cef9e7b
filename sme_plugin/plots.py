"""Figures for report.md (matplotlib, Agg backend): crossbars per layer and bit-plane sparsity."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LABELS = ("isaac", "isaac16", "bitplane", "sme")


def summary_png(report: dict) -> bytes:
    """PNG with crossbars per layer for every mapping label (log scale) and zero fractions per plane
    (weight-weighted mean over layers): magnitude bit planes of the quantized and of the final weights,
    and the cell groups SME actually stores (after sign encoding and orchestration)."""
    layers = report["layers"]
    labels = [label for label in LABELS if label in report["totals"]["crossbars"]]
    fig, (bars, planes) = plt.subplots(
        1, 2, figsize=(min(4 + 0.25 * len(layers) * len(labels), 24), 4), width_ratios=[3, 1]
    )
    x = np.arange(len(layers))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        bars.bar(x + i * width, [lay["crossbars"][label] for lay in layers], width, label=label)
    bars.set_yscale("log")
    bars.set_xticks(x + 0.4 - width / 2, [lay["name"] for lay in layers], rotation=90, fontsize=6)
    bars.set_ylabel("crossbars")
    bars.set_title(f"{report['model']['name']}: crossbars per layer")
    bars.legend(fontsize=7)
    weights = np.array([lay["weights"] for lay in layers], dtype=float)
    series = (("bit_sparsity_before", "magnitude, quantized"), ("bit_sparsity", "magnitude, final"),
              ("stored_sparsity", "stored cell groups (SME)"))
    for key, name in series:
        sparsity = np.array([lay[key] for lay in layers], dtype=float)  # (layers, planes)
        planes.plot(np.arange(sparsity.shape[1]), weights @ sparsity / weights.sum(), marker="o", label=name)
    planes.set_xlabel("bit plane / cell group (LSB = 0)")
    planes.set_ylabel("zero fraction")
    planes.set_ylim(0, 1)
    planes.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
