"""The chain that executes a recipe: train the runs that are missing, evaluate what is missing
(both resume where they stopped), store the features its figures need, then write the report.

``reproduce(recipe, runs_root, scale=...)``: runs go to ``runs_root/NAME``, evaluations to
``runs_root/NAME/eval/RECIPE-TAG.json`` (and ``RECIPE-TAG.features.npz`` for an evaluation with
``features: true``), the report to ``runs_root/reports/RECIPE/report.md``. A run folder trained
with other weight-shaping settings is moved aside, never deleted; a result of other settings or
weights is evaluated anew. The recipe itself is ``menet.recipe``, its scales ``menet.scaling``,
the plan without running anything ``menet.plan``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from menet.attack_settings import build_attacks
from menet.checkpoint import CheckpointError, load_weights_only
from menet.config import TrainConfig
from menet.convergence import evaluate_converged, with_steps
from menet.data import load_dataset
from menet.evaluation import ResultStore, SettingsChanged, environment, evaluate
from menet.features_store import features_current, features_meta, features_path, save_features
from menet.progress import no_progress
from menet.recipe import EvaluationSpec, Recipe, RecipeError, data_dir_for, load_paper_recipe
from menet.report import write_report
from menet.runs import EVAL_DIR, evaluation_inputs, load_model, read_config
from menet.scaling import scaled
from menet.training import fit

log = logging.getLogger(__name__)
Say = Callable[[str], None]
DataDirs = Mapping[str, str] | str | None


def check_data(recipe: Recipe, data_dirs: DataDirs) -> None:
    """Load each dataset's test split once, so a missing dataset fails before any work."""
    needed = {config.dataset: (config.data_dir, config.verify_checksums) for config in recipe.runs.values()}
    for figure in recipe.figures:
        for dataset in [*figure.get("datasets", []), *([figure["dataset"]] if "dataset" in figure else [])]:
            needed.setdefault(dataset, (None, bool(figure.get("verify", True))))
    for dataset, (own_dir, verify) in needed.items():
        load_dataset(dataset, "test", data_dir_for(dataset, data_dirs) or own_dir, verify=verify)


def set_aside_if_other(run_dir: Path, config: TrainConfig) -> tuple[Path, str] | None:
    """Move a run folder trained with other weight-shaping settings than ``config`` aside (to
    ``NAME.replaced-TIME``, nothing is deleted); return (where, the fields that differ) or None."""
    differ = other_settings(run_dir, config)
    if differ is None:
        return None
    target = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(target)
    return target, differ


def other_settings(run_dir: Path, config: TrainConfig) -> str | None:
    """The weight-shaping fields in which the run in ``run_dir`` differs from ``config`` (in
    words), or None when there is no run there or it has the same settings."""
    if not (run_dir / "config.yaml").is_file():
        return None
    try:
        saved = read_config(run_dir)
    except (CheckpointError, OSError):
        return "its config.yaml is unreadable"
    # Mixed precision (--amp, e.g. a multi-GPU run trained with torchrun) is how, not what, was trained.
    fields = [f for f in config.resolved().weights_differ(saved) if f != "amp"]
    if not fields:
        return None
    return ", ".join(fields[:5]) + (", ..." if len(fields) > 5 else "")


def run_is_trained(run_dir: Path, config: TrainConfig) -> bool:
    """Whether ``run_dir`` holds the finished run of ``config``."""
    try:
        state = load_weights_only(run_dir / "last.pt")
    except CheckpointError:
        return False
    return int(state.get("epoch", -1)) >= config.epochs


def with_data_dir(config: TrainConfig, data_dirs: DataDirs) -> TrainConfig:
    """``config`` reading its dataset from --data-dir where one is given for it."""
    data_dir = data_dir_for(config.dataset, data_dirs)
    return config if data_dir is None else dataclasses.replace(config, data_dir=str(data_dir))


def train_missing(recipe: Recipe, root: Path, *, data_dirs: DataDirs, device: str | None, say: Say,
                  progress: Any) -> None:
    """Train (or resume) every run of the recipe that is not finished; set other runs aside."""
    for name, config in recipe.runs.items():
        config = with_data_dir(config, data_dirs)
        run_dir = root / name
        replaced = set_aside_if_other(run_dir, config)
        if replaced is not None:
            say(f"run {name}: {run_dir} was trained with other settings ({replaced[1]}); moved to {replaced[0].name}, "
                "training the recipe's run")
        if run_is_trained(run_dir, config):
            say(f"run {name}: trained")
            continue
        resume = (run_dir / "last.pt").exists()
        say(f"run {name}: {'resuming' if resume else 'training'} ({config.mode}, {config.model} on {config.dataset}, "
            f"{config.epochs} epochs)")
        started = time.perf_counter()
        fit(config, root, resume=resume, device=device, progress=progress)
        say(f"run {name}: done in {time.perf_counter() - started:.0f} s")


