"""`menet reproduce RECIPE --plan`: the steps the chain would take, marked done or not, with a
cost estimate; nothing is run and nothing is written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from menet.cli import main
from menet.plan import Rates, plan
from menet.recipe import load_paper_recipe
from menet.reproduce import reproduce

RECIPE = """\
title: plan check
runs:
  net:
    {dataset: fashion-mnist, model: lenet, mode: menet, epochs: 2, batch_size: 16, lr: 0.01, masks: fresh,
     lr_milestones: [], train_limit: 32, test_limit: 16, eval_every: 0, seed: 0, defense: {method: usvt, n_masks: 3}}
  plain:
    {dataset: fashion-mnist, model: lenet, mode: vanilla, epochs: 1, batch_size: 16, lr: 0.01, lr_milestones: [],
     train_limit: 40, test_limit: 16, eval_every: 0, seed: 1}
evaluations:
  white:
    runs: [net, plain]
    eps: 0.1
    step_size: 0.01
    attacks: {pgd: {attack: pgd, steps: 5}}
    images: 8
    draws: 2
    features: true
"""


def _files(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_plan_runs_nothing_and_writes_nothing(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    runs = tmp_path / "runs"
    assert main(["reproduce", str(recipe), "--plan", "--runs", str(runs), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert not runs.exists()  # no run folder, no report
    for what in ("train    net ", "train    plain ", "evaluate net: recipe-white", "evaluate plain: recipe-white",
                 "features net: recipe-white"):
        line = next(line for line in out.splitlines() if what in line)
        assert " to do " in line and "~" in line, line
    assert "6 of 6 steps to do" in out and "measured just now on cpu" in out


def test_plan_marks_what_exists(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    recipe = load_paper_recipe(path)
    root = tmp_path / "runs"
    reproduce(recipe, root)
    (root / "plain" / "eval" / "recipe-white.json").unlink()  # one evaluation to redo
    (root / "net" / "eval" / "recipe-white.features.npz").unlink()  # and one features step
    before = _files(root)
    rates = Rates("test", {"lenet {} on fashion-mnist": 0.01}, {"net": 0.002})
    steps, _ = plan(recipe, root, rates=rates)
    assert _files(root) == before  # nothing written, nothing moved
    status = {(s.kind, s.what): s.status for s in steps}
    assert status == {("train", "net"): "done", ("train", "plain"): "done",
                      ("evaluate", "net: recipe-white"): "done", ("features", "net: recipe-white"): "to do",
                      ("evaluate", "plain: recipe-white"): "to do", ("features", "plain: recipe-white"): "done"}
    assert all(s.seconds is None for s in steps if s.status == "done")
    # Done only when the chain would reuse it: any setting the chain compares counts, not some of them.
    (spec,) = recipe.evaluations
    for changed, features in ((dataclasses.replace(spec, batch_size=4), "done"),  # recorded by the evaluation only
                              (dataclasses.replace(spec, gradient="exact"), "redo"),  # an input of both
                              (dataclasses.replace(spec, attacks={"pgd": {**spec.attacks["pgd"], "steps": 6}}), "redo")):
        other = dataclasses.replace(recipe, evaluations=(changed,))
        status = {(s.kind, s.what): s.status for s in plan(other, root, rates=rates)[0]}
        assert status["evaluate", "net: recipe-white"].startswith("redo"), changed
        assert status["features", "plain: recipe-white"].startswith(features), changed


def test_plan_estimates_from_the_rates(tmp_path):
    """The arithmetic, checked by hand: training is epochs x images x masks x (step + estimator)."""
    path = tmp_path / "_plan_recipe.yaml"
    path.write_text(RECIPE)
    recipe = load_paper_recipe(path)
    rates = Rates("test", {"lenet {} on fashion-mnist": 0.01}, {"net": 0.002})
    steps, _ = plan(recipe, Path("/nonexistent/runs"), rates=rates)
    seconds = {(s.kind, s.what): s.seconds for s in steps}
    assert seconds["train", "net"] == pytest.approx(2 * 32 * 3 * (0.01 + 0.002))  # menet, fresh masks
    assert seconds["train", "plain"] == pytest.approx(1 * 40 * 0.01)
    # PGD-5 on 8 images through the defense, then clean + 1 attack scored in 2 draws (forward ~ 1/3 step).
    assert seconds["evaluate", "net: _plan_recipe-white"] == pytest.approx(8 * (5 * 0.012 + 2 * 2 * (0.01 / 3 + 0.002)))
    assert seconds["evaluate", "plain: _plan_recipe-white"] == pytest.approx(8 * (5 * 0.01 + 2 * 2 * 0.01 / 3))
    # Without `images` the chain evaluates the whole test split (10,000 Fashion-MNIST images): so does the estimate.
    (spec,) = recipe.evaluations
    whole = dataclasses.replace(recipe, evaluations=(dataclasses.replace(spec, images=None),))
    seconds = {(s.kind, s.what): s.seconds for s in plan(whole, Path("/nonexistent/runs"), rates=rates)[0]}
    assert seconds["evaluate", "plain: _plan_recipe-white"] == pytest.approx(10000 * (5 * 0.01 + 2 * 2 * 0.01 / 3))
