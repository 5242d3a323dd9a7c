"""A recipe evaluation with ``converge_cap``: checked at load time, run by the chain with its
steps doubled, its curve in the report, and counted as done by ``reproduce --plan`` afterwards."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from menet.demo import demo_recipe_path, run_demo
from menet.plan import plan
from menet.recipe import RecipeError, load_paper_recipe


def _recipe_with(tmp_path, **whitebox):
    data = yaml.safe_load(demo_recipe_path().read_text())
    data["evaluations"]["whitebox"].update(whitebox)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("change", "message"), [
    ({"attacks": {"a": {"attack": "pgd", "steps": 5}, "b": {"attack": "pgd", "steps": 6}}}, "give the evaluation one attack"),
    ({"converge_cap": 5}, r"below the attack's steps \(10\)"),
    ({"converge_cap": 0}, "converge_cap"),
    ({"features": True}, "stores no features"),
    ({"attacks": {"f": {"attack": "fgsm"}}}, "'fgsm' has no steps"),
])
def test_bad_converge_settings_fail_at_load_time(tmp_path, change, message):
    with pytest.raises(RecipeError, match=message):
        load_paper_recipe(_recipe_with(tmp_path, **change))


def test_the_chain_converges_and_the_plan_counts_it_done(tmp_path):
    out = tmp_path / "demo"
    report = run_demo(out, scale="tiny", say=lambda _: None)
    result = json.loads((out / "menet" / "eval" / "demo-whitebox.json").read_text())
    record = result["convergence"]
    assert record["start"] == 2 and record["cap"] == 8 and record["curve"][0]["steps"] == 2
    assert result["settings"]["attacks"]["pgd"]["steps"] == record["steps"]
    for point in record["curve"]:  # each step count is its own result, on the same images
        step = json.loads((out / "menet" / "eval" / f"demo-whitebox-steps{point['steps']}.json").read_text())
        assert step["summary"]["pgd"]["robust_all_draws"] == point["accuracy"]
        assert step["settings"]["n"] == result["settings"]["n"]
    assert "Convergence (the attack's steps doubled" in report.read_text()
    recipe = dataclasses.replace(load_paper_recipe(demo_recipe_path()), name="demo")
    steps, _ = plan(recipe, out, scale="tiny")
    assert any(s.kind == "evaluate" and "whitebox" in s.what for s in steps)
    assert all(s.status == "done" for s in steps), [(s.kind, s.what, s.status) for s in steps if s.status != "done"]


def test_a_changed_cap_is_redone_and_left_over_counts_leave_the_report(tmp_path):
    from menet.report.results import ResultFiles

    out = tmp_path / "demo"
    run_demo(out, scale="tiny", say=lambda _: None)
    recipe = dataclasses.replace(load_paper_recipe(demo_recipe_path()), name="demo")
    spec = next(s for s in recipe.evaluations if s.tag == "whitebox")
    recipe = dataclasses.replace(recipe, evaluations=tuple(
        dataclasses.replace(s, attacks={"pgd": {**s.attacks["pgd"], "steps": 2}}, converge_cap=3) if s is spec else s
        for s in recipe.evaluations))
    steps, _ = plan(recipe, out, scale="tiny")
    assert {s.status for s in steps if "whitebox" in s.what} == {"redo: other converge_cap"}
    eval_dir = out / "menet" / "eval"
    saved = json.loads((eval_dir / "demo-whitebox.json").read_text())
    saved["convergence"]["curve"] = saved["convergence"]["curve"][:1]  # as if the new cap had stopped at 2 steps
    (eval_dir / "demo-whitebox.json").write_text(json.dumps(saved))
    tags = set(ResultFiles().all(out / "menet"))
    assert "demo-whitebox-steps2" in tags and "demo-whitebox-steps4" not in tags and "demo-whitebox" in tags


def test_results_of_one_offset_and_different_lengths_pair_on_the_shared_images():
    import numpy as np

    from menet.report.paired import compare_measured

    short = {"accuracy": 0.5, "n": 4, "examples": ("fashion-mnist", "test", 0, 4), "outcome": np.array([1, 1, 0, 0], bool)}
    long = {"accuracy": 0.25, "n": 8, "examples": ("fashion-mnist", "test", 0, 8),
            "outcome": np.array([1, 0, 0, 0, 1, 0, 0, 0], bool)}
    paired = compare_measured(short, long)
    assert paired.method == "McNemar exact on the first 4 images both scored"
    assert (paired.a_only, paired.b_only, paired.n_a, paired.a, paired.b) == (1, 0, 4, 0.5, 0.25)
    other = {**long, "examples": ("fashion-mnist", "test", 4, 8)}  # other images: not paired
    assert compare_measured(short, other).a_only is None
