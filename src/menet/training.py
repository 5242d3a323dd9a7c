"""One fit loop for all modes: vanilla, ME-Net (pure), ME-Net + adversarial, Madry.

Runs live in ``runs/NAME/``: config.yaml, model.pt (state dict), last.pt (resume state),
history.csv and history.jsonl; every file is written atomically. All randomness of an epoch
comes from independent streams seeded by (seed, epoch, stream): the shuffle, augmentation
draws, ME masks and attack starts; torch's global RNG (dropout, seeded per rank too), restored
for the caller afterwards; the test-set masks. So the RNG state at an epoch boundary is a
function of the config and the epoch saved in last.pt: a run resumed from it ends with exactly
the weights of an uninterrupted one.

ME-Net (mode menet) reconstructs the un-augmented image, then crops and flips the
reconstruction, with fresh masks as with cached ones (the original code's order), so the
zero-padding band of a crop never goes through matrix estimation. In menet-adv the attack
sees the augmented image, as the deployed model would, and training uses its reconstruction.

Under ``torchrun --nproc_per_node=N -m menet train ...`` the run is data-parallel
(DistributedDataParallel; NCCL on GPUs, gloo on CPU): every rank draws the randomness of the
whole global batch (order, crops, flips, masks, attack starts) from the same streams and takes
its rows, so N processes see exactly the inputs of one process; the loss is scaled so that the
averaged gradient equals the global-batch mean, and only rank 0 writes files.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from menet.attacks.base import eval_mode, project_linf
from menet.attacks.pgd import pgd_loop
from menet.checkpoint import (
    CheckpointError,
    load_state_into,
    load_weights_only,
    save_atomic,
)
from menet.config import RESUME_MAY_CHANGE, TrainConfig, config_from_dict, get_field
from menet.data import draw_augmentation, get_dataset_spec, load_dataset, to_float
from menet.defense import MatrixEstimation, MENet
from menet.distributed import Distributed, setup_distributed, sum_over_ranks
from menet.estimation.layout import matrix_mask_shape
from menet.io_atomic import write_text_atomic
from menet.masking import random_mask
from menet.models import build_model_for_dataset
from menet.progress import Progress, no_progress
from menet.recon_cache import cached_reconstructions
from menet.runs import EVAL_DIR, RUN_FILES, build_defense, deployed_model, write_config

log = logging.getLogger(__name__)
HISTORY_FIELDS = ("epoch", "loss", "accuracy", "test_accuracy", "lr", "seconds", "images_per_s")


class TrainingInterrupted(RuntimeError):
    """Raised by the ``stop_after_steps`` test hook, like a kill mid-epoch."""


# Independent random streams of an epoch, each seeded from (seed, epoch, stream); the global
# RNG stream (dropout) also from the rank.
SHUFFLE_STREAM, GLOBAL_STREAM, TEST_STREAM, AUGMENT_STREAM, MASK_STREAM, ATTACK_STREAM = range(6)


def _stream_seed(seed: int, epoch: int, stream: int, rank: int = 0) -> int:
    return int(np.random.SeedSequence([seed, epoch, stream, rank]).generate_state(1, np.uint64)[0] >> 1)


def _stream_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(_stream_seed(seed, epoch, stream))


class _RowsOfGlobalDraw(nn.Module):
    """The defense, with each call's masks drawn for the whole global batch and cut to this
    rank's rows: N processes draw exactly the masks of one process."""

    def __init__(self, defense: MatrixEstimation, generator: torch.Generator, total: int, rows: slice) -> None:
        super().__init__()
        self.defense, self.generator, self.total, self.rows = defense, generator, total, rows

    def draw(self, images: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
        shape = matrix_mask_shape((self.total, *images.shape[1:]), self.defense.layout)
        return random_mask(shape, p, self.generator)[self.rows].to(images.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.defense.reconstruct(images, self.draw(images, self.defense.p))


@dataclass
class _Draws:
    """One global batch's random streams, and this rank's rows of it."""

    augment: torch.Generator
    mask: torch.Generator
    attack: torch.Generator
    total: int  # size of the global batch
    rows: slice  # this rank's rows of it


def _training_inputs(config: TrainConfig, network: nn.Module, defense: MatrixEstimation | None,
                     images: torch.Tensor, labels: torch.Tensor, p: torch.Tensor, draws: _Draws,
                     device: torch.device) -> torch.Tensor:
    """The tensor the network trains on for this rank's uint8 images (its rows of the global batch).

    Augmentation, masks (keep-probability ``p``, per sample of the global batch) and attack
    starts are drawn for the global batch and cut to ``draws.rows``. With cached masks the
    images are already reconstructions.
    """
    spec = get_dataset_spec(config.dataset)
    augmentation = draw_augmentation(draws.total, crop_padding=spec.crop_padding, flip=spec.flip,
                                     generator=draws.augment).rows(draws.rows)
    if config.mode == "menet" and config.masks == "fresh":
        masked = _RowsOfGlobalDraw(defense, draws.mask, draws.total, draws.rows)
        x = to_float(images).to(device)
        return augmentation.apply(defense.reconstruct(x, masked.draw(x, p)))
    x = to_float(augmentation.apply(images)).to(device)
    if config.mode in ("vanilla", "menet"):
        return x
    a = config.attack
    noise = torch.rand((draws.total, *x.shape[1:]), generator=draws.attack)[draws.rows].to(device)
    start = project_linf(x + (2 * noise - 1) * a.eps, x, a.eps)
    defended = _RowsOfGlobalDraw(defense, draws.mask, draws.total, draws.rows) if config.mode == "menet-adv" else None
    with eval_mode(network):  # attack a fixed network: batch-norm statistics are not updated by PGD
        target = network if defended is None else MENet(network, defended)
        adv, _, _ = pgd_loop(target, x, labels, eps=a.eps, step_size=a.step, steps=a.steps, start=start, keep_best=False)
    return adv if defended is None else defended(adv)  # BPDA attack through the defense, then its reconstruction


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


@dataclass
class _Setup:
    """Everything an epoch needs, built once per fit."""

    config: TrainConfig
    place: Distributed
    core: nn.Module  # the network itself (attacked, saved)
    model: nn.Module  # what is trained: the network, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_amp: bool
    defense: MatrixEstimation | None
    images: torch.Tensor  # uint8 (N, C, H, W) on the CPU
    labels: torch.Tensor
    cache: np.ndarray | None  # cached reconstructions (n_masks, N, C, H, W), or None
    ps: torch.Tensor  # training keep-probabilities p_k
    n_copies: int  # samples per image and epoch (n_masks in menet mode, else 1)


def fit(
    config: TrainConfig,
    runs_dir: str | Path = "runs",
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    progress: Progress = no_progress,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    stop_after_steps: int | None = None,
) -> list[dict[str, Any]]:
    """Train per ``config`` into ``runs_dir/config.name``; returns the history rows.

    ``resume`` continues from last.pt; without it, a folder that already holds a run is an
    error unless ``overwrite``. ``device``: "cpu", "cuda", ... (default: CUDA if
    available). ``progress(iterable, desc=, total=)`` wraps each epoch's batches (e.g. tqdm).
    ``on_epoch(row)`` is called (on rank 0) with each epoch's history row once its files
    are written. Rows hold epoch, loss, accuracy (training), test_accuracy (clean accuracy
    of the deployed model on the test split, every ``eval_every`` epochs, else None), lr,
    seconds and images_per_s.
    ``stop_after_steps`` raises TrainingInterrupted after that many optimisation steps (a
    test hook standing in for a kill).
    """
    # The inference keep-probability and every estimator option are saved with the run.
    config = config.resolved()
    run = Path(runs_dir) / config.name
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    if not resume and not overwrite and any((run / f).exists() for f in RUN_FILES):
        raise CheckpointError(f"{run} already holds a run: resume it (--resume), start it over "
                              "(--overwrite) or choose another name (--name)")
    data = load_dataset(config.dataset, "train", config.data_dir, verify=config.verify_checksums)
    images, labels = data.images[: config.train_limit], data.labels[: config.train_limit]
    test = None  # loaded before any work, so that a missing test file fails early
    if config.eval_every > 0:
        test = load_dataset(config.dataset, "test", config.data_dir, verify=config.verify_checksums)
        test = (test.images[: config.test_limit], test.labels[: config.test_limit])
    place = setup_distributed(device)
    if not place.is_main:
        progress = no_progress

    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG untouched
        torch.manual_seed(config.seed)
        core = build_model_for_dataset(config.model, config.dataset, **config.model_options)
    defense = build_defense(config) if config.defended else None  # before any file is touched
    optimizer = _optimizer(config, core)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.lr_milestones), config.lr_gamma)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume:
        history, start_epoch = _restore(run / "last.pt", config, core, optimizer, scheduler)
        if place.is_main:  # paths and reporting fields may have changed: the new ones are the run's now
            write_config(run, config)
    elif place.is_main:
        for name in RUN_FILES:  # starting over: no file of the old run may outlive it
            (run / name).unlink(missing_ok=True)
        shutil.rmtree(run / EVAL_DIR, ignore_errors=True)  # nor its results, which were of other weights
        write_config(run, config)

    core.to(place.device)
    _move_optimizer_state(optimizer, place.device)
    model: nn.Module = core
    if place.world > 1:
        if place.device.type == "cuda":
            core = nn.SyncBatchNorm.convert_sync_batchnorm(core)
        model = nn.parallel.DistributedDataParallel(core, device_ids=[place.device.index] if place.device.type == "cuda" else None)
    use_amp = config.amp and place.device.type == "cuda"
    if config.amp and not use_amp:
        log.warning("amp is CUDA-only: training in float32 on %s", place.device)

    ps = torch.tensor(config.defense.train_ps(), dtype=torch.float32)
    cache = None
    if config.mode == "menet" and config.masks == "cached":
        if place.is_main:
            cache = cached_reconstructions(config, images, Path(runs_dir) / "cache", progress=progress)
        if place.world > 1:
            dist.barrier()
            cache = cached_reconstructions(config, images, Path(runs_dir) / "cache")
    setup = _Setup(
        config, place, core, model, optimizer, torch.amp.GradScaler("cuda", enabled=use_amp), use_amp,
        defense,
        images, labels, cache, ps, len(ps) if config.mode == "menet" else 1,
    )
    steps_left = stop_after_steps
    rng_devices = [place.device] if place.device.type == "cuda" else []
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        # Layers that draw from torch's global RNG (dropout) get it seeded by (seed, epoch, rank);
        # the caller's global RNG state is restored afterwards.
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(_stream_seed(config.seed, epoch, GLOBAL_STREAM, place.rank))
            totals, steps_left = _train_epoch(setup, epoch, progress, steps_left)
        seconds = time.perf_counter() - started
        seen = max(totals[2].item(), 1.0)
        evaluate = config.eval_every > 0 and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs)
        history.append({
            "epoch": epoch + 1, "loss": totals[0].item() / seen, "accuracy": totals[1].item() / seen,
            "test_accuracy": _test_accuracy(setup, test, epoch, progress) if evaluate else None,
            "lr": optimizer.param_groups[0]["lr"], "seconds": seconds, "images_per_s": totals[2].item() / max(seconds, 1e-9),
        })
        scheduler.step()
        if place.is_main:
            _write_epoch(run, core, optimizer, scheduler, epoch + 1, history, config)
            if on_epoch is not None:
                on_epoch(history[-1])
        log.info("epoch %d: loss %.4f accuracy %.4f", epoch + 1, history[-1]["loss"], history[-1]["accuracy"])
    if place.is_main and not (run / "model.pt").exists():  # zero epochs: still leave a loadable model
        save_atomic(_cpu(core.state_dict()), run / "model.pt")
    if place.world > 1:
        dist.barrier()
    return history


