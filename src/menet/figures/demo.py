"""The demo's figures: ME reconstructions (paper Fig. 2) and approximate ranks (Fig. 1)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from menet.io_atomic import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _show(ax: plt.Axes, image: np.ndarray) -> None:
    """Draw a (C, H, W) image in [0, 1] (masked-out pixels may be NaN: drawn in red)."""
    img = np.transpose(image, (1, 2, 0))
    cmap = plt.get_cmap("gray").with_extremes(bad="tab:red")
    if img.shape[-1] == 1:
        ax.imshow(np.ma.masked_invalid(img[..., 0]), cmap=cmap, vmin=0, vmax=1)
    else:
        ax.imshow(np.nan_to_num(img, nan=0.0).clip(0, 1))
    ax.set_xticks([])
    ax.set_yticks([])


def plot_reconstruction_grid(
    originals: np.ndarray,
    masked: np.ndarray,
    reconstructions: dict[str, np.ndarray],
    ps: list[float],
    path: Path,
) -> None:
    """Grid per example image: masked and reconstructed rows, one column per keep-probability.

    originals: (E, C, H, W); masked: (E, P, C, H, W) with NaN where dropped;
    reconstructions[method]: (E, P, C, H, W); all in [0, 1].
    """
    methods = list(reconstructions)
    rows_per = 1 + len(methods)
    n_rows, n_cols = originals.shape[0] * rows_per, len(ps) + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.3 * n_cols + 0.8, 1.3 * n_rows), squeeze=False)
    for e in range(originals.shape[0]):
        for r in range(rows_per):
            ax = axes[e * rows_per + r][0]
            if r == 0:
                _show(ax, originals[e])
                ax.set_title("original" if e == 0 else "", fontsize=8)
            else:
                ax.axis("off")
            label = "masked" if r == 0 else methods[r - 1]
            axes[e * rows_per + r][1].set_ylabel(label, fontsize=8)
        for j, p in enumerate(ps):
            _show(axes[e * rows_per][j + 1], masked[e, j])
            if e == 0:
                axes[0][j + 1].set_title(f"p = {p:g}", fontsize=8)
            for r, method in enumerate(methods, start=1):
                _show(axes[e * rows_per + r][j + 1], reconstructions[method][e, j])
    fig.suptitle("ME-Net preprocessing: random mask with keep-probability p, then matrix estimation", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    _save(fig, path)


def plot_rank_distribution(ranks: np.ndarray, max_rank: int, title: str, path: Path) -> None:
    """Histogram (red) and empirical CDF (blue) of approximate ranks, as in paper Fig. 1."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    bins = np.arange(0.5, max_rank + 1.5)
    ax.hist(ranks, bins=bins, color="tab:red", alpha=0.7)
    ax.set_xlabel("approximate rank (90% of spectral energy)")
    ax.set_ylabel("number of images", color="tab:red")
    ax.set_xlim(0.5, max_rank + 0.5)
    cdf_ax = ax.twinx()
    values = np.sort(ranks)
    cdf_ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", color="tab:blue")
    cdf_ax.set_ylabel("empirical CDF", color="tab:blue")
    cdf_ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    _save(fig, path)
