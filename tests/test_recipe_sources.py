"""Every recipe setting names its source (``sources`` in recipes and training configs), the keys
are checked at load time, and the report prints the sources of each table's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from menet.config import ConfigError, config_from_dict, load_recipe
from menet.recipe import RecipeError, load_paper_recipe, required_settings, source_of, unsourced
from menet.report import write_report

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
PAPER_RECIPES = sorted(RECIPES.glob("*.yaml"))
DEMO_RECIPE = Path(__file__).resolve().parents[1] / "src" / "menet" / "demo_recipe.yaml"

RUN = {"dataset": "fashion-mnist", "model": "lenet", "mode": "menet", "epochs": 1, "batch_size": 4, "lr": 0.01,
       "lr_milestones": [], "defense": {"method": "usvt", "p_start": 0.8, "p_end": 1.0, "n_masks": 2}}


def _write(tmp_path: Path, sources: dict | None = None, base_sources: dict | None = None, run_set: dict | None = None
           ) -> Path:
    """A tiny recipe: one ME-Net run (from a base config), one evaluation, one table."""
    base = dict(RUN, name="base")
    if base_sources is not None:
        base["sources"] = base_sources
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    recipe = {
        "title": "tiny",
        "runs": {"net": {"base": "base.yaml", **({"set": run_set} if run_set else {})}},
        "evaluations": {"white": {"runs": ["net"], "eps": 0.1, "step_size": 0.01, "images": 8,
                                  "attacks": {"pgd": {"attack": "pgd", "steps": 3}}}},
        "tables": [{"title": "Tiny table", "columns": ["PGD"], "rows": [{"label": "net", "cells": ["net/white/pgd"]}]}],
    }
    if sources is not None:
        recipe["sources"] = sources
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize("path", PAPER_RECIPES, ids=lambda p: p.stem)
def test_every_required_setting_of_a_shipped_recipe_has_a_source(path):
    recipe = load_paper_recipe(path)
    assert unsourced(recipe) == [], f"{path.name}: settings without a source"


def test_the_rule_covers_what_the_issue_named():
    """The settings the issue found unsourced are among the required ones, with the sources found."""
    table2 = load_paper_recipe(RECIPES / "table2.yaml")
    required = required_settings(table2)
    for path in ("evaluations.query.images", "evaluations.query.attacks.spsa.steps",
                 "runs.cifar10-menet.defense.p_start", "runs.cifar10-menet.masks", "runs.cifar10-vanilla.epochs"):
        assert path in required
    assert "attack_blackbox.py" in source_of(table2.sources, "evaluations.query.attacks.spsa.steps")[1]
    assert source_of(table2.sources, "evaluations.query.images")[1].startswith("our choice")
    table4 = load_paper_recipe(RECIPES / "table4.yaml")
    assert "train_adv.py" in source_of(table4.sources, "runs.cifar10-menet-adv.defense.n_masks")[1]
    assert "runs.cifar10-menet-adv.attack.steps" in required_settings(table4)
    assert "11_menet/Attack.ipynb" in table4.notes.replace("\n  ", "").replace("\n", "")
    table5 = load_paper_recipe(RECIPES / "table5.yaml")
    assert source_of(table5.sources, "evaluations.adaptive.attacks.projected.rank")[1].startswith("our choice")


def test_the_tv_baseline_is_trained_with_the_setting_of_me_net():
    """Paper Sec. 3.2: TV minimisation is implemented "using the same setting used with ME-Net"."""
    recipe = load_paper_recipe(RECIPES / "table3.yaml")
    tv, menet = recipe.runs["cifar10-tv"], recipe.runs["cifar10-menet"]
    assert tv.defense.method == "tv"
    for field in ("layout", "p_start", "p_end", "n_masks", "p_infer"):
        assert getattr(tv.defense, field) == getattr(menet.defense, field)
    assert {f: getattr(tv, f) for f in ("epochs", "lr", "lr_milestones", "batch_size", "masks")} == \
        {f: getattr(menet, f) for f in ("epochs", "lr", "lr_milestones", "batch_size", "masks")}


def test_a_run_name_means_one_training_across_the_shipped_recipes():
    """Recipes share a runs folder: a run of the same name must be trained the same way in each."""
    seen: dict[str, tuple[str, dict]] = {}
    for path in PAPER_RECIPES:
        for name, config in load_paper_recipe(path).runs.items():
            first = seen.setdefault(name, (path.name, config.to_dict()))
            assert first[1] == config.to_dict(), f"run {name!r}: {path.name} and {first[0]} differ"


def test_training_configs_with_sources_still_load_for_menet_train():
    for path in sorted((RECIPES / "train").glob("*.yaml")):
        config_from_dict(load_recipe(path)).validate()
    with pytest.raises(ConfigError, match="'epoch' names no config setting"):
        config_from_dict({"name": "x", "sources": {"epoch": "typo"}})


@pytest.mark.parametrize("key, message", [
    ("runs.nett.epochs", "names run 'nett'"),
    ("runs.net.epoch", "'epoch' is no setting of a run"),
    ("evaluations.white.imgs", "'imgs' is no setting of an evaluation"),
    ("evaluations.black", "names evaluation 'black'"),
    ("evaluations.white.attacks.fgsm", "names attack 'fgsm'"),
    ("evaluations.white.attacks.pgd.stepz", "'stepz' is no setting of attack 'pgd'"),
    ("tables.0", "names no setting"),
])
def test_a_source_key_naming_no_setting_is_an_error_naming_recipe_and_key(tmp_path, key, message):
    path = _write(tmp_path, sources={key: "paper Sec. 1"})
    with pytest.raises(RecipeError, match=message) as err:
        load_paper_recipe(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_a_source_must_be_text_and_a_mode_without_a_section_has_no_source_for_it(tmp_path):
    with pytest.raises(RecipeError, match="non-empty text"):
        load_paper_recipe(_write(tmp_path, sources={"runs.net.epochs": ""}))
    with pytest.raises(RecipeError, match="has no attack settings"):
        load_paper_recipe(_write(tmp_path, sources={"runs.net.attack.steps": "paper"}))


def test_sources_are_inherited_from_the_base_except_for_the_fields_a_run_sets(tmp_path):
    path = _write(tmp_path, base_sources={"epochs": "base: epochs", "defense.p_start": "base: p"},
                  run_set={"defense.p_start": 0.5}, sources={"evaluations.white": "paper Sec. 3.2"})
    recipe = load_paper_recipe(path)
    assert recipe.sources["runs.net.epochs"] == "base: epochs"
    assert "runs.net.defense.p_start" not in recipe.sources  # the run set it: the base's source no longer holds
    assert "runs.net.defense.p_start" in unsourced(recipe)
    assert source_of(recipe.sources, "evaluations.white.attacks.pgd.steps") == ("evaluations.white", "paper Sec. 3.2")


def test_an_evaluation_eps_source_covers_its_attacks_eps(tmp_path):
    recipe = load_paper_recipe(_write(tmp_path, sources={"evaluations.white.eps": "paper: eps",
                                                         "evaluations.white.attacks.pgd": "ours: the attack"}))
    assert source_of(recipe.sources, "evaluations.white.attacks.pgd.eps")[1] == "paper: eps"
    assert source_of(recipe.sources, "evaluations.white.attacks.pgd.steps")[1] == "ours: the attack"


def test_a_recipe_without_sources_loads_with_none():
    recipe = load_paper_recipe(RECIPES / "fig1.yaml")
    assert recipe.sources == {}


def test_the_report_prints_the_sources_of_a_tables_settings(tmp_path):
    path = _write(tmp_path, base_sources={"epochs": "our choice: one epoch for the test"},
                  sources={"evaluations.white.images": "our choice: 8 images", "evaluations.white.eps": "paper Sec. 3.3",
                           "evaluations.white.step_size": "paper Sec. 3.3"})
    report = write_report(tmp_path / "out", recipe=load_paper_recipe(path), runs_root=tmp_path / "runs").read_text()
    table_at = report.index("### Tiny table")
    sources_at = report.index("**Sources of the settings behind this table**")
    assert table_at < sources_at
    assert "- net: epochs: our choice: one epoch for the test" in report
    assert "- white: images: our choice: 8 images" in report
    assert "- white: eps, step_size: paper Sec. 3.3" in report  # one source said once for the settings sharing it


def test_the_report_of_a_shipped_table_names_the_non_paper_settings(tmp_path):
    recipe = load_paper_recipe(RECIPES / "table2.yaml")
    text = write_report(tmp_path / "out", recipe=recipe, runs_root=tmp_path / "runs").read_text()
    assert "query/spsa: steps: original code attack_blackbox.py" in text
    assert "query: images: our choice, for cost" in text


def test_the_demo_recipe_sources_every_setting():
    assert DEMO_RECIPE.is_file()
    recipe = load_paper_recipe(DEMO_RECIPE)
    assert required_settings(recipe) and unsourced(recipe) == []
