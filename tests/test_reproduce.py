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
from menet.report import sanity_checks, write_report
from menet.reproduce import RecipeError, load_paper_recipe, reproduce, scaled

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
        for config in small.runs.values():
            assert config.epochs <= 2 and config.train_limit <= 2000
        for spec in small.evaluations:
            assert spec.images <= 200
            for settings in spec.attacks.values():
                assert settings.get("steps", 0) <= 20 and settings.get("eot", 1) <= 4


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
    for figure in recipe.figures:
        pngs = [line.split("](")[1][:-1] for line in text.splitlines() if line.startswith("![")]
        assert pngs or "not drawn" in text, figure
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
    assert "**43.2%**; paper 67.0%" in out.read_text()


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
    eot_worse = _result({"bpda": {**pgd, "eps": 0.1}, "eot": {**pgd, "eps": 0.1, "eot": 10}}, {"bpda": 0.2, "eot": 0.3})
    assert next(c for c in sanity_checks("r", {"a": eot_worse}) if c.name == "EOT at most BPDA").verdict == "FAIL"
    transfer_better = _result({"wb": {**pgd, "eps": 0.1}, "tr": {"attack": "transfer", "of": {**pgd, "eps": 0.1}}},
                              {"wb": 0.5, "tr": 0.2})
    check = next(c for c in sanity_checks("r", {"a": transfer_better}) if c.name == "white-box at most transfer")
    assert check.verdict == "FAIL"
    steps = _result({f"s{s}": {**pgd, "eps": 0.1, "steps": s} for s in (10, 100, 1000)}, {"s10": 0.5, "s100": 0.3, "s1000": 0.29})
    assert next(c for c in sanity_checks("r", {"a": steps}) if c.name.startswith("accuracy converges")).verdict == "pass"
    # Still falling by 5 points on the same 300 examples between the last two step counts: not converged.
    falling_steps = _result({f"s{s}": {**pgd, "eps": 0.1, "steps": s} for s in (10, 20, 40)},
                            {"s10": 0.41, "s20": 0.30, "s40": 0.25})
    falling_steps["settings"]["n"] = 300
    assert next(c for c in sanity_checks("r", {"a": falling_steps})
                if c.name.startswith("accuracy converges")).verdict == "FAIL"
