"""Repository hygiene: every source file that the package, tests and tools need is tracked by git.

An ignore pattern that matches a source file (``data/`` once hid ``src/menet/data/imageset.py``)
leaves a checkout that works here and a clean clone that cannot import the package.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("src", "tests", "benchmarks", "recipes", "scripts", ".ci")
SOURCE_SUFFIXES = {".py", ".yaml", ".sh", ".md", ""}


def _git(*args: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_no_source_file_is_ignored_by_git():
    ignored = _git("ls-files", "--others", "--ignored", "--exclude-standard", "--", *SOURCE_FOLDERS)
    hidden = [
        path for path in ignored
        if "__pycache__" not in path and ".egg-info" not in path
        and Path(path).suffix in SOURCE_SUFFIXES and (ROOT / path).is_file()
    ]
    assert hidden == [], f"source files ignored by .gitignore (a clean clone would lack them): {hidden}"
