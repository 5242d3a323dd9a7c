"""The `menet` command: demo outputs and error reporting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from menet.cli import main


def test_demo_trains_attacks_and_reports(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--scale", "tiny", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| vanilla LeNet |" in printed and "| ME-Net LeNet" in printed and "report.md" in printed
    assert "In brackets: 95% intervals" in printed and "%** [" in printed  # every number with its interval
    assert "Paired comparisons" in printed and "- transfer PGD-40: ME-Net LeNet" in printed and "vs vanilla LeNet: " in printed
    report = (out / "report.md").read_text()
    assert "Convergence (the attack's steps doubled" in printed and "converged at" in printed  # the white-box curve
    for needed in ("transfer FGSM", "white-box PGD (BPDA), steps to convergence", "BPDA + EOT-4", "Sanity checks",
                   "ranks-fashion-mnist.png",
                   "reconstructions-fashion-mnist.png"):
        assert needed in report, needed
    for name in ("ranks-fashion-mnist.png", "reconstructions-fashion-mnist.png"):
        pixels = np.asarray(Image.open(out / name).convert("RGB"))
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # not blank
    assert {"vanilla", "copy", "menet"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.rglob(".*") if p.name != ".gitignore"]  # no temporary or partial files left
    before = (out / "report.md").read_text()
    assert main(["demo", "--out", str(out), "--scale", "tiny", "--quiet"]) == 0  # a second run reuses everything
    assert (out / "report.md").read_text() == before
    assert not [p for p in out.iterdir() if ".replaced-" in p.name]  # the runs were reused, not set aside


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "MENET_DATA_DIR" in err
    assert not (tmp_path / "o").exists()


def test_models_lists_registry_with_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "11,173,962" in out and "7,158,856" in out


def test_data_info_reports_files_and_status(capsys, tmp_path):
    assert main(["data", "info", "fashion-mnist"]) == 0
    out = capsys.readouterr().out
    assert "looked in: /usr/share/datasets/fashion-mnist" in out
    assert "t10k-images-idx3-ubyte.gz" in out and "test: 10,000 images" in out
    assert main(["data", "info", "cifar10", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "train: error:" in out and "cifar-10-python.tar.gz" in out


def test_unknown_dataset_is_a_clear_error(capsys):
    assert main(["data", "info", "imagenet"]) == 2
    assert "valid: mnist, fashion-mnist, cifar10, svhn, tiny-imagenet" in capsys.readouterr().err


def test_ensure_data_script_explains_a_wrong_data_dir(tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "ensure-data.sh"
    result = subprocess.run(["bash", str(script)], env={"PATH": "/usr/bin:/bin", "MENET_DATA_DIR": str(tmp_path)},
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert f"MENET_DATA_DIR={tmp_path} does not hold the Fashion-MNIST IDX files" in result.stderr
    ok = subprocess.run(["bash", str(script)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert ok.returncode == 0  # the built-in data is installed (make test made sure of it)


def test_train_help_lists_modes_fields_and_an_example(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for mode in ("vanilla", "menet", "menet-adv", "madry"):
        assert f"\n  {mode} " in out
    assert "defense.method" in out and "attack.eps" in out and "menet train --set dataset=" in out


def test_train_without_a_recipe(tmp_path, capsys):
    args = ["train", "--runs", str(tmp_path), "--set", "mode=menet", "--set", "dataset=fashion-mnist",
            "--set", "defense.method=usvt", "--set", "train_limit=32", "--set", "epochs=1", "--set", "eval_every=0", "--quiet"]
    assert main(args) == 0
    assert (tmp_path / "fashion-mnist-lenet-menet" / "model.pt").is_file()
    assert "mode: menet" in (tmp_path / "fashion-mnist-lenet-menet" / "config.yaml").read_text()


def _tiny_runs(tmp_path):
    from menet.config import config_from_dict
    from menet.training import fit

    common = {"epochs": 1, "batch_size": 32, "train_limit": 64, "eval_every": 0, "lr": 0.01}
    fit(config_from_dict({"name": "menet", "mode": "menet", "defense": {"method": "usvt", "n_masks": 1}, **common}), tmp_path)
    fit(config_from_dict({"name": "copy", "mode": "vanilla", "seed": 1, **common}), tmp_path)
    return tmp_path / "menet", tmp_path / "copy"


def test_attack_command_writes_results_and_lists_attacks(tmp_path, capsys):
    run, copy = _tiny_runs(tmp_path)
    assert main(["attack", "--list"]) == 0
    listed = capsys.readouterr().out
    for name in ("pgd", "fgsm", "boundary", "spsa", "approx_input", "projected_bpda"):
        assert f"\n  {name} " in "\n" + listed
    args = ["attack", str(run), "--attack", "fgsm", "--attack", "pgd", "--steps", "2", "--eps", "8/255",
            "--step-size", "2/255", "--n", "16", "--draws", "2", "--batch-size", "8", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| pgd | pgd, eps 8/255, step_size 2/255, steps 2" in out and "| worst case |" in out
    result = json.loads((run / "eval" / "fgsm-pgd.json").read_text())
    for name, row in result["summary"].items():  # the table shows each number's interval and n
        low, high = row["all_draws_ci"]
        line = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        assert f"| 16 | {100 * row['robust_all_draws']:.1f}% [{100 * low:.1f}, {100 * high:.1f}] |" in line, line
    assert "95% intervals" in out and "Clopper-Pearson" in out
    assert result["settings"]["draws"] == 2 and result["settings"]["n"] == 16 and result["run"] == str(run)
    assert result["settings"]["attacks"]["pgd"]["eps"] == pytest.approx(8 / 255)
    assert main(args) == 2 and "--resume" in capsys.readouterr().err  # never overwritten by accident
    assert main(["attack", str(run), "--attack", "pgd", "--steps", "1", "--n", "8", "--transfer-from", str(copy),
                 "--eot", "2", "--quiet"]) == 0
    assert (run / "eval" / "transfer-pgd-eot2.json").is_file()


def test_attack_list_names_the_modifiers_in_plain_text(capsys):
    assert main(["attack", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not [line for line in lines if "`" in line]  # no reStructuredText quoting
    assert any("pyautoattack" in line for line in lines) and any("top-rank singular" in line for line in lines)
    for modifier in ("--loss cw", "--eot", "--transfer-from", "--draws", "--cascade", "--gradient exact"):
        described = [line for line in lines if line.strip().startswith(modifier + " ")]
        assert len(described) == 1 and len(described[0].split()) > 5, (modifier, described)
    assert any("cw" in line.lower() and "carlini" in line.lower() for line in lines)  # a user looking for CW finds it
    assert any("eot" in line.lower() and "expectation over transformation" in line for line in lines)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--attack", "pgdd"], "unknown attack 'pgdd'"),
        (["--attack", "pgd", "--eps", "-0.1"], "eps must be >= 0"),
        (["--attack", "fgsm", "--steps", "3"], "no chosen attack has the setting(s) steps"),
        (["--attack", "boundary", "--eot", "2"], "uses none"),
        (["--attack", "pgd", "--n", "0"], "--n must be >= 1"),
    ],
)
def test_attack_command_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, message):
    run, _ = _tiny_runs(tmp_path)
    assert main(["attack", str(run), *extra, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (run / "eval").exists()


def test_attack_command_refuses_a_non_run_and_a_foreign_transfer_source(tmp_path, capsys):
    from menet.config import config_from_dict
    from menet.runs import write_config

    run, _ = _tiny_runs(tmp_path)
    assert main(["attack", str(tmp_path), "--attack", "pgd"]) == 2
    assert "not a menet run directory" in capsys.readouterr().err
    other = tmp_path / "other"
    write_config(other, config_from_dict({"name": "other", "dataset": "mnist"}))
    assert main(["attack", str(run), "--attack", "pgd", "--transfer-from", str(other)]) == 2
    assert "must share the dataset" in capsys.readouterr().err
    assert not (run / "eval").exists()


def test_attack_command_shards_over_torchrun_processes(tmp_path):
    import os
    import subprocess
    import sys

    run, _ = _tiny_runs(tmp_path)
    args = ["-m", "menet", "attack", str(run), "--attack", "pgd", "--steps", "2", "--images", "24", "--batch-size", "8",
            "--draws", "2", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *args, "--tag", "one"], capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             *args, "--tag", "two"], capture_output=True, text=True, env=env)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = (json.loads((run / "eval" / f"{t}.json").read_text()) for t in ("one", "two"))
    for result in (one, two):
        for key in ("timing", "tag", "hardware"):
            result.pop(key)
    assert one == two  # the same outcomes, example by example: randomness is keyed by batch, not rank
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["one.json", "one.md", "two.json", "two.md"]
    assert double.stdout.count("| worst case |") == 1  # only rank 0 prints


def test_report_command_reads_the_result_files(tmp_path, capsys):
    run, _ = _tiny_runs(tmp_path)
    assert main(["attack", str(run), "--attack", "pgd", "--steps", "2", "--n", "16", "--batch-size", "8",
                 "--draws", "2", "--tag", "white", "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert str(out / "report.md") in capsys.readouterr().out
    text = (out / "report.md").read_text()
    result_file = run / "eval" / "white.json"
    result = json.loads(result_file.read_text())
    robust = result["summary"]["pgd"]["robust_all_draws"]
    assert "## menet" in text and "### white" in text and f"{100 * robust:.1f}%" in text
    # The report is read from the result file: change the file, the report changes.
    result["summary"]["pgd"]["robust_all_draws"] = 0.123456
    result_file.write_text(json.dumps(result))
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert "12.3%" in (out / "report.md").read_text()
    # A folder that is not a run: one line, and no report written.
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "not a menet run directory" in err and err.count("\n") == 1
    assert not (tmp_path / "r2").exists()
