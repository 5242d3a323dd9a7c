"""`--device` is checked before any work: an unavailable device is one line naming it and what exists."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from menet.cli import build_parser, main
from menet.devices import DeviceError, available_devices, check_device


def _fake_cuda(monkeypatch, count: int) -> None:
    """Pretend this machine has ``count`` CUDA GPUs (0: a CPU-only torch)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.version, "cuda", "12.4" if count else None)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_available_devices_follow_what_torch_reports(monkeypatch):
    _fake_cuda(monkeypatch, 0)
    assert available_devices() == ["cpu"]
    _fake_cuda(monkeypatch, 2)
    assert available_devices() == ["cpu", "cuda", "cuda:0", "cuda:1"]


@pytest.mark.parametrize(
    ("gpus", "device", "words"),
    [
        (0, "cuda", ["--device cuda", "without CUDA", "available here: cpu"]),
        (0, "cuda:0", ["--device cuda:0", "available here: cpu"]),
        (1, "cuda:3", ["--device cuda:3", "1 CUDA GPU", "available here: cpu, cuda, cuda:0"]),
        (0, "mps", ["--device mps", "available: cpu"]),
        (0, "gpu0", ["'gpu0' is not a device name", "available here: cpu"]),
    ],
)
def test_an_unavailable_device_is_one_line_naming_it_and_what_is_available(monkeypatch, gpus, device, words):
    _fake_cuda(monkeypatch, gpus)
    with pytest.raises(DeviceError) as caught:
        check_device(device)
    message = str(caught.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_available_devices_pass(monkeypatch):
    _fake_cuda(monkeypatch, 2)
    for device in (None, "cpu", "cuda", "cuda:1"):
        check_device(device)


# One argument list per command that takes --device; each would do real work if the check were missing.
COMMANDS = {
    "demo": lambda tmp: ["demo", "--out", str(tmp / "out"), "--scale", "tiny", "--quiet"],
    "train": lambda tmp: ["train", "--runs", str(tmp / "out"), "--set", "train_limit=32", "--set", "epochs=1", "--quiet"],
    "attack": lambda tmp: ["attack", str(tmp / "out"), "--attack", "pgd", "--quiet"],
    "reproduce": lambda tmp: ["reproduce", "recipes/table1.yaml", "--runs", str(tmp / "out"), "--scale", "tiny", "--quiet"],
    "import-run": lambda tmp: ["import-run", "--model", "menet.models.lenet:lenet", "--weights", str(tmp / "w.pt"),
                               "--dataset", "fashion-mnist", "--name", "x", "--runs", str(tmp / "out")],
}


def _commands_with_device() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name for name, p in sub.choices.items() if any("--device" in a.option_strings for a in p._actions)}


def test_every_command_with_a_device_option_is_covered_here():
    assert _commands_with_device() <= set(COMMANDS), _commands_with_device() - set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(("gpus", "device"), [(0, "cuda"), (1, "cuda:3")])
def test_every_command_checks_the_device_before_any_work(tmp_path, capsys, monkeypatch, command, gpus, device):
    if command not in _commands_with_device():
        pytest.skip(f"menet {command} has no --device option in this version")
    _fake_cuda(monkeypatch, gpus)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # recipes/ is relative
    assert main([*COMMANDS[command](tmp_path), "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--device {device}" in err and "available here: cpu" in err, err
    assert not (tmp_path / "out").exists()  # nothing written
