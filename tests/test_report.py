"""The report is a pure reader: it re-renders in seconds from the run folders, result files and
stored features, without loading a model or running an attack; what it cannot read it names."""

from __future__ import annotations

import json
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


def _retrain(run: Path) -> None:
    """Other weights in the run's model.pt, as after training it again."""
    state = torch.load(run / "model.pt", weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, run / "model.pt")


def test_transfer_results_crafted_on_a_retrained_source_are_left_out_and_named(demo, tmp_path, capsys):
    """The target's weights are unchanged, but the copy (the transfer source) was trained again:
    the report neither shows the old transfer results nor checks the copy the result's stored
    absolute path names (the original demo, unchanged), but the copy beside the copied runs."""
    from menet.cli import main

    copy = tmp_path / "runs"
    shutil.copytree(demo, copy)
    targets = [str(copy / "vanilla"), str(copy / "menet")]
    assert main(["report", *targets, "--out", str(tmp_path / "before")]) == 0
    before = (tmp_path / "before" / "report.md").read_text()
    assert "### demo-transfer" in before and "Left out" not in before and "Unchecked" not in before, before
    _retrain(copy / "copy")
    assert main(["report", *targets, "--out", str(tmp_path / "after")]) == 0
    text = (tmp_path / "after" / "report.md").read_text()
    assert "### demo-transfer" not in text and "### demo-whitebox" in text, text
    left_out = next(line for line in text.splitlines() if line.startswith("**Left out:** transfer results"))
    assert "source run" in left_out and f"demo-transfer (source {copy / 'copy'})" in left_out, left_out
    assert left_out.count("demo-transfer") == 2, left_out  # for vanilla and for menet
    with pytest.raises(MissingFeatures) as err:  # nor are Figs. 4 and 5 drawn from its features
        write_report(tmp_path / "r", recipe=_recipe(), runs_root=copy, scale="tiny")
    assert "transfer source" in str(err.value) and "demo-transfer.features.npz" in str(err.value), err.value


def test_a_transfer_source_stored_relative_to_elsewhere_is_found_or_named_missing(demo, tmp_path, monkeypatch):
    """`menet attack runs/x --transfer-from runs/copy` stores both paths as given, relative to where
    it ran: from another directory the source is found where it lies relative to the target; when
    it is not there the report says its transfer results are unchecked, and keeps them."""
    import json

    copy = tmp_path / "runs"
    shutil.copytree(demo, copy)
    for name in ("vanilla", "menet"):  # as if attacked from a directory holding runs/ (now moved)
        path = copy / name / "eval" / "demo-transfer.json"
        result = json.loads(path.read_text())
        result["run"], result["transfer_from"] = f"runs/{name}", "runs/copy"
        result["settings"]["inputs"]["transfer_from"] = "runs/copy"
        path.write_text(json.dumps(result))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # where no runs/copy lies
    targets = [copy / "vanilla", copy / "menet"]
    text = write_report(tmp_path / "r1", run_dirs=targets).read_text()
    assert "### demo-transfer" in text and "Left out" not in text and "Unchecked" not in text, text
    _retrain(copy / "copy")
    text = write_report(tmp_path / "r2", run_dirs=targets).read_text()
    assert "### demo-transfer" not in text and "**Left out:** transfer results" in text, text
    shutil.rmtree(copy / "copy")
    text = write_report(tmp_path / "r3", run_dirs=targets).read_text()
    assert "### demo-transfer" in text, text
    unchecked = next(line for line in text.splitlines() if line.startswith("**Unchecked:**"))
    assert "source run was not found" in unchecked and "demo-transfer (source runs/copy)" in unchecked, unchecked


def _result(attacks, *, n=50, offset=0):
    """A result record of a run: attacks maps a name to (settings, indices of the examples it
    leaves robust); every example is clean-correct; one scoring draw."""
    import menet.summary

    outcomes = {"clean": [[1] * n]}
    outcomes.update({name: [[int(i in robust) for i in range(n)]] for name, (_, robust) in attacks.items()})
    return {"format": menet.summary.RESULT_FORMAT, "outcomes": outcomes,
            "settings": {"n": n, "draws": 1, "seed": 0, "cascade": False, "batch_size": 50,
                         "inputs": {"dataset": "fashion-mnist", "split": "test", "offset": offset},
                         "attacks": {name: settings for name, (settings, _) in attacks.items()}},
            "summary": menet.summary.summarise(outcomes, list(attacks))}


