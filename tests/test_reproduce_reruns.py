"""A recipe run again after its runs or attacks changed: nothing stale is reused, nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from menet.recipe import RecipeError, load_paper_recipe
from menet.report import write_report
from menet.reproduce import reproduce

RECIPE = """\
title: rerun check
runs:
  net:
    {{dataset: fashion-mnist, model: lenet, mode: menet, epochs: {epochs}, batch_size: 16, lr: 0.01,
     lr_milestones: [], train_limit: 32, test_limit: 16, eval_every: 0, seed: 0,
     defense: {{method: {method}, n_masks: 1}}}}
evaluations:
  white:
    runs: [net]
    eps: 0.1
    step_size: {step_size}
    attacks: {{pgd: {{attack: pgd, steps: 2}}}}
    images: 8
tables:
  - title: T
    columns: [pgd]
    rows:
      - {{label: net, cells: [net/white/pgd]}}
"""


def _recipe(tmp_path: Path, method: str = "usvt", step_size: float = 0.01, epochs: int = 1):
    path = tmp_path / "rerun.yaml"
    path.write_text(RECIPE.format(method=method, step_size=step_size, epochs=epochs))
    return load_paper_recipe(path)


def _result(root: Path) -> dict:
    return json.loads((root / "net" / "eval" / "rerun-white.json").read_text())


def test_a_run_of_other_settings_is_set_aside_and_trained_anew(tmp_path):
    root, said = tmp_path / "runs", []
    reproduce(_recipe(tmp_path), root, scale="full", say=said.append)
    old_model = (root / "net" / "model.pt").read_bytes()
    said.clear()
    reproduce(_recipe(tmp_path, method="softimpute"), root, scale="full", say=said.append)
    assert "method: softimpute" in (root / "net" / "config.yaml").read_text()
    assert any("trained with other settings (defense.method" in line for line in said), said
    aside = [p for p in root.iterdir() if p.name.startswith("net.replaced-")]
    assert len(aside) == 1 and (aside[0] / "model.pt").read_bytes() == old_model  # nothing lost
    # The evaluation is of the new weights, not the old result reused.
    assert _result(root)["settings"]["inputs"]["model"] != json.loads(
        (aside[0] / "eval" / "rerun-white.json").read_text())["settings"]["inputs"]["model"]


def test_changed_attack_settings_and_longer_training_are_evaluated_anew(tmp_path):
    root, said = tmp_path / "runs", []
    reproduce(_recipe(tmp_path), root, scale="full", say=said.append)
    first = _result(root)
    reproduce(_recipe(tmp_path, step_size=0.02), root, scale="full", say=said.append)
    second = _result(root)
    assert second["settings"]["attacks"]["pgd"]["step_size"] == pytest.approx(0.02)
    assert second["settings"]["inputs"]["model"] == first["settings"]["inputs"]["model"], said  # same weights
    # More epochs: the run resumes (same folder), its weights change, its evaluation is redone.
    reproduce(_recipe(tmp_path, step_size=0.02, epochs=2), root, scale="full", say=said.append)
    third = _result(root)
    assert third["settings"]["inputs"]["model"] != second["settings"]["inputs"]["model"]
    assert not [p for p in root.iterdir() if ".replaced-" in p.name]
    assert sum("evaluating anew" in line for line in said) == 2


def test_report_leaves_out_results_of_other_weights(tmp_path):
    from menet.config import config_from_dict
    from menet.runs import read_config
    from menet.training import fit

    root = tmp_path / "runs"
    reproduce(_recipe(tmp_path), root, scale="full")
    report = write_report(tmp_path / "r1", run_dirs=[root / "net"]).read_text()
    assert "### rerun-white" in report and "Left out" not in report
    config = read_config(root / "net").to_dict()
    fit(config_from_dict({**config, "epochs": 2}), root, resume=True)  # the weights change; eval/ stays
    report = write_report(tmp_path / "r2", run_dirs=[root / "net"]).read_text()
    assert "### rerun-white" not in report and "**Left out:**" in report and "net: rerun-white" in report
    # Results copied without the weights: nothing to compare, so they are kept.
    (root / "net" / "model.pt").unlink()
    report = write_report(tmp_path / "r3", run_dirs=[root / "net"]).read_text()
    assert "### rerun-white" in report and "Left out" not in report


def test_reproduce_refuses_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RecipeError, match="without torchrun"):
        reproduce(_recipe(tmp_path), tmp_path / "runs", scale="full")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("scale", ["full", "small", "tiny"])
def test_recipes_sharing_a_run_name_train_the_same_run(scale):
    """Recipes share runs by name (runs/paper-SCALE/NAME): one name, one training, or each recipe
    would set the other's run aside and train it again."""
    from menet.scaling import scaled

    seen = {}
    for path in sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml")):
        for name, config in scaled(load_paper_recipe(path), scale).runs.items():
            if name in seen:
                assert config.resolved().weights_differ(seen[name][1]) == [], (name, path.stem, seen[name][0])
            else:
                seen[name] = (path.stem, config.resolved())