def _test_accuracy(s: _Setup, test: tuple[torch.Tensor, torch.Tensor], epoch: int, progress: Progress) -> float:
    """Clean accuracy on the test split of the model as deployed (MENet at the inference p for
    ME-Net modes). Each test batch draws its masks from a stream keyed by (seed, epoch, batch),
    and rank r counts the batches r, r + world, ...: the result does not depend on the number
    of processes."""
    config, place = s.config, s.place
    model = deployed_model(config, s.core)
    s.core.eval()
    starts = list(range(0, len(test[1]), config.batch_size))[place.rank :: place.world]
    correct = 0
    with torch.no_grad():
        for start in progress(starts, desc="test", total=len(starts)):
            if config.defended:
                model.preprocess.generator = torch.Generator().manual_seed(_stream_seed(config.seed, epoch, TEST_STREAM, start))
            x = to_float(test[0][start : start + config.batch_size]).to(place.device)
            y = test[1][start : start + config.batch_size].to(place.device)
            with torch.autocast(place.device.type, dtype=torch.float16, enabled=s.use_amp):
                correct += int((model(x).argmax(1) == y).sum())
    counts = sum_over_ranks(torch.tensor([correct, len(test[1]) if place.is_main else 0], dtype=torch.float64), place)
    return counts[0].item() / max(counts[1].item(), 1.0)


