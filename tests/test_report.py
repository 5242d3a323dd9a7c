"""The report is a pure reader: it re-renders in seconds from the run folders, result files and
stored features, without loading a model or running an attack; what it cannot read it names."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from menet.demo import demo_recipe_path, run_demo
from menet.features_store import read_features
from menet.recipe import load_paper_recipe
from menet.report import MissingFeatures, write_report
from menet.scaling import scaled


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo run at the tiny scale: three LeNets, every evaluation, the stored features."""
    out = tmp_path_factory.mktemp("demo")
    run_demo(out, scale="tiny", say=lambda _: None)
    return out


def _recipe():
    import dataclasses

    return scaled(dataclasses.replace(load_paper_recipe(demo_recipe_path()), name="demo"), "tiny")


def _forbid_models_and_attacks(monkeypatch) -> None:
    import menet.attacks.base
    import menet.evaluation
    import menet.features_store
    import menet.runs
    import menet.training

    def refuse(*args, **kwargs):
        raise AssertionError("the report loaded a model, trained or ran an attack")

    for module, name in ((menet.runs, "load_model"), (menet.runs, "load_network"), (menet.training, "fit"),
                         (menet.evaluation, "evaluate"), (menet.features_store, "compute_features"),
                         (menet.features_store, "save_features")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(menet.attacks.base.Attack, "__call__", refuse)
    monkeypatch.setattr(torch, "load", refuse)  # no checkpoint is read either


def test_a_report_renders_without_models_or_attacks(demo, tmp_path, monkeypatch):
    before = (demo / "report.md").read_text()
    _forbid_models_and_attacks(monkeypatch)
    started = time.perf_counter()
    path = write_report(tmp_path / "again", recipe=_recipe(), runs_root=demo, scale="tiny")
    seconds = time.perf_counter() - started
    text = path.read_text()
    assert text == before  # the same report, from the files alone
    assert "![t-SNE of penultimate features](tsne.png)" in text and "![distance CDFs](distances.png)" in text
    assert (tmp_path / "again" / "tsne.png").is_file() and (tmp_path / "again" / "distances.png").is_file()
    assert seconds < 30, seconds


def test_stored_features_are_the_networks_features(demo):
    """Clean features of the vanilla network, recomputed here from its weights and the test images."""
    from menet.data import load_dataset
    from menet.runs import load_model, model_fingerprint

    stored = read_features(demo / "vanilla" / "eval" / "demo-transfer.features.npz")
    test = load_dataset("fashion-mnist", "test", verify=False)
    n = len(stored.labels)
    assert n == 4 and np.array_equal(stored.labels, test.labels[:n].numpy())
    model = load_model(demo / "vanilla")
    with torch.no_grad():
        expected = model.features(test.images[:n].float() / 255).numpy()
    np.testing.assert_allclose(stored.clean, expected, rtol=1e-5, atol=1e-6)
    assert set(stored.attacks) == {"fgsm", "pgd40"}
    assert stored.attacks["pgd40"].shape == expected.shape and not np.allclose(stored.attacks["pgd40"], expected)
    assert stored.meta["inputs"]["model"] == model_fingerprint(demo / "vanilla")
    assert stored.meta["attacks"]["pgd40"]["attack"] == "transfer"  # crafted on the copy


def test_missing_features_are_one_line_naming_the_step(demo, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(demo, copy)
    (copy / "menet" / "eval" / "demo-transfer.features.npz").unlink()
    with pytest.raises(MissingFeatures) as err:
        write_report(tmp_path / "r", recipe=_recipe(), runs_root=copy, scale="tiny")
    message = str(err.value)
    assert "\n" not in message and "demo-transfer.features.npz" in message and "features step" in message, message
    assert "menet reproduce" in message and "--save-features" in message


def test_features_of_other_weights_are_refused(demo, tmp_path):
    """Retrained since the features were stored: the figure is not drawn from the old network's features."""
    copy = tmp_path / "runs"
    shutil.copytree(demo, copy)
    state = torch.load(copy / "menet" / "model.pt", weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, copy / "menet" / "model.pt")
    with pytest.raises(MissingFeatures) as err:
        write_report(tmp_path / "r", recipe=_recipe(), runs_root=copy, scale="tiny")
    assert "other weights" in str(err.value) and "demo-transfer.features.npz" in str(err.value), err.value


def test_an_unreadable_result_is_logged_once_and_named(demo, tmp_path, caplog):
    copy = tmp_path / "runs"
    shutil.copytree(demo, copy)
    broken = copy / "menet" / "eval" / "demo-whitebox.json"
    broken.write_text('{"format": ')  # cut short
    with caplog.at_level(logging.WARNING):
        recipe_text = write_report(tmp_path / "r1", recipe=_recipe(), runs_root=copy, scale="tiny").read_text()
    assert sum(str(broken) in record.getMessage() for record in caplog.records) == 1, caplog.text
    assert f"**Left out:** {broken}, not readable" in recipe_text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        runs_text = write_report(tmp_path / "r2", run_dirs=[copy / "menet"]).read_text()
    assert sum(str(broken) in record.getMessage() for record in caplog.records) == 1, caplog.text
    assert f"**Left out:** {broken}, not readable" in runs_text and "### demo-transfer" in runs_text


def test_attack_save_features_writes_them_beside_the_result(demo, tmp_path, capsys):
    from menet.cli import main

    run = tmp_path / "vanilla"
    shutil.copytree(demo / "vanilla", run)
    assert main(["attack", str(run), "--attack", "fgsm", "--eps", "0.1", "--n", "6", "--tag", "mine", "--save-features",
                 "--device", "cpu", "--quiet"]) == 0
    assert str(run / "eval" / "mine.features.npz") in capsys.readouterr().out
    stored = read_features(run / "eval" / "mine.features.npz")
    assert (run / "eval" / "mine.json").is_file()
    assert stored.clean.shape == (6, 1024) and list(stored.attacks) == ["fgsm"] and stored.meta["tag"] == "mine"
    assert not [p for p in (run / "eval").iterdir() if p.name.startswith(".")]  # no temporary file left
