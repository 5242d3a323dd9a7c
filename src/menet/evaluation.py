"""Accuracy of a (defended) model, clean and under attack: ``evaluate`` and its result files.

``evaluate(model, images, labels, attacks)`` attacks batches of test images with each attack
and scores every adversarial batch ``draws`` times: a randomised model (ME-Net draws a fresh
mask per forward pass) counts an example as robust only if it classifies it correctly in every
draw, so one lucky draw cannot hide a success; the mean over draws is reported too. The worst
case over attacks is taken per example. With ``cascade`` (AutoAttack's way) an example is
attacked only while it is still robust: clean-misclassified and already-broken examples are
not attacked again and count as broken.

Randomness is keyed by (seed, batch, attack, phase): attack starts and samples, the masks the
model draws while attacked, and the masks of each scoring draw, so a batch's outcome depends
on nothing but its index, and an evaluation killed at any point and resumed (``ResultStore``)
ends with the same results as an uninterrupted one; under torchrun each rank takes every
world-th batch and rank 0 merges.

Like AutoAttack's checks, it warns when the model is randomised but neither EOT nor several
scoring draws are used, and when input gradients are zero (a sign of gradient masking).

Every accuracy of the summary carries its 95% interval; the summary, the result's table and
reading result files are ``menet.summary`` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from menet.attacks.base import Attack, loss_gradient, predict
from menet.attacks.transfer import Transfer
from menet.data.augment import to_float
from menet.defense import MatrixEstimation
from menet.io_atomic import write_text_atomic
from menet.progress import Progress, no_progress
from menet.summary import CLEAN, RESULT_FORMAT, WORST, format_table, read_result, summarise

log = logging.getLogger(__name__)


# --- randomness --------------------------------------------------------------------------

def _generator(seed: int, *key: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, *key]).generate_state(1, np.uint64)[0] >> 1
    return torch.Generator().manual_seed(int(state))


def defenses_of(*modules: nn.Module | None) -> list[MatrixEstimation]:
    """Every MatrixEstimation inside the given modules (the randomised parts of a model)."""
    return [m for module in modules if module is not None for m in module.modules() if isinstance(m, MatrixEstimation)]


def _set_mask_generators(defenses: list[MatrixEstimation], generator: torch.Generator) -> None:
    for defense in defenses:
        defense.generator = generator


_ATTACK, _ATTACK_MASKS, _DRAW_MASKS, _SOURCE_MASKS = range(4)


# --- results -----------------------------------------------------------------------------

@dataclasses.dataclass
class BatchOutcome:
    """One batch's outcomes: per scored name ("clean", each attack) a (draws, n) 0/1 list, or
    None per example where the cascade skipped it; and the seconds each attack took."""

    index: int
    start: int
    outcomes: dict[str, list[list[int | None]]]
    seconds: dict[str, float]
    max_linf: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- the evaluation loop -----------------------------------------------------------------

def _check_budget(name: str, attack: Attack, adv: Tensor, x: Tensor) -> float:
    if len(x) == 0:
        return 0.0
    if not bool(torch.isfinite(adv).all()):
        raise RuntimeError(f"attack {name!r} returned NaN or Inf pixels: a bug (nothing of this batch is kept)")
    linf = float((adv - x).abs().amax())
    if linf > attack.eps + 1e-6 or adv.min() < 0 or adv.max() > 1:
        raise RuntimeError(f"attack {name!r} left its budget (L-inf {linf:.6g} > eps {attack.eps:.6g}, or outside [0, 1]): a bug")
    return linf


def _score(model: nn.Module, x: Tensor, y: Tensor, defenses: list[MatrixEstimation], draws: int,
           seed: int, key: tuple[int, ...], max_batch: int) -> Tensor:
    """(draws, N) bool: correct in each scoring draw (masks keyed by ``key`` and the draw)."""
    rows = []
    for draw in range(draws):
        _set_mask_generators(defenses, _generator(seed, *key, _DRAW_MASKS, draw))
        rows.append(predict(model, x, max_batch) == y)
    return torch.stack(rows).cpu() if rows else torch.zeros(0, len(x), dtype=torch.bool)


def _as_lists(table: Tensor) -> list[list[int | None]]:
    """(draws, N) int with -1 for "not attacked" -> lists of 0 / 1 / None (JSON-ready)."""
    return [[None if v < 0 else v for v in row] for row in table.tolist()]


def evaluate_batch(model: nn.Module, x: Tensor, y: Tensor, attacks: Mapping[str, Attack], *, index: int, start: int,
                   draws: int, seed: int, cascade: bool, max_batch: int = 1024) -> BatchOutcome:
    """Clean and adversarial outcomes of one batch (float images on the model's device)."""
    defenses = defenses_of(model)
    clean = _score(model, x, y, defenses, draws, seed, (index, 0), max_batch)
    outcomes = {CLEAN: _as_lists(clean.to(torch.int64))}
    robust = clean.all(0)  # cascade: still unbroken
    seconds, max_linf = {}, {}
    for number, (name, attack) in enumerate(attacks.items(), start=1):
        todo = robust.nonzero().squeeze(1) if cascade else torch.arange(len(x))
        began = time.perf_counter()
        _set_mask_generators(defenses, _generator(seed, index, number, _ATTACK_MASKS))
        if isinstance(attack, Transfer):
            _set_mask_generators(defenses_of(attack.source), _generator(seed, index, number, _SOURCE_MASKS))
        idx = todo.to(x.device)
        adv = attack(model, x[idx], y[idx], generator=_generator(seed, index, number, _ATTACK))
        seconds[name] = time.perf_counter() - began
        max_linf[name] = _check_budget(name, attack, adv, x[idx])
        table = torch.full((draws, len(x)), -1, dtype=torch.int64)  # -1: not attacked (cascade)
        table[:, todo] = _score(model, adv, y[idx], defenses, draws, seed, (index, number), max_batch).to(torch.int64)
        outcomes[name] = _as_lists(table)
        robust &= (table == 1).all(0)
    return BatchOutcome(index, start, outcomes, seconds, max_linf)


def model_checks(model: nn.Module, x: Tensor, y: Tensor, attacks: Mapping[str, Attack], draws: int) -> list[str]:
    """AutoAttack-style warnings: a randomised model scored without EOT or several draws;
    input gradients that are zero (gradient masking)."""
    warnings = []
    with torch.no_grad():
        randomised = bool(defenses_of(model)) or not torch.equal(model(x), model(x))
    uses_eot = any(getattr(getattr(a, "attack", a), "eot", 1) > 1 for a in attacks.values())
    if attacks and randomised and draws == 1 and not uses_eot:  # (clean accuracy alone: nothing to hide)
        warnings.append("the model is randomised (fresh masks per forward pass) but neither EOT (--eot) nor several "
                        "scoring draws (--draws) are used: one lucky draw can hide a successful attack")
    gradient_attacks = [n for n, a in attacks.items() if hasattr(a, "eot") and not isinstance(a, Transfer)]
    if gradient_attacks:
        grad = loss_gradient(model, x, y).grad
        zero = float((grad.flatten(1).abs().amax(1) == 0).float().mean())
        if zero > 0:
            warnings.append(f"{zero:.0%} of the first batch's input gradients are zero: gradient attacks "
                            f"({', '.join(gradient_attacks)}) cannot move them; suspect gradient masking")
    return warnings


def evaluation_settings(attacks: Mapping[str, Attack], *, n: int, batch_size: int = 256, draws: int = 1, seed: int = 0,
                        cascade: bool = False, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings ``evaluate`` records (and a resumed or reused result must match); ``menet
    reproduce --plan`` compares them with a result's to tell whether it would be reused."""
    return {"n": n, "batch_size": batch_size, "draws": draws, "seed": seed, "cascade": cascade,
            "inputs": dict(inputs or {}), "attacks": {name: attack.settings() for name, attack in attacks.items()}}


def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    attacks: Mapping[str, Attack],
    *,
    draws: int = 1,
    seed: int = 0,
    batch_size: int = 256,
    cascade: bool = False,
    device: torch.device | str | None = None,
    store: ResultStore | None = None,
    inputs: Mapping[str, Any] | None = None,
    rank: int = 0,
    world: int = 1,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Clean and robust accuracy of ``model`` on uint8 ``images`` (N, C, H, W) and ``labels`` (N,).

    ``attacks`` maps a name to an attack (see ``menet.attacks``); ``draws`` scoring passes per
    adversarial batch (robust = correct in all of them); ``seed`` keys all randomness;
    ``cascade`` attacks only the examples still robust. ``inputs`` describes what is evaluated
    beyond the images (e.g. the run's model fingerprint, the test offset, the gradient mode, the
    transfer source): it is recorded, and a resumed evaluation must match it. With a ``store`` the finished batches
    are kept on disk as they end (resume: pass the same store again) and the result is written
    to its JSON and Markdown files. Under torchrun (``rank``/``world``) each rank evaluates
    every world-th batch; rank 0 returns the merged result, other ranks their own part.
    Returns the result record (see ``ResultStore.result``).
    """
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} and {len(labels)}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (N, C, H, W), got {images.dtype}")
    for name, value, low in (("draws", draws, 1), ("batch_size", batch_size, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if world > 1 and store is None:
        raise ValueError("a sharded evaluation (world > 1) needs a ResultStore: rank 0 merges the ranks' batches from it")
    device = torch.device(device) if device is not None else next(iter(model.parameters()), torch.empty(0)).device
    names = list(attacks)
    if CLEAN in names or WORST in names:
        raise ValueError(f"attack names {CLEAN!r} and {WORST!r} are reserved")
    settings = evaluation_settings(attacks, n=len(labels), batch_size=batch_size, draws=draws, seed=seed,
                                   cascade=cascade, inputs=inputs)
    if store is not None:
        finished = store.completed(settings)
        if finished is not None:  # resuming an evaluation that already ended: nothing to do
            return finished
        store.begin(settings, rank)
    defenses = defenses_of(model, *[getattr(a, "source", None) for a in attacks.values()])
    saved_generators = [d.generator for d in defenses]
    model.eval()
    starts = list(range(0, len(labels), batch_size))
    mine = [(i, s) for i, s in enumerate(starts) if i % world == rank]
    done = store.finished_batches() if store is not None else {}
    outcomes_by_batch: dict[int, BatchOutcome] = {i: b for i, b in done.items() if i % world == rank}
    warnings: list[str] = []
    try:
        if mine:
            i0, s0 = mine[0]
            x0 = to_float(images[s0 : s0 + batch_size]).to(device)
            _set_mask_generators(defenses_of(model), _generator(seed, i0, 0, 99))
            warnings = model_checks(model, x0, labels[s0 : s0 + batch_size].to(device), attacks, draws)
            for warning in warnings:
                log.warning("%s", warning)
        todo = [(i, s) for i, s in mine if i not in outcomes_by_batch]
        for i, s in progress(todo, desc="evaluate", total=len(todo)):
            x = to_float(images[s : s + batch_size]).to(device)
            y = labels[s : s + batch_size].to(device)
            outcome = evaluate_batch(model, x, y, attacks, index=i, start=s, draws=draws, seed=seed, cascade=cascade)
            outcomes_by_batch[i] = outcome
            if store is not None:
                store.save_batch(outcome)
    finally:
        for defense, generator in zip(defenses, saved_generators):
            defense.generator = generator
    if store is not None:
        store.add_warnings(rank, warnings)
        if world > 1:
            torch.distributed.barrier()
        if rank != 0:
            return _result(settings, names, outcomes_by_batch, warnings)
        result = _result(settings, names, store.finished_batches(), store.all_warnings())
        store.write(result)
        return result
    return _result(settings, names, outcomes_by_batch, warnings)


def _result(settings: dict[str, Any], names: list[str], batches: Mapping[int, BatchOutcome],
            warnings: list[str]) -> dict[str, Any]:
    ordered = [batches[i] for i in sorted(batches)]
    draws = settings["draws"]
    outcomes = {name: [sum((b.outcomes[name][d] for b in ordered), []) for d in range(draws)] for name in [CLEAN, *names]}
    seconds = {name: sum(b.seconds.get(name, 0.0) for b in ordered) for name in names}
    return {
        "format": RESULT_FORMAT,
        "settings": settings,
        "summary": summarise(outcomes, names),
        "max_linf": {name: max((b.max_linf.get(name, 0.0) for b in ordered), default=0.0) for name in names},
        "warnings": sorted(set(warnings)),
        "outcomes": outcomes,
        "timing": {"attack_seconds": seconds},
    }


# --- files -------------------------------------------------------------------------------

class SettingsChanged(ValueError):
    """A result (finished or not) under the tag was made with other settings or inputs (weights)."""


class ResultStore:
    """Where an evaluation keeps its finished batches and writes its result.

    ``eval_dir/TAG.json`` (the result record) and ``eval_dir/TAG.md`` (its table), written
    atomically once complete; until then ``eval_dir/.TAG.partial/`` holds one small JSON per
    finished batch and the settings, so a killed evaluation resumes by batch. ``metadata``
    (run, versions, hardware, ...) is added to the result record.
    """

    def __init__(self, eval_dir: str | Path, tag: str, *, resume: bool = False, overwrite: bool = False,
                 metadata: Mapping[str, Any] | None = None) -> None:
        if not tag or "/" in tag or tag.startswith("."):
            raise ValueError(f"tag must be a plain name (no '/', not starting with '.'), got {tag!r}")
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other")
        self.dir, self.tag, self.resume, self.overwrite = Path(eval_dir), tag, resume, overwrite
        self.metadata = dict(metadata or {})
        self.json_path, self.md_path = self.dir / f"{tag}.json", self.dir / f"{tag}.md"
        self.partial = self.dir / f".{tag}.partial"
        self.started = time.time()

    def check(self) -> None:
        """Refuse to start over a finished or unfinished evaluation unless resuming or overwriting."""
        exists = self.json_path.exists() or self.partial.exists()
        if exists and not (self.resume or self.overwrite):
            raise FileExistsError(f"{self.json_path} (or an unfinished evaluation under tag {self.tag!r}) exists: "
                                  "continue it (--resume), start it over (--overwrite) or choose another --tag")

    def completed(self, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The finished result under this tag when resuming with the same settings, else None."""
        if not (self.resume and self.json_path.exists() and not self.partial.exists()):
            return None
        result = read_result(self.json_path)
        return result if result.get("settings") == json.loads(json.dumps(settings)) else None

    def begin(self, settings: dict[str, Any], rank: int = 0) -> None:
        """Check the tag (see ``check``); record the settings, or check them against the record."""
        settings_path = self.partial / "settings.json"
        if rank == 0:
            self.check()
            if self.overwrite:  # the old result stays until the new one replaces it (write)
                shutil.rmtree(self.partial, ignore_errors=True)
            if self.resume and self.json_path.exists() and not self.partial.exists():
                saved = json.loads(self.json_path.read_text()).get("settings")
                if saved != json.loads(json.dumps(settings)):
                    raise SettingsChanged(f"{self.json_path} was made with other settings: use another --tag or --overwrite")
            self.partial.mkdir(parents=True, exist_ok=True)
            if settings_path.exists():
                saved = json.loads(settings_path.read_text())
                if saved != json.loads(json.dumps(settings)):
                    changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != json.loads(json.dumps(settings)).get(k))
                    raise SettingsChanged(f"the unfinished evaluation under tag {self.tag!r} used other settings ({', '.join(changed)}): "
                                     "resume it with the same settings, or use --overwrite or another --tag")
            else:
                write_text_atomic(settings_path, json.dumps(settings, sort_keys=True))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def finished_batches(self) -> dict[int, BatchOutcome]:
        """The batches on record (none when the evaluation is complete and not resumed)."""
        if not self.partial.is_dir():
            return {}
        out = {}
        for path in sorted(self.partial.glob("batch-*.json")):
            data = json.loads(path.read_text())
            out[data["index"]] = BatchOutcome(**data)
        return out

    def save_batch(self, outcome: BatchOutcome) -> None:
        write_text_atomic(self.partial / f"batch-{outcome.index:06d}.json", json.dumps(outcome.to_json()))

    def add_warnings(self, rank: int, warnings: list[str]) -> None:
        write_text_atomic(self.partial / f"warnings-{rank}.json", json.dumps(warnings))

    def all_warnings(self) -> list[str]:
        return [w for path in sorted(self.partial.glob("warnings-*.json")) for w in json.loads(path.read_text())]

    def write(self, result: dict[str, Any]) -> None:
        """Write TAG.json and TAG.md atomically, then drop the partial record."""
        result.update({"tag": self.tag, **self.metadata})
        result["timing"].update({"started": self.started, "finished": time.time()})
        write_text_atomic(self.json_path, json.dumps(result, indent=1, sort_keys=False, allow_nan=True))
        write_text_atomic(self.md_path, format_table(result))
        shutil.rmtree(self.partial, ignore_errors=True)


def environment() -> dict[str, Any]:
    """Versions and hardware, for result records."""
    import menet

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine()
    return {"versions": {"menet": menet.__version__, "torch": torch.__version__, "python": sys.version.split()[0]},
            "hardware": {"device": device, "cpu_threads": torch.get_num_threads()}}


__all__ = ["CLEAN", "RESULT_FORMAT", "WORST", "ResultStore", "SettingsChanged", "environment", "evaluate", "evaluation_settings", "format_table", "read_result", "summarise"]
