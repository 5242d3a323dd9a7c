"""Robustness curves: accuracy against attack steps (paper Fig. 6) and the sanity checks of
Carlini et al. (2019), accuracy against eps and against steps.

The inputs are accuracies the caller has read from evaluation result files; nothing is recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from menet.figures.demo import _save  # noqa: E402

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_PANELS_PER_ROW = 4


def _points(panel: str, series: str, points: Sequence[tuple[float, ...]], log_x: bool) -> np.ndarray:
    """Validated (K, 4) array (x, accuracy, low, high) of the non-NaN points, sorted by x; a
    point given as (x, accuracy) gets low = high = accuracy (no interval drawn)."""
    xy = np.asarray(points, dtype=np.float64)
    if xy.size == 0:
        raise ValueError(f"series {series!r} of panel {panel!r} has no points")
    if xy.ndim != 2 or xy.shape[1] not in (2, 4):
        raise ValueError(f"series {series!r} of panel {panel!r}: points must be (x, accuracy) pairs or (x, accuracy, "
                         f"low, high) with a 95% interval, got shape {xy.shape}")
    if xy.shape[1] == 2:
        xy = np.concatenate([xy, xy[:, 1:2], xy[:, 1:2]], axis=1)
    xy = xy[~np.isnan(xy[:, :2]).any(axis=1)]
    xy[:, 2:] = np.where(np.isnan(xy[:, 2:]), xy[:, 1:2], xy[:, 2:])  # an unknown interval: none drawn
    if not np.isfinite(xy).all():
        raise ValueError(f"series {series!r} of panel {panel!r} has infinite values")
    if ((xy[:, 1:] < 0) | (xy[:, 1:] > 1)).any():
        raise ValueError(f"series {series!r} of panel {panel!r}: accuracies are fractions in [0, 1], got {xy[:, 1].tolist()}")
    if ((xy[:, 2] > xy[:, 1] + 1e-12) | (xy[:, 3] < xy[:, 1] - 1e-12)).any():
        raise ValueError(f"series {series!r} of panel {panel!r}: an interval must hold its accuracy (low <= accuracy <= high)")
    if log_x and (xy[:, 0] <= 0).any():
        raise ValueError(f"series {series!r} of panel {panel!r}: a log x axis needs x > 0, got {xy[:, 0].tolist()}")
    return xy[np.argsort(xy[:, 0], kind="stable")]


def plot_accuracy_curves(
    panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
    path: str | Path,
    *,
    xlabel: str,
    log_x: bool = False,
    ylabel: str = "accuracy (%)",
) -> None:
    """Accuracy against an attack parameter: one subplot per panel, one line with markers per series.

    panels: subplot title -> series name -> points (x, accuracy) or (x, accuracy, low, high),
        accuracy and its 95% interval fractions in [0, 1], drawn as a percentage with error bars. Paper Fig. 6: panels "MNIST", "CIFAR-10", ..., series "ME-Net (pure)",
        "ME-Net (adv. trained)", "Madry", x = attack steps with log_x=True. Sanity checks (Carlini
        et al., 2019): x = eps (accuracy should reach 0) or x = steps (accuracy should not rise).
    Points are drawn in order of x. A point whose x or accuracy is NaN (not measured) is skipped; a
    series left with one point shows as a marker, with none as a legend entry marked "no data".
    A series keeps its colour and marker in every panel. Up to 4 panels per row.
    Example: ``plot_accuracy_curves({"CIFAR-10": {"Madry": [(7, .47), (1000, .45)]}}, "fig6.png",
    xlabel="attack steps", log_x=True)``.
    """
    if not panels:
        raise ValueError("plot_accuracy_curves needs at least one panel")
    for title, by_series in panels.items():
        if not by_series:
            raise ValueError(f"panel {title!r} has no series")
    curves = {title: {name: _points(title, name, points, log_x) for name, points in by_series.items()}
              for title, by_series in panels.items()}
    names = list(dict.fromkeys(name for by_series in curves.values() for name in by_series))
    colours = plt.get_cmap("tab10").colors

    n_cols = min(len(curves), _PANELS_PER_ROW)
    n_rows = math.ceil(len(curves) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.6 * n_cols, 3.2 * n_rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(curves):]:
        ax.axis("off")
    for ax, (title, by_series) in zip(axes.flat, curves.items()):
        for name, xy in by_series.items():
            k = names.index(name)
            ax.plot(xy[:, 0], 100 * xy[:, 1], marker=_MARKERS[k % len(_MARKERS)], markersize=5, linewidth=1.5,
                    color=colours[k % len(colours)], label=name if len(xy) else f"{name} (no data)")
            if len(xy) and (xy[:, 3] > xy[:, 2]).any():  # 95% intervals as error bars
                ax.errorbar(xy[:, 0], 100 * xy[:, 1], yerr=100 * np.abs(np.stack([xy[:, 1] - xy[:, 2], xy[:, 3] - xy[:, 1]])),
                            fmt="none", ecolor=colours[k % len(colours)], elinewidth=1.0, capsize=3)
        if log_x:
            ax.set_xscale("log")
        ax.set_ylim(-2, 102)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, Path(path))
