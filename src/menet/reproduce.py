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
then writes the report. ``small`` shrinks data, epochs, attack steps and the networks (small
wide ResNets stand in for ResNet-18, DenseNet-121 and WRN-28/34-10) so that a recipe runs on a
2-core CPU in minutes; attacks that the caps make identical run once (``aliases``). ``tiny``
(tests) also trains LeNets only.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
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
    "small": {"epochs": 2, "train_limit": 1000, "test_limit": 500, "defense.n_masks": 2, "attack.steps": 3},
    "tiny": {"epochs": 1, "train_limit": 8, "test_limit": 8, "defense.n_masks": 1, "attack.steps": 1},
}
_TRAIN_SET = {
    "small": {"lr_milestones": [], "eval_every": 0},
    "tiny": {"lr_milestones": [], "eval_every": 0, "batch_size": 4, "verify_checksums": False},
}
# Models too large for a 2-core CPU: their stand-ins at the small scale (WRN-10-1 for the
# ResNet-18 and DenseNet-121 of the paper, WRN-10-2 for its wide ResNets, so the two stay apart).
_SMALL_MODELS = {"resnet18": ("wide_resnet", {"depth": 10, "widen_factor": 1}),
                 "densenet121": ("wide_resnet", {"depth": 10, "widen_factor": 1}),
                 "wrn28_10": ("wide_resnet", {"depth": 10, "widen_factor": 2}),
                 "wrn34_10": ("wide_resnet", {"depth": 10, "widen_factor": 2}),
                 "wide_resnet": ("wide_resnet", {"depth": 10, "widen_factor": 2})}
# Evaluation at each scale: caps on images, attack steps, EOT samples, SPSA samples, draws.
_EVAL_CAPS = {
    "small": {"images": 100, "steps": 20, "eot": 4, "samples": 32, "draws": 2, "restarts": 1, "init_attempts": 200},
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
    # Attacks that a smaller scale made identical to another of the evaluation: name -> the
    # name that is run in its place (tables read the kept one's result).
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)


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
    for key, kind, example in (("runs", dict, "a mapping of run name to config"),
                               ("evaluations", dict, "a mapping of tag to evaluation"),
                               ("tables", list, "a list of tables"), ("figures", list, "a list of figures")):
        if data.get(key) is not None and not isinstance(data[key], kind):
            raise RecipeError(f"{where}: {key} must be {example}, got {type(data[key]).__name__}")
    runs: dict[str, TrainConfig] = {}
    for name, spec in (data.get("runs") or {}).items():
        try:
            config = config_from_dict(_run_config(name, spec, path.parent, where))
            config.validate()
        except ConfigError as err:
            raise RecipeError(f"{where}: run {name!r}: {err}") from None
        runs[name] = config
    evaluations = tuple(_evaluation(tag, spec, runs, where) for tag, spec in (data.get("evaluations") or {}).items())
    # A cell run/tag/attack must name a run that the evaluation tag attacks, and one of its attacks.
    known_cells = {f"{run}/{e.tag}/{name}" for e in evaluations for run in e.runs
                   for name in [*e.attacks, "clean", "worst case"]}
    tables = tuple(_table(table, known_cells, where) for table in data.get("tables") or ())
    figures = tuple(_figure(figure, runs, evaluations, where) for figure in data.get("figures") or ())
    return Recipe(path.stem, str(data.get("title", path.stem)), runs, evaluations, tables, figures, str(data.get("notes", "")))


