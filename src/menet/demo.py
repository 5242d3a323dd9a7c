"""The demo on built-in data: ME reconstructions and approximate ranks of real images."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from menet.analysis import approx_rank
from menet.data import load_dataset
from menet.defense import MatrixEstimation
from menet.estimation.layout import matrices_to_images
from menet.figures.demo import plot_rank_distribution, plot_reconstruction_grid
from menet.io_atomic import write_text_atomic
from menet.progress import Progress, no_progress

DEMO_PS = (0.2, 0.4, 0.6, 0.8, 1.0)
DEMO_METHODS = ("usvt", "softimpute", "nucnorm")


@dataclass(frozen=True)
class ReconstructionRow:
    """One line of the demo table."""

    method: str
    p: float
    mse: float  # mean squared error to the original, pixels in [0, 1]
    images_per_s: float



def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    dataset: str = "fashion-mnist",
    data_dir: str | Path | None = None,
    n_images: int = 256,
    n_examples: int = 3,
    seed: int = 0,
    progress: Progress = no_progress,
) -> tuple[list[ReconstructionRow], dict[str, float]]:
    """Write the reconstruction grid, the rank figure and a summary table into ``out_dir``.

    Uses the first ``n_images`` test images for the error table and the whole test set for
    the rank statistics. Returns the table rows and the rank statistics.
    """
    out = Path(out_dir)
    test = load_dataset(dataset, "test", data_dir)
    images = test.images[:n_images].to(torch.float32) / 255.0
    examples = images[:n_examples]
    generator = torch.Generator().manual_seed(seed)

    rows: list[ReconstructionRow] = []
    masked = torch.empty((n_examples, len(DEMO_PS), *examples.shape[1:]))
    recon = {m: torch.empty_like(masked) for m in DEMO_METHODS}
    for method, p in progress([(m, p) for m in DEMO_METHODS for p in DEMO_PS], desc="reconstruct"):
        me = MatrixEstimation(method, p=p, generator=generator)
        mask = me.draw_mask(images)
        start = time.perf_counter()
        rec = me.reconstruct(images, mask)
        elapsed = time.perf_counter() - start
        rows.append(ReconstructionRow(method, p, float((rec - images).square().mean()), n_images / elapsed))
        j = DEMO_PS.index(p)
        recon[method][:, j] = rec[:n_examples]
        if method == DEMO_METHODS[0]:
            # The masked row shows the first method's mask (one draw per p).
            keep = matrices_to_images(mask[:n_examples], tuple(examples.shape), me.layout)
            masked[:, j] = torch.where(keep, examples, torch.tensor(float("nan")))

    plot_reconstruction_grid(
        examples.numpy(), masked.numpy(), {m: r.numpy() for m, r in recon.items()}, list(DEMO_PS),
        out / "reconstructions.png",
    )
    ranks = approx_rank(test.images.to(torch.float32) / 255.0)
    h = test.images.shape[-2]
    plot_rank_distribution(
        ranks.numpy(), h, f"{dataset} test set: approximate rank of {len(ranks)} images", out / "approx_rank.png"
    )
    stats = {
        "median": float(ranks.median()),
        "mean": float(ranks.float().mean()),
        "p90": float(ranks.float().quantile(0.9)),
        "max": float(ranks.max()),
        "fraction_le_10": float((ranks <= 10).float().mean()),
    }
    write_text_atomic(out / "summary.md", format_summary(rows, stats, dataset, n_images))
    return rows, stats


def format_summary(rows: list[ReconstructionRow], stats: dict[str, float], dataset: str, n_images: int) -> str:
    """A Markdown table of reconstruction error and speed, and the rank statistics."""
    lines = [
        f"# ME-Net demo on {dataset}",
        "",
        f"Reconstruction of {n_images} test images (pixels in [0, 1]):",
        "",
        "| method | p | MSE | images/s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.method} | {r.p:g} | {r.mse:.5f} | {r.images_per_s:,.0f} |" for r in rows]
    lines += [
        "",
        "Approximate rank (smallest rank holding 90% of the spectral energy), whole test set: "
        f"median {stats['median']:g}, mean {stats['mean']:.2f}, 90th percentile {stats['p90']:g}, "
        f"max {stats['max']:g}; {100 * stats['fraction_le_10']:.1f}% of images have rank <= 10.",
        "",
    ]
    return "\n".join(lines)
