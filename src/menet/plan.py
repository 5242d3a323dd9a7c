"""``menet reproduce RECIPE --plan``: what the chain would do, without doing any of it, and
what each step would cost on this machine, so that a user can size a (GPU) job.

``plan(recipe, root, scale=...)`` lists the runs to train and the evaluations (and features)
to run, marking what already exists (done, resumes, or set aside and redone); nothing is
written. ``measure_rates`` times, on the device the chain would use, a few training steps of
each network at its batch size and the run's estimator on a small batch of its image shape;
``estimate`` turns those rates into seconds per step. The estimate is rough (data loading, the
report and the per-batch overheads of attacks are left out): read it as the order of magnitude.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from menet.attack_settings import build_attacks
from menet.config import TrainConfig
from menet.data import DatasetError, get_dataset_spec, load_dataset
from menet.features_store import features_path, read_features
from menet.models import build_model_for_dataset
from menet.recipe import EvaluationSpec, Recipe, data_dir_for
from menet.report.results import current_fingerprint
from menet.reproduce import DataDirs, other_settings, run_is_trained, with_data_dir
from menet.runs import EVAL_DIR, build_defense
from menet.scaling import scaled


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of the chain: kind ("train", "evaluate", "features"), what (run or run: tag),
    status ("done", "to do", "resumes", "redo: ..."), details, and the estimated seconds (None when done)."""

    kind: str
    what: str
    status: str
    detail: str
    seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class Rates:
    """Seconds per image measured on ``device``: a training step of each network (forward,
    backward, update), keyed by (model, dataset, options); the estimator of each defended run, by run."""

    device: str
    step: dict[str, float]
    estimator: dict[str, float]


