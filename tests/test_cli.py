"""The `menet` command: demo outputs and error reporting."""

from __future__ import annotations

from menet.cli import main


def test_demo_writes_figures_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--images", "16", "--quiet"]) == 0
    for name in ("reconstructions.png", "approx_rank.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    summary = (out / "summary.md").read_text()
    for method in ("usvt", "softimpute", "nucnorm"):
        assert summary.count(f"| {method} |") == 5
    assert "Approximate rank" in capsys.readouterr().out
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


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
