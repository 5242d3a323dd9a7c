"""Figures of paper Figs. 4, 5, 6: the arrays they compute and the pixels of the PNGs they write."""

from __future__ import annotations

import math

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from scipy.stats import chisquare, ks_2samp

from menet.figures import class_distances, plot_accuracy_curves, plot_distance_cdfs, plot_tsne, tsne_embedding

TAB10 = [to_rgb(f"tab:{c}") for c in ("blue", "orange", "green")]


def clusters(n_per_class: int = 30, dim: int = 20, n_classes: int = 3, spread: float = 1.0, seed: int = 0):
    """Gaussian clusters with unit noise around centres about 14 apart: (features (N, dim), labels (N,))."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 10 / math.sqrt(2)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    return (centres[labels] + spread * rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def read_rgb(path) -> np.ndarray:
    """(H, W, 3) floats in [0, 1]."""
    return matplotlib.image.imread(path)[..., :3]


def pixels_near(image: np.ndarray, colour, tol: float = 0.02) -> int:
    return int((np.abs(image - np.asarray(colour)).max(axis=-1) < tol).sum())


def check_drawn(path, *, ink: tuple[float, float]) -> np.ndarray:
    """The PNG is a real drawing: many distinct colours, a plausible fraction of non-white pixels."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert not plt.get_fignums()  # the figure was closed
    image = read_rgb(path)
    quantised = np.round(image.reshape(-1, 3) * 31).astype(np.int64)
    assert len(np.unique(quantised, axis=0)) > 20
    non_white = (image.min(axis=-1) < 0.95).mean()
    assert ink[0] < non_white < ink[1], non_white
    return image


def nearest_centroid_accuracy(points: np.ndarray, labels: np.ndarray) -> float:
    centroids = np.stack([points[labels == c].mean(axis=0) for c in np.unique(labels)])
    predicted = np.argmin(((points[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    return float((predicted == labels).mean())


@pytest.fixture(scope="module")
def embedded():
    x, y = clusters()
    return x, y, tsne_embedding(x, seed=0)


def test_tsne_embedding_separates_far_apart_clusters(embedded):
    x, y, xy = embedded
    assert xy.shape == (len(x), 2) and xy.dtype == np.float64 and np.isfinite(xy).all()
    assert nearest_centroid_accuracy(xy, y) > 0.95


def test_tsne_embedding_is_repeatable_under_a_seed(embedded):
    x, _, xy = embedded
    np.testing.assert_array_equal(tsne_embedding(x, seed=0), xy)
    assert not np.allclose(tsne_embedding(x + 0.1, seed=0), xy)


def test_tsne_embedding_reduces_wide_features_and_clamps_perplexity_for_few_points(caplog):
    x, y = clusters(n_per_class=20, dim=300)  # D > 50: projected on 50 principal components first
    assert nearest_centroid_accuracy(tsne_embedding(x, seed=1), y) > 0.95
    with caplog.at_level("INFO", logger="menet.figures.features"):
        few = tsne_embedding(x[:5], perplexity=30.0)
    assert few.shape == (5, 2) and np.isfinite(few).all()
    assert "clamped to 1.33333 for 5 points" in caplog.text


@pytest.mark.parametrize("features, message", [
    (np.zeros((0, 4)), "non-empty"),
    (np.zeros(5), "non-empty"),
    (np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), "NaN"),
    (np.zeros((1, 3)), "at least 2 points"),
])
def test_tsne_embedding_rejects_bad_input(features, message):
    with pytest.raises(ValueError, match=message):
        tsne_embedding(features)


def slow_class_distances(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    intra, inter = [], []
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            distance = math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(x[i], x[j])))
            (intra if y[i] == y[j] else inter).append(distance)
    return np.sort(intra), np.sort(inter)


def test_class_distances_use_every_pair_when_few():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(23, 5)), rng.integers(0, 4, size=23)
    y[0] = 7  # a class with a single example has no same-class pair; missing classes are fine
    intra, inter = class_distances(x, y)
    want_intra, want_inter = slow_class_distances(x, y)
    np.testing.assert_allclose(np.sort(intra), want_intra, rtol=1e-12)
    np.testing.assert_allclose(np.sort(inter), want_inter, rtol=1e-12)


def test_class_distances_sample_pairs_with_the_full_distribution():
    # Classes of different sizes and spreads: a sampler that favoured some classes would be seen.
    rng = np.random.default_rng(4)
    sizes, spreads = np.array([20, 40, 60, 120]), np.array([1.0, 2.0, 3.0, 4.0])
    y = rng.permutation(np.repeat(np.arange(4), sizes))
    x = rng.normal(size=(4, 8))[y] * 4 + spreads[y, None] * rng.normal(size=(len(y), 8))
    all_intra, all_inter = class_distances(x, y)
    assert (len(all_intra), len(all_inter)) == (9880, 18800)
    intra, inter = class_distances(x, y, max_pairs=5000, seed=1)
    assert len(intra) == len(inter) == 5000
    assert ks_2samp(intra, all_intra).statistic < 0.04
    assert ks_2samp(inter, all_inter).statistic < 0.04
    assert set(np.round(intra, 9)) <= set(np.round(all_intra, 9))  # sampled pairs are pairs of the right kind
    assert set(np.round(inter, 9)) <= set(np.round(all_inter, 9))
    again = class_distances(x, y, max_pairs=5000, seed=1)
    np.testing.assert_array_equal(again[0], intra)
    np.testing.assert_array_equal(again[1], inter)


def test_class_distances_sample_each_pair_of_a_kind_equally_often():
    rng = np.random.default_rng(5)
    y = rng.permutation(np.repeat([0, 1, 2], [2, 3, 7]))  # 25 same-class and 41 other pairs
    x = rng.normal(size=(len(y), 3))  # every pair has its own distance
    exact = [np.sort(d) for d in class_distances(x, y)]
    for kind, all_pairs in enumerate(exact):
        drawn = np.concatenate([class_distances(x, y, max_pairs=24, seed=s)[kind] for s in range(600)])
        where = np.searchsorted(all_pairs, drawn).clip(max=len(all_pairs) - 1)
        np.testing.assert_allclose(all_pairs[where], drawn, rtol=1e-12)  # each draw is a pair of this kind
        assert chisquare(np.bincount(where, minlength=len(all_pairs))).pvalue > 1e-3


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, 0]), "one label per feature row"),
    (np.array([0.0, 1.0, 0.0, 1.0]), "integer"),
    (np.array([0, 1, 2, 3]), "pairs of both kinds"),
    (np.array([2, 2, 2, 2]), "pairs of both kinds"),
])
def test_class_distances_reject_mismatched_or_degenerate_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        class_distances(np.zeros((4, 3)), labels)


