"""Penultimate features of clean and attacked test images, stored as an evaluation product.

Paper Figs. 4 and 5 (t-SNE, distance CDFs) are drawn from the vectors a model computes just
before its last layer. ``save_features`` computes them for a run's model on the images of an
evaluation, clean and under each of its attacks, and writes ``eval/TAG.features.npz`` beside the
result ``eval/TAG.json``, atomically; ``read_features`` gives them back to the report, which
never loads a model or runs an attack.

The file holds ``labels`` (N,), ``clean`` (N, D), ``attack-K`` (N, D) for the K-th attack
(float32), and ``meta``: a JSON text (format, tag, attack names and settings, seed, number of
images, and the evaluation's ``inputs``, among them the model fingerprint, so that features of
other weights are recognised as stale like any result). The adversarial images are crafted
anew, seeded by (seed, batch), with the evaluation's attacks (for a transfer attack on the
source run's model); ME-Net's features are those of one seeded mask draw.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from menet.attacks import Attack
from menet.data.augment import to_float
from menet.defense import MatrixEstimation, MENet
from menet.io_atomic import atomic_path

log = logging.getLogger(__name__)
FEATURES_FORMAT = "menet-features/1"
SUFFIX = ".features.npz"


def features_path(eval_dir: str | Path, tag: str) -> Path:
    """Where the features of evaluation ``tag`` are stored: ``eval_dir/TAG.features.npz``."""
    return Path(eval_dir) / f"{tag}{SUFFIX}"


def check_features(model: nn.Module) -> None:
    """ValueError (one line) unless ``model``'s network (behind ME-Net's defense) has ``features(x)``;
    ``menet attack --save-features`` calls it before the evaluation, not after it."""
    network = model.classifier if isinstance(model, MENet) else model
    if not callable(getattr(network, "features", None)):
        raise ValueError(f"{type(network).__name__} has no features(x) method: Figs. 4 and 5 need the penultimate "
                         "features of the network")


def penultimate(model: nn.Module, x: Tensor) -> Tensor:
    """(N, D) features before the last layer of ``model`` on [0, 1] images x (N, C, H, W): for
    ME-Net, the network's features of the reconstruction (one mask draw)."""
    check_features(model)
    network, inputs = (model.classifier, model.preprocess(x)) if isinstance(model, MENet) else (model, x)
    return network.features(inputs).flatten(1)


def _generator(seed: int, *key: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, *key]).generate_state(1, np.uint64)[0] >> 1
    return torch.Generator().manual_seed(int(state))


def compute_features(model: nn.Module, images: Tensor, labels: Tensor, attacks: Mapping[str, Attack], *,
                     seed: int = 0, batch_size: int = 256, device: torch.device | str | None = None
                     ) -> dict[str, np.ndarray]:
    """{"labels": (N,), "clean": (N, D), NAME: (N, D) per attack} for uint8 ``images`` (N, C, H, W)."""
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need one label per image and at least one image, got {len(images)} and {len(labels)}")
    device = torch.device(device) if device is not None else next(iter(model.parameters()), torch.empty(0)).device
    defenses = [m for a in [model, *[getattr(a, "source", None) for a in attacks.values()]] if a is not None
                for m in a.modules() if isinstance(m, MatrixEstimation)]
    saved = [d.generator for d in defenses]
    parts: dict[str, list[np.ndarray]] = {"clean": [], **{name: [] for name in attacks}}
    model.eval()
    try:
        for index, start in enumerate(range(0, len(labels), batch_size)):
            x = to_float(images[start:start + batch_size]).to(device)
            y = labels[start:start + batch_size].to(device)
            batches = {"clean": x}
            for number, (name, attack) in enumerate(attacks.items(), start=1):
                for defense in defenses:
                    defense.generator = _generator(seed, index, number, 1)
                batches[name] = attack(model, x, y, generator=_generator(seed, index, number, 0))
            with torch.no_grad():
                for number, (name, batch) in enumerate(batches.items()):
                    for defense in defenses:
                        defense.generator = _generator(seed, index, number, 2)
                    parts[name].append(penultimate(model, batch).float().cpu().numpy())
    finally:
        for defense, generator in zip(defenses, saved):
            defense.generator = generator
    return {"labels": labels.numpy().astype(np.int64), **{k: np.concatenate(v) for k, v in parts.items()}}


def save_features(path: str | Path, model: nn.Module, images: Tensor, labels: Tensor, attacks: Mapping[str, Attack], *,
                  seed: int = 0, batch_size: int = 256, device: torch.device | str | None = None,
                  inputs: Mapping[str, Any] | None = None, tag: str = "") -> Path:
    """Compute the features (see ``compute_features``) and write them to ``path`` atomically.

    ``inputs``: what the features depend on beyond the attacks (``menet.runs.evaluation_inputs``:
    model fingerprint, dataset, offset, gradient, transfer source), recorded in ``meta``."""
    arrays = compute_features(model, images, labels, attacks, seed=seed, batch_size=batch_size, device=device)
    names = list(attacks)
    meta = features_meta(attacks, seed=seed, n=len(labels), inputs=inputs, tag=tag)
    stored = {"labels": arrays["labels"], "clean": arrays["clean"], "meta": np.array(json.dumps(meta, sort_keys=True)),
              **{f"attack-{k}": arrays[name] for k, name in enumerate(names)}}
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **stored)
    log.info("wrote %s (%d images, %s)", path, len(labels), ", ".join(["clean", *names]))
    return path


def features_meta(attacks: Mapping[str, Attack], *, seed: int, n: int, inputs: Mapping[str, Any] | None,
                  tag: str = "") -> dict[str, Any]:
    """The record a features file keeps of how it was made (JSON-ready)."""
    return json.loads(json.dumps({"format": FEATURES_FORMAT, "tag": tag, "names": list(attacks), "seed": seed, "n": n,
                                  "attacks": {name: a.settings() for name, a in attacks.items()},
                                  "inputs": dict(inputs or {})}))


@dataclass(frozen=True)
class StoredFeatures:
    """A features file read back: labels (N,), clean (N, D), attacks: name -> (N, D), meta."""

    labels: np.ndarray
    clean: np.ndarray
    attacks: dict[str, np.ndarray]
    meta: dict[str, Any]


def read_features(path: str | Path) -> StoredFeatures:
    """The features stored at ``path``; one-line ValueError if the file is missing or not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != FEATURES_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            attacks = {name: data[f"attack-{k}"] for k, name in enumerate(meta["names"])}
            return StoredFeatures(data["labels"], data["clean"], attacks, meta)
    except FileNotFoundError:
        raise ValueError(f"{path}: no stored features") from None
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a readable menet features file ({FEATURES_FORMAT}: {err})") from None


def features_current(path: str | Path, meta: Mapping[str, Any]) -> bool:
    """Whether ``path`` holds features made exactly as ``meta`` says (same attacks, seed, images,
    model fingerprint and inputs): then they need not be computed again."""
    try:
        return read_features(path).meta == json.loads(json.dumps(dict(meta)))
    except ValueError:
        return False


__all__ = ["StoredFeatures", "check_features", "compute_features", "features_current", "features_meta", "features_path", "penultimate",
           "read_features", "save_features"]
