"""The report's figures: paper Figs. 1, 2, 4, 5 and 6, and the sanity-check curves.

Each figure reads test images, result files or stored features and writes a PNG; nothing is
trained, no model is loaded and no attack is run. Figs. 1 and 2 are drawn from the test images
themselves (approximate ranks; masks and reconstructions). Figs. 4 and 5 draw the penultimate
features that the recipe's evaluation stored (``menet.features_store``, written by the chain's
features step or ``menet attack --save-features``); when they are missing or stale the report
fails with one line naming the step that makes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from menet.analysis import approx_rank
from menet.checkpoint import CheckpointError
from menet.data import load_dataset
from menet.defense import MatrixEstimation
from menet.estimation.layout import matrices_to_images
from menet.features_store import StoredFeatures, features_path, read_features
from menet.figures import plot_accuracy_curves, plot_distance_cdfs, plot_tsne
from menet.figures.demo import plot_rank_distribution, plot_reconstruction_grid
from menet.recipe import Recipe, data_dir_for
from menet.report.results import ResultFiles, is_stale, records
from menet.runs import EVAL_DIR, read_config

FIG_PS = (0.2, 0.4, 0.6, 0.8, 1.0)
FIG_METHODS = ("usvt", "softimpute", "nucnorm")


class MissingFeatures(ValueError):
    """A figure's stored features are absent or stale; the message names the step that makes them."""


def _load_test(dataset: str, data_dirs: Any, limit: int | None, verify: bool = True, run_dirs: Iterable[Path] = ()):
    """The test split: from ``data_dirs`` (--data-dir), else from the data_dir of the first of
    ``run_dirs`` (runs of the figure) trained on ``dataset``, else from the default location."""
    data_dir = data_dir_for(dataset, data_dirs) or _run_data_dir(dataset, run_dirs)
    test = load_dataset(dataset, "test", data_dir, verify=verify)
    return test.images[:limit], test.labels[:limit]


def _run_data_dir(dataset: str, run_dirs: Iterable[Path]) -> str | None:
    """The data_dir of the first run of ``run_dirs`` trained on ``dataset`` that names one."""
    for run_dir in run_dirs:
        try:
            config = read_config(run_dir)
        except CheckpointError:  # not trained (yet): no config to read
            continue
        if config.dataset == dataset and config.data_dir:
            return str(config.data_dir)
    return None


def rank_figure(dataset: str, out: Path, data_dirs: Any = None, limit: int | None = 10000, verify: bool = True, *,
                run_dirs: Iterable[Path] = ()) -> list[str]:
    """Paper Fig. 1 for one dataset: histogram and CDF of approximate ranks of test images."""
    images, _ = _load_test(dataset, data_dirs, limit, verify, run_dirs)
    ranks = approx_rank(images.to(torch.float32) / 255.0)
    name = f"ranks-{dataset}.png"
    plot_rank_distribution(ranks.numpy(), images.shape[-2], f"{dataset}: approximate rank of {len(ranks)} test images", out / name)
    quantile = float(ranks.float().quantile(0.9))
    return [f"![approximate ranks, {dataset}]({name})", "",
            f"{dataset}: median approximate rank {float(ranks.float().median()):g}, 90% of images at or below "
            f"{quantile:g} (rank holding 90% of the spectral energy, {len(ranks)} test images).", ""]


def reconstruction_figure(dataset: str, out: Path, data_dirs: Any = None, *, seed: int = 0, n_examples: int = 3, verify: bool = True,
                          ps: tuple[float, ...] = FIG_PS, methods: tuple[str, ...] = FIG_METHODS,
                          run_dirs: Iterable[Path] = ()) -> list[str]:
    """Paper Fig. 2: test images masked at each p and reconstructed by each method."""
    images, _ = _load_test(dataset, data_dirs, n_examples, verify, run_dirs)
    examples = images.to(torch.float32) / 255.0
    generator = torch.Generator().manual_seed(seed)
    masked = torch.empty((n_examples, len(ps), *examples.shape[1:]))
    recon = {m: torch.empty_like(masked) for m in methods}
    for j, p in enumerate(ps):
        me = MatrixEstimation(methods[0], p=p, generator=generator)
        mask = me.draw_mask(examples)  # one mask per p, shared by the methods
        keep = matrices_to_images(mask, tuple(examples.shape), me.layout)
        masked[:, j] = torch.where(keep, examples, torch.tensor(float("nan")))
        for method in methods:
            recon[method][:, j] = MatrixEstimation(method, p=p).reconstruct(examples, mask)
    name = f"reconstructions-{dataset}.png"
    plot_reconstruction_grid(examples.numpy(), masked.numpy(), {m: r.numpy() for m, r in recon.items()}, list(ps), out / name)
    return [f"![reconstructions, {dataset}]({name})", "",
            f"{dataset} test images masked with keep-probability p in {list(ps)} (masked-out pixels in red) "
            f"and reconstructed by {', '.join(methods)}.", ""]


