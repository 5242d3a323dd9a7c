"""One fit loop for all modes: vanilla, ME-Net (pure), ME-Net + adversarial, Madry.

Runs live in ``runs/NAME/``: config.yaml, model.pt (state dict), last.pt (resume state),
history.csv and history.jsonl; every file is written atomically. All randomness of an epoch
(shuffle, augmentation, masks, attack starts) comes from a generator seeded by (seed, epoch),
so a run resumed from last.pt ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from menet.attacks import pgd_linf
from menet.checkpoint import CheckpointError, load_state_into, load_weights_only, save_atomic
from menet.config import TrainConfig, config_from_dict
from menet.data import augment, get_dataset_spec, load_dataset, to_float
from menet.defense import MatrixEstimation, MENet
from menet.io import write_text_atomic
from menet.models import build_model_for_dataset

log = logging.getLogger(__name__)
HISTORY_FIELDS = ("epoch", "loss", "accuracy", "lr", "seconds", "images_per_s")


class TrainingInterrupted(RuntimeError):
    """Raised by the ``stop_after_steps`` test hook, like a kill mid-epoch."""


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def build_defense(config: TrainConfig, p: float | None = None, generator: torch.Generator | None = None) -> MatrixEstimation:
    d = config.defense
    return MatrixEstimation(d.method, p=d.inference_p() if p is None else p, layout=d.layout, generator=generator, **d.options)


def _identity(items: Iterable, **_: Any) -> Iterable:
    return items


def _training_inputs(config: TrainConfig, model: nn.Module, defense: MatrixEstimation | None,
                     images: torch.Tensor, labels: torch.Tensor, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The tensor the network trains on for this batch of uint8 images, per mode.

    ``defense`` (ME-Net modes) draws its masks from ``gen``; ``p`` holds each sample's
    keep-probability p_k (menet mode).
    """
    spec = get_dataset_spec(config.dataset)
    x = to_float(augment(images, crop_padding=spec.crop_padding, flip=spec.flip, generator=gen))
    a = config.attack
    if config.mode == "vanilla":
        return x
    if config.mode == "menet":
        return defense.reconstruct(x, defense.draw_mask(x, p))
    model.eval()  # attack a fixed network: batch-norm statistics are not updated by PGD
    try:
        if config.mode == "madry":
            return pgd_linf(model, x, labels, eps=a.eps, step=a.step, steps=a.steps, generator=gen)
        adv = pgd_linf(MENet(model, defense), x, labels, eps=a.eps, step=a.step, steps=a.steps, generator=gen)
        return defense(adv)  # BPDA attack through the defense, then train on its reconstruction
    finally:
        model.train()


def fit(
    config: TrainConfig,
    runs_dir: str | Path = "runs",
    *,
    resume: bool = False,
    progress: Callable[..., Iterable] = _identity,
    stop_after_steps: int | None = None,
) -> list[dict[str, float]]:
    """Train per ``config`` into ``runs_dir/config.name``; returns the history rows.

    ``resume`` continues from last.pt. ``progress(iterable, desc=, total=)`` wraps each
    epoch's batches (e.g. tqdm). ``stop_after_steps`` raises TrainingInterrupted after that
    many optimisation steps (a test hook standing in for a kill).
    """
    config.validate()
    run = Path(runs_dir) / config.name
    data = load_dataset(config.dataset, "train", config.data_dir)
    images, labels = data.images, data.labels
    if config.train_limit is not None:
        images, labels = images[: config.train_limit], labels[: config.train_limit]

    torch.manual_seed(config.seed)
    model = build_model_for_dataset(config.model, config.dataset, **config.model_options)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.lr_milestones), config.lr_gamma)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume:
        state = load_weights_only(run / "last.pt")
        if state.get("config") != config.to_dict():
            raise CheckpointError(f"{run / 'last.pt'}: saved with a different config; resume needs the same settings")
        load_state_into(model, state["model"], str(run / "last.pt"), config.model)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = [dict(row) for row in state["history"]]
        start_epoch = int(state["epoch"])
    else:
        write_text_atomic(run / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))

    ps = torch.tensor(config.defense.train_ps(), dtype=torch.float32)
    n_copies = len(ps) if config.mode == "menet" else 1
    defense = build_defense(config) if config.mode in ("menet", "menet-adv") else None
    steps = 0
    for epoch in range(start_epoch, config.epochs):
        gen = _epoch_generator(config.seed, epoch)
        if defense is not None:
            defense.generator = gen
        model.train()
        order = torch.randperm(len(images) * n_copies, generator=gen)
        batches = order.split(config.batch_size)
        total_loss = total_correct = total_seen = 0.0
        started = time.perf_counter()
        bar = progress(batches, desc=f"epoch {epoch + 1}/{config.epochs}", total=len(batches))
        for batch in bar:
            copy, index = batch // len(images), batch % len(images)
            y = labels[index]
            x = _training_inputs(config, model, defense, images[index], y, ps[copy], gen)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(y)
            total_correct += (logits.argmax(1) == y).sum().item()
            total_seen += len(y)
            if hasattr(bar, "set_postfix"):
                rate = total_seen / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(loss=f"{total_loss / total_seen:.3f}", acc=f"{total_correct / total_seen:.3f}", img_s=f"{rate:.0f}")
            steps += 1
            if stop_after_steps is not None and steps >= stop_after_steps:
                raise TrainingInterrupted(f"stopped after {steps} steps (test hook)")
        seconds = time.perf_counter() - started
        history.append({
            "epoch": epoch + 1, "loss": total_loss / max(total_seen, 1), "accuracy": total_correct / max(total_seen, 1),
            "lr": optimizer.param_groups[0]["lr"], "seconds": seconds, "images_per_s": total_seen / max(seconds, 1e-9),
        })
        scheduler.step()
        _write_epoch(run, model, optimizer, scheduler, epoch + 1, history, config)
        log.info("epoch %d: loss %.4f accuracy %.4f", epoch + 1, history[-1]["loss"], history[-1]["accuracy"])
    if not (run / "model.pt").exists():  # zero epochs: still leave a loadable model
        save_atomic(model.state_dict(), run / "model.pt")
    return history


def _write_epoch(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 epoch: int, history: list[dict[str, float]], config: TrainConfig) -> None:
    save_atomic({
        "format": "menet-last-v1", "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "history": history, "config": config.to_dict(),
    }, run / "last.pt")
    save_atomic(model.state_dict(), run / "model.pt")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(run / "history.csv", table.getvalue())
    write_text_atomic(run / "history.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def load_model(run_dir: str | Path) -> nn.Module:
    """Rebuild the trained model of a run: the plain network, or MENet for ME-Net modes."""
    run = Path(run_dir)
    try:
        config = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{run}: no config.yaml: not a menet run directory") from None
    model = build_model_for_dataset(config.model, config.dataset, **config.model_options)
    load_state_into(model, load_weights_only(run / "model.pt"), str(run / "model.pt"), config.model)
    model.eval()
    if config.mode in ("menet", "menet-adv"):
        return MENet(model, build_defense(config)).eval()
    return model