def test_plot_tsne_draws_each_class_in_its_colour(tmp_path):
    x, y = clusters()
    attacked = x + np.random.default_rng(1).normal(size=x.shape).astype(np.float32) * 8
    path = tmp_path / "tsne.png"
    plot_tsne({"vanilla, clean": (x, y), "vanilla, transfer attack": (attacked, y)}, path,
              class_names=["zero", "one", "two"], max_points=60)
    image = check_drawn(path, ink=(0.02, 0.4))
    for colour in TAB10:
        assert pixels_near(image, colour) > 300  # 20 points per class in each of 2 panels, not just the legend
    assert pixels_near(image, to_rgb("tab:red")) == 0

    plot_tsne({"vanilla, clean": (x, y), "vanilla, transfer attack": (attacked[:, ::-1], y)}, path, max_points=60)
    changed = read_rgb(path)
    assert changed.shape != image.shape or np.abs(changed - image).mean() > 0.005


def test_plot_tsne_rejects_bad_input(tmp_path):
    x, y = clusters(n_per_class=4)
    with pytest.raises(ValueError, match="at least one panel"):
        plot_tsne({}, tmp_path / "t.png")
    with pytest.raises(ValueError, match="one label per feature row"):
        plot_tsne({"a": (x, y[:-1])}, tmp_path / "t.png")
    with pytest.raises(ValueError, match="has no name"):
        plot_tsne({"a": (x, y)}, tmp_path / "t.png", class_names=["zero", "one"])
    assert not list(tmp_path.iterdir())


