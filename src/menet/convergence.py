"""Convergence by construction: an attack run at doubling step counts on the same examples and
seeds until the last doubling lowers robust accuracy by no more than noise.

``converge_steps(evaluate_at, start=25, cap=400, name=...)`` calls ``evaluate_at(steps)`` (an
evaluation result record, see ``menet.evaluation.evaluate``) at start, 2 start, 4 start, ...
(the last one at ``cap``) and stops when a one-sided exact McNemar test on the per-example
outcomes ("robust in all draws") finds no significant drop from the previous step count: the
number is then the last point's. The test is one-sided (is the attack still getting stronger?)
so that it keeps doubling on weaker evidence of a drop than a two-sided test would: the
lenient direction for the defense is stopping too early. Reaching ``cap`` while the drop is
still significant is recorded (``converged: false``) and said wherever the result is shown.

``evaluate_converged`` is the same around ``evaluate`` and result files: one result per step
count (``TAG-steps50.json``, each resumable) and the last point under TAG with the curve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from menet.stats import ALPHA
from menet.summary import describe_convergence, example_outcomes

CONVERGENCE_TEST = "McNemar exact, one-sided (a drop from the previous step count)"
DEFAULT_CAP_FACTOR = 8  # without a cap: at most 8 times the first step count (three doublings)


def with_steps(attack: Any, steps: int) -> Any:
    """``attack`` (a ``menet.attacks`` attack, possibly a transfer) with ``steps`` steps;
    TypeError if it has none."""
    from menet.attacks.transfer import Transfer

    if isinstance(attack, Transfer):
        return dataclasses.replace(attack, attack=with_steps(attack.attack, steps))
    if "steps" not in {f.name for f in dataclasses.fields(attack)}:
        raise TypeError(f"--converge doubles an attack's steps: {attack.name!r} has none")
    return dataclasses.replace(attack, steps=steps)


def drop_p_value(before: np.ndarray, after: np.ndarray) -> float:
    """One-sided exact McNemar p-value for "``after`` is less often robust than ``before``" on
    (n,) 0/1 outcomes of the same examples: with ``lost`` examples robust only before and
    ``gained`` only after, P(Binomial(lost + gained, 1/2) >= lost); 1 when none differ."""
    return _tail(*_lost_gained(before, after))


def _lost_gained(before: np.ndarray, after: np.ndarray) -> tuple[int, int]:
    """(examples robust only before, only after) of two (n,) 0/1 outcome vectors."""
    before, after = np.asarray(before).astype(bool).ravel(), np.asarray(after).astype(bool).ravel()
    if before.shape != after.shape:
        raise ValueError(f"paired outcomes need the same examples, got {before.size} and {after.size}")
    return int((before & ~after).sum()), int((~before & after).sum())


def _tail(lost: int, gained: int) -> float:
    """P(Binomial(lost + gained, 1/2) >= lost); 1 when no example changed."""
    return 1.0 if lost + gained == 0 else float(scipy_stats.binom.sf(lost - 1, lost + gained, 0.5))


@dataclasses.dataclass(frozen=True)
class Point:
    """One step count of the curve: robust accuracy (all draws), its interval, and the test
    against the previous point (None for the first)."""

    steps: int
    accuracy: float
    interval: list[float]
    n: int
    lost: int | None = None
    gained: int | None = None
    p_drop: float | None = None


def step_counts(start: int, cap: int) -> list[int]:
    """start, 2 start, 4 start, ... and cap last (e.g. 25, 50, 100, 200, 400 for 25 and 400)."""
    if not (isinstance(start, int) and isinstance(cap, int)) or start < 1 or cap < start:
        raise ValueError(f"converging needs integers 1 <= start <= cap, got start {start!r} and cap {cap!r}")
    counts = [start]
    while counts[-1] < cap:
        counts.append(min(2 * counts[-1], cap))
    return counts


def converge_steps(evaluate_at: Callable[[int], Mapping[str, Any]], *, start: int, cap: int, name: str,
                   alpha: float = ALPHA) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``evaluate_at`` at doubling step counts until a doubling brings no significant drop
    of attack ``name``'s robust accuracy (see the module docstring) or ``cap`` is reached.

    Returns (the last point's result record, the convergence record: start, cap, alpha, test,
    the curve of points, ``converged`` and ``reached_cap``)."""
    curve: list[Point] = []
    before: np.ndarray | None = None
    result: Mapping[str, Any] = {}
    converged = False
    for steps in step_counts(start, cap):
        result = evaluate_at(steps)
        outcome = example_outcomes(result).get(name)
        if outcome is None:
            raise ValueError(f"the evaluation at {steps} steps holds no per-example outcomes of attack {name!r}")
        row = result["summary"][name]
        point = Point(steps, float(row["robust_all_draws"]), list(row["all_draws_ci"]), int(row["n"]))
        if before is not None:
            lost, gained = _lost_gained(before, outcome)
            point = dataclasses.replace(point, lost=lost, gained=gained, p_drop=_tail(lost, gained))
        curve.append(point)
        before = outcome
        if point.p_drop is not None and point.p_drop >= alpha:
            converged = True
            break
    record = {"start": start, "cap": cap, "alpha": alpha, "test": CONVERGENCE_TEST, "attack": name,
              "curve": [dataclasses.asdict(p) for p in curve], "converged": converged,
              "reached_cap": not converged and curve[-1].steps == cap, "steps": curve[-1].steps}
    return dict(result), record


