"""Paper recipes: which runs to train, which attacks to run on them, and which tables and
figures to report, at the paper's full scale or shrunk to fit a small machine.

A recipe (YAML, see recipes/table1.yaml) has:

- ``runs``: name -> a training config: ``{base: train/X.yaml, set: {field: value, ...}}`` (the
  base relative to the recipe, dotted fields for defense.* and attack.*), or inline fields;
- ``evaluations``: tag -> ``{runs: [...], attacks: {name: {attack: pgd, steps: 40, ...}},
  transfer_from: run, eps: 8/255, step_size: 2/255, draws: 1, images: 10000, seed: 0,
  gradient: bpda}`` (eps / step_size are defaults for every attack of the evaluation);
- ``tables``: ``{title, columns, rows: [{label, cells: [run/tag/attack or null], paper:
  [numbers or null], adaptive: [run/tag/attack or null]}], note}``: the paper's layout; a cell
  names an evaluation result ("clean" for clean accuracy), ``paper`` the paper's number;
- ``figures``: ``{kind: ranks | reconstructions | tsne | distances | steps, ...}``.

``reproduce(recipe, scale)`` trains what is missing, attacks what is missing (both resume),
then writes the report. ``small`` shrinks data, epochs, attack steps and the wide ResNets so
that a recipe runs on a 2-core CPU in minutes; ``tiny`` (tests) also trains LeNets only.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from menet.config import ConfigError, TrainConfig, config_from_dict, load_recipe

log = logging.getLogger(__name__)
SCALES = ("full", "small", "tiny")
FIGURE_KINDS = ("ranks", "reconstructions", "tsne", "distances", "steps")

# Training at each scale: caps (the smaller of the recipe's value and the cap) and settings.
_TRAIN_CAPS = {
    "small": {"epochs": 2, "train_limit": 2000, "test_limit": 500, "defense.n_masks": 2, "attack.steps": 3},
    "tiny": {"epochs": 1, "train_limit": 8, "test_limit": 8, "defense.n_masks": 1, "attack.steps": 1},
}
_TRAIN_SET = {
    "small": {"lr_milestones": [], "eval_every": 0},
    "tiny": {"lr_milestones": [], "eval_every": 0, "batch_size": 4, "verify_checksums": False},
}
# Models too large for a small machine: their stand-ins at the small and tiny scales.
_SMALL_MODELS = {"wrn28_10": ("wide_resnet", {"depth": 10, "widen_factor": 2}),
                 "wrn34_10": ("wide_resnet", {"depth": 10, "widen_factor": 2}),
                 "wide_resnet": ("wide_resnet", {"depth": 10, "widen_factor": 2})}
# Evaluation at each scale: caps on images, attack steps, EOT samples, SPSA samples, draws.
_EVAL_CAPS = {
    "small": {"images": 200, "steps": 20, "eot": 4, "samples": 256, "draws": 2, "restarts": 1, "init_attempts": 200},
    "tiny": {"images": 4, "steps": 2, "eot": 2, "samples": 8, "draws": 1, "restarts": 1, "init_attempts": 10},
}


class RecipeError(ValueError):
    """A recipe is malformed; the message names the recipe and the field."""


@dataclasses.dataclass(frozen=True)
class EvaluationSpec:
    """One evaluation of a recipe: the same attacks on each of ``runs``."""

    tag: str
    runs: tuple[str, ...]
    attacks: dict[str, dict[str, Any]]  # name -> {attack: registered name, setting: value, ...}
    transfer_from: str | None = None
    draws: int = 1
    images: int | None = None
    seed: int = 0
    gradient: str = "bpda"
    batch_size: int = 256


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A paper table or figure: runs, evaluations, tables and figures (see the module docstring)."""

    name: str
    title: str
    runs: dict[str, TrainConfig]
    evaluations: tuple[EvaluationSpec, ...]
    tables: tuple[dict[str, Any], ...]
    figures: tuple[dict[str, Any], ...]
    notes: str = ""


def _fraction(value: Any, where: str) -> float:
    if isinstance(value, str) and "/" in value:
        top, bottom = value.split("/", 1)
        try:
            return float(top) / float(bottom)
        except (ValueError, ZeroDivisionError):
            pass
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise RecipeError(f"{where} must be a number or a fraction like 8/255, got {value!r}")


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for parent in parents:
        data = data.setdefault(parent, {})
    data[leaf] = value