def test_plot_distance_cdfs_draws_both_models_in_blue_and_red(tmp_path):
    x, y = clusters(n_per_class=40, spread=2.0)
    noise = np.random.default_rng(2).normal(size=x.shape) * 6
    panels = {"clean": {"vanilla": (x, y), "ME-Net": (x * 3, y)},
              "transfer attack": {"vanilla": (x + noise, y), "ME-Net": (3 * x + noise, y)}}
    path = tmp_path / "distances.png"
    plot_distance_cdfs(panels, path)
    image = check_drawn(path, ink=(0.03, 0.4))
    blue, red = pixels_near(image, to_rgb("tab:blue")), pixels_near(image, to_rgb("tab:red"))
    assert blue > 400 and red > 400

    plot_distance_cdfs(panels, path, normalise=False)  # raw distances: ME-Net's 3x larger scale shows
    raw = read_rgb(path)
    assert raw.shape != image.shape or np.abs(raw - image).mean() > 0.005
    with pytest.raises(ValueError, match="lacks"):
        plot_distance_cdfs({"clean": {"vanilla": (x, y)}, "attack": {"ME-Net": (x, y)}}, path)
    with pytest.raises(ValueError, match="at least one panel"):
        plot_distance_cdfs({"clean": {}}, path)


def test_plot_accuracy_curves_draws_lines_single_points_and_skips_nan(tmp_path):
    nan = float("nan")
    panels = {
        "MNIST": {"ME-Net (pure)": [(1000, 0.2), (10, 0.9), (100, 0.5)], "Madry": [(10, nan), (100, 0.9)]},
        "CIFAR-10": {"ME-Net (adv. trained)": [(7, 0.55), (20, 0.52), (1000, 0.5)], "Madry": [(7, nan)]},
    }
    path = tmp_path / "steps.png"
    plot_accuracy_curves(panels, path, xlabel="attack steps", log_x=True)
    image = check_drawn(path, ink=(0.02, 0.3))
    for colour in TAB10:  # one colour per series, the same in every panel
        assert pixels_near(image, colour) > 100

    panels["MNIST"]["ME-Net (pure)"] = [(10, 0.9), (100, 0.1), (1000, 0.0)]
    plot_accuracy_curves(panels, path, xlabel="attack steps", log_x=True)
    changed = read_rgb(path)
    assert changed.shape != image.shape or np.abs(changed - image).mean() > 0.001


@pytest.mark.parametrize("panels, log_x, message", [
    ({}, False, "at least one panel"),
    ({"a": {}}, False, "no series"),
    ({"a": {"s": []}}, False, "no points"),
    ({"a": {"s": [(1, 2, 3)]}}, False, r"\(x, accuracy\) pairs"),
    ({"a": {"s": [(1, 45.0)]}}, False, r"fractions in \[0, 1\]"),
    ({"a": {"s": [(0, 0.5), (8, 0.4)]}}, True, "x > 0"),
])
def test_plot_accuracy_curves_rejects_bad_input(tmp_path, panels, log_x, message):
    with pytest.raises(ValueError, match=message):
        plot_accuracy_curves(panels, tmp_path / "a.png", xlabel="eps", log_x=log_x)
    assert not list(tmp_path.iterdir())


def test_plot_accuracy_curves_draws_the_intervals_as_error_bars(tmp_path):
    bare = {"CIFAR-10": {"ME-Net": [(10, 0.5), (100, 0.4), (1000, 0.38)]}}
    with_bars = {"CIFAR-10": {"ME-Net": [(10, 0.5, 0.3, 0.7), (100, 0.4, 0.2, 0.6), (1000, 0.38, 0.18, 0.58)]}}
    plot_accuracy_curves(bare, tmp_path / "bare.png", xlabel="steps", log_x=True)
    plot_accuracy_curves(with_bars, tmp_path / "bars.png", xlabel="steps", log_x=True)
    ink = [pixels_near(read_rgb(tmp_path / f"{name}.png"), TAB10[0], tol=0.25) for name in ("bare", "bars")]
    assert ink[1] > ink[0] * 1.2, ink  # three bars of 40 points each add visible ink in the series' colour
    with pytest.raises(ValueError, match="interval must hold its accuracy"):
        plot_accuracy_curves({"a": {"s": [(1, 0.5, 0.6, 0.7)]}}, tmp_path / "x.png", xlabel="steps")
