"""Paper recipes, as data: the schema (``Recipe``, ``EvaluationSpec``), reading a recipe file
and checking every field of it before any work, so that a bad recipe fails at once, naming the
recipe and the field.

A recipe (YAML, see recipes/table1.yaml) has:

- ``runs``: name -> a training config: ``{base: train/X.yaml, set: {field: value, ...}}`` (the
  base relative to the recipe, dotted fields for defense.* and attack.*), or inline fields;
- ``evaluations``: tag -> ``{runs: [...], attacks: {name: {attack: pgd, steps: 40, ...}},
  transfer_from: run, eps: 8/255, step_size: 2/255, draws: 1, images: 10000, seed: 0,
  gradient: bpda, features: false}`` (eps / step_size are defaults for every attack of the
  evaluation; ``features: true`` also stores the penultimate features of the clean and attacked
  images beside each result, for Figs. 4 and 5);
- ``tables``: ``{title, columns, rows: [{label, cells: [run/tag/attack or null], paper:
  [numbers or null], adaptive: [run/tag/attack or null]}], note}``: the paper's layout; a cell
  names an evaluation result ("clean" for clean accuracy), ``paper`` the paper's number;
- ``figures``: ``{kind: ranks | reconstructions | tsne | distances | steps, ...}``; tsne and
  distances figures name the stored features they draw: ``features: tag/attack`` of an
  evaluation with ``features: true``;
- ``sources`` (optional): setting -> where its value comes from ("paper Sec. 3.1", "original
  code train_adv.py: ...", "our choice: why"). A setting is a dotted path: ``runs.NAME`` or
  ``runs.NAME.FIELD`` (``epochs``, ``defense.p_start``), ``evaluations.TAG`` or
  ``evaluations.TAG.KEY`` (``images``, ``eps``), ``evaluations.TAG.attacks.NAME`` or
  ``evaluations.TAG.attacks.NAME.KEY`` (``steps``); a path covers every setting below it. A
  training config may carry its own ``sources: {FIELD: text}``; a run built on it inherits them
  as ``runs.NAME.FIELD``, except for the fields the run sets itself. Each path must name a
  setting the recipe has; ``required_settings`` are those every shipped recipe must source, and
  the report prints the sources of each table's settings beneath it.

Scaling a recipe down is ``menet.scaling``; running it is ``menet.reproduce``. Attack settings
are checked by building the attacks (``menet.attack_settings``, imported when a recipe is
checked, so reading this module loads no torch).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from menet.config import ConfigError, TrainConfig, check_sources, config_from_dict, load_recipe, setting_names

FIGURE_KINDS = ("ranks", "reconstructions", "tsne", "distances", "steps")


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
    features: bool = False  # also store penultimate features of clean and attacked images (Figs. 4, 5)
    # Steps doubled from the attack's own until a paired test sees no further drop, at most this
    # many (menet.convergence); None: one run at the attack's steps. One attack per evaluation.
    converge_cap: int | None = None
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
    # setting path (runs.NAME.FIELD, evaluations.TAG.KEY, ...) -> its source (see the module docstring)
    sources: dict[str, str] = dataclasses.field(default_factory=dict)


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


def set_field(data: dict[str, Any], dotted: str, value: Any) -> None:
    """data[a][b] = value for the dotted field "a.b" (sections made where missing)."""
    *parents, leaf = dotted.split(".")
    for parent in parents:
        data = data.setdefault(parent, {})
    data[leaf] = value


def get_field(data: dict[str, Any], dotted: str) -> Any:
    """data[a][b] for the dotted field "a.b", or None where it is missing."""
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _run_config(name: str, spec: Any, folder: Path, where: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The run's config fields, and the sources (FIELD -> text) it keeps from its base."""
    if not isinstance(spec, dict):
        raise RecipeError(f"{where}: run {name!r} must be a mapping (base/set or config fields)")
    spec = dict(spec)
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    try:
        if "base" in spec:
            base = folder / spec.pop("base")
            data = load_recipe(base)
            sources = check_sources(data.pop("sources", {}), f"{base}: sources")
        own = check_sources(spec.pop("sources", {}), "sources")
    except ConfigError as err:
        raise RecipeError(f"{where}: run {name!r}: {err}") from None
    overrides = spec.pop("set", {}) or {}
    data = copy.deepcopy(data)
    for key, value in {**spec, **overrides}.items():
        set_field(data, key, value)
        # The base's source of a field the run sets itself no longer applies.
        sources = {field: text for field, text in sources.items() if not _covers(field, key) and not _covers(key, field)}
    data["name"] = name
    # A base's sections that this run's mode ignores (e.g. the attack of an adversarial base
    # reused for a vanilla run) are dropped, not carried along unused.
    mode = data.get("mode", "vanilla")
    dropped = []
    if mode in ("vanilla", "madry"):
        data.pop("defense", None)
        dropped.append("defense")
    if mode in ("vanilla", "menet"):
        data.pop("attack", None)
        dropped.append("attack")
    sources = {field: text for field, text in {**sources, **own}.items()
               if not any(_covers(section, field) for section in dropped)}
    return data, sources


