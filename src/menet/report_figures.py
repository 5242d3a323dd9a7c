"""The report's figures: paper Figs. 1, 2, 4, 5 and 6, and the sanity-check curves.

Each figure reads data, trained models and result files and writes a PNG; nothing is trained.
Figs. 4 and 5 need penultimate features of clean and transfer-attacked test images: the
examples are crafted on the recipe's source run (an independently trained copy, as in the
paper) with a seeded attack, so the figure repeats exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

FIG_PS = (0.2, 0.4, 0.6, 0.8, 1.0)
FIG_METHODS = ("usvt", "softimpute", "nucnorm")


def _load_test(dataset: str, data_dirs: Any, limit: int | None, verify: bool = True, run_dirs: Iterable[Path] = ()):
    """The test split: from ``data_dirs`` (--data-dir), else from the data_dir of the first of
    ``run_dirs`` (runs of the figure) trained on ``dataset``, else from the default location."""
    from menet.data import load_dataset
    from menet.reproduce import data_dir_for

    data_dir = data_dir_for(dataset, data_dirs) or _run_data_dir(dataset, run_dirs)
    test = load_dataset(dataset, "test", data_dir, verify=verify)
    return test.images[:limit], test.labels[:limit]


def _run_data_dir(dataset: str, run_dirs: Iterable[Path]) -> str | None:
    """The data_dir of the first run of ``run_dirs`` trained on ``dataset`` that names one."""
    from menet.checkpoint import CheckpointError
    from menet.runs import read_config

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
    from menet.analysis import approx_rank
    from menet.figures.demo import plot_rank_distribution

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
    from menet.defense import MatrixEstimation
    from menet.estimation.layout import matrices_to_images
    from menet.figures.demo import plot_reconstruction_grid

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


def feature_sets(figure: Mapping[str, Any], recipe: Any, root: Path, data_dirs: Any, device: str | None
                 ) -> tuple[dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], int]:
    """{"clean" | "transfer attack": {model label: (features, labels)}} for Figs. 4 and 5."""
    from menet.defense import MENet
    from menet.reproduce import EvaluationSpec, build_attacks
    from menet.runs import load_model

    models = dict(figure["models"])  # label -> run
    first = recipe.runs[next(iter(models.values()))]
    images, labels = _load_test(first.dataset, data_dirs, int(figure.get("images", 1000)), first.verify_checksums,
                                [root / run for run in [*models.values(), figure["source"]]])
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = (images.to(torch.float32) / 255.0).to(dev)
    y = labels.to(dev)
    source = load_model(root / figure["source"]).to(dev)
    settings = dict(figure["attack"])
    spec = EvaluationSpec("figure", (), {"attack": settings})
    attack = build_attacks(spec, None)["attack"]
    seed = int(figure.get("seed", 0))
    adv = attack(source, x, y, generator=torch.Generator().manual_seed(seed))
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"clean": {}, "transfer attack": {}}
    for label, run in models.items():
        model = load_model(root / run, generator=torch.Generator().manual_seed(seed)).to(dev)
        with torch.no_grad():
            for condition, inputs in (("clean", x), ("transfer attack", adv)):
                if isinstance(model, MENet):
                    feats = model.classifier.features(model.preprocess(inputs))
                else:
                    feats = model.features(inputs)
                out[condition][label] = (feats.cpu().numpy(), labels.numpy())
    return out, len(labels)


def steps_figure(figure: Mapping[str, Any], recipe_name: str, root: Path, out: Path) -> list[str]:
    """Paper Fig. 6: accuracy against attack steps, one panel per dataset, one line per model."""
    from menet.figures import plot_accuracy_curves
    from menet.report import run_results

    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for panel, series in figure["panels"].items():
        panels[panel] = {}
        for label, where in series.items():
            run, tag = where.split("/")
            # Only the recipe's own result file RECIPE-TAG: a `menet attack --tag TAG` one may have other settings.
            result = run_results(root / run).get(f"{recipe_name}-{tag}")
            if result is None:
                continue
            points = []
            for name, settings in result["settings"]["attacks"].items():
                inner = settings.get("of", settings)
                if inner.get("steps"):
                    points.append((float(inner["steps"]), result["summary"][name]["robust_all_draws"]))
            if points:
                panels[panel][label] = sorted(points)
    panels = {panel: series for panel, series in panels.items() if series}
    name = figure.get("file", "accuracy-vs-steps.png")
    if not panels:
        return ["(no results for this figure yet)", ""]
    plot_accuracy_curves(panels, out / name, xlabel="attack steps", log_x=True)
    return [f"![accuracy against attack steps]({name})", "",
            "Robust accuracy (correct in every scoring draw) against the number of BPDA / PGD steps.", ""]


def recipe_figures(recipe: Any, root: Path, out: Path, *, data_dirs: Any = None, device: str | None = None,
                   say: Callable[[str], None] = print) -> list[str]:
    """Every figure a recipe asks for, as Markdown lines (the PNGs written into ``out``)."""
    lines: list[str] = []
    features_cache: dict[str, tuple[dict, int]] = {}  # Figs. 4 and 5 share their features
    for figure in recipe.figures:
        say(f"figure: {figure['kind']}")
        try:
            lines += _figure(figure, recipe, root, out, features_cache, data_dirs=data_dirs, device=device)
        except ValueError as err:  # e.g. too few examples of a class at a tiny scale: say so, keep the report
            lines += [f"*(figure {figure['kind']} not drawn: {err})*", ""]
    return lines


def _figure(figure: Mapping[str, Any], recipe: Any, root: Path, out: Path, features_cache: dict[str, tuple[dict, int]], *,
            data_dirs: Any, device: str | None) -> list[str]:
    from menet.figures import plot_distance_cdfs, plot_tsne

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
        key = repr((sorted(figure["models"].items()), figure["source"], figure["attack"], figure.get("images")))
        if key not in features_cache:
            features_cache[key] = feature_sets(figure, recipe, root, data_dirs, device)
        sets, n = features_cache[key]
        if kind == "tsne":
            panels = {f"{label}, {condition}": value for condition, by_model in sets.items() for label, value in by_model.items()}
            plot_tsne(panels, out / "tsne.png", seed=int(figure.get("seed", 0)))
            lines += ["### Class separation under a transfer attack (paper Fig. 4)", "", "![t-SNE of penultimate features](tsne.png)", "",
                      f"t-SNE of the penultimate features of {n} test images, clean and attacked by examples crafted on "
                      f"{figure['source']} ({_attack_text(figure['attack'])}).", ""]
        else:
            plot_distance_cdfs(sets, out / "distances.png")
            lines += ["### Distances within and between classes (paper Fig. 5)", "", "![distance CDFs](distances.png)", "",
                      f"Empirical CDFs of intra-class (solid) and inter-class (dashed) Euclidean distances of the "
                      f"penultimate features of {n} test images, clean and under the transfer attack.", ""]
    elif kind == "steps":
        lines += ["### Robust accuracy against attack steps (paper Fig. 6)", ""]
        lines += steps_figure(figure, recipe.name, root, out)
    return lines


def _attack_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def run_figures(runs: Mapping[str, Path], out: Path) -> list[str]:
    """Sanity-check curves for ``menet report RUN_DIR...``: accuracy against eps and steps."""
    from menet.figures import plot_accuracy_curves
    from menet.report import _records, run_results

    lines: list[str] = []
    for axis, label in (("eps", "accuracy-vs-eps.png"), ("steps", "accuracy-vs-steps.png")):
        panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for name, path in runs.items():
            series: dict[str, list[tuple[float, float]]] = {}
            for r in _records(run_results(path)):
                if r["attack"] != "pgd" or r["transfer"] or r[axis] is None:
                    continue
                fixed = "steps" if axis == "eps" else "eps"
                key = f"PGD, {fixed} {r[fixed]:g}" + (f", EOT-{r['eot']}" if r["eot"] > 1 else "")
                series.setdefault(key, []).append((float(r[axis]), r["accuracy"]))
            series = {k: sorted(v) for k, v in series.items() if len(v) >= 2}
            if series:
                panels[name] = series
        if panels:
            plot_accuracy_curves(panels, out / label, xlabel=axis, log_x=axis == "steps")
            lines += [f"![robust accuracy against {axis}]({label})", ""]
    return lines