def _pgd(**settings):
    return {"attack": "pgd", "eps": 0.1, "steps": 20, "step_size": 0.01, "eot": 1, "loss": "ce", **settings}


def test_sanity_checks_say_within_noise_instead_of_reading_the_sign():
    """EOT 4 points above BPDA and white-box 4 above transfer on 50 images: 2 examples differ,
    McNemar p = 0.5: within noise, not a failure (a sign-reading check fails both)."""
    from menet.report import sanity_checks

    results = {"white": _result({"bpda": (_pgd(), range(15)), "eot": (_pgd(eot=4), range(17))}),
               "transfer": _result({"pgd": ({"attack": "transfer", "of": _pgd()}, range(13))})}
    checks = {c.name: c for c in sanity_checks("menet", results)}
    for name in ("EOT at most BPDA", "white-box at most transfer"):
        assert checks[name].verdict == "pass" and "within noise" in checks[name].evidence, checks[name]
        assert "McNemar exact p = 0.500" in checks[name].evidence and "% [" in checks[name].evidence
    results["white"] = _result({"bpda": (_pgd(), range(15)), "eot": (_pgd(eot=4), range(35))})  # 20 examples differ
    checks = {c.name: c for c in sanity_checks("menet", results)}
    assert checks["EOT at most BPDA"].verdict == "FAIL" and "EOT higher" in checks["EOT at most BPDA"].evidence
    # Not the same images (another offset): compared unpaired, and said so.
    results["transfer"] = _result({"pgd": ({"attack": "transfer", "of": _pgd()}, range(13))}, offset=50)
    evidence = {c.name: c for c in sanity_checks("menet", results)}["white-box at most transfer"].evidence
    assert "Fisher exact (unpaired)" in evidence and "not the same ones" in evidence


def test_results_that_do_not_record_their_images_are_not_paired():
    """Two results from ``evaluate`` without ``inputs`` (dataset and split unrecorded) may be on
    different images: their outcomes must not be paired by McNemar, only compared unpaired."""
    from menet.report.paired import compare_measured, measured

    a = _result({"pgd": (_pgd(), range(10))})
    b = _result({"pgd": (_pgd(), range(40, 50))})
    for r in (a, b):
        r["settings"]["inputs"] = {}
    comparison = compare_measured(measured(a, "pgd"), measured(b, "pgd"))
    assert comparison.method == "Fisher exact (unpaired)" and comparison.a_only is None
    paired = compare_measured(measured(_result({"pgd": (_pgd(), range(10))}), "pgd"),
                              measured(_result({"pgd": (_pgd(), range(40, 50))}), "pgd"))
    assert paired.method == "McNemar exact"


def test_step_convergence_is_judged_by_a_paired_test():
    from menet.report import sanity_checks

    def sweep(robust_at):
        return {"steps": _result({f"pgd{s}": (_pgd(steps=s), range(k)) for s, k in robust_at.items()}, n=200)}

    def verdict(results):
        return next(c for c in sanity_checks("menet", results) if c.name.startswith("accuracy converges"))

    flat = verdict(sweep({10: 80, 20: 76, 40: 73}))  # 3 examples more broken by 40 than 20 steps: noise
    assert flat.verdict == "pass" and "20 -> 40 steps: within noise" in flat.evidence, flat
    falling = verdict(sweep({10: 80, 20: 70, 40: 50}))
    assert falling.verdict == "FAIL" and "20 steps higher" in falling.evidence, falling


def test_results_written_before_intervals_render_with_them(demo, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(demo, copy)
    for path in (copy / "menet" / "eval").glob("*.json"):
        data = json.loads(path.read_text())
        for row in data["summary"].values():
            for key in ("all_draws_ci", "mean_over_draws_ci", "ci"):
                row.pop(key)
        path.write_text(json.dumps(data))
    fresh = write_report(tmp_path / "new", recipe=_recipe(), runs_root=demo, scale="tiny").read_text()
    old = write_report(tmp_path / "old", recipe=_recipe(), runs_root=copy, scale="tiny").read_text()
    assert old == fresh and "** [" in old  # the same intervals, computed on reading
    runs_text = write_report(tmp_path / "runs-report", run_dirs=[copy / "menet"]).read_text()
    transfer_table = runs_text.split("### demo-transfer")[1]
    assert "| clean |  | 4 | " in transfer_table and "% [" in transfer_table