def _restore(path: Path, config: TrainConfig, core: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any) -> tuple[list[dict[str, float]], int]:
    """Load last.pt into the model, optimiser and scheduler; return (history, next epoch)."""
    state = load_weights_only(path)
    try:
        saved = config_from_dict(state["config"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: holds no readable run config; start the run over (--overwrite)") from None
    changed = config.weights_differ(saved)
    if changed:
        shown = ", ".join(f"{k} ({get_field(saved, k)!r} -> {get_field(config, k)!r})" for k in changed[:4])
        raise CheckpointError(f"{path}: resume needs the settings that shape the weights unchanged; changed: {shown}"
                              " (start over with --overwrite, or use another --name)")
    reporting = [k for k in RESUME_MAY_CHANGE if k != "name" and getattr(saved, k) != getattr(config, k)]
    if reporting:
        log.warning("resuming with new %s", ", ".join(f"{k}={getattr(config, k)!r} (was {getattr(saved, k)!r})" for k in reporting))
    load_state_into(core, state["model"], str(path), config.model)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return [dict(row) for row in state["history"]], int(state["epoch"])


def _train_epoch(s: _Setup, epoch: int, progress: Progress, steps_left: int | None) -> tuple[torch.Tensor, int | None]:
    """One pass over the (image, mask) samples; returns (loss sum, correct, seen) summed over
    ranks, and the remaining test-hook step budget."""
    config, place = s.config, s.place
    streams = {k: _stream_generator(config.seed, epoch, k) for k in (AUGMENT_STREAM, MASK_STREAM, ATTACK_STREAM)}
    s.model.train()
    order = torch.randperm(len(s.images) * s.n_copies, generator=_stream_generator(config.seed, epoch, SHUFFLE_STREAM))
    batches = [b for b in order.split(config.batch_size) if len(b) >= place.world]
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, seen (this rank)
    started = time.perf_counter()
    bar = progress(batches, desc=f"epoch {epoch + 1}/{config.epochs}", total=len(batches))
    for global_batch in bar:
        bounds = [0, *np.cumsum([len(part) for part in global_batch.tensor_split(place.world)]).tolist()]
        rows = slice(bounds[place.rank], bounds[place.rank + 1])
        draws = _Draws(streams[AUGMENT_STREAM], streams[MASK_STREAM], streams[ATTACK_STREAM], len(global_batch), rows)
        mask_index, image_index = global_batch // len(s.images), global_batch % len(s.images)
        mine, index = mask_index[rows], image_index[rows]
        images = s.images[index] if s.cache is None else torch.from_numpy(s.cache[mine.numpy(), index.numpy()])
        y = s.labels[index].to(place.device)
        x = _training_inputs(config, s.core, s.defense, images, y, s.ps[mask_index], draws, place.device)
        with torch.autocast(place.device.type, dtype=torch.float16, enabled=s.use_amp):
            logits = s.model(x)
            loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
        # DDP averages gradients over ranks: scale so the result is the global-batch mean.
        loss = loss_sum * (place.world / len(global_batch))
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
        totals += torch.tensor([loss_sum.item(), (logits.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64)
        if hasattr(bar, "set_postfix"):
            rate = totals[2].item() * place.world / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(loss=f"{totals[0].item() / totals[2].item():.3f}",
                            acc=f"{totals[1].item() / totals[2].item():.3f}", img_s=f"{rate:.0f}")
        if steps_left is not None:
            steps_left -= 1
            if steps_left <= 0:
                raise TrainingInterrupted("stopped by the stop_after_steps test hook")
    return sum_over_ranks(totals, place), steps_left


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)


def _write_epoch(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 epoch: int, history: list[dict[str, float]], config: TrainConfig) -> None:
    save_atomic({
        "format": "menet-last-v1", "epoch": epoch, "model": _cpu(model.state_dict()), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "history": history, "config": config.to_dict(),
    }, run / "last.pt")
    save_atomic(_cpu(model.state_dict()), run / "model.pt")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(run / "history.csv", table.getvalue())
    write_text_atomic(run / "history.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}
