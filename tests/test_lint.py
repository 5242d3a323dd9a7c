"""The ruff rules in pyproject.toml are enforced: `make test` (hence CI) runs `ruff check` first."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _test_recipe() -> list[str]:
    """The command lines of the Makefile's `test` target, in order."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("test:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip().lstrip("@"))
    return recipe


def test_make_test_runs_ruff_before_pytest_and_keeps_the_exit_5_rule():
    recipe = _test_recipe()
    ruff = [i for i, line in enumerate(recipe) if re.match(r"\$\(BIN\)/ruff check\b", line)]
    pytest_line = [i for i, line in enumerate(recipe) if "-m pytest" in line]
    assert ruff and pytest_line and ruff[0] < pytest_line[0], recipe
    assert "$$rc -eq 5" in "\n".join(recipe)  # no tests collected is still a failure


def test_ruff_is_in_the_test_extra_with_a_version_range():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [req for req in project["project"]["optional-dependencies"]["test"] if re.match(r"ruff\b", req)]
    assert len(pins) == 1 and ">=" in pins[0] and "<" in pins[0].replace("<=", ""), pins
    assert project["tool"]["ruff"]["lint"]["select"]  # the rules that `ruff check` applies


def test_the_repository_passes_ruff_check():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
