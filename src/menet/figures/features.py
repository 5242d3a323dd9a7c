"""Feature-space figures: t-SNE of the vectors before the softmax (paper Fig. 4) and empirical CDFs
of intra- and inter-class distances between them (paper Fig. 5).

The inputs are arrays the caller has computed (a model's features on clean or attacked images);
nothing here trains, attacks or runs a model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from menet.figures.demo import _save  # noqa: E402

log = logging.getLogger(__name__)

PCA_DIMS = 50  # t-SNE input dimension: wider features are projected on their leading principal components
# A chunk of pair differences holds at most this many numbers (32 MiB in float64).
_CHUNK_NUMBERS = 1 << 22
# Curve colours by model, in order of first appearance: vanilla blue and ME-Net red, as in paper Fig. 5.
_MODEL_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:gray")


def _check_features(features: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate (N, D) finite features and, when given, (N,) non-negative integer labels."""
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"features must be a non-empty (N, D) array, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"features must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    if labels is None:
        return x, None
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"need one label per feature row: got labels of shape {y.shape} for {x.shape[0]} rows")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    if (y < 0).any():
        raise ValueError("labels must be >= 0")
    return x, y.astype(np.int64)


def tsne_embedding(features: np.ndarray, *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE embedding (van der Maaten & Hinton, 2008) of feature vectors, as in paper Fig. 4.

    features: (N, D) real, N >= 2. Returns (N, 2) float64.
    When D > 50 the centred features are first projected on their 50 leading principal components
    (exact SVD), the usual preprocessing for t-SNE: it drops noise directions and speeds up the
    neighbour search. perplexity is the effective number of neighbours; t-SNE needs it below N and
    its Barnes-Hut approximation looks at 3 * perplexity neighbours, so for small N it is clamped to
    (N - 1) / 3 (logged at INFO).
    Repeatable: the same features and seed give the same array bit for bit (PCA initialisation,
    random_state=seed, and one OpenMP thread, since sums over threads are added in varying order).
    Example: ``xy = tsne_embedding(logits.numpy(), seed=0)``.
    """
    from sklearn.manifold import TSNE  # imported here: scikit-learn takes a second to import
    from threadpoolctl import threadpool_limits

    x, _ = _check_features(features)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"t-SNE needs at least 2 points, got {n}")
    if not perplexity > 0:
        raise ValueError(f"perplexity must be > 0, got {perplexity}")
    used = min(float(perplexity), (n - 1) / 3)
    if used != perplexity:
        log.info("t-SNE perplexity %g clamped to %g for %d points", perplexity, used, n)
    x = x - x.mean(axis=0)
    if d > PCA_DIMS:
        u, s, _ = np.linalg.svd(x, full_matrices=False)
        x = u[:, :PCA_DIMS] * s[:PCA_DIMS]
    tsne = TSNE(n_components=2, perplexity=used, init="pca" if min(x.shape) >= 2 else "random",
                learning_rate="auto", random_state=seed)
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(x).astype(np.float64)


def _class_colours(n_classes: int) -> np.ndarray:
    """(n_classes, 4) RGBA: tab10 up to 10 classes, tab20 up to 20."""
    if n_classes > 20:
        raise ValueError(f"at most 20 classes can be told apart by colour, got {n_classes}: select a few classes first")
    name = "tab10" if n_classes <= 10 else "tab20"
    return np.array([to_rgba(c) for c in plt.get_cmap(name).colors[:n_classes]])


def _grid(n_panels: int) -> tuple[int, int]:
    n_cols = math.ceil(math.sqrt(n_panels))
    return math.ceil(n_panels / n_cols), n_cols


def plot_tsne(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    *,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    max_points: int = 2000,
) -> None:
    """One t-SNE scatter per panel, points coloured by class, as in paper Fig. 4; writes a PNG.

    panels: title -> (features (N, D), labels (N,)), e.g. "vanilla, clean", "vanilla, transfer attack",
        "ME-Net, clean", "ME-Net, transfer attack" with the vectors before the softmax.
    Each panel is embedded on its own (t-SNE axes mean nothing across panels), after keeping
    max_points rows chosen at random with ``seed`` (panels of equal N keep the same rows, so a clean
    panel and its attacked one show the same examples). class_names: names of classes 0..C-1 for
    the shared legend (default "0", "1", ...); C is at most 20 (tab10 colours up to 10, tab20 up to 20).
    """
    if not panels:
        raise ValueError("plot_tsne needs at least one panel")
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    checked = {title: _check_features(features, labels) for title, (features, labels) in panels.items()}
    top_label = max(int(y.max()) for _, y in checked.values())
    n_classes = top_label + 1 if class_names is None else len(class_names)
    if top_label >= n_classes:
        raise ValueError(f"label {top_label} has no name: class_names holds {n_classes} names")
    names = [str(c) for c in range(n_classes)] if class_names is None else [str(c) for c in class_names]
    colours = _class_colours(n_classes)

    n_rows, n_cols = _grid(len(checked))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.4 * n_cols + 1.4, 3.2 * n_rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(checked):]:
        ax.axis("off")
    for ax, (title, (x, y)) in zip(axes.flat, checked.items()):
        rng = np.random.default_rng(seed)
        if len(x) > max_points:
            keep = np.sort(rng.choice(len(x), size=max_points, replace=False))
            x, y = x[keep], y[keep]
        xy = tsne_embedding(x, seed=seed)
        order = rng.permutation(len(x))  # no class is drawn systematically on top of the others
        ax.scatter(xy[order, 0], xy[order, 1], c=colours[y[order]], s=min(20.0, max(3.0, 6000 / len(x))), linewidths=0)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    present = sorted(set().union(*(np.unique(y).tolist() for _, y in checked.values())))
    handles = [Line2D([], [], linestyle="", marker="o", markersize=6, color=colours[c]) for c in present]
    fig.legend(handles, [names[c] for c in present], loc="outside right upper", fontsize=8, frameon=False)
    _save(fig, Path(path))


def _pair_distances(x: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Euclidean distances |x[first[k]] - x[second[k]]|, computed in chunks of bounded memory."""
    out = np.empty(len(first))
    step = max(1, _CHUNK_NUMBERS // x.shape[1])
    for start in range(0, len(first), step):
        diff = x[first[start:start + step]] - x[second[start:start + step]]
        out[start:start + step] = np.sqrt(np.einsum("kd,kd->k", diff, diff))
    return out


def class_distances(
    features: np.ndarray, labels: np.ndarray, *, max_pairs: int = 200_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances of same-class (intra) and different-class (inter) pairs, as in paper Fig. 5.

    features: (N, D); labels: (N,) integer classes. Returns (intra, inter), 1-D float64 arrays.
    Each unordered pair {i, j}, i != j, is of one kind, and each kind is treated on its own: when
    it has at most max_pairs pairs, every pair is used, once, in no particular order; otherwise
    max_pairs pairs are drawn uniformly at random with replacement from the pairs of that kind
    (numpy generator seeded with ``seed``, so repeatable). The empirical CDF of such a sample is
    within 0.004 of the full one with 95% probability for 200,000 pairs (DKW inequality).
    Raises ValueError when there is no pair of one kind (a single class, or no class with 2 examples).
    """
    x, y = _check_features(features, labels)
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    n = len(y)
    counts = np.bincount(y)
    n_intra = sum(int(c) * (int(c) - 1) // 2 for c in counts)
    n_inter = n * (n - 1) // 2 - n_intra
    if n_intra == 0 or n_inter == 0:
        raise ValueError(f"need pairs of both kinds: {n_intra} same-class and {n_inter} different-class pairs "
                         f"among {n} examples of {np.count_nonzero(counts)} classes")
    # Examples sorted by class: class c occupies order[start[c] : start[c] + counts[c]].
    order = np.argsort(y, kind="stable")
    start = np.cumsum(counts) - counts
    rng = np.random.default_rng(seed)

    if n_intra <= max_pairs:
        pairs = []
        for c in np.flatnonzero(counts >= 2):
            block = order[start[c]:start[c] + counts[c]]
            a, b = np.triu_indices(len(block), k=1)
            pairs.append((block[a], block[b]))
        first, second = (np.concatenate(p) for p in zip(*pairs))
    else:
        # i with probability ~ (its class size - 1), then j uniform among the rest of its class:
        # every ordered same-class pair has the same probability.
        weight = (counts[y] - 1).astype(np.float64)
        first = rng.choice(n, size=max_pairs, p=weight / weight.sum())
        c = y[first]
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        own = rank[first] - start[c]  # position of i inside its class block
        r = rng.integers(0, counts[c] - 1)
        second = order[start[c] + r + (r >= own)]
    intra = _pair_distances(x, first, second)

    if n_inter <= max_pairs:
        pairs = []
        for c in np.flatnonzero(counts):
            block, later = order[start[c]:start[c] + counts[c]], order[start[c] + counts[c]:]
            pairs.append((np.repeat(block, len(later)), np.tile(later, len(block))))
        first, second = (np.concatenate(p) for p in zip(*pairs))
    else:
        # i with probability ~ (number of examples outside its class), then j uniform among those.
        weight = (n - counts[y]).astype(np.float64)
        first = rng.choice(n, size=max_pairs, p=weight / weight.sum())
        c = y[first]
        r = rng.integers(0, n - counts[c])
        second = order[r + counts[c] * (r >= start[c])]  # skip the block of i's class
    inter = _pair_distances(x, first, second)
    return intra, inter


def _ecdf(ax: plt.Axes, values: np.ndarray, **style: object) -> None:
    sorted_values = np.sort(values)
    ax.step(sorted_values, np.arange(1, len(values) + 1) / len(values), where="post", **style)


def plot_distance_cdfs(
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    path: str | Path,
    *,
    normalise: bool = True,
    max_pairs: int = 200_000,
    seed: int = 0,
) -> None:
    """Empirical CDFs of intra-class (solid) and inter-class (dashed) distances, as in paper Fig. 5.

    panels: subplot title -> model name -> (features (N, D), labels (N,)), e.g.
        {"clean": {"vanilla": ..., "ME-Net": ...}, "transfer attack": {"vanilla": ..., "ME-Net": ...}}.
    Distances come from ``class_distances(features, labels, max_pairs=max_pairs, seed=seed)``.
    A model keeps its colour in every subplot: the first model blue, the second red (vanilla and
    ME-Net in the paper), then green, orange, ...
    normalise: features of different models have different scales, and raw distances (the paper's
        choice, normalise=False) reward a model for small logits. With normalise=True (default) every
        distance of a model is divided by the median inter-class distance of that model's features in
        the first panel (put the clean one first), so the curves compare separation relative to scale;
        the x axis says so. Every model must then appear in the first panel.
    """
    if not panels or not all(panels.values()):
        raise ValueError("plot_distance_cdfs needs at least one panel, each with at least one model")
    reference = next(iter(panels))
    models = list(dict.fromkeys(m for by_model in panels.values() for m in by_model))
    missing = [m for m in models if m not in panels[reference]]
    if normalise and missing:
        raise ValueError(f"normalise=True divides by each model's distances in the first panel {reference!r}, "
                         f"which lacks {missing}")
    distances = {(title, model): class_distances(features, labels, max_pairs=max_pairs, seed=seed)
                 for title, by_model in panels.items() for model, (features, labels) in by_model.items()}
    scale = {m: float(np.median(distances[reference, m][1])) if normalise else 1.0 for m in models}
    if normalise and not all(s > 0 for s in scale.values()):
        raise ValueError(f"a model's median inter-class distance in {reference!r} is 0: cannot normalise ({scale})")

    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels) + 1.8, 3.4), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, (title, by_model) in zip(axes[0], panels.items()):
        for model in by_model:
            colour = _MODEL_COLOURS[models.index(model) % len(_MODEL_COLOURS)]
            intra, inter = distances[title, model]
            _ecdf(ax, intra / scale[model], color=colour, linestyle="-", linewidth=1.5)
            _ecdf(ax, inter / scale[model], color=colour, linestyle="--", linewidth=1.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(left=0)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"distance / median inter-class distance ({reference})" if normalise else "Euclidean distance",
                      fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("empirical CDF")
    handles, names = [], []
    for model in models:
        colour = _MODEL_COLOURS[models.index(model) % len(_MODEL_COLOURS)]
        for kind, linestyle in (("intra-class", "-"), ("inter-class", "--")):
            handles.append(Line2D([], [], color=colour, linestyle=linestyle, linewidth=1.5))
            names.append(f"{model}, {kind}")
    fig.legend(handles, names, loc="outside right upper", fontsize=8, frameon=False)
    _save(fig, Path(path))