def _covers(key: str, path: str) -> bool:
    """Whether the source key ``key`` covers the setting ``path``: the same, or a dotted prefix."""
    return path == key or path.startswith(key + ".")


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
    unknown = sorted(set(data) - {"title", "runs", "evaluations", "tables", "figures", "notes", "sources"})
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {', '.join(unknown)}")
    for key, kind, example in (("runs", dict, "a mapping of run name to config"),
                               ("evaluations", dict, "a mapping of tag to evaluation"),
                               ("tables", list, "a list of tables"), ("figures", list, "a list of figures")):
        if data.get(key) is not None and not isinstance(data[key], kind):
            raise RecipeError(f"{where}: {key} must be {example}, got {type(data[key]).__name__}")
    runs: dict[str, TrainConfig] = {}
    sources: dict[str, str] = {}
    for name, spec in (data.get("runs") or {}).items():
        fields, inherited = _run_config(name, spec, path.parent, where)
        try:
            config = config_from_dict(fields)
            config.validate()
        except ConfigError as err:
            raise RecipeError(f"{where}: run {name!r}: {err}") from None
        runs[name] = config
        sources.update({f"runs.{name}.{field}": text for field, text in inherited.items()})
    evaluations = tuple(_evaluation(tag, spec, runs, where) for tag, spec in (data.get("evaluations") or {}).items())
    # A cell run/tag/attack must name a run that the evaluation tag attacks, and one of its attacks.
    known_cells = {f"{run}/{e.tag}/{name}" for e in evaluations for run in e.runs
                   for name in [*e.attacks, "clean", "worst case"]}
    tables = tuple(_table(table, known_cells, where) for table in data.get("tables") or ())
    figures = tuple(_figure(figure, runs, evaluations, where) for figure in data.get("figures") or ())
    sources.update(_sources(data.get("sources"), runs, evaluations, where))
    return Recipe(path.stem, str(data.get("title", path.stem)), runs, evaluations, tables, figures,
                  str(data.get("notes", "")), sources)


