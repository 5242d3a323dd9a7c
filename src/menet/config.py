"""Training configuration: frozen dataclasses, loaded from YAML recipes, validated up front."""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)
MODES = ("vanilla", "menet", "menet-adv", "madry")
MODE_HELP = {
    "vanilla": "plain training of the network",
    "menet": "ME-Net: train on masked-and-reconstructed images (defense.*)",
    "menet-adv": "ME-Net + adversarial training: BPDA PGD through the defense (defense.*, attack.*)",
    "madry": "Madry et al.'s PGD adversarial training of the plain network (attack.*)",
}
# Fields a resumed run may change: they leave the weights of the epochs already trained as they
# are (paths, reporting, and epochs, which extends or shortens the run).
RESUME_MAY_CHANGE = ("name", "data_dir", "verify_checksums", "eval_every", "test_limit", "epochs")
MASK_STRATEGIES = ("fresh", "cached")
OPTIMIZERS = ("sgd", "adam")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


@dataclass(frozen=True)
class DefenseConfig:
    """ME-Net preprocessing: method, layout, training keep-probabilities and inference p."""

    method: str = "nucnorm"
    layout: str = "concat"
    p_start: float = 0.8  # keep-probabilities of the n training masks: p_k = p_start + k (p_end - p_start) / n
    p_end: float = 1.0
    n_masks: int = 10
    p_infer: float | None = None  # default: mean of the training keep-probabilities
    options: dict[str, Any] = field(default_factory=dict)

    def train_ps(self) -> list[float]:
        """p_k = p_start + k (p_end - p_start) / n for k = 1..n, as in the original code."""
        return [self.p_start + k * (self.p_end - self.p_start) / self.n_masks for k in range(1, self.n_masks + 1)]

    def inference_p(self) -> float:
        ps = self.train_ps()
        return self.p_infer if self.p_infer is not None else sum(ps) / len(ps)


