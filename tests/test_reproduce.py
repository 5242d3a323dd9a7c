"""Paper recipes: every one loads, scales and runs end to end at the tiny scale on files in the
official formats; the report reads its numbers from the result files; the sanity checks judge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from official_files import write_cifar, write_split, write_svhn, write_tiny_imagenet
from PIL import Image

from menet.data import DatasetError
from menet.recipe import RecipeError, load_paper_recipe
from menet.report import sanity_checks, write_report
from menet.reproduce import reproduce
from menet.scaling import scaled

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
PAPER = {f"table{i}" for i in range(1, 8)} | {f"fig{i}" for i in (1, 2, 4, 5, 6)}


def test_there_is_a_recipe_per_paper_table_and_figure():
    assert {path.stem for path in RECIPES} == PAPER


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_scales(path):
    recipe = load_paper_recipe(path)
    assert recipe.tables or recipe.figures
    for scale in ("small", "tiny"):
        small = scaled(recipe, scale)
        for name, config in small.runs.items():
            assert config.epochs <= 2 and config.train_limit <= 1000
            if config.defended:  # fewer training masks, same deployed defense
                assert config.defense.inference_p() == pytest.approx(recipe.runs[name].defense.inference_p(), abs=1e-6)
            assert config.model in ("lenet", "wide_resnet")  # no ResNet-18 / DenseNet-121 on a 2-core CPU
        for spec, full in zip(small.evaluations, recipe.evaluations):
            assert spec.images <= 100
            for settings in spec.attacks.values():
                assert settings.get("steps", 0) <= 20 and settings.get("eot", 1) <= 4
            # Attacks made identical by the caps run once; every name of the recipe stays reachable.
            assert set(spec.attacks) | set(spec.aliases) == set(full.attacks)
            assert all(kept in spec.attacks for kept in spec.aliases.values())
    if path.stem == "fig6":
        steps = next(spec for spec in scaled(recipe, "small").evaluations if spec.tag == "steps-mnist")
        assert sorted(steps.attacks) == ["pgd10", "pgd20"] and steps.aliases["pgd1000"] == "pgd20"


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    dirs = {name: root / name for name in ("mnist", "cifar10", "svhn", "tiny-imagenet")}
    for directory in dirs.values():
        directory.mkdir()
    for prefix in ("train", "t10k"):
        write_split(dirs["mnist"], prefix, rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
                    rng.integers(0, 10, 12, dtype=np.uint8), compress=True)
    write_cifar(dirs["cifar10"], archive=False, per_batch=4)
    write_svhn(dirs["svhn"] / "train_32x32.mat", 8, 0)
    write_svhn(dirs["svhn"] / "test_32x32.mat", 6, 1)
    write_tiny_imagenet(dirs["tiny-imagenet"] / "tiny-imagenet-200")
    return {name: str(directory) for name, directory in dirs.items()}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, data_dirs) -> tuple[Path, dict[str, Path]]:
    """Every recipe reproduced at the tiny scale into one runs folder (recipes share runs)."""
    root = tmp_path_factory.mktemp("runs")
    reports = {path.stem: reproduce(load_paper_recipe(path), root, scale="tiny", data_dirs=data_dirs) for path in RECIPES}
    return root, reports


@pytest.mark.parametrize("name", sorted(PAPER))
def test_reproduce_tiny_runs_end_to_end(tiny_runs, name):
    root, reports = tiny_runs
    recipe = load_paper_recipe(next(p for p in RECIPES if p.stem == name))
    text = reports[name].read_text()
    assert text.startswith(f"# {recipe.title}") and "Scale **tiny**" in text
    for table in recipe.tables:
        assert f"### {table['title']}" in text
        for row in table["rows"]:
            assert f"| {row['label']} |" in text
    assert "not run" not in text.split("## Sanity checks")[0]  # every cell was evaluated
    pngs = [line.split("](")[1][:-1] for line in text.splitlines() if line.startswith("![")]
    assert "not drawn" not in text and len(pngs) >= len(recipe.figures)  # every figure drawn
    if recipe.figures:
        for png in pngs:
            pixels = np.asarray(Image.open(reports[name].parent / png).convert("RGB"))
            assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, png  # not blank
    for config in recipe.runs.values():
        assert (root / config.name / "model.pt").is_file()


def test_report_numbers_come_from_the_result_files(tiny_runs):
    root, reports = tiny_runs
    recipe = load_paper_recipe(next(p for p in RECIPES if p.stem == "table1"))
    result_path = root / "cifar10-madry" / "eval" / "table1-transfer.json"
    result = json.loads(result_path.read_text())
    result["summary"]["fgsm"]["robust_all_draws"] = 0.4321
    result_path.write_text(json.dumps(result))
    out = write_report(root / "check", recipe=scaled(recipe, "tiny"), runs_root=root, scale="tiny")
    assert any("**43.2%** [" in line and "; paper 67.0%" in line for line in out.read_text().splitlines())


def test_a_missing_dataset_is_one_error_before_any_work(tmp_path):
    recipe = load_paper_recipe(next(p for p in RECIPES if p.stem == "table1"))
    with pytest.raises(DatasetError, match="cifar10"):
        reproduce(recipe, tmp_path / "runs", scale="tiny", data_dirs=str(tmp_path / "nothing"))
    assert not (tmp_path / "runs").exists()


def test_bad_recipes_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: {a: {mode: vanilla}}\nevaluations: {e: {runs: [b]}}\n")
    with pytest.raises(RecipeError, match="names run 'b'"):
        load_paper_recipe(bad)
    bad.write_text("runs: {a: {mode: vanilla}}\ntables: [{title: t, columns: [x], rows: [{label: r, cells: [a/e/pgd]}]}]\n")
    with pytest.raises(RecipeError, match="cell 'a/e/pgd'"):
        load_paper_recipe(bad)
    bad.write_text("name: x\n")
    with pytest.raises(RecipeError, match="menet train"):
        load_paper_recipe(bad)


def _result(attacks: dict[str, dict], accuracy: dict[str, float]) -> dict:
    return {"settings": {"attacks": attacks}, "summary": {k: {"robust_all_draws": v} for k, v in accuracy.items()}}


def test_sanity_checks_pass_and_fail_as_they_should():
    pgd = {"attack": "pgd", "steps": 10, "eot": 1, "loss": "ce"}
    falling = _result({f"e{e}": {**pgd, "eps": e} for e in (0.05, 0.1, 0.3)}, {"e0.05": 0.5, "e0.1": 0.3, "e0.3": 0.02})
    plateau = _result({f"e{e}": {**pgd, "eps": e} for e in (0.05, 0.1, 0.3)}, {"e0.05": 0.5, "e0.1": 0.45, "e0.3": 0.44})
    verdicts = {c.name.split(" (")[0]: c.verdict for c in sanity_checks("r", {"a": falling})}
    assert verdicts["accuracy falls to 0 as eps grows"] == "pass"
    failed = [c for c in sanity_checks("r", {"a": plateau}) if c.verdict == "FAIL"]
    assert failed and "**FAIL**" in failed[0].line()  # a plateau at eps 0.3 flags gradient masking
    # A plateau below eps 0.3 (eps doubles, accuracy hardly moves) is flagged too; a slope that
    # has not reached 0 yet without a large eps is inconclusive, not a pass.
    low_plateau = _result({f"e{e}": {**pgd, "eps": e} for e in (2 / 255, 8 / 255, 16 / 255)},
                          {f"e{2 / 255}": 0.5, f"e{8 / 255}": 0.495, f"e{16 / 255}": 0.49})
    assert [c.verdict for c in sanity_checks("r", {"a": low_plateau}) if c.name.startswith("accuracy falls")] == ["FAIL"]
    # Flat at small eps, then down to 0: a robust model, not gradient masking.
    robust = _result({f"e{e}": {**pgd, "eps": e} for e in (0.05, 0.1, 0.3, 0.5)},
                     {"e0.05": 0.985, "e0.1": 0.975, "e0.3": 0.93, "e0.5": 0.0})
    assert [c.verdict for c in sanity_checks("r", {"a": robust}) if c.name.startswith("accuracy falls")] == ["pass"]
    slope = _result({f"e{e}": {**pgd, "eps": e} for e in (0.1, 0.2, 0.3)}, {"e0.1": 0.98, "e0.2": 0.9, "e0.3": 0.8})
    assert [c.verdict for c in sanity_checks("r", {"a": slope}) if c.name.startswith("accuracy falls")] == ["inconclusive"]
    # EOT is compared with the strongest plain BPDA at the same eps, steps and draws.
    several = _result({"ce": {**pgd, "eps": 0.1}, "cw": {**pgd, "eps": 0.1, "loss": "cw"}, "eot": {**pgd, "eps": 0.1, "eot": 4}},
                      {"ce": 0.2, "cw": 0.5, "eot": 0.35})
    assert next(c for c in sanity_checks("r", {"a": several}) if c.name == "EOT at most BPDA").verdict == "FAIL"
    eot_worse = _result({"bpda": {**pgd, "eps": 0.1}, "eot": {**pgd, "eps": 0.1, "eot": 10}}, {"bpda": 0.2, "eot": 0.3})
    assert next(c for c in sanity_checks("r", {"a": eot_worse}) if c.name == "EOT at most BPDA").verdict == "FAIL"
    transfer_better = _result({"wb": {**pgd, "eps": 0.1}, "tr": {"attack": "transfer", "of": {**pgd, "eps": 0.1}}},
                              {"wb": 0.5, "tr": 0.2})
    check = next(c for c in sanity_checks("r", {"a": transfer_better}) if c.name == "white-box at most transfer")
    assert check.verdict == "FAIL"
    steps = _result({f"s{s}": {**pgd, "eps": 0.1, "steps": s} for s in (10, 100, 1000)}, {"s10": 0.5, "s100": 0.3, "s1000": 0.29})
    assert next(c for c in sanity_checks("r", {"a": steps}) if c.name.startswith("accuracy converges")).verdict == "pass"
    # Still falling by 5 points on the same 300 examples between the last two step counts (McNemar
    # on the per-example outcomes: 15 examples broken by 40 steps and not by 20): not converged.
    from menet.summary import summarise

    falling_steps = _result({f"s{s}": {**pgd, "eps": 0.1, "steps": s} for s in (10, 20, 40)}, {})
    falling_steps["outcomes"] = {"clean": [[1] * 300], **{f"s{s}": [[int(i < k) for i in range(300)]]
                                                          for s, k in ((10, 123), (20, 90), (40, 75))}}
    falling_steps["settings"]["n"] = 300
    falling_steps["settings"]["inputs"] = {"dataset": "fashion-mnist", "split": "test", "offset": 0}  # same images
    falling_steps["summary"] = summarise(falling_steps["outcomes"], ["s10", "s20", "s40"])
    assert next(c for c in sanity_checks("r", {"a": falling_steps})
                if c.name.startswith("accuracy converges")).verdict == "FAIL"


_RECIPE = """\
runs: {a: {mode: vanilla}, b: {mode: vanilla, seed: 1}}
evaluations: {e: {runs: [a], attacks: {pgd: {attack: pgd, steps: 2}}, features: true}}
"""
_TABLE = "tables: [{title: t, columns: [x, y], rows: [{label: r, %s}]}]\n"
_GOOD_TABLE = _TABLE % "cells: [a/e/pgd, a/e/clean], paper: [1, 2.5], adaptive: [a/e/pgd, null]"
_FIGURE = "figures: [%s]\n"
_GOOD_FIGURE = _FIGURE % "{kind: tsne, models: {A: a}, features: e/pgd}"


@pytest.mark.parametrize("text, match", [
    ("evaluations: {e: {runs: [a], attacks: {pgd: {attack: pgd, stepz: 3}}}}", "stepz"),
    ("evaluations: {e: {runs: [a], attacks: {pgd: {attack: pgd, steps: -1}}}}", "steps must be >= 0"),
    ("evaluations: {e: {runs: [a], attacks: {pgd: {attack: pgd, eot: 0}}}}", "eot must be an integer >= 1"),
    ("evaluations: {e: {runs: [a], attacks: {s: {attack: spsa, eot: 4}}}}", "eot averages gradients"),
    ("evaluations: {e: {runs: [a], attacks: {s: {attack: boundary, eot: 1}}}}", "eot averages gradients"),
    ("evaluations: {e: {runs: [a], attacks: {s: {attack: spsa, samples: 3}}}}", "samples must be even"),
    ("evaluations: {e: {runs: [a], draws: '3', attacks: {}}}", "draws must be an integer >= 1"),
    ("evaluations: {e: {runs: [a], draws: 0}}", "draws must be an integer >= 1"),
    ("evaluations: {e: {runs: [a], images: 0}}", "images must be an integer >= 1"),
    ("evaluations: {e: {runs: [a], gradient: bdpa}}", "gradient must be one of"),
    ("evaluations: {e: {runs: a}}", "runs must be a non-empty list"),
    (_TABLE % "cells: [a/e/pgd]", "cells must list one entry"),
    (_TABLE % "paper: [1, 2, 3]", "paper must list one entry"),
    (_TABLE % "adaptive: [a/e/pgd]", "adaptive must list one entry"),
    (_TABLE % "paper: [1, n/a]", "paper values must be numbers"),
    (_TABLE % "cells: [b/e/pgd, null]", "cell 'b/e/pgd'"),  # b is not among the runs of e
    (_TABLE % "cels: [a/e/pgd, null]", "unknown key"),
    (_FIGURE % "{kind: tsne, models: {A: a}}", "missing features"),
    (_FIGURE % "{kind: distances, models: {A: a}}", "missing features"),
    ("evaluations: {e: {runs: [a], attacks: {pgd: {attack: pgd}}, features: yes-please}}", "features must be true or false"),
    (_FIGURE % "{kind: ranks}", "missing datasets"),
    (_FIGURE % "{kind: ranks, datasets: [mnist, cifar11]}", "unknown dataset 'cifar11'"),
    (_FIGURE % "{kind: tsne, models: {A: a}, features: e/cw}", "features must name tag/attack"),
    (_FIGURE % "{kind: tsne, models: {A: a}, features: pgd}", "features must name tag/attack"),
    (_FIGURE % "{kind: tsne, models: {A: b}, features: e/pgd}", "does not evaluate b"),
    (_FIGURE % "{kind: tsne, models: {A: a}, features: e/pgd, source: b}", "unknown key"),
    (_FIGURE % "{kind: ranks, datasets: [mnist], images: 0}", "images must be"),
    (_FIGURE % "{kind: steps, panels: {P: {A: b/e}}}", "'b/e' names no run/evaluation"),
])
def test_bad_recipe_settings_fail_at_load_time(tmp_path, text, match):
    """Settings that used to fail only when attacking or reporting, after all the training."""
    good = tmp_path / "good.yaml"
    good.write_text(_RECIPE + _GOOD_TABLE + _GOOD_FIGURE)
    load_paper_recipe(good)  # the base is valid
    bad = tmp_path / "bad.yaml"
    key = text.split(":", 1)[0]
    sections = {"evaluations": _RECIPE.splitlines()[1] + "\n", "tables": _GOOD_TABLE, "figures": _GOOD_FIGURE}
    sections[key] = text + ("\n" if not text.endswith("\n") else "")
    bad.write_text(_RECIPE.splitlines()[0] + "\n" + "".join(sections.values()))
    with pytest.raises(RecipeError, match=match) as err:
        load_paper_recipe(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message, message


def test_feature_figures_need_no_data(tiny_runs, tmp_path, monkeypatch):
    """Figs. 4 and 5 are drawn from the stored features: without --data-dir or MENET_DATA_DIR too."""
    root, _ = tiny_runs
    monkeypatch.delenv("MENET_DATA_DIR", raising=False)
    for name, png in (("fig5", "distances.png"), ("fig4", "tsne.png")):
        recipe = scaled(load_paper_recipe(next(p for p in RECIPES if p.stem == name)), "tiny")
        text = write_report(tmp_path / name, recipe=recipe, runs_root=root, scale="tiny").read_text()
        assert "not drawn" not in text and (tmp_path / name / png).is_file(), text


def _fake_run(run_dir: Path, **fields) -> None:
    """A run folder holding only its config.yaml (enough for reports and figures' data)."""
    from menet.config import config_from_dict
    from menet.runs import write_config

    run_dir.mkdir(parents=True)
    write_config(run_dir, config_from_dict({"name": run_dir.name, **fields}))


def test_report_keeps_runs_whose_folders_share_a_name(tmp_path):
    _fake_run(tmp_path / "a" / "net", mode="madry")
    _fake_run(tmp_path / "b" / "net", mode="vanilla")
    text = write_report(tmp_path / "report", run_dirs=[tmp_path / "a" / "net", tmp_path / "b" / "net"]).read_text()
    first, second = text.split("## a/net", 1)[1].split("## b/net", 1)
    assert first.strip().startswith("madry") and second.strip().startswith("vanilla")
    text = write_report(tmp_path / "report", run_dirs=[tmp_path / "a" / "net"]).read_text()
    assert "## net" in text  # a folder name alone where it is unique


def test_rank_figure_reads_test_data_from_the_recipe_runs_data_dir(data_dirs, tmp_path, monkeypatch):
    from menet.recipe import Recipe
    from menet.report.figures import recipe_figures
    from menet.runs import read_config

    monkeypatch.delenv("MENET_DATA_DIR", raising=False)
    _fake_run(tmp_path / "runs" / "net", dataset="mnist", data_dir=data_dirs["mnist"])
    recipe = Recipe("r", "r", {"net": read_config(tmp_path / "runs" / "net")}, (), (),
                    ({"kind": "ranks", "datasets": ["mnist"], "verify": False},))
    lines = recipe_figures(recipe, tmp_path / "runs", tmp_path, say=lambda _: None)
    assert "![approximate ranks, mnist](ranks-mnist.png)" in lines, lines
    assert (tmp_path / "ranks-mnist.png").is_file()


def test_steps_figure_reads_only_the_recipes_own_results(tmp_path):
    from menet.evaluation import RESULT_FORMAT
    from menet.report.figures import steps_figure

    result = {"format": RESULT_FORMAT,
              "settings": {"attacks": {f"pgd{s}": {"attack": "pgd", "steps": s} for s in (10, 20)}},
              "summary": {"pgd10": {"robust_all_draws": 0.5}, "pgd20": {"robust_all_draws": 0.4}}}
    path = tmp_path / "net" / "eval" / "steps.json"  # e.g. `menet attack --tag steps`: not the recipe's file
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(result))
    figure = {"kind": "steps", "panels": {"P": {"net": "net/steps"}}}
    assert steps_figure(figure, "fig6", tmp_path, tmp_path) == ["(no results for this figure yet)", ""]
    path.rename(path.with_name("fig6-steps.json"))  # the recipe's own result file RECIPE-TAG
    assert steps_figure(figure, "fig6", tmp_path, tmp_path)[0].startswith("![")


def test_a_feature_figure_needs_an_evaluation_that_stores_features(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(_RECIPE.replace(", features: true", "") + _GOOD_FIGURE)
    with pytest.raises(RecipeError, match="stores no features: add features: true"):
        load_paper_recipe(path)