def feature_sets(figure: Mapping[str, Any], recipe: Recipe, root: Path
                 ) -> tuple[dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], int, Mapping[str, Any]]:
    """({"clean" | CONDITION: {model label: (features, labels)}}, images, the attack's settings) for
    Figs. 4 and 5, read from the features the figure's evaluation stored for each of its runs.

    CONDITION is "transfer attack" when the evaluation crafts its examples on another run,
    else "white-box attack". MissingFeatures (one line, naming the step) when a file is absent,
    unreadable, of other weights than the run's model.pt, or of a transfer attack crafted on
    other weights than the source run's model.pt."""
    tag, _, attack = str(figure["features"]).partition("/")
    spec = next(e for e in recipe.evaluations if e.tag == tag)
    attack = spec.aliases.get(attack, attack)  # a smaller scale may run an identical attack in its place
    step = (f"the features step of evaluation {tag!r} (`menet reproduce` of recipe {recipe.name!r} makes it; or "
            f"`menet attack RUN --tag {recipe.name}-{tag} --save-features ...` with the evaluation's attacks)")
    condition = "transfer attack" if spec.transfer_from else "white-box attack"
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"clean": {}, condition: {}}
    n, settings = 0, {}
    for label, run in figure["models"].items():
        path = features_path(root / run / EVAL_DIR, f"{recipe.name}-{tag}")
        stored = _stored(path, attack, step)
        if is_stale(root / run, stored.meta.get("inputs", {}).get("model")):
            raise MissingFeatures(f"{path}: features of other weights than {root / run}/model.pt (trained again since): "
                                  f"run {step}")
        if spec.transfer_from and is_stale(root / spec.transfer_from, stored.meta.get("inputs", {}).get("source_model")):
            raise MissingFeatures(f"{path}: features of examples crafted on other weights than {root / spec.transfer_from}"
                                  f"/model.pt (the transfer source was trained again since): run {step}")
        out["clean"][label] = (stored.clean, stored.labels)
        out[condition][label] = (stored.attacks[attack], stored.labels)
        n, settings = len(stored.labels), stored.meta["attacks"][attack]
    return out, n, settings


def _stored(path: Path, attack: str, step: str) -> StoredFeatures:
    try:
        stored = read_features(path)
    except ValueError as err:
        raise MissingFeatures(f"{err}: run {step}") from None
    if attack not in stored.attacks:
        raise MissingFeatures(f"{path}: holds no features of attack {attack!r} (it has {', '.join(stored.attacks)}): "
                              f"run {step}")
    return stored

def _interval(interval: Sequence[float] | None) -> tuple[float, float]:
    """A stored 95% interval as (low, high), NaN where none is stored."""
    return (float(interval[0]), float(interval[1])) if interval else (float("nan"), float("nan"))


def steps_figure(figure: Mapping[str, Any], recipe_name: str, root: Path, out: Path,
                 files: ResultFiles | None = None) -> list[str]:
    """Paper Fig. 6: accuracy against attack steps, one panel per dataset, one line per model."""
    files = files or ResultFiles()
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for panel, series in figure["panels"].items():
        panels[panel] = {}
        for label, where in series.items():
            run, tag = where.split("/")
            # Only the recipe's own result file RECIPE-TAG: a `menet attack --tag TAG` one may have other settings.
            result = files.current(root / run).get(f"{recipe_name}-{tag}")
            if result is None:
                continue
            points = []
            for name, settings in result["settings"]["attacks"].items():
                inner = settings.get("of", settings)
                if inner.get("steps"):
                    row = result["summary"][name]
                    points.append((float(inner["steps"]), row["robust_all_draws"], *_interval(row.get("all_draws_ci"))))
            if points:
                panels[panel][label] = sorted(points)
    panels = {panel: series for panel, series in panels.items() if series}
    name = figure.get("file", "accuracy-vs-steps.png")
    if not panels:
        return ["(no results for this figure yet)", ""]
    plot_accuracy_curves(panels, out / name, xlabel="attack steps", log_x=True)
    return [f"![accuracy against attack steps]({name})", "",
            "Robust accuracy (correct in every scoring draw) against the number of BPDA / PGD steps; bars: 95% "
            "Clopper-Pearson intervals.", ""]


