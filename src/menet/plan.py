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
from menet.checkpoint import CheckpointError
from menet.config import TrainConfig
from menet.convergence import step_counts
from menet.data import DatasetError, get_dataset_spec, load_dataset
from menet.evaluation import evaluation_settings
from menet.features_store import features_current, features_meta, features_path, read_features
from menet.models import build_model_for_dataset
from menet.recipe import EvaluationSpec, Recipe, data_dir_for
from menet.reproduce import DataDirs, other_settings, run_is_trained, with_data_dir
from menet.runs import EVAL_DIR, build_defense, evaluation_inputs
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


def _test_images(config: TrainConfig, data_dirs: DataDirs, limit: int | None) -> int | None:
    """How many test images the chain evaluates: the first ``limit`` (all without one) of the
    test split it reads; None when the split is not found here and no limit says it."""
    try:
        count = len(load_dataset(config.dataset, "test", data_dir_for(config.dataset, data_dirs) or config.data_dir,
                                 verify=False).labels)
    except DatasetError:
        return limit
    return count if limit is None else min(count, limit)


def _evaluation_seconds(spec: EvaluationSpec, recipe: Recipe, run: str, rates: Rates, images: int | None, *,
                        with_features: bool) -> float | None:
    if images is None:
        return None
    target = recipe.runs[run]
    attacker = recipe.runs[spec.transfer_from] if spec.transfer_from else target
    attack_name = spec.transfer_from or run
    per_pass = rates.step[_network_key(attacker)] + rates.estimator.get(attack_name, 0.0)
    score = rates.step[_network_key(target)] / 3 + rates.estimator.get(run, 0.0)  # a forward pass ~ 1/3 of a step
    attack_cost = sum(_passes(s) for s in spec.attacks.values()) * per_pass
    if spec.converge_cap is not None:  # at most every doubling up to the cap
        (settings,) = spec.attacks.values()
        attack_cost *= sum(step_counts(settings["steps"], spec.converge_cap)) / settings["steps"]
    total = images * (attack_cost + (1 + len(spec.attacks)) * spec.draws * score)
    if with_features:  # the attacks once more, and one forward pass per image and condition
        total += images * (attack_cost + (1 + len(spec.attacks)) * score)
    return total


def _expected(spec: EvaluationSpec, recipe: Recipe, run: str, root: Path, images: int | None
              ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the settings the chain's evaluation would record, the meta of its features), exactly as
    ``menet.reproduce`` makes them, so that a result counts as done only when the chain would
    reuse it; None when the run (or the transfer source) has no weights to fingerprint."""
    # Transfer's settings do not depend on the source model: a stand-in builds the same ones.
    attacks = build_attacks(spec.attacks, torch.nn.Identity() if spec.transfer_from else None)
    try:
        inputs = evaluation_inputs(root / run, dataset=recipe.runs[run].dataset, gradient=spec.gradient,
                                   transfer_from=root / spec.transfer_from if spec.transfer_from else None)
    except CheckpointError:
        return None
    settings = evaluation_settings(attacks, n=images, batch_size=spec.batch_size, draws=spec.draws, seed=spec.seed,
                                   inputs=inputs)
    meta = features_meta(attacks, seed=spec.seed, n=images, inputs=inputs, tag=f"{recipe.name}-{spec.tag}")
    return json.loads(json.dumps(settings)), meta


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _evaluation_status(eval_dir: Path, tag: str, expected: dict[str, Any] | None, cap: int | None = None) -> str:
    if expected is None:
        return "to do"  # its run is trained (again) first
    partial, result = eval_dir / f".{tag}.partial", eval_dir / f"{tag}.json"
    if partial.is_dir():  # the chain resumes it with the same settings, else starts it anew
        saved = _read_json(partial / "settings.json")
        return "resumes" if saved in (None, expected) else "redo: other settings or weights"
    if not result.is_file():
        return "to do"
    saved = _read_json(result)
    if isinstance(saved, dict) and isinstance(saved.get("convergence"), dict) and isinstance(saved.get("settings"), dict):
        if not _same_doubling(saved["convergence"], cap):
            return "redo: other converge_cap"
        saved = {**saved, "settings": _at_start(saved["settings"], saved["convergence"])}
    elif cap is not None:
        return "redo: not converged before"
    return "done" if isinstance(saved, dict) and saved.get("settings") == expected else "redo: other settings or weights"


def _same_doubling(record: dict[str, Any], cap: int | None) -> bool:
    """Whether a converged result's curve is the one the chain would run up to ``cap``: the
    same step counts, ending where it converged or at this cap."""
    try:
        counts = [int(p["steps"]) for p in record["curve"]]
        planned = step_counts(int(record["start"]), cap) if cap is not None else None
    except (KeyError, TypeError, ValueError):
        return False
    if planned is None or counts != planned[: len(counts)]:
        return False
    return bool(record.get("converged")) or counts[-1] == cap


def _at_start(settings: dict[str, Any], convergence: dict[str, Any]) -> dict[str, Any]:
    """A converged result's settings as the chain records them before the doubling (the
    attack's steps where it started), to compare with what the recipe asks."""
    attacks = {}
    for name, attack in settings.get("attacks", {}).items():
        inner = attack.get("of", attack) if attack.get("attack") == "transfer" else attack
        inner = {**inner, "steps": convergence.get("start")}
        attacks[name] = {**attack, "of": inner} if attack.get("attack") == "transfer" else inner
    return {**settings, "attacks": attacks}


def _features_status(path: Path, meta: dict[str, Any] | None) -> str:
    if meta is None or not path.exists():
        return "to do"
    try:
        read_features(path)
    except ValueError:
        return "redo: not readable"
    return "done" if features_current(path, meta) else "redo: other settings or weights"


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
            images = _test_images(recipe.runs[run], data_dirs, spec.images)
            expected = None if retrain else _expected(spec, recipe, run, root, images)
            tag = f"{recipe.name}-{spec.tag}"
            shown = f"{images:,}" if images is not None else "? (dataset not found here)"
            detail = f"{', '.join(spec.attacks)} on {shown} images, {spec.draws} draw(s)"
            status = _evaluation_status(root / run / EVAL_DIR, tag, expected[0] if expected else None, spec.converge_cap)
            seconds = None if status == "done" else _evaluation_seconds(spec, recipe, run, rates, images, with_features=False)
            steps.append(Step("evaluate", f"{run}: {tag}", status, detail, seconds))
            if spec.features:
                status = _features_status(features_path(root / run / EVAL_DIR, tag), expected[1] if expected else None)
                both = _evaluation_seconds(spec, recipe, run, rates, images, with_features=True)
                alone = _evaluation_seconds(spec, recipe, run, rates, images, with_features=False)
                seconds = None if status == "done" or both is None or alone is None else both - alone
                steps.append(Step("features", f"{run}: {tag}", status,
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