def device_name(device: torch.device) -> str:
    """The device in words (GPU name, or CPU with its thread count)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _network_key(config: TrainConfig) -> str:
    return f"{config.model} {json.dumps(config.model_options, sort_keys=True)} on {config.dataset}"


def _time(fn: Any, repeats: int) -> float:
    fn()  # warm-up (allocation, kernels, thread pools)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def measure_rates(recipe: Recipe, device: torch.device, *, batch: int = 32, repeats: int = 2) -> Rates:
    """Time a training step per network and the estimator per defended run (random inputs of the
    dataset's shape, freshly initialised networks: speed does not depend on the weights)."""
    step: dict[str, float] = {}
    estimator: dict[str, float] = {}
    generator = torch.Generator().manual_seed(0)  # on the CPU, as the evaluation's mask generators
    for name, config in recipe.runs.items():
        shape = get_dataset_spec(config.dataset).image_shape
        key = _network_key(config)
        if key not in step:
            network = build_model_for_dataset(config.model, config.dataset, **config.model_options).to(device)
            optimiser = torch.optim.SGD(network.parameters(), lr=0.0)
            n = min(batch, config.batch_size)
            x = torch.rand((n, *shape), generator=generator).to(device)
            y = torch.zeros(n, dtype=torch.int64, device=device)

            def train_step() -> None:
                optimiser.zero_grad()
                torch.nn.functional.cross_entropy(network(x), y).backward()
                optimiser.step()

            step[key] = _time(train_step, repeats) / n
        if config.defended:
            defense = build_defense(config, generator=generator)
            x = torch.rand((min(batch, 16), *shape), generator=generator).to(device)
            with torch.no_grad():
                estimator[name] = _time(lambda: defense(x), repeats) / len(x)
    return Rates(device_name(device), step, estimator)


def _train_images(config: TrainConfig, data_dirs: DataDirs) -> int | None:
    if config.train_limit is not None:
        return int(config.train_limit)
    try:
        return len(load_dataset(config.dataset, "train", data_dir_for(config.dataset, data_dirs) or config.data_dir,
                                verify=False).labels)
    except DatasetError:
        return None


def _train_seconds(config: TrainConfig, name: str, images: int, rates: Rates) -> float:
    per_image = rates.step[_network_key(config)]
    recon = rates.estimator.get(name, 0.0)
    copies = config.defense.n_masks if config.mode == "menet" else 1
    adversarial = config.attack.steps if config.mode in ("madry", "menet-adv") else 0
    if config.mode == "menet-adv":  # every PGD step goes through the defense
        per_sample = (1 + adversarial) * (per_image + recon)
    else:
        per_sample = (1 + adversarial) * per_image + (recon if config.defended and config.masks == "fresh" else 0.0)
    build = images * copies * recon if config.mode == "menet" and config.masks == "cached" else 0.0
    return build + config.epochs * images * copies * per_sample


def _passes(settings: Mapping[str, Any]) -> int:
    """Forward-backward passes per image of one attack (steps x EOT x restarts x samples)."""
    inner = settings.get("of", settings) if settings.get("attack") == "transfer" else settings
    steps = int(inner.get("steps", 1) or 1)
    return steps * int(inner.get("eot", 1) or 1) * int(inner.get("restarts", 1) or 1) * int(inner.get("samples", 1) or 1)


def _evaluation_seconds(spec: EvaluationSpec, recipe: Recipe, run: str, rates: Rates, *, with_features: bool) -> float:
    target = recipe.runs[run]
    attacker = recipe.runs[spec.transfer_from] if spec.transfer_from else target
    attack_name = spec.transfer_from or run
    per_pass = rates.step[_network_key(attacker)] + rates.estimator.get(attack_name, 0.0)
    score = rates.step[_network_key(target)] / 3 + rates.estimator.get(run, 0.0)  # a forward pass ~ 1/3 of a step
    images = spec.images or 0
    attack_cost = sum(_passes(s) for s in spec.attacks.values()) * per_pass
    total = images * (attack_cost + (1 + len(spec.attacks)) * spec.draws * score)
    if with_features:  # the attacks once more, and one forward pass per image and condition
        total += images * (attack_cost + (1 + len(spec.attacks)) * score)
    return total


def _evaluation_status(spec: EvaluationSpec, recipe: Recipe, run: str, root: Path, retrain: bool) -> str:
    eval_dir = root / run / EVAL_DIR
    tag = f"{recipe.name}-{spec.tag}"
    if retrain:
        return "to do"  # its run is trained (again) first
    if (eval_dir / f".{tag}.partial").is_dir():
        return "resumes"
    try:
        result = json.loads((eval_dir / f"{tag}.json").read_text())
    except (OSError, ValueError):
        return "to do"
    settings = result.get("settings", {})
    wanted = {name: a.settings() for name, a in build_attacks(spec.attacks).items()}
    recorded = {name: (s.get("of", s) if s.get("attack") == "transfer" else s)
                for name, s in settings.get("attacks", {}).items()}
    same = (recorded == json.loads(json.dumps(wanted)) and settings.get("n") == spec.images
            and settings.get("draws") == spec.draws and settings.get("seed") == spec.seed
            and settings.get("inputs", {}).get("model") == current_fingerprint(root / run))
    return "done" if same else "redo: other settings or weights"


def _features_status(spec: EvaluationSpec, recipe: Recipe, run: str, root: Path, retrain: bool) -> str:
    path = features_path(root / run / EVAL_DIR, f"{recipe.name}-{spec.tag}")
    if retrain or not path.exists():
        return "to do"
    try:
        meta = read_features(path).meta
    except ValueError:
        return "redo: not readable"
    same = (meta.get("n") == spec.images and meta.get("seed") == spec.seed and set(meta.get("names", [])) == set(spec.attacks)
            and meta.get("inputs", {}).get("model") == current_fingerprint(root / run))
    return "done" if same else "redo: other settings or weights"


def plan(recipe: Recipe, runs_root: str | Path, *, scale: str = "full", data_dirs: DataDirs = None,
         device: str | None = None, rates: Rates | None = None) -> tuple[list[Step], Rates]:
    """The chain's steps for ``recipe`` at ``scale`` under ``runs_root``, each marked done or not,
    with estimated seconds from ``rates`` (measured here when not given). Writes nothing."""
    recipe = scaled(recipe, scale)
    root = Path(runs_root)
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rates = rates or measure_rates(recipe, dev)
    steps, redone = [], set()
    for name, config in recipe.runs.items():
        config = with_data_dir(config, data_dirs)
        images = _train_images(config, data_dirs)
        size = f"{images:,}" if images is not None else "? (dataset not found here)"
        detail = f"{config.mode} {config.model} on {config.dataset}, {config.epochs} epochs x {size} images"
        differ = other_settings(root / name, config)
        if differ is not None:
            status = f"redo: trained with other settings ({differ}); set aside"
        elif run_is_trained(root / name, config):
            steps.append(Step("train", name, "done", detail))
            continue
        else:
            status = "resumes" if (root / name / "last.pt").exists() else "to do"
        redone.add(name)
        seconds = _train_seconds(config, name, images, rates) if images is not None else None
        steps.append(Step("train", name, status, detail, seconds))
    for spec in recipe.evaluations:
        for run in spec.runs:
            retrain = run in redone or spec.transfer_from in redone
            detail = f"{', '.join(spec.attacks)} on {spec.images} images, {spec.draws} draw(s)"
            status = _evaluation_status(spec, recipe, run, root, retrain)
            seconds = None if status == "done" else _evaluation_seconds(spec, recipe, run, rates, with_features=False)
            steps.append(Step("evaluate", f"{run}: {recipe.name}-{spec.tag}", status, detail, seconds))
            if spec.features:
                status = _features_status(spec, recipe, run, root, retrain)
                seconds = None if status == "done" else (_evaluation_seconds(spec, recipe, run, rates, with_features=True)
                                                         - _evaluation_seconds(spec, recipe, run, rates, with_features=False))
                steps.append(Step("features", f"{run}: {recipe.name}-{spec.tag}", status,
                                  "penultimate features, clean and attacked (Figs. 4, 5)", seconds))
    return steps, rates


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"~{seconds:.0f} s"
    if seconds < 7200:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def format_plan(recipe_name: str, scale: str, root: Path, steps: list[Step], rates: Rates) -> str:
    """The plan as text: one line per step, the total still to do, and where the rates come from."""
    width = max([len(s.what) for s in steps] + [4])
    lines = [f"plan of recipe {recipe_name} at scale {scale} under {root} (nothing is run or written):", ""]
    lines += [f"  {s.kind:<9}{s.what:<{width + 2}}{s.status:<12} {_duration(s.seconds):>9}  {s.detail}" for s in steps]
    todo = [s.seconds for s in steps if s.status != "done"]
    total = sum(t for t in todo if t is not None)
    unknown = sum(t is None for t in todo)
    lines += ["", f"{len(todo)} of {len(steps)} steps to do, estimated {_duration(total)} in all"
              + (f" ({unknown} step(s) not estimated)" if unknown else "") + ".",
              f"Estimate (rough, about 2x either way) from rates measured just now on {rates.device}: "
              + "; ".join(f"{k}: {v * 1e3:.2f} ms per image and training step" for k, v in rates.step.items())
              + ("; estimator " + ", ".join(f"{k}: {v * 1e3:.2f} ms per image" for k, v in rates.estimator.items())
                 if rates.estimator else "")
              + ". Data loading and the report are not counted; on another device run --plan there."]
    return "\n".join(lines)


__all__ = ["Rates", "Step", "format_plan", "measure_rates", "plan"]
