"""Figures for report.md (matplotlib, Agg backend): crossbars per layer and bit-plane sparsity.

Layers are listed top to bottom with horizontal bars, so names stay legible (8 pt) however many
layers a model has; the figure grows in height with the layer count.
"""

from __future__ import annotations

import io

import numpy as np

from .report import LABELS

#: inches per layer row of the crossbar panel, and the font size of layer names.
ROW_INCHES = 0.28
FONT = 8


def _padded(rows: list[list[float]]) -> np.ndarray:
    """(layers, planes) array of ragged per-layer lists, NaN where a layer has fewer planes."""
    width = max((len(row) for row in rows), default=0)
    out = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def summary_png(report: dict) -> bytes:
    """PNG with crossbars per layer for every mapping label (log scale, one row per layer) and zero
    fractions per plane (weight-weighted mean over the layers that have the plane): magnitude bit
    planes of the quantized and of the final weights, and the cell groups SME actually stores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report["layers"]
    labels = [label for label in LABELS if label in report["totals"]["crossbars"]]
    n = max(len(layers), 1)
    bars_height = 1.2 + ROW_INCHES * n
    fig = plt.figure(figsize=(9, bars_height + 3.2))
    grid = fig.add_gridspec(2, 1, height_ratios=[bars_height, 3.2])
    bars, planes = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    y = np.arange(len(layers))
    height = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        counts = [max(lay["crossbars"][label], 0) for lay in layers]
        bars.barh(y + (i - (len(labels) - 1) / 2) * height, counts, height, label=label)
    if any(lay["crossbars"][label] > 0 for lay in layers for label in labels):
        bars.set_xscale("log")
    bars.set_yticks(y, [lay["name"] for lay in layers], fontsize=FONT)
    bars.set_ylim(len(layers) - 0.5, -0.5)
    bars.set_xlabel("crossbars")
    bars.set_title(f"{report['model']['name']}: crossbars per layer ({len(layers)} layers)", fontsize=FONT + 2)
    bars.legend(fontsize=FONT, loc="lower right")
    bars.grid(axis="x", alpha=0.3)

    weights = np.array([lay["weights"] for lay in layers], dtype=float)
    series = (("bit_sparsity_before", "magnitude, quantized"), ("bit_sparsity", "magnitude, final"),
              ("stored_sparsity", "stored cell groups (SME)"))
    for key, name in series:
        sparsity = _padded([lay.get(key, []) for lay in layers])  # (layers, planes)
        if sparsity.size == 0:
            continue
        have = ~np.isnan(sparsity)
        total = (weights[:, None] * have).sum(axis=0)
        mean = np.where(total > 0, np.nansum(weights[:, None] * np.nan_to_num(sparsity), axis=0) / np.maximum(total, 1e-300), np.nan)
        planes.plot(np.arange(sparsity.shape[1]), mean, marker="o", label=name)
    planes.set_xlabel("bit plane / cell group (LSB = 0)", fontsize=FONT + 1)
    planes.set_ylabel("zero fraction", fontsize=FONT + 1)
    planes.set_ylim(0, 1)
    planes.legend(fontsize=FONT)
    planes.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def tradeoff_png(document: dict) -> bytes:
    """PNG of ``sme reproduce``'s trade-off curves, one panel per model with accuracy data: accuracy (or
    agreement) against the crossbar reduction against ISAAC-16, post-training and fine-tuned, with the
    float and INT8 models as horizontal lines. Models without data show reduction against budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = document["models"]
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(4 * max(len(models), 1), 3.6), squeeze=False)
    for ax, (name, entry) in zip(axes[0], models.items()):
        points = entry["curve"]
        with_accuracy = any(p["accuracy"] is not None for p in points)
        for finetuned, style in ((False, "o-"), (True, "s--")):
            series = sorted((p for p in points if p["finetuned"] == finetuned), key=lambda p: p["budget"])
            if not series:
                continue
            x = [p["reduction_vs_isaac16"] or 0 for p in series]
            y = [p["accuracy"] if with_accuracy else p["budget"] for p in series]
            ax.plot(x, y, style, label="fine-tuned" if finetuned else "post-training")
            for p, xi, yi in zip(series, x, y):
                ax.annotate(f"{p['budget']:g}", (xi, yi), fontsize=FONT - 1, textcoords="offset points", xytext=(3, 3))
        metric = "agreement" if "agreement" in entry else "accuracy"
        if with_accuracy:
            figures = entry[metric]
            for key, color in (("float", "grey"), ("int8", "black")):
                if figures.get(key) is not None:
                    ax.axhline(figures[key], color=color, linestyle=":", linewidth=1, label=key)
            ax.set_ylabel(f"{metric} %", fontsize=FONT + 1)
        else:
            ax.set_ylabel("error budget (no data: random weights)", fontsize=FONT + 1)
        ax.set_xlabel("crossbar reduction vs ISAAC-16", fontsize=FONT + 1)
        ax.set_title(f"{name} ({'trained' if entry['weights_trained'] else 'random'} weights)", fontsize=FONT + 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=FONT - 1)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()