def _get(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _run_config(name: str, spec: Any, folder: Path, where: str) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise RecipeError(f"{where}: run {name!r} must be a mapping (base/set or config fields)")
    spec = dict(spec)
    data: dict[str, Any] = {}
    if "base" in spec:
        try:
            data = load_recipe(folder / spec.pop("base"))
        except ConfigError as err:
            raise RecipeError(f"{where}: run {name!r}: {err}") from None
    overrides = spec.pop("set", {}) or {}
    data = copy.deepcopy(data)
    for key, value in {**spec, **overrides}.items():
        _set(data, key, value)
    data["name"] = name
    # A base's sections that this run's mode ignores (e.g. the attack of an adversarial base
    # reused for a vanilla run) are dropped, not carried along unused.
    mode = data.get("mode", "vanilla")
    if mode in ("vanilla", "madry"):
        data.pop("defense", None)
    if mode in ("vanilla", "menet"):
        data.pop("attack", None)
    return data


def load_paper_recipe(path: str | Path) -> Recipe:
    """Read and check a paper recipe (YAML, safe_load); RecipeError names what is wrong."""
    path = Path(path)
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"{where}: recipe not found") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{where}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or "runs" not in data:
        raise RecipeError(f"{where}: a paper recipe is a mapping with runs, evaluations, tables and figures "
                          "(training configs go to `menet train`)")
    unknown = sorted(set(data) - {"title", "runs", "evaluations", "tables", "figures", "notes"})
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {', '.join(unknown)}")
    runs: dict[str, TrainConfig] = {}
    for name, spec in (data.get("runs") or {}).items():
        try:
            config = config_from_dict(_run_config(name, spec, path.parent, where))
            config.validate()
        except ConfigError as err:
            raise RecipeError(f"{where}: run {name!r}: {err}") from None
        runs[name] = config
    evaluations = tuple(_evaluation(tag, spec, runs, where) for tag, spec in (data.get("evaluations") or {}).items())
    tables = tuple(data.get("tables") or ())
    figures = tuple(data.get("figures") or ())
    known_cells = {(e.tag, name) for e in evaluations for name in [*e.attacks, "clean", "worst case"]}
    for table in tables:
        for row in table.get("rows", []):
            for key in ("cells", "adaptive"):
                for cell in row.get(key) or []:
                    if cell is None:
                        continue
                    parts = str(cell).split("/")
                    if len(parts) != 3 or parts[0] not in runs or (parts[1], parts[2]) not in known_cells:
                        raise RecipeError(f"{where}: table {table.get('title')!r}: cell {cell!r} names no run/evaluation/attack of the recipe")
    for figure in figures:
        if figure.get("kind") not in FIGURE_KINDS:
            raise RecipeError(f"{where}: figure kind {figure.get('kind')!r}; valid: {', '.join(FIGURE_KINDS)}")
        if "attack" in figure:
            figure["attack"] = {k: _fraction(v, f"{where}: figure {figure['kind']}: {k}") if k in ("eps", "step_size") else v
                                for k, v in figure["attack"].items()}
        for key in ("models", "source"):
            for run in (figure.get(key, {}).values() if key == "models" else [figure.get(key)]):
                if run is not None and run not in runs:
                    raise RecipeError(f"{where}: figure {figure['kind']} names run {run!r}, which the recipe does not define")
    return Recipe(path.stem, str(data.get("title", path.stem)), runs, evaluations, tables, figures, str(data.get("notes", "")))