@dataclass(frozen=True)
class AttackConfig:
    """The L-inf PGD used by adversarial training (BPDA through the defense in menet-adv)."""

    eps: float = 8 / 255
    step: float = 2 / 255
    steps: int = 7


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved as runs/NAME/config.yaml."""

    name: str
    dataset: str = "fashion-mnist"
    model: str = "lenet"
    mode: str = "vanilla"
    epochs: int = 200
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_milestones: tuple[int, ...] = (100, 150)
    lr_gamma: float = 0.1
    optimizer: str = "sgd"  # "adam" for Madry et al.'s MNIST setting (momentum is then unused)
    seed: int = 0
    masks: str = "fresh"  # ME-Net mode: "fresh" masks every epoch, or "cached" reconstructions
    amp: bool = False  # mixed precision for the network on CUDA (estimators stay float32)
    train_limit: int | None = None  # use only the first N training images (quick runs, tests)
    eval_every: int = 1  # clean test accuracy every N epochs and after the last; 0: never
    test_limit: int | None = None  # evaluate on the first N test images only (quick runs, tests)
    data_dir: str | None = None
    verify_checksums: bool = True  # check the data files against the published checksums
    imported_from: str | None = None  # set by menet import-run: the weights file (and its SHA-256); not trained here
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    model_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field; does no work on data.

        Checks every field, the estimator options (names against the estimator's signature,
        values by the estimator's own checks on a blank matrix of the dataset's shape) and
        the model options (by building the model once); warns about sections the mode ignores.
        """
        from menet.data import DATASETS
        from menet.estimation import METHODS
        from menet.estimation.layout import LAYOUTS
        from menet.models import model_names
        from menet.models.custom import is_factory_path

        checks = [
            ("name", isinstance(self.name, str) and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", self.name) is not None,
             "a run name of letters, digits, '.', '_' and '-' (a folder name, not a path)"),
            ("dataset", self.dataset in DATASETS, f"one of {', '.join(DATASETS)}"),
            ("model", self.model in model_names() or is_factory_path(self.model),
             f"one of {', '.join(model_names())}, or package.module:factory (your own network)"),
            ("mode", self.mode in MODES, f"one of {', '.join(MODES)}"),
            ("epochs", _int(self.epochs) and self.epochs >= 0, "an int >= 0"),
            ("batch_size", _int(self.batch_size) and self.batch_size >= 1, "an int >= 1"),
            ("lr", _num(self.lr) and self.lr > 0, "a number > 0"),
            ("momentum", _num(self.momentum) and 0 <= self.momentum < 1, "a number in [0, 1)"),
            ("weight_decay", _num(self.weight_decay) and self.weight_decay >= 0, "a number >= 0"),
            ("lr_milestones", all(_int(m) and m >= 0 for m in self.lr_milestones), "ints >= 0"),
            ("lr_gamma", _num(self.lr_gamma) and 0 < self.lr_gamma <= 1, "a number in (0, 1]"),
            ("masks", self.masks in MASK_STRATEGIES, f"one of {', '.join(MASK_STRATEGIES)}"),
            ("masks", self.masks == "fresh" or self.mode == "menet",
             "fresh unless mode is menet (cached reconstructions are ME-Net training data)"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
            ("amp", isinstance(self.amp, bool), "true or false"),
            ("verify_checksums", isinstance(self.verify_checksums, bool), "true or false"),
            ("seed", _int(self.seed) and self.seed >= 0, "an int >= 0"),
            ("train_limit", self.train_limit is None or (_int(self.train_limit) and self.train_limit >= 1), "an int >= 1 or null"),
            ("eval_every", _int(self.eval_every) and self.eval_every >= 0, "an int >= 0"),
            ("test_limit", self.test_limit is None or (_int(self.test_limit) and self.test_limit >= 1), "an int >= 1 or null"),
            ("data_dir", self.data_dir is None or isinstance(self.data_dir, str), "a path or null"),
            ("imported_from", self.imported_from is None or isinstance(self.imported_from, str), "a text or null"),
            ("model_options", isinstance(self.model_options, dict), "a mapping"),
            ("defense.method", self.defense.method in METHODS, f"one of {', '.join(METHODS)}"),
            ("defense.layout", self.defense.layout in LAYOUTS, f"one of {', '.join(LAYOUTS)}"),
            ("defense.p_start", _prob(self.defense.p_start), "a number in (0, 1]"),
            ("defense.p_end", _prob(self.defense.p_end) and self.defense.p_end >= self.defense.p_start, "a number in [p_start, 1]"),
            ("defense.n_masks", _int(self.defense.n_masks) and self.defense.n_masks >= 1, "an int >= 1"),
            ("defense.p_infer", self.defense.p_infer is None or _prob(self.defense.p_infer), "a number in (0, 1] or null"),
            ("defense.options", isinstance(self.defense.options, dict), "a mapping of estimator options"),
            ("attack.eps", _num(self.attack.eps) and self.attack.eps >= 0, "a number >= 0"),
            ("attack.step", _num(self.attack.step) and self.attack.step >= 0, "a number >= 0"),
            ("attack.steps", _int(self.attack.steps) and self.attack.steps >= 0, "an int >= 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                value = get_field(self, name)
                raise ConfigError(f"config field {name} must be {expected}, got {value!r}")
        self.defense_options()  # estimator option names and values
        import torch  # here, not at module level: the recipe layer stays free of torch

        from menet.models import build_model_for_dataset

        if is_factory_path(self.model):  # your own network: imported, built and run on two blank images
            try:
                with torch.random.fork_rng():  # the caller's RNG untouched
                    build_model_for_dataset(self.model, self.dataset, **self.model_options)
            except ValueError as err:
                raise ConfigError(f"config field model: {err}") from None
        else:
            try:  # on the meta device: no memory, no weight init, the caller's RNG untouched
                with torch.device("meta"):
                    build_model_for_dataset(self.model, self.dataset, **self.model_options)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"config field model_options does not suit {self.model}: {err}") from None
        if not self.defended and self.defense != DefenseConfig(p_infer=self.defense.p_infer):
            log.warning("mode %s ignores the defense section (it applies to menet and menet-adv)", self.mode)
        if self.mode in ("vanilla", "menet") and self.attack != AttackConfig():
            log.warning("mode %s ignores the attack section (it applies to madry and menet-adv)", self.mode)

    def defense_options(self) -> dict[str, Any]:
        """The estimator options, complete and checked against the dataset's matrix shape;
        ConfigError naming ``defense.options`` otherwise."""
        from menet.data import get_dataset_spec
        from menet.estimation import get_method
        from menet.estimation.layout import matrix_mask_shape

        c, h, w = get_dataset_spec(self.dataset).image_shape
        shape = matrix_mask_shape((1, c, h, w), self.defense.layout)[-2:]
        try:
            return get_method(self.defense.method).check_options(self.defense.options, shape)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config field defense.options is invalid for {self.defense.method}: {err}") from None

    def resolved(self) -> TrainConfig:
        """This config with the defense made explicit: the inference p (default: mean of the
        training keep-probabilities) and every estimator option by name. Validates first."""
        self.validate()
        defense = replace(self.defense, p_infer=self.defense.inference_p())
        if self.defended:  # other modes leave the (ignored) defense section as given
            defense = replace(defense, options=self.defense_options())
        return replace(self, defense=defense)

    def weights_differ(self, other: TrainConfig) -> list[str]:
        """The fields, beyond RESUME_MAY_CHANGE, in which ``other`` differs (dotted names):
        those that would make a resumed run's weights differ from an uninterrupted run's."""
        mine, theirs = _flatten(self.to_dict()), _flatten(other.to_dict())
        keys = sorted(set(mine) | set(theirs))
        return [k for k in keys if k.split(".")[0] not in RESUME_MAY_CHANGE and mine.get(k) != theirs.get(k)]

    @property
    def defended(self) -> bool:
        """Whether the deployed model is ME-Net (the network behind the defense)."""
        return self.mode in ("menet", "menet-adv")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lr_milestones"] = list(self.lr_milestones)
        return data


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _prob(v: object) -> bool:
    return _num(v) and 0 < v <= 1


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in ("defense", "attack"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def get_field(obj: object, dotted: str) -> Any:
    """The value of a dotted field name (e.g. ``defense.p_start``) of a config."""
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from nested dicts; unknown keys are errors naming them. A top-level
    ``sources`` mapping (setting -> where its value comes from) is provenance, not a setting: it
    is checked (``check_sources``) and dropped; ``menet.recipe`` reads it from the YAML."""
    data = dict(data)
    if "sources" in data:
        check_sources(data.pop("sources"))
    sections = {"defense": DefenseConfig, "attack": AttackConfig}
    for key, cls in sections.items():
        section = data.get(key) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"config field {key} must be a mapping, got {section!r}")
        _check_keys(cls, section, prefix=f"{key}.")
        data[key] = cls(**section)
    _check_keys(TrainConfig, data)
    if "lr_milestones" in data:
        if not isinstance(data["lr_milestones"], (list, tuple)):
            raise ConfigError(f"config field lr_milestones must be a list of epochs, got {data['lr_milestones']!r}")
        data["lr_milestones"] = tuple(data["lr_milestones"])
    if "name" not in data:
        raise ConfigError("config field name is required")
    return TrainConfig(**data)


def setting_names() -> set[str]:
    """Every setting of a TrainConfig by dotted name (``epochs``, ``defense``, ``defense.p_start``)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for section, cls in (("defense", DefenseConfig), ("attack", AttackConfig)):
        names |= {f"{section}.{f.name}" for f in dataclasses.fields(cls)}
    return names


def check_sources(sources: Any, where: str = "config field sources") -> dict[str, str]:
    """Check a ``sources`` mapping of a training config: setting (dotted) -> a non-empty text
    naming where its value comes from (paper section, original code file, or "our choice: why")."""
    if not isinstance(sources, dict):
        raise ConfigError(f"{where} must be a mapping of setting to source text, got {sources!r}")
    known = setting_names()
    for key, text in sources.items():
        if key not in known:
            raise ConfigError(f"{where}: {key!r} names no config setting; valid: {', '.join(sorted(known))}")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: {key!r} must be a non-empty text, got {text!r}")
    return dict(sources)


def _check_keys(cls: type, data: dict[str, Any], prefix: str = "") -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config field(s) {', '.join(prefix + u for u in unknown)}; valid: {', '.join(sorted(known))}")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys for sections; values parsed as YAML)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        target = data
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return data


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe (safe_load) into a dict."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"recipe {path} not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of config fields")
    return data