def _evaluation(tag: str, spec: Any, runs: Mapping[str, TrainConfig], where: str) -> EvaluationSpec:
    from menet.attack_settings import attack_fields  # attacks load torch: only when a recipe is checked

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
            fields = attack_fields(kind)
        except (ValueError, TypeError) as err:
            raise RecipeError(f"{where}: evaluation {tag!r}: {err}") from None
        merged = {k: v for k, v in defaults.items() if k in fields}
        for key, value in settings.items():
            merged[key] = _fraction(value, f"{where}: {tag}.{name}.{key}") if key in ("eps", "step_size") else value
        attacks[name] = {"attack": kind, **merged}
        _check_attack(attacks[name], f"{where}: evaluation {tag!r}: attack {name!r}")
    allowed = {"transfer_from", "draws", "images", "seed", "gradient", "batch_size", "features", "converge_cap"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise RecipeError(f"{where}: evaluation {tag!r}: unknown key(s) {', '.join(unknown)}")
    for key, low in (("draws", 1), ("images", 1), ("seed", 0), ("batch_size", 1)):
        if key in spec and not (key == "images" and spec[key] is None):
            _check_int(spec[key], low, f"{where}: evaluation {tag!r}: {key}")
    if "features" in spec and not isinstance(spec["features"], bool):
        raise RecipeError(f"{where}: evaluation {tag!r}: features must be true or false, got {spec['features']!r}")
    if spec.get("converge_cap") is not None:
        _check_converge(tag, spec, attacks, where)
    if "gradient" in spec:
        from menet.defense import GRADIENTS

        if spec["gradient"] not in GRADIENTS:
            raise RecipeError(f"{where}: evaluation {tag!r}: gradient must be one of {', '.join(GRADIENTS)}, "
                              f"got {spec['gradient']!r}")
    return EvaluationSpec(tag, targets, attacks, **spec)


_EVALUATION_KEYS = ("runs", "attacks", "transfer_from", "draws", "images", "seed", "gradient", "batch_size", "features",
                    "eps", "step_size", "converge_cap")


def _check_converge(tag: str, spec: Mapping[str, Any], attacks: Mapping[str, dict[str, Any]], where: str) -> None:
    """converge_cap: one attack with steps, the cap at least its steps, no stored features."""
    from menet.attack_settings import attack_default, attack_fields

    at = f"{where}: evaluation {tag!r}: converge_cap"
    _check_int(spec["converge_cap"], 1, at)
    if len(attacks) != 1:
        raise RecipeError(f"{at} doubles one attack's steps: give the evaluation one attack, not {len(attacks)}")
    (settings,) = attacks.values()
    if "steps" not in attack_fields(settings["attack"]):
        raise RecipeError(f"{at}: attack {settings['attack']!r} has no steps to double")
    steps = settings.get("steps", attack_default(settings["attack"], "steps"))
    if spec["converge_cap"] < steps:
        raise RecipeError(f"{at} ({spec['converge_cap']}) is below the attack's steps ({steps}), where the doubling starts")
    if spec.get("features"):
        raise RecipeError(f"{at}: a converged evaluation stores no features (features: true): use another evaluation")


def _sources(given: Any, runs: Mapping[str, TrainConfig], evaluations: tuple[EvaluationSpec, ...], where: str
             ) -> dict[str, str]:
    """The recipe's ``sources``, checked: each key names a setting of the recipe, each value is a text."""
    from menet.attack_settings import attack_fields

    if given is None:
        return {}
    if not isinstance(given, dict):
        raise RecipeError(f"{where}: sources must be a mapping of setting (runs.NAME.FIELD, evaluations.TAG.KEY, ...) "
                          f"to its source, got {type(given).__name__}")
    by_tag = {spec.tag: spec for spec in evaluations}
    fields = setting_names()
    for key, text in given.items():
        at = f"{where}: sources: {key!r}"
        if not isinstance(text, str) or not text.strip():
            raise RecipeError(f"{at} must be a non-empty text (paper section, original code, or 'our choice: why'), "
                              f"got {text!r}")
        parts = str(key).split(".")
        if parts[0] == "runs" and len(parts) >= 2:
            run, field = parts[1], ".".join(parts[2:])
            if run not in runs:
                raise RecipeError(f"{at} names run {run!r}, which the recipe does not define")
            config = runs[run]
            if field and field not in fields:
                raise RecipeError(f"{at}: {field!r} is no setting of a run; valid: {', '.join(sorted(fields))}")
            section = field.split(".")[0]
            if (section == "defense" and not config.defended) or (section == "attack" and config.mode not in ("madry", "menet-adv")):
                raise RecipeError(f"{at}: run {run!r} (mode {config.mode}) has no {section} settings")
        elif parts[0] == "evaluations" and len(parts) >= 2:
            spec = by_tag.get(parts[1])
            if spec is None:
                raise RecipeError(f"{at} names evaluation {parts[1]!r}, which the recipe does not define")
            rest = parts[2:]
            if rest and rest[0] not in _EVALUATION_KEYS:
                raise RecipeError(f"{at}: {rest[0]!r} is no setting of an evaluation; valid: {', '.join(_EVALUATION_KEYS)}")
            if rest and rest[0] in ("eps", "step_size") and not any(rest[0] in a for a in spec.attacks.values()):
                raise RecipeError(f"{at}: no attack of evaluation {spec.tag!r} has a {rest[0]}")
            if rest and rest[0] == "attacks" and len(rest) > 1:
                if rest[1] not in spec.attacks:
                    raise RecipeError(f"{at} names attack {rest[1]!r}, which evaluation {spec.tag!r} does not run; "
                                      f"valid: {', '.join(spec.attacks) or 'none'}")
                settings = attack_fields(spec.attacks[rest[1]]["attack"]) | {"attack", "eot"}
                if len(rest) > 3 or (len(rest) == 3 and rest[2] not in settings):
                    raise RecipeError(f"{at}: {'.'.join(rest[2:])!r} is no setting of attack "
                                      f"{spec.attacks[rest[1]]['attack']!r}; valid: {', '.join(sorted(settings))}")
            elif len(rest) > 1:
                raise RecipeError(f"{at}: {'.'.join(rest)!r} is no setting of an evaluation")
        else:
            raise RecipeError(f"{at} names no setting: a key is runs.NAME[.FIELD], evaluations.TAG[.KEY] or "
                              "evaluations.TAG.attacks.NAME[.KEY]")
    return {str(key): str(text).strip() for key, text in given.items()}


def source_of(sources: Mapping[str, str], path: str) -> tuple[str, str] | None:
    """(key, text) of the most specific source covering the setting ``path``, or None. An
    attack's eps / step_size is also covered by its evaluation's (``evaluations.TAG.eps``)."""
    parts = path.split(".")
    # (key, how specific): the deeper a covering key, the more specific; the evaluation's own
    # eps / step_size ranks just below the attack's and above a key covering the whole attack.
    candidates = [(key, key.count(".") + 1) for key in sources if _covers(key, path)]
    if len(parts) == 5 and parts[0] == "evaluations" and parts[2] == "attacks" and parts[4] in ("eps", "step_size"):
        shared = f"evaluations.{parts[1]}.{parts[4]}"
        if shared in sources:
            candidates.append((shared, 4.5))
    if not candidates:
        return None
    key = max(candidates, key=lambda item: item[1])[0]
    return key, sources[key]


# The run settings every shipped recipe must source (besides those a mode adds and those set
# away from their defaults): the ones that shape the weights and that the paper may not state.
_RUN_REQUIRED = ("model", "epochs", "batch_size", "optimizer", "lr", "lr_milestones", "weight_decay")


def required_settings(recipe: Recipe) -> list[str]:
    """The setting paths of ``recipe`` that must have a source: per run its network, schedule
    and optimiser (momentum with SGD), its seed, data limit and mask strategy where not the
    default, its defense (defended modes) and training attack (madry, menet-adv); per
    evaluation its images, draws, seed, gradient and transfer source where set, and every
    setting given to each attack (its eps and step size included)."""
    paths = []
    for name, config in recipe.runs.items():
        fields = list(_RUN_REQUIRED) + (["momentum"] if config.optimizer == "sgd" else [])
        fields += [f for f, default in (("seed", 0), ("train_limit", None), ("lr_gamma", 0.1), ("model_options", {}))
                   if getattr(config, f) != default]
        if config.mode == "menet":
            fields.append("masks")
        if config.defended:
            fields += ["defense.method", "defense.layout", "defense.p_start", "defense.p_end", "defense.n_masks"]
            fields += [f"defense.{f}" for f in ("p_infer", "options") if getattr(config.defense, f)]
        if config.mode in ("madry", "menet-adv"):
            fields += ["attack.eps", "attack.step", "attack.steps"]
        paths += [f"runs.{name}.{field}" for field in fields]
    for spec in recipe.evaluations:
        keys = [k for k, default in (("images", None), ("draws", 1), ("seed", 0), ("gradient", "bpda"), ("transfer_from", None),
                                     ("converge_cap", None))
                if getattr(spec, k) != default]
        paths += [f"evaluations.{spec.tag}.{k}" for k in keys]
        paths += [f"evaluations.{spec.tag}.attacks.{name}.{k}" for name, settings in spec.attacks.items()
                  for k in settings if k != "attack"]
    return paths


def unsourced(recipe: Recipe) -> list[str]:
    """The ``required_settings`` of ``recipe`` that no source covers."""
    return [path for path in required_settings(recipe) if source_of(recipe.sources, path) is None]


def _check_int(value: Any, low: int, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RecipeError(f"{where} must be an integer >= {low}, got {value!r}")


def _check_attack(settings: dict[str, Any], where: str) -> None:
    """Build the attack as a run will (``build_attacks``), so that bad settings fail at load time."""
    from menet.attack_settings import attack_fields, build_attacks

    kind = settings["attack"]
    try:
        fields = attack_fields(kind)
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{where}: {err}") from None
    if "eot" in settings:
        if "eot" not in fields:
            raise RecipeError(f"{where}: eot averages gradients, but attack {kind!r} uses none")
        _check_int(settings["eot"], 1, f"{where}: eot")
    try:
        build_attacks({"attack": dict(settings)})
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
    "tsne": ({"models", "features"}, {"seed"}),
    "distances": ({"models", "features"}, {"seed"}),
    "steps": ({"panels"}, {"file"}),
}


def _figure(figure: Any, runs: Mapping[str, TrainConfig], evaluations: tuple[EvaluationSpec, ...], where: str
            ) -> dict[str, Any]:
    """A figure of the recipe, checked against the recipe's runs and evaluations."""
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
        for name in models.values():
            run(name, "models")
        source = figure["features"]
        tag, _, attack = source.partition("/") if isinstance(source, str) else ("", "", "")
        spec = next((e for e in evaluations if e.tag == tag), None)
        if spec is None or attack not in spec.attacks:
            raise RecipeError(f"{at}: features must name tag/attack of an evaluation of the recipe, like "
                              f"transfer/pgd7, got {source!r}")
        if not spec.features:
            raise RecipeError(f"{at}: features {source!r}: evaluation {tag!r} stores no features: add features: true to it")
        missing = [name for name in models.values() if name not in spec.runs]
        if missing:
            raise RecipeError(f"{at}: features {source!r}: evaluation {tag!r} does not evaluate {', '.join(missing)}")
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




def data_dir_for(dataset: str, data_dirs: Mapping[str, str] | str | None) -> str | None:
    """The data directory for ``dataset``: one for all (--data-dir DIR), or per dataset (NAME=DIR)."""
    if data_dirs is None or isinstance(data_dirs, str):
        return data_dirs
    return data_dirs.get(dataset)