def _evaluation(tag: str, spec: Any, runs: Mapping[str, TrainConfig], where: str) -> EvaluationSpec:
    from menet.attacks import get_attack_class

    if not isinstance(spec, dict):
        raise RecipeError(f"{where}: evaluation {tag!r} must be a mapping")
    spec = dict(spec)
    targets = tuple(spec.pop("runs", ()))
    for run in [*targets, spec.get("transfer_from")]:
        if run is not None and run not in runs:
            raise RecipeError(f"{where}: evaluation {tag!r} names run {run!r}, which the recipe does not define")
    defaults = {k: _fraction(spec.pop(k), f"{where}: evaluation {tag!r}: {k}") for k in ("eps", "step_size") if k in spec}
    attacks = {}
    for name, settings in (spec.pop("attacks", {}) or {}).items():
        settings = dict(settings or {})
        kind = settings.pop("attack", name)
        try:
            fields = {f.name for f in dataclasses.fields(get_attack_class(kind))}
        except ValueError as err:
            raise RecipeError(f"{where}: evaluation {tag!r}: {err}") from None
        merged = {k: v for k, v in defaults.items() if k in fields}
        for key, value in settings.items():
            merged[key] = _fraction(value, f"{where}: {tag}.{name}.{key}") if key in ("eps", "step_size") else value
        attacks[name] = {"attack": kind, **merged}
    allowed = {"transfer_from", "draws", "images", "seed", "gradient", "batch_size"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise RecipeError(f"{where}: evaluation {tag!r}: unknown key(s) {', '.join(unknown)}")
    return EvaluationSpec(tag, targets, attacks, **spec)


def scaled(recipe: Recipe, scale: str) -> Recipe:
    """The recipe at ``scale``: "full" (as written), "small" or "tiny" (see the module docstring)."""
    if scale not in SCALES:
        raise RecipeError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    if scale == "full":
        return recipe
    runs = {}
    for name, config in recipe.runs.items():
        data = config.to_dict()
        for key, cap in _TRAIN_CAPS[scale].items():
            section = key.split(".")[0]
            if (section == "defense" and not config.defended) or (section == "attack" and config.mode not in ("madry", "menet-adv")):
                continue  # a section the mode ignores stays as it is
            value = _get(data, key)
            _set(data, key, cap if value is None else min(value, cap))
        for key, value in _TRAIN_SET[scale].items():
            _set(data, key, value)
        if scale == "tiny":  # tests: the pipeline, not the network, is what is checked
            data["model"], data["model_options"] = "lenet", {}
        elif data["model"] in _SMALL_MODELS:
            data["model"], data["model_options"] = _SMALL_MODELS[data["model"]]
        runs[name] = config_from_dict(data)
    caps = _EVAL_CAPS[scale]
    evaluations = []
    for spec in recipe.evaluations:
        attacks = {name: {k: (min(v, caps[k]) if k in caps and isinstance(v, int) else v) for k, v in settings.items()}
                   for name, settings in spec.attacks.items()}
        for settings in attacks.values():  # defaults that the caps must also bound
            cls_fields = _attack_fields(settings["attack"])
            for key in ("steps", "samples", "init_attempts"):
                if key in cls_fields and key not in settings:
                    settings[key] = min(_attack_default(settings["attack"], key), caps[key])
        images = caps["images"] if spec.images is None else min(spec.images, caps["images"])
        evaluations.append(dataclasses.replace(spec, attacks=attacks, images=images, draws=min(spec.draws, caps["draws"])))
    figures = []
    for figure in recipe.figures:
        figure = copy.deepcopy(figure)
        if "images" in figure or figure["kind"] in ("tsne", "distances"):
            figure["images"] = min(int(figure.get("images", caps["images"])), caps["images"] if scale == "tiny" else 500)
        if "attack" in figure:
            figure["attack"] = {k: (min(v, caps[k]) if k in caps and isinstance(v, int) else v) for k, v in figure["attack"].items()}
        if _TRAIN_SET[scale].get("verify_checksums") is False:
            figure["verify"] = False
        figures.append(figure)
    return dataclasses.replace(recipe, runs=runs, evaluations=tuple(evaluations), figures=tuple(figures))


def _attack_fields(kind: str) -> set[str]:
    from menet.attacks import get_attack_class

    return {f.name for f in dataclasses.fields(get_attack_class(kind))}


def _attack_default(kind: str, key: str) -> Any:
    from menet.attacks import get_attack_class

    return {f.name: f.default for f in dataclasses.fields(get_attack_class(kind))}[key]


def build_attacks(spec: EvaluationSpec, source: Any | None) -> dict[str, Any]:
    """The evaluation's attacks (wrapped in ``transfer`` when it has a source model)."""
    from menet.attacks import build_attack, eot, transfer

    attacks = {}
    for name, settings in spec.attacks.items():
        settings = dict(settings)
        kind = settings.pop("attack")
        samples = settings.pop("eot", None)
        attack = build_attack(kind, **settings)
        if samples is not None and samples > 1:
            attack = eot(attack, samples)
        attacks[name] = transfer(source, attack) if source is not None else attack
    return attacks


# --- running a recipe ----------------------------------------------------------------------

Say = Callable[[str], None]


def data_dir_for(dataset: str, data_dirs: Mapping[str, str] | str | None) -> str | None:
    """The data directory for ``dataset``: one for all, or per dataset (NAME=DIR)."""
    if data_dirs is None or isinstance(data_dirs, str):
        return data_dirs
    return data_dirs.get(dataset)


def check_data(recipe: Recipe, data_dirs: Mapping[str, str] | str | None) -> None:
    """Load each dataset's test split once, so a missing dataset fails before any work."""
    from menet.data import load_dataset

    needed = {config.dataset: (config.data_dir, config.verify_checksums) for config in recipe.runs.values()}
    for figure in recipe.figures:
        for dataset in [*figure.get("datasets", []), *([figure["dataset"]] if "dataset" in figure else [])]:
            needed.setdefault(dataset, (None, bool(figure.get("verify", True))))
    for dataset, (own_dir, verify) in needed.items():
        load_dataset(dataset, "test", data_dir_for(dataset, data_dirs) or own_dir, verify=verify)


def run_is_trained(run_dir: Path, config: TrainConfig) -> bool:
    """Whether ``run_dir`` holds the finished run of ``config``."""
    from menet.checkpoint import CheckpointError, load_weights_only

    try:
        state = load_weights_only(run_dir / "last.pt")
    except CheckpointError:
        return False
    return int(state.get("epoch", -1)) >= config.epochs


def reproduce(
    recipe: Recipe,
    runs_root: str | Path,
    *,
    scale: str = "full",
    data_dirs: Mapping[str, str] | str | None = None,
    device: str | None = None,
    say: Say = log.info,
    progress: Any = None,
    report_dir: str | Path | None = None,
) -> Path:
    """Train what is missing, attack what is missing (both resume), and write the report.

    Runs go to ``runs_root/NAME``; evaluations to ``runs_root/NAME/eval/RECIPE-TAG.json``;
    the report to ``report_dir`` (default ``runs_root/reports/RECIPE``)/report.md (returned).
    """
    import time

    import torch

    from menet.data import load_dataset
    from menet.evaluation import ResultStore, environment, evaluate
    from menet.progress import no_progress
    from menet.report import write_report
    from menet.runs import EVAL_DIR, evaluation_inputs, load_model
    from menet.training import fit

    progress = progress or no_progress
    recipe = scaled(recipe, scale)
    root = Path(runs_root)
    check_data(recipe, data_dirs)
    for name, config in recipe.runs.items():
        data_dir = data_dir_for(config.dataset, data_dirs)
        if data_dir is not None:
            config = dataclasses.replace(config, data_dir=str(data_dir))
        run_dir = root / name
        if run_is_trained(run_dir, config):
            say(f"run {name}: trained")
            continue
        resume = (run_dir / "last.pt").exists()
        say(f"run {name}: {'resuming' if resume else 'training'} ({config.mode}, {config.model} on {config.dataset}, "
            f"{config.epochs} epochs)")
        started = time.perf_counter()
        fit(config, root, resume=resume, device=device, progress=progress)
        say(f"run {name}: done in {time.perf_counter() - started:.0f} s")
    for spec in recipe.evaluations:
        source = load_model(root / spec.transfer_from, gradient=spec.gradient) if spec.transfer_from else None
        attacks = build_attacks(spec, source)
        for run in spec.runs:
            config = recipe.runs[run]
            test = load_dataset(config.dataset, "test", data_dir_for(config.dataset, data_dirs) or config.data_dir,
                                verify=config.verify_checksums)
            images, labels = test.images[: spec.images], test.labels[: spec.images]
            model = load_model(root / run, gradient=spec.gradient)
            dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
            model.to(dev)
            if source is not None:
                source.to(dev)
            tag = f"{recipe.name}-{spec.tag}"
            store = ResultStore(root / run / EVAL_DIR, tag, resume=True, metadata={
                "run": str(root / run), "dataset": config.dataset, "gradient": spec.gradient,
                "transfer_from": str(root / spec.transfer_from) if spec.transfer_from else None, "scale": scale,
                **environment()})
            say(f"evaluate {run}: {tag} ({', '.join(attacks)}) on {len(labels)} images")
            started = time.perf_counter()
            inputs = evaluation_inputs(root / run, dataset=config.dataset, gradient=spec.gradient,
                                       transfer_from=root / spec.transfer_from if spec.transfer_from else None)
            evaluate(model, images, labels, attacks, draws=spec.draws, seed=spec.seed, batch_size=spec.batch_size,
                     device=dev, store=store, inputs=inputs, progress=progress)
            say(f"evaluate {run}: {tag} done in {time.perf_counter() - started:.0f} s")
    out = Path(report_dir) if report_dir is not None else root / "reports" / recipe.name
    return write_report(out, recipe=recipe, runs_root=root, scale=scale, data_dirs=data_dirs, device=device, say=say)
