"""The scales of a recipe: the paper's full settings, or shrunk to fit a small machine.

``scaled(recipe, "small")`` shrinks data, epochs, attack steps and the networks (small wide
ResNets stand in for ResNet-18, DenseNet-121 and WRN-28/34-10) so that a recipe runs on a
2-core CPU in minutes; attacks that the caps make identical run once (``aliases``). ``tiny``
(tests) also trains LeNets only. ``scale_summary`` says in words what a scale shrinks. Pure
data: rules on recipes and configs, nothing is run.
"""

from __future__ import annotations

import copy
import dataclasses

import yaml

from menet.config import config_from_dict
from menet.recipe import Recipe, RecipeError, get_field, set_field

SCALES = ("full", "small", "tiny")

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



def scaled(recipe: Recipe, scale: str) -> Recipe:
    """The recipe at ``scale``: "full" (as written), "small" or "tiny" (see the module docstring)."""
    from menet.attack_settings import attack_default, attack_fields  # attacks load torch: only when scaling

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
            value = get_field(data, key)
            set_field(data, key, cap if value is None else min(value, cap))
        for key, value in _TRAIN_SET[scale].items():
            set_field(data, key, value)
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
            cls_fields = attack_fields(settings["attack"])
            for key in ("steps", "samples", "init_attempts"):
                if key in cls_fields and key not in settings:
                    settings[key] = min(attack_default(settings["attack"], key), caps[key])
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
        cap = spec.converge_cap
        if cap is not None:  # the doubling bounded like the steps (and never below where it starts)
            (settings,) = attacks.values()
            cap = max(min(cap, 4 * caps["steps"]), settings["steps"])
        evaluations.append(dataclasses.replace(spec, attacks=attacks, images=images, draws=min(spec.draws, caps["draws"]),
                                               aliases=aliases, converge_cap=cap))
    figures = []
    for figure in recipe.figures:
        figure = copy.deepcopy(figure)
        if "images" in figure:  # Fig. 1's image count (Figs. 4, 5 use their evaluation's images)
            figure["images"] = min(int(figure["images"]), caps["images"] if scale == "tiny" else 500)
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
    evaluation += f", converge_cap <= {4 * _EVAL_CAPS[scale]['steps']}"
    models = ("LeNet for every network" if scale == "tiny" else
              "; ".join(f"{big} -> {small} {options}" for big, (small, options) in _SMALL_MODELS.items()))
    return (f"training {train} (no learning-rate steps; the deployed keep-probability stays the recipe's); "
            f"attacks {evaluation} (attacks made identical by the caps run once); models: {models}")
