"""The README's Python examples run as written, and print what their comments say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples_run_and_print_what_they_claim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write (runs/) write here
    blocks = python_blocks()
    assert len(blocks) >= 2
    for block in blocks:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(block, str(README), "exec"), {})
        claimed = re.findall(r"print\(.*\)\s+# (.*)", block)
        assert printed.getvalue().split("\n")[: len(claimed)] == claimed


def test_quick_start_is_two_commands():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_readme_own_network_example_runs_as_written(tmp_path):
    """The "Your own network" section: its mynet.py, then its shell lines, in an empty folder."""
    import os
    import subprocess
    import sys

    import yaml

    section = README.read_text().split("## Your own network", 1)[1].split("\n## ", 1)[0]
    (module,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    (commands,) = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert module.startswith("# mynet.py") and "menet import-run --model mynet:build" in commands
    (tmp_path / "mynet.py").write_text(module)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # mynet is found in the current directory, as the README says
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run = tmp_path / "runs" / "mynet"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"] == "mynet:build" and config["mode"] == "menet" and config["epochs"] == 0
    assert config["imported_from"].startswith(str(tmp_path / "mynet.pt")) and config["defense"]["p_infer"] == 0.5
    assert (run / "eval" / "pgd.json").is_file() and (tmp_path / "runs" / "mynet-report" / "report.md").is_file()
    assert (tmp_path / "runs" / "fashion-mnist-mynet-build-vanilla" / "model.pt").is_file()