def evaluate_converged(model: Any, images: Any, labels: Any, attack_at: Callable[[int], Mapping[str, Any]], *,
                       start: int, cap: int, eval_dir: str | Path | None = None, tag: str | None = None,
                       resume: bool = False, overwrite: bool = False, metadata: Mapping[str, Any] | None = None,
                       world: int = 1, rank: int = 0, alpha: float = ALPHA, **evaluate_kwargs: Any) -> dict[str, Any]:
    """``evaluate`` at doubling step counts (see ``converge_steps``): ``attack_at(steps)`` maps
    a step count to the attacks (name -> Attack, the same single name at every count). With
    ``eval_dir`` and ``tag`` each step count is kept as ``TAG-stepsN.json`` (resumable) and
    the last point, with the curve under ``convergence``, as ``TAG.json``. Returns that record."""
    import torch

    from menet.evaluation import ResultStore, evaluate
    from menet.summary import read_result

    names = list(attack_at(start))
    if len(names) != 1:
        raise ValueError(f"converging runs one attack at a time, got {len(names)}: {', '.join(names)}")
    final = ResultStore(eval_dir, tag, resume=resume, overwrite=overwrite, metadata=metadata) if eval_dir else None
    if final is not None and rank == 0:  # every file it may write, before any work (torchrun: before any barrier)
        final.check()
        for steps in step_counts(start, cap):
            ResultStore(eval_dir, f"{tag}-steps{steps}", resume=resume, overwrite=overwrite).check()

    def evaluate_at(steps: int) -> Mapping[str, Any]:
        store = None
        if eval_dir is not None:
            store = ResultStore(eval_dir, f"{tag}-steps{steps}", resume=resume, overwrite=overwrite, metadata=metadata)
        result = evaluate(model, images, labels, attack_at(steps), store=store, rank=rank, world=world, **evaluate_kwargs)
        if world > 1:  # every rank takes the same decision: from the merged result rank 0 wrote
            torch.distributed.barrier()
            result = read_result(store.json_path)
        return result

    result, record = converge_steps(evaluate_at, start=start, cap=cap, name=names[0], alpha=alpha)
    result["convergence"] = record
    if final is not None and rank == 0:
        final.write(result)
    return result


__all__ = ["CONVERGENCE_TEST", "DEFAULT_CAP_FACTOR", "Point", "converge_steps", "describe_convergence", "drop_p_value", "evaluate_converged",
           "step_counts", "with_steps"]