def evaluate_missing(recipe: Recipe, root: Path, *, scale: str, data_dirs: DataDirs, device: str | None, say: Say,
                     progress: Any) -> None:
    """Run every evaluation of the recipe that has no finished result of the same settings and
    weights (resuming unfinished ones), and store the features of those that ask for them."""
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for spec in recipe.evaluations:
        source = load_model(root / spec.transfer_from, gradient=spec.gradient).to(dev) if spec.transfer_from else None
        attacks = build_attacks(spec.attacks, source)
        for run in spec.runs:
            config = recipe.runs[run]
            test = load_dataset(config.dataset, "test", data_dir_for(config.dataset, data_dirs) or config.data_dir,
                                verify=config.verify_checksums)
            images, labels = test.images[: spec.images], test.labels[: spec.images]
            model = load_model(root / run, gradient=spec.gradient).to(dev)
            tag = f"{recipe.name}-{spec.tag}"
            inputs = evaluation_inputs(root / run, dataset=config.dataset, gradient=spec.gradient,
                                       transfer_from=root / spec.transfer_from if spec.transfer_from else None)
            def attacks_at(steps: int, attacks: Mapping[str, Any] = attacks) -> dict[str, Any]:
                return {name: with_steps(attack, steps) for name, attack in attacks.items()}

            _evaluate_one(spec, run, root, tag, model, images, labels, attacks, inputs, scale=scale, dev=dev, say=say,
                          progress=progress, attacks_at=attacks_at)
            if spec.features:
                _store_features(spec, run, root, tag, model, images, labels, attacks, inputs, dev=dev, say=say)


def _evaluate_one(spec: EvaluationSpec, run: str, root: Path, tag: str, model: torch.nn.Module, images: torch.Tensor,
                  labels: torch.Tensor, attacks: Mapping[str, Any], inputs: Mapping[str, Any], *, scale: str,
                  dev: torch.device, say: Say, progress: Any, attacks_at: Callable[[int], Mapping[str, Any]]) -> None:
    store = ResultStore(root / run / EVAL_DIR, tag, resume=True, metadata={
        "run": str(root / run), "dataset": inputs["dataset"], "gradient": spec.gradient,
        "transfer_from": str(root / spec.transfer_from) if spec.transfer_from else None, "scale": scale,
        **environment()})
    say(f"evaluate {run}: {tag} ({', '.join(attacks)}) on {len(labels)} images")
    started = time.perf_counter()
    arguments = {"draws": spec.draws, "seed": spec.seed, "batch_size": spec.batch_size, "device": dev,
                 "inputs": inputs, "progress": progress}
    def run_once(resume: bool) -> dict[str, Any]:
        if spec.converge_cap is not None:  # the steps doubled until no significant drop (menet.convergence)
            (settings,) = spec.attacks.values()
            return evaluate_converged(model, images, labels, attacks_at, start=settings["steps"], cap=spec.converge_cap,
                                      eval_dir=root / run / EVAL_DIR, tag=tag, resume=resume, overwrite=not resume,
                                      metadata=store.metadata, **arguments)
        once = store if resume else ResultStore(root / run / EVAL_DIR, tag, overwrite=True, metadata=store.metadata)
        return evaluate(model, images, labels, attacks, store=once, **arguments)

    try:
        result = run_once(resume=True)
    except SettingsChanged as err:  # the recipe or the weights changed since: evaluate anew
        say(f"evaluate {run}: {err}; evaluating anew (the old result stays until the new one replaces it)")
        result = run_once(resume=False)
    done = f"evaluate {run}: {tag} done in {time.perf_counter() - started:.0f} s"
    if "convergence" in result:
        from menet.summary import describe_convergence

        done += "; " + describe_convergence(result["convergence"])
    say(done)


def _store_features(spec: EvaluationSpec, run: str, root: Path, tag: str, model: torch.nn.Module, images: torch.Tensor,
                    labels: torch.Tensor, attacks: Mapping[str, Any], inputs: Mapping[str, Any], *, dev: torch.device,
                    say: Say) -> None:
    path = features_path(root / run / EVAL_DIR, tag)
    if features_current(path, features_meta(attacks, seed=spec.seed, n=len(labels), inputs=inputs, tag=tag)):
        say(f"features {run}: {path.name} stored")
        return
    started = time.perf_counter()
    save_features(path, model, images, labels, attacks, seed=spec.seed, batch_size=spec.batch_size, device=dev,
                  inputs=inputs, tag=tag)
    say(f"features {run}: {path.name} (clean and {', '.join(attacks)}) in {time.perf_counter() - started:.0f} s")


def reproduce(
    recipe: Recipe,
    runs_root: str | Path,
    *,
    scale: str = "full",
    data_dirs: DataDirs = None,
    device: str | None = None,
    say: Say = log.info,
    progress: Any = None,
    report_dir: str | Path | None = None,
) -> Path:
    """Train what is missing, attack what is missing (both resume), store the features the
    figures need, and write the report.

    Runs go to ``runs_root/NAME``; evaluations to ``runs_root/NAME/eval/RECIPE-TAG.json``;
    the report to ``report_dir`` (default ``runs_root/reports/RECIPE``)/report.md (returned).
    """
    progress = progress or no_progress
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RecipeError("menet reproduce / menet demo run in one process (every rank would evaluate and write the "
                          "same files): run them without torchrun; for multi-GPU training of a recipe's run use "
                          "torchrun ... -m menet train with its config")
    recipe = scaled(recipe, scale)
    root = Path(runs_root)
    check_data(recipe, data_dirs)
    train_missing(recipe, root, data_dirs=data_dirs, device=device, say=say, progress=progress)
    evaluate_missing(recipe, root, scale=scale, data_dirs=data_dirs, device=device, say=say, progress=progress)
    out = Path(report_dir) if report_dir is not None else root / "reports" / recipe.name
    return write_report(out, recipe=recipe, runs_root=root, scale=scale, data_dirs=data_dirs, say=say)


__all__ = ["check_data", "evaluate_missing", "load_paper_recipe", "reproduce", "run_is_trained", "set_aside_if_other", "train_missing"]