def recipe_figures(recipe: Recipe, root: Path, out: Path, *, data_dirs: Any = None,
                   say: Callable[[str], None] = print, files: ResultFiles | None = None) -> list[str]:
    """Every figure a recipe asks for, as Markdown lines (the PNGs written into ``out``).

    A figure that cannot be drawn from what exists (e.g. too few examples of a class at a tiny
    scale) says so in the report; missing stored features raise MissingFeatures."""
    files = files or ResultFiles()
    lines: list[str] = []
    for figure in recipe.figures:
        say(f"figure: {figure['kind']}")
        try:
            lines += _figure(figure, recipe, root, out, files, data_dirs=data_dirs)
        except MissingFeatures:
            raise
        except ValueError as err:
            lines += [f"*(figure {figure['kind']} not drawn: {err})*", ""]
    return lines


def _figure(figure: Mapping[str, Any], recipe: Recipe, root: Path, out: Path, files: ResultFiles, *,
            data_dirs: Any) -> list[str]:
    lines: list[str] = []
    kind = figure["kind"]
    if kind == "ranks":
        lines += ["### Approximate rank of the images (paper Fig. 1)", ""]
        for dataset in figure["datasets"]:
            lines += rank_figure(dataset, out, data_dirs, figure.get("images", 10000), bool(figure.get("verify", True)),
                                 run_dirs=[root / name for name in recipe.runs])
    elif kind == "reconstructions":
        lines += ["### Masked and reconstructed images (paper Fig. 2)", ""]
        lines += reconstruction_figure(figure["dataset"], out, data_dirs, seed=int(figure.get("seed", 0)),
                                       verify=bool(figure.get("verify", True)), run_dirs=[root / name for name in recipe.runs])
    elif kind in ("tsne", "distances"):
        sets, n, settings = feature_sets(figure, recipe, root)
        condition = next(c for c in sets if c != "clean")
        source = next(e for e in recipe.evaluations if e.tag == figure["features"].split("/")[0]).transfer_from
        crafted = f"crafted on {source}" if source else "white-box"
        if kind == "tsne":
            panels = {f"{label}, {c}": value for c, by_model in sets.items() for label, value in by_model.items()}
            plot_tsne(panels, out / "tsne.png", seed=int(figure.get("seed", 0)))
            lines += ["### Class separation under attack (paper Fig. 4)", "", "![t-SNE of penultimate features](tsne.png)", "",
                      f"t-SNE of the penultimate features of {n} test images, clean and attacked ({crafted}; "
                      f"{_attack_text(settings)}; stored by evaluation {figure['features']}).", ""]
        else:
            plot_distance_cdfs(sets, out / "distances.png")
            lines += ["### Distances within and between classes (paper Fig. 5)", "", "![distance CDFs](distances.png)", "",
                      f"Empirical CDFs of intra-class (solid) and inter-class (dashed) Euclidean distances of the "
                      f"penultimate features of {n} test images, clean and under the {condition} ({crafted}).", ""]
    elif kind == "steps":
        lines += ["### Robust accuracy against attack steps (paper Fig. 6)", ""]
        lines += steps_figure(figure, recipe.name, root, out, files)
    return lines


def _attack_text(settings: Mapping[str, Any]) -> str:
    """The attack's settings in words; a transfer attack by the attack it transfers."""
    inner = settings.get("of", settings) if settings.get("attack") == "transfer" else settings
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in inner.items()
                     if k not in ("max_batch",))


def run_figures(runs: Mapping[str, Path], out: Path, files: ResultFiles | None = None) -> list[str]:
    """Sanity-check curves for ``menet report RUN_DIR...``: accuracy against eps and steps."""
    files = files or ResultFiles()
    lines: list[str] = []
    for axis, label in (("eps", "accuracy-vs-eps.png"), ("steps", "accuracy-vs-steps.png")):
        panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for name, path in runs.items():
            series: dict[str, list[tuple[float, float]]] = {}
            for r in records(files.current(path)):
                if r["attack"] != "pgd" or r["transfer"] or r[axis] is None:
                    continue
                fixed = "steps" if axis == "eps" else "eps"
                key = f"PGD, {fixed} {r[fixed]:g}" + (f", EOT-{r['eot']}" if r["eot"] > 1 else "")
                series.setdefault(key, []).append((float(r[axis]), r["accuracy"], *_interval(r["interval"])))
            series = {k: sorted(v) for k, v in series.items() if len(v) >= 2}
            if series:
                panels[name] = series
        if panels:
            plot_accuracy_curves(panels, out / label, xlabel=axis, log_x=axis == "steps")
            lines += [f"![robust accuracy against {axis}]({label})", ""]
    return lines
