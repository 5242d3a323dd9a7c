"""The fit loop: every mode learns, ME-Net feeds reconstructions, exact resume, clear errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from menet import fit, load_model
from menet.checkpoint import CheckpointError, load_weights_only, save_atomic
from menet.config import ConfigError, apply_overrides, config_from_dict
from menet.defense import MatrixEstimation, MENet
from menet.training import TrainingInterrupted


def tiny(mode: str, name: str | None = None, /, **overrides) -> dict:
    base = {
        "name": name or f"tiny-{mode}", "mode": mode, "epochs": 3, "batch_size": 32, "train_limit": 96,
        "lr": 0.05, "lr_milestones": [2], "test_limit": 64, "defense": {"method": "usvt", "n_masks": 2},
        "attack": {"eps": 0.1, "step": 0.05, "steps": 2},
    }
    return apply_overrides(base, [f"{k}={v}" for k, v in overrides.items()])


@pytest.mark.parametrize("mode", ["vanilla", "menet", "madry", "menet-adv"])
def test_loss_falls_and_run_files_are_written(tmp_path, mode):
    history = fit(config_from_dict(tiny(mode)), tmp_path)
    assert history[-1]["loss"] < history[0]["loss"]
    run = tmp_path / f"tiny-{mode}"
    assert {p.name for p in run.iterdir()} == {"config.yaml", "model.pt", "last.pt", "history.csv", "history.jsonl"}
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [json.loads(line)["epoch"] for line in (run / "history.jsonl").open()] == [1, 2, 3]
    assert [r["lr"] for r in history] == pytest.approx([0.05, 0.05, 0.005])  # divided after 2 epochs
    model = load_model(run)
    assert isinstance(model, MENet) == mode.startswith("menet")
    assert "p_infer: 0.95" in (run / "config.yaml").read_text()  # mean of p_k = 0.9, 1.0
    if isinstance(model, MENet):
        assert model.preprocess.p == pytest.approx(0.95)  # mean of p_k = 0.9, 1.0


def test_test_accuracy_every_eval_every_epochs_matches_the_saved_model(tmp_path):
    history = fit(config_from_dict(tiny("vanilla", epochs=3, eval_every=2, test_limit=200, train_limit=512, batch_size=64)), tmp_path)
    assert [row["test_accuracy"] is None for row in history] == [True, False, False]  # epochs 2 and 3 (last)
    # Independent of the training loop: the saved network, classified in one batch.
    from menet.data import load_dataset

    test = load_dataset("fashion-mnist", "test")
    model = load_model(tmp_path / "tiny-vanilla")
    with torch.no_grad():
        predicted = model(test.images[:200].float() / 255).argmax(1)
    assert history[-1]["test_accuracy"] == pytest.approx((predicted == test.labels[:200]).float().mean().item())
    assert history[-1]["test_accuracy"] > 0.3  # 24 steps on 512 images: well above chance (0.1)
    rows = list(csv.DictReader((tmp_path / "tiny-vanilla" / "history.csv").open()))
    assert [r["test_accuracy"] == "" for r in rows] == [True, False, False]


def test_menet_mode_trains_on_reconstructions(tmp_path):
    # p = 1 and a rank-2 USVT make the reconstruction deterministic: the network must see
    # exactly the rank-2 reconstructions of the (unaugmented) Fashion-MNIST images.
    config = config_from_dict(tiny("menet", epochs=1, eval_every=0, **{"defense.p_start": 1.0, "defense.options": "{rank: 2}"}))
    seen = []
    original_forward = torch.nn.Module.__call__

    from menet.models.base import Classifier

    def spy(self, *args, **kwargs):
        if isinstance(self, Classifier):
            seen.append(args[0].detach().clone())
        return original_forward(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.Module, "__call__", spy)
        fit(config, tmp_path)
    from menet.data import load_dataset

    raw = load_dataset("fashion-mnist", "train").images[:96].float() / 255
    recon = MatrixEstimation("usvt", p=1.0, rank=2).reconstruct(raw, torch.ones(96, 28, 28, dtype=torch.bool))
    inputs = torch.cat(seen)
    assert inputs.shape[0] == 2 * 96  # two masks per image
    # every input is the reconstruction of some training image, and none is a raw image
    dist_recon = torch.cdist(inputs.flatten(1), recon.flatten(1)).min(1).values
    dist_raw = torch.cdist(inputs.flatten(1), raw.flatten(1)).min(1).values
    # (float32 eigh on different batch compositions differs by rounding: ~1e-2 in L2 over 784 pixels)
    assert dist_recon.max() < 0.05 and dist_raw.min() > 0.1, (dist_recon.max(), dist_raw.min())


@pytest.mark.parametrize(("mode", "stop"), [("menet", 15), ("menet-adv", 7)])
def test_kill_and_resume_gives_identical_weights(tmp_path, mode, stop):
    # 96 images in batches of 32: 6 steps per epoch for menet (2 masks each), 3 for menet-adv;
    # ``stop`` falls inside epoch 3 of 3, so last.pt holds epoch 2.
    config = config_from_dict(tiny(mode, "run"))
    fit(config, tmp_path / "a")
    with pytest.raises(TrainingInterrupted):
        fit(config, tmp_path / "b", stop_after_steps=stop)
    assert load_weights_only(tmp_path / "b" / "run" / "last.pt")["epoch"] == 2
    fit(config, tmp_path / "b", resume=True)
    a = load_weights_only(tmp_path / "a" / "run" / "model.pt")
    b = load_weights_only(tmp_path / "b" / "run" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "run" / "history.csv").read_text().count("\n") == (tmp_path / "b" / "run" / "history.csv").read_text().count("\n")


def test_resume_is_exact_with_dropout(tmp_path):
    # Dropout draws from torch's global RNG: each epoch seeds it from (seed, epoch, rank), so a
    # resumed run draws the same dropout masks as an uninterrupted one.
    settings = tiny("vanilla", "run", model="wide_resnet", epochs=2, train_limit=64, lr_milestones="[]",
                    model_options="{depth: 10, widen_factor: 1, dropout: 0.5}")
    config = config_from_dict(settings)
    torch.manual_seed(1)
    fit(config, tmp_path / "a")
    with pytest.raises(TrainingInterrupted):
        fit(config, tmp_path / "b", stop_after_steps=3)
    torch.manual_seed(2)  # a fresh process: the global RNG is elsewhere
    before = torch.get_rng_state()
    fit(config, tmp_path / "b", resume=True)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's global RNG is left as it was
    a = load_weights_only(tmp_path / "a" / "run" / "model.pt")
    b = load_weights_only(tmp_path / "b" / "run" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"dataset": "imagenet"}, "dataset"),
        ({"model": "vgg"}, "model"),
        ({"mode": "trades"}, "mode"),
        ({"defense.method": "svd"}, "defense.method"),
        ({"defense.p_start": 0.0}, "defense.p_start"),
        ({"defense.p_end": 1.5}, "defense.p_end"),
        ({"attack.eps": -0.1}, "attack.eps"),
        ({"epochs": -1}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"masks": "disk"}, "masks"),
        ({"amp": 3}, "amp"),
        ({"defense.options": "{rank: 1.5}"}, "defense.options"),  # a float is never a rank
        ({"defense.options": "{rank: 29}"}, "defense.options"),  # more than min(28, 28)
        ({"defense.options": "{mu: 2.0}"}, "defense.options"),  # nuclear norm's option, method usvt
        ({"mode": "madry", "masks": "cached"}, "masks"),
        ({"model_options": "{depth: 12}"}, "model_options"),
        ({"name": ".."}, "name"),  # a path out of the runs folder
        ({"name": "a/b"}, "name"),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, override, field):
    config = config_from_dict(tiny("menet", **override))
    with pytest.raises(ConfigError, match=f"config field {field} "):
        fit(config, tmp_path)
    assert not any(tmp_path.iterdir())


def test_lr_milestones_must_be_a_list():
    with pytest.raises(ConfigError, match="lr_milestones must be a list"):
        config_from_dict(tiny("vanilla", lr_milestones=5))


def test_unknown_config_key_names_it():
    with pytest.raises(ConfigError, match="defense.pstart"):
        config_from_dict(tiny("menet", **{"defense.pstart": 0.5}))
    with pytest.raises(ConfigError, match="learning_rate"):
        config_from_dict({**tiny("vanilla"), "learning_rate": 0.1})


def test_load_model_errors(tmp_path):
    fit(config_from_dict(tiny("vanilla", epochs=1)), tmp_path)
    run = tmp_path / "tiny-vanilla"
    model_pt = run / "model.pt"
    good = model_pt.read_bytes()
    model_pt.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or foreign"):
        load_model(run)
    save_atomic({"conv.weight": torch.zeros(3)}, model_pt)
    with pytest.raises(CheckpointError, match="do not fit a lenet"):
        load_model(run)
    model_pt.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="truncated or foreign"):
        load_model(run)
    with pytest.raises(CheckpointError, match="not a menet run directory"):
        load_model(tmp_path)


def test_resume_refuses_changed_settings(tmp_path):
    fit(config_from_dict(tiny("vanilla", "r", epochs=1)), tmp_path)
    with pytest.raises(CheckpointError, match=r"changed: lr \(0.05 -> 0.2\)"):
        fit(config_from_dict(tiny("vanilla", "r", epochs=1, lr=0.2)), tmp_path, resume=True)
    with pytest.raises(CheckpointError, match=r"defense.options"):
        fit(config_from_dict(tiny("menet", "m", epochs=1)), tmp_path)
        fit(config_from_dict(tiny("menet", "m", epochs=1, **{"defense.options": "{rank: 3}"})), tmp_path, resume=True)


def test_readme_sequence_resume_without_data_dir(tmp_path, capsys, caplog, monkeypatch):
    """Train with --set data_dir=..., then --resume without it (the README's own sequence;
    the second call finds the files through MENET_DATA_DIR)."""
    import numpy as np
    from official_files import write_split

    from menet.cli import main

    data = tmp_path / "data"  # tiny MNIST files in the official format, not under MENET_DATA_DIR
    data.mkdir()
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_split(data, prefix, rng.integers(0, 256, (64, 28, 28), dtype=np.uint8),
                    rng.integers(0, 10, 64, dtype=np.uint8), compress=False)
    args = ["train", "--name", "run", "--runs", str(tmp_path / "runs"), "--set", "dataset=mnist",
            "--set", "verify_checksums=false", "--set", "eval_every=0", "--set", "batch_size=32", "--quiet"]
    assert main([*args, "--set", "epochs=1", "--set", f"data_dir={data}"]) == 0
    monkeypatch.setenv("MENET_DATA_DIR", str(data))
    with caplog.at_level("WARNING"):
        assert main([*args, "--set", "epochs=2", "--set", "lr=0.5", "--resume"]) == 2  # lr shapes the weights
        assert "lr (0.1 -> 0.5)" in capsys.readouterr().err
        assert main([*args, "--set", "epochs=2", "--set", "eval_every=1", "--resume"]) == 0  # one more epoch
    assert load_weights_only(tmp_path / "runs" / "run" / "last.pt")["epoch"] == 2
    assert "resuming with new data_dir=None" in caplog.text and "eval_every=1 (was 0)" in caplog.text
    saved = (tmp_path / "runs" / "run" / "config.yaml").read_text()
    assert "data_dir: null" in saved and "eval_every: 1" in saved  # the new values are the run's now


def test_cli_train_with_recipe_and_overrides(tmp_path, capsys):
    from pathlib import Path

    from menet.cli import main

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "train" / "fashion-mnist-quick.yaml"
    args = ["train", str(recipe), "--runs", str(tmp_path), "--set", "train_limit=64", "--set", "epochs=2",
            "--set", "test_limit=32", "--set", "eval_every=2", "--quiet"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("epoch 1: loss") and "test accuracy" not in lines[0]
    assert lines[1].startswith("epoch 2: loss") and "test accuracy" in lines[1]
    assert (tmp_path / "fashion-mnist-quick" / "model.pt").is_file()
    assert main(["train", str(recipe), "--runs", str(tmp_path), "--set", "defense.p_start=2"]) == 2
    assert "defense.p_start" in capsys.readouterr().err


def test_an_existing_run_is_never_overwritten_by_accident(tmp_path, capsys):
    from menet.cli import main

    config = config_from_dict(tiny("vanilla", "run", epochs=2, eval_every=0))
    fit(config, tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(CheckpointError, match="already holds a run"):
        fit(config_from_dict(tiny("vanilla", "run", epochs=1)), tmp_path)
    args = ["train", "--name", "run", "--runs", str(tmp_path), "--set", "train_limit=32", "--set", "epochs=1",
            "--set", "eval_every=0", "--quiet"]
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before  # nothing lost
    assert main([*args, "--overwrite"]) == 0
    assert load_weights_only(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert (tmp_path / "run" / "history.csv").read_text().count("\n") == 2  # header and epoch 1 only


def test_cli_train_interrupted_then_resumed(tmp_path, capsys, monkeypatch):
    import menet.training
    from menet.cli import main

    args = ["train", "--name", "run", "--runs", str(tmp_path), "--set", "train_limit=64", "--set", "epochs=2",
            "--set", "eval_every=0", "--set", "batch_size=32", "--quiet"]
    real_epoch = menet.training._train_epoch
    calls = []

    def interrupted_in_epoch_2(*a, **k):  # Ctrl-C during the second epoch
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*a, **k)

    monkeypatch.setattr(menet.training, "_train_epoch", interrupted_in_epoch_2)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err
    assert load_weights_only(tmp_path / "run" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(menet.training, "_train_epoch", real_epoch)
    assert main([*args, "--resume"]) == 0
    assert capsys.readouterr().out.startswith("epoch 2: loss")


def test_cached_reconstructions_are_reused_and_invalidated(tmp_path, monkeypatch):
    import numpy as np

    import menet.recon_cache as recon_cache

    builds = []
    original = recon_cache.MatrixEstimation

    class Counting(original):
        def forward(self, images):
            builds.append(len(images))
            return super().forward(images)

    monkeypatch.setattr(recon_cache, "MatrixEstimation", Counting)
    settings = tiny("menet", "c1", epochs=1, masks="cached")
    fit(config_from_dict(settings), tmp_path)
    assert sum(builds) == 2 * 96  # two masks per image, built once
    [cache] = list((tmp_path / "cache").glob("*.npy"))
    stored = np.load(cache, mmap_mode="r")
    assert stored.shape == (2, 96, 1, 28, 28) and stored.dtype == np.uint8
    builds.clear()
    fit(config_from_dict(tiny("menet", "c2", epochs=2, masks="cached")), tmp_path)  # same ME settings
    assert builds == []
    fit(config_from_dict(tiny("menet", "c3", epochs=1, masks="cached", **{"defense.p_start": 0.5})), tmp_path)
    assert sum(builds) == 2 * 96
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary files left


def test_cached_copies_are_reconstructions_with_their_keep_probability(tmp_path):
    import numpy as np

    from menet.data import load_dataset
    from menet.recon_cache import cached_reconstructions

    config = config_from_dict(tiny("menet", "c", **{"defense.p_start": 0.2, "defense.p_end": 1.0, "defense.n_masks": 2}))
    images = load_dataset("fashion-mnist", "train").images[:32]
    cache = cached_reconstructions(config, images, tmp_path)
    # p_1 = 0.6 with USVT's top-80% rank leaves visible mask noise; p_2 = 1.0 is near-exact.
    err = [np.abs(cache[k].astype(float) - images.numpy()).mean() for k in range(2)]
    assert err[1] < 2 and err[0] > 5 * err[1]


def _train_one_and_two_processes(tmp_path, settings: list[str]) -> str:
    """Train runs "one" (1 process) and "two" (torchrun, 2 processes) with ``settings``; check that
    their weights agree; return the 2-process run's stdout."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "menet", "train", "--name", "one", "--runs", str(tmp_path), *settings],
                            capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr
    double = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "menet", "train", "--name", "two", "--runs", str(tmp_path), *settings],
        capture_output=True, text=True, env=env,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    a = load_weights_only(tmp_path / "one" / "model.pt")
    b = load_weights_only(tmp_path / "two" / "model.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    return double.stdout


def test_two_process_torchrun_matches_one_process(tmp_path):
    # Batches of 31 split 16 + 15 (and the last, 3, as 2 + 1): the loss scaling must make
    # the averaged gradient the global-batch mean for the runs to agree.
    settings = ["--set", "mode=vanilla", "--set", "epochs=2", "--set", "batch_size=31", "--set", "train_limit=96",
                "--set", "lr=0.05", "--set", "lr_milestones=[]", "--set", "test_limit=64", "--quiet"]
    stdout = _train_one_and_two_processes(tmp_path, settings)
    # Only rank 0 wrote: one set of run files, and rank 1 printed nothing.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["config.yaml", "history.csv", "history.jsonl", "last.pt", "model.pt"]
    assert stdout.count("epoch 2: loss") == 1


def test_adam_and_amp_on_cpu(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        history = fit(config_from_dict(tiny("vanilla", epochs=2, optimizer="adam", lr=1e-3, amp=True)), tmp_path)
    assert history[-1]["loss"] < history[0]["loss"]
    assert "amp is CUDA-only" in caplog.text


def test_every_recipe_is_a_valid_config():
    from pathlib import Path

    from menet.config import load_recipe

    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes" / "train").glob("*.yaml"))
    assert len(recipes) >= 8
    for path in recipes:
        config = config_from_dict(load_recipe(path))
        config.validate()
        assert config.name == path.stem, path


def test_checkpoint_errors_are_one_actionable_line(tmp_path):
    from torch import nn

    fit(config_from_dict(tiny("vanilla", "run", epochs=1, eval_every=0)), tmp_path)
    run = tmp_path / "run"
    model_pt, config_yaml = run / "model.pt", run / "config.yaml"
    good_config = config_yaml.read_text()
    config_yaml.write_text("name: [unclosed\n  mode: vanilla\n")
    with pytest.raises(CheckpointError) as err:
        load_model(run)
    assert "\n" not in str(err.value) and "config.yaml: not valid YAML" in str(err.value)
    config_yaml.write_text(good_config)
    # Weights of another architecture: one line naming the first mismatched keys and the model they fit.
    from menet.models import build_model_for_dataset

    save_atomic(build_model_for_dataset("resnet18", "fashion-mnist").state_dict(), model_pt)
    with pytest.raises(CheckpointError) as err:
        load_model(run)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    assert "do not fit a lenet" in message and "they fit resnet18" in message and "missing: body." in message
    # Pickled code: refused, without torch's advice to load it with weights_only=False.
    torch.save(nn.Linear(2, 2), model_pt)
    with pytest.raises(CheckpointError) as err:
        load_model(run)
    assert "\n" not in str(err.value) and "refuses to load" in str(err.value)
    assert "weights_only" not in str(err.value)


def test_overwrite_with_a_bad_option_leaves_the_old_run_untouched(tmp_path, capsys):
    from menet.cli import main

    args = ["train", "--name", "run", "--runs", str(tmp_path), "--set", "mode=menet", "--set", "defense.method=usvt",
            "--set", "train_limit=32", "--set", "epochs=1", "--set", "eval_every=0", "--quiet"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    assert main([*args, "--set", "defense.options={rank: 1.5}", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "defense.options" in err and "rank_fraction=1.5" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_config_yaml_names_the_usvt_rule(tmp_path):
    fit(config_from_dict(tiny("menet", "run", epochs=1, eval_every=0)), tmp_path)
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "# defense: usvt, top 80% of singular values (the original ME-Net code's svdprob)" in text
    assert "rank_fraction: 0.8" in text and "rank: null" in text and "eta: 0.01" in text
    fit(config_from_dict(tiny("menet", "chatterjee", epochs=1, eval_every=0, **{"defense.options": "{rank_fraction: null}"})), tmp_path)
    text = (tmp_path / "chatterjee" / "config.yaml").read_text()
    assert "Chatterjee's threshold" in text and "rank_fraction: null" in text
    assert "Chatterjee's threshold" in repr(load_model(tmp_path / "chatterjee"))


def _spy_classifier_inputs(monkeypatch) -> list[torch.Tensor]:
    """Record every input of a menet Classifier (what the network trains on)."""
    from menet.models.base import Classifier

    seen: list[torch.Tensor] = []
    original = torch.nn.Module.__call__

    def spy(self, *args, **kwargs):
        if isinstance(self, Classifier):
            seen.append(args[0].detach().clone())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", spy)
    return seen


def _tiny_cifar(directory, per_batch: int = 8):
    from official_files import write_cifar

    directory.mkdir()
    write_cifar(directory, archive=False, per_batch=per_batch)
    return {"dataset": "cifar10", "data_dir": str(directory), "verify_checksums": "false"}


def test_fresh_and_cached_masks_feed_the_same_augmented_reconstructions(tmp_path, monkeypatch):
    # p = 1: fresh and cached masks are the same (all kept), and rank-2 USVT is deterministic, so
    # both modes must feed the crop-and-flip of the same reconstruction of the un-augmented image
    # (cached copies are rounded to uint8: half a grey level apart at most).
    data = _tiny_cifar(tmp_path / "data")
    inputs = {}
    for masks in ("fresh", "cached"):
        seen = _spy_classifier_inputs(monkeypatch)
        settings = tiny("menet", masks, epochs=1, eval_every=0, batch_size=8, train_limit=40, masks=masks, **data,
                        **{"defense.p_start": 1.0, "defense.n_masks": 1, "defense.options": "{rank: 2}"})
        fit(config_from_dict(settings), tmp_path / "runs")
        monkeypatch.undo()
        inputs[masks] = torch.cat(seen)
    assert inputs["fresh"].shape == (40, 3, 32, 32)
    assert (inputs["fresh"] - inputs["cached"]).abs().max() < 0.5 / 255 + 1e-4
    # ...and the crops are real: some rows are the zero padding, exactly (never reconstructed).
    assert (inputs["fresh"][:, :, 0, :] == 0).all(-1).any()


@pytest.mark.parametrize("mode", ["menet", "menet-adv"])
def test_two_process_menet_with_crop_flip_and_masks_matches_one_process(tmp_path, mode):
    """Crops, flips, masks and (menet-adv) the PGD starts and per-step masks of the global batch
    are drawn once and sliced per rank."""
    data = _tiny_cifar(tmp_path / "data")
    settings = ["--set", f"mode={mode}", "--set", "attack.steps=2", "--set", "model=lenet", "--set", "epochs=2", "--set", "batch_size=11",
                "--set", "lr=0.05", "--set", "lr_milestones=[]", "--set", "eval_every=0", "--set", "defense.method=usvt",
                "--set", "defense.p_start=0.4", "--set", "defense.n_masks=2", "--quiet",
                *[item for k, v in data.items() for item in ("--set", f"{k}={v}")]]
    _train_one_and_two_processes(tmp_path, settings)


def test_load_model_takes_the_attackers_gradient_and_a_generator(tmp_path):
    fit(config_from_dict(tiny("menet", "run", epochs=1, eval_every=0, **{"defense.p_start": 0.4})), tmp_path)
    x = torch.rand(6, 1, 28, 28)
    outs = [load_model(tmp_path / "run", generator=torch.Generator().manual_seed(s))(x) for s in (5, 5, 6)]
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])  # draws repeat under a seed
    exact = load_model(tmp_path / "run", gradient="exact", generator=torch.Generator().manual_seed(5))
    assert exact.preprocess.gradient == "exact"
    torch.testing.assert_close(exact(x), outs[0])  # same masks, same values: only the backward differs
    with pytest.raises(ValueError, match="bpda, exact"):
        load_model(tmp_path / "run", gradient="straight")
    fit(config_from_dict(tiny("menet", "nuc", epochs=1, eval_every=0, **{"defense.method": "nucnorm"})), tmp_path)
    with pytest.raises(ValueError, match="use gradient='bpda'"):
        load_model(tmp_path / "nuc", gradient="exact")