def _evaluation(tag: str, spec: Any, runs: Mapping[str, TrainConfig], where: str) -> EvaluationSpec:
    from menet.attacks import get_attack_class

    if not isinstance(spec, dict):
        raise RecipeError(f"{where}: evaluation {tag!r} must be a mapping")
    spec = dict(spec)
    targets = spec.pop("runs", None)
    if not isinstance(targets, list) or not targets or not all(isinstance(run, str) for run in targets):
        raise RecipeError(f"{where}: evaluation {tag!r}: runs must be a non-empty list of run names, got {targets!r}")
    targets = tuple(targets)
    for run in [*targets, spec.get("transfer_from")]:
        if run is not None and (not isinstance(run, str) or run not in runs):
            raise RecipeError(f"{where}: evaluation {tag!r} names run {run!r}, which the recipe does not define")
    defaults = {k: _fraction(spec.pop(k), f"{where}: evaluation {tag!r}: {k}") for k in ("eps", "step_size") if k in spec}
    attacks = {}
    given = spec.pop("attacks", {}) or {}
    if not isinstance(given, dict):
        raise RecipeError(f"{where}: evaluation {tag!r}: attacks must be a mapping of name to settings, got {given!r}")
    for name, settings in given.items():
        if settings is not None and not isinstance(settings, dict):
            raise RecipeError(f"{where}: evaluation {tag!r}: attack {name!r} must be a mapping of settings, got {settings!r}")
        settings = dict(settings or {})
        kind = settings.pop("attack", name)
        try:
            fields = {f.name for f in dataclasses.fields(get_attack_class(kind))}
        except (ValueError, TypeError) as err:
            raise RecipeError(f"{where}: evaluation {tag!r}: {err}") from None
        merged = {k: v for k, v in defaults.items() if k in fields}
        for key, value in settings.items():
            merged[key] = _fraction(value, f"{where}: {tag}.{name}.{key}") if key in ("eps", "step_size") else value
        attacks[name] = {"attack": kind, **merged}
        _check_attack(attacks[name], f"{where}: evaluation {tag!r}: attack {name!r}")
    allowed = {"transfer_from", "draws", "images", "seed", "gradient", "batch_size"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise RecipeError(f"{where}: evaluation {tag!r}: unknown key(s) {', '.join(unknown)}")
    for key, low in (("draws", 1), ("images", 1), ("seed", 0), ("batch_size", 1)):
        if key in spec and not (key == "images" and spec[key] is None):
            _check_int(spec[key], low, f"{where}: evaluation {tag!r}: {key}")
    if "gradient" in spec:
        from menet.defense import GRADIENTS

        if spec["gradient"] not in GRADIENTS:
            raise RecipeError(f"{where}: evaluation {tag!r}: gradient must be one of {', '.join(GRADIENTS)}, "
                              f"got {spec['gradient']!r}")
    return EvaluationSpec(tag, targets, attacks, **spec)


def _check_int(value: Any, low: int, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RecipeError(f"{where} must be an integer >= {low}, got {value!r}")


def _check_attack(settings: dict[str, Any], where: str) -> None:
    """Build the attack as a run will (``build_attacks``), so that bad settings fail at load time."""
    kind = settings["attack"]
    try:
        fields = _attack_fields(kind)
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{where}: {err}") from None
    if "eot" in settings:
        if "eot" not in fields:
            raise RecipeError(f"{where}: eot averages gradients, but attack {kind!r} uses none")
        _check_int(settings["eot"], 1, f"{where}: eot")
    try:
        build_attacks(EvaluationSpec("check", (), {"attack": dict(settings)}), None)
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{where}: {err}") from None


_TABLE_KEYS = {"title", "columns", "rows", "note"}
_ROW_KEYS = {"label", "cells", "paper", "adaptive"}


def _table(table: Any, known_cells: set[str], where: str) -> dict[str, Any]:
    """A table of the recipe, checked: one cell, paper number and adaptive cell per column."""
    if not isinstance(table, dict):
        raise RecipeError(f"{where}: each table must be a mapping with title, columns and rows, got {table!r}")
    at = f"{where}: table {table.get('title')!r}"
    unknown = sorted(set(table) - _TABLE_KEYS)
    if unknown:
        raise RecipeError(f"{at}: unknown key(s) {', '.join(map(str, unknown))}; valid: {', '.join(sorted(_TABLE_KEYS))}")
    if "title" not in table:
        raise RecipeError(f"{at}: title missing")
    columns, rows = table.get("columns"), table.get("rows")
    if not isinstance(columns, list) or not columns:
        raise RecipeError(f"{at}: columns must be a non-empty list of column names, got {columns!r}")
    if not isinstance(rows, list) or not rows:
        raise RecipeError(f"{at}: rows must be a non-empty list of rows, got {rows!r}")
    for row in rows:
        if not isinstance(row, dict) or "label" not in row:
            raise RecipeError(f"{at}: each row must be a mapping with a label, got {row!r}")
        unknown = sorted(set(row) - _ROW_KEYS)
        if unknown:
            raise RecipeError(f"{at}: row {row['label']!r}: unknown key(s) {', '.join(map(str, unknown))}; "
                              f"valid: {', '.join(sorted(_ROW_KEYS))}")
        for key in ("cells", "paper", "adaptive"):
            values = row.get(key)
            if values is None:
                continue
            if not isinstance(values, list) or len(values) != len(columns):
                raise RecipeError(f"{at}: row {row['label']!r}: {key} must list one entry (or null) for each of the "
                                  f"{len(columns)} columns, got {values!r}")
            for value in values:
                if value is None:
                    continue
                if key == "paper":
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise RecipeError(f"{at}: row {row['label']!r}: paper values must be numbers (percent) or null, "
                                          f"got {value!r}")
                elif value not in known_cells:
                    raise RecipeError(f"{at}: row {row['label']!r}: cell {value!r} names no run/evaluation/attack of the "
                                      "recipe (run/tag/attack, with the run among the evaluation's runs)")
    return table


# Per figure kind: the keys it requires and those it may have (besides kind and verify).
_FIGURE_KEYS = {
    "ranks": ({"datasets"}, {"images"}),
    "reconstructions": ({"dataset"}, {"seed"}),
    "tsne": ({"models", "source", "attack"}, {"images", "seed"}),
    "distances": ({"models", "source", "attack"}, {"images", "seed"}),
    "steps": ({"panels"}, {"file"}),
}


def _figure(figure: Any, runs: Mapping[str, TrainConfig], evaluations: tuple[EvaluationSpec, ...], where: str
            ) -> dict[str, Any]:
    """A figure of the recipe, checked (its attack built as the report will build it)."""
    from menet.data import DATASETS

    if not isinstance(figure, dict):
        raise RecipeError(f"{where}: each figure must be a mapping with a kind, got {figure!r}")
    kind = figure.get("kind")
    if kind not in FIGURE_KINDS:
        raise RecipeError(f"{where}: figure kind {kind!r}; valid: {', '.join(FIGURE_KINDS)}")
    figure = copy.deepcopy(figure)
    at = f"{where}: figure {kind}"
    required, optional = _FIGURE_KEYS[kind]
    missing = sorted(required - set(figure))
    if missing:
        raise RecipeError(f"{at}: missing {', '.join(missing)} (a {kind} figure needs {', '.join(sorted(required))})")
    unknown = sorted(set(figure) - required - optional - {"kind", "verify"})
    if unknown:
        raise RecipeError(f"{at}: unknown key(s) {', '.join(map(str, unknown))}; "
                          f"valid: {', '.join(sorted(required | optional | {'kind', 'verify'}))}")
    if "verify" in figure and not isinstance(figure["verify"], bool):
        raise RecipeError(f"{at}: verify must be true or false, got {figure['verify']!r}")
    for key, low in (("images", 1), ("seed", 0)):
        if key in figure:
            _check_int(figure[key], low, f"{at}: {key}")

    def dataset(name: Any, key: str) -> None:
        if not isinstance(name, str) or name not in DATASETS:
            raise RecipeError(f"{at}: {key}: unknown dataset {name!r}; valid: {', '.join(DATASETS)}")

    def run(name: Any, key: str) -> str:
        if not isinstance(name, str) or name not in runs:
            raise RecipeError(f"{at}: {key} names run {name!r}, which the recipe does not define")
        return name

    if kind == "ranks":
        if not isinstance(figure["datasets"], list) or not figure["datasets"]:
            raise RecipeError(f"{at}: datasets must be a non-empty list of dataset names, got {figure['datasets']!r}")
        for name in figure["datasets"]:
            dataset(name, "datasets")
    elif kind == "reconstructions":
        dataset(figure["dataset"], "dataset")
    elif kind in ("tsne", "distances"):
        models = figure["models"]
        if not isinstance(models, dict) or not models:
            raise RecipeError(f"{at}: models must be a non-empty mapping of label to run, got {models!r}")
        used = [run(name, "models") for name in models.values()] + [run(figure["source"], "source")]
        datasets = sorted({runs[name].dataset for name in used})
        if len(datasets) > 1:
            raise RecipeError(f"{at}: models and source must be trained on one dataset, got {', '.join(datasets)}")
        settings = figure["attack"]
        if not isinstance(settings, dict) or not isinstance(settings.get("attack"), str):
            raise RecipeError(f"{at}: attack must be a mapping naming the attack, like {{attack: pgd, steps: 7}}, "
                              f"got {settings!r}")
        figure["attack"] = {k: _fraction(v, f"{at}: attack: {k}") if k in ("eps", "step_size") else v
                            for k, v in settings.items()}
        _check_attack(figure["attack"], f"{at}: attack")
    elif kind == "steps":
        panels = figure["panels"]
        if not isinstance(panels, dict) or not panels:
            raise RecipeError(f"{at}: panels must be a non-empty mapping of panel to {{label: run/tag}}, got {panels!r}")
        attacked = {f"{name}/{e.tag}" for e in evaluations for name in e.runs}
        for panel, series in panels.items():
            if not isinstance(series, dict) or not series:
                raise RecipeError(f"{at}: panel {panel!r} must be a non-empty mapping of label to run/tag, got {series!r}")
            for label, source in series.items():
                if source not in attacked:
                    raise RecipeError(f"{at}: panel {panel!r}: {label!r}: {source!r} names no run/evaluation of the "
                                      "recipe (run/tag, with the run among the evaluation's runs)")
        if "file" in figure and (not isinstance(figure["file"], str) or not figure["file"].endswith(".png")):
            raise RecipeError(f"{at}: file must be a PNG file name, got {figure['file']!r}")
    return figure


def scaled(recipe: Recipe, scale: str) -> Recipe:
    """The recipe at ``scale``: "full" (as written), "small" or "tiny" (see the module docstring)."""
    if scale not in SCALES:
        raise RecipeError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    if scale == "full":
        return recipe
    runs = {}
    for name, config in recipe.runs.items():
        data = config.to_dict()
        if config.defended and config.defense.p_infer is None:  # fewer masks must not move the deployed p
            data["defense"]["p_infer"] = round(config.defense.inference_p(), 6)
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
        kept: dict[str, str] = {}  # settings -> the first attack with them
        aliases = {}
        for name, settings in list(attacks.items()):
            key = yaml.safe_dump(settings, sort_keys=True)
            if key in kept:  # e.g. PGD-200 and PGD-1000 both capped at 20 steps: run once
                aliases[name] = kept[key]
                del attacks[name]
            else:
                kept[key] = name
        images = caps["images"] if spec.images is None else min(spec.images, caps["images"])
        evaluations.append(dataclasses.replace(spec, attacks=attacks, images=images, draws=min(spec.draws, caps["draws"]),
                                               aliases=aliases))
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


def scale_summary(scale: str) -> str:
    """What ``scale`` shrinks, in words (the report's banner)."""
    if scale == "full":
        return "the recipe's own settings"
    train = ", ".join(f"{key} <= {value}" for key, value in _TRAIN_CAPS[scale].items())
    evaluation = ", ".join(f"{key} <= {value}" for key, value in _EVAL_CAPS[scale].items())
    models = ("LeNet for every network" if scale == "tiny" else
              "; ".join(f"{big} -> {small} {options}" for big, (small, options) in _SMALL_MODELS.items()))
    return (f"training {train} (no learning-rate steps; the deployed keep-probability stays the recipe's); "
            f"attacks {evaluation} (attacks made identical by the caps run once); models: {models}")


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


def _set_aside_if_other(run_dir: Path, config: TrainConfig) -> tuple[Path, str] | None:
    """Move a run folder trained with other weight-shaping settings than ``config`` aside (to
    ``NAME.replaced-TIME``, nothing is deleted); return (where, the fields that differ) or None."""
    import time

    from menet.checkpoint import CheckpointError
    from menet.runs import read_config

    if not (run_dir / "config.yaml").is_file():
        return None
    try:
        saved = read_config(run_dir)
    except (CheckpointError, OSError):
        differ = "its config.yaml is unreadable"
    else:
        # Mixed precision (--amp, e.g. a multi-GPU run trained with torchrun) is how, not what, was trained.
        fields = [f for f in config.resolved().weights_differ(saved) if f != "amp"]
        if not fields:
            return None
        differ = ", ".join(fields[:5]) + (", ..." if len(fields) > 5 else "")
    target = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(target)
    return target, differ


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
    from menet.evaluation import ResultStore, SettingsChanged, environment, evaluate
    from menet.progress import no_progress
    from menet.report import write_report
    from menet.runs import EVAL_DIR, evaluation_inputs, load_model
    from menet.training import fit

    progress = progress or no_progress
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RecipeError("menet reproduce / menet demo run in one process (every rank would evaluate and write the "
                          "same files): run them without torchrun; for multi-GPU training of a recipe's run use "
                          "torchrun ... -m menet train with its config")
    recipe = scaled(recipe, scale)
    root = Path(runs_root)
    check_data(recipe, data_dirs)
    for name, config in recipe.runs.items():
        data_dir = data_dir_for(config.dataset, data_dirs)
        if data_dir is not None:
            config = dataclasses.replace(config, data_dir=str(data_dir))
        run_dir = root / name
        replaced = _set_aside_if_other(run_dir, config)
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
            arguments = {"draws": spec.draws, "seed": spec.seed, "batch_size": spec.batch_size, "device": dev,
                         "inputs": inputs, "progress": progress}
            try:
                evaluate(model, images, labels, attacks, store=store, **arguments)
            except SettingsChanged as err:  # the recipe or the weights changed since: evaluate anew
                say(f"evaluate {run}: {err}; evaluating anew (the old result stays until the new one replaces it)")
                store = ResultStore(
                    root / run / EVAL_DIR, tag, overwrite=True, metadata=store.metadata)
                evaluate(model, images, labels, attacks, store=store, **arguments)
            say(f"evaluate {run}: {tag} done in {time.perf_counter() - started:.0f} s")
    out = Path(report_dir) if report_dir is not None else root / "reports" / recipe.name
    return write_report(out, recipe=recipe, runs_root=root, scale=scale, data_dirs=data_dirs, device=device, say=say)
