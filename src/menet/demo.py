"""The demo on the built-in Fashion-MNIST: ME-Net trained, attacked honestly, reported.

Trains a vanilla LeNet, an independent vanilla copy (the transfer source) and ME-Net; attacks
them (clean; transfer FGSM and PGD-40 from the copy, storing the penultimate features for
Figs. 4 and 5; white-box BPDA PGD; BPDA + EOT; eps and steps sweeps for the sanity checks);
and writes ``report.md`` with the table (every number with its 95% interval, ME-Net compared
with vanilla by McNemar's exact test on the same test images), the sanity checks and paper Figs. 1, 2, 4 and 5. The recipe is ``menet/demo_recipe.yaml``; a second run
reuses finished runs and results.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

from menet.recipe import load_paper_recipe
from menet.reproduce import Say, reproduce


def demo_recipe_path() -> Path:
    """The demo's recipe, shipped with the package."""
    return Path(str(resources.files("menet") / "demo_recipe.yaml"))


def run_demo(out_dir: str | Path = "runs/demo", *, data_dir: str | None = None, device: str | None = None,
             say: Say = print, progress: Any = None, scale: str = "full") -> Path:
    """Run the demo into ``out_dir`` (runs, results, report.md and its PNGs); returns the report's path.

    ``scale``: "full" is the demo itself (minutes on a 2-core CPU); "small" and "tiny" shrink it
    further (tests)."""
    recipe = dataclasses.replace(load_paper_recipe(demo_recipe_path()), name="demo")
    return reproduce(recipe, out_dir, scale=scale, data_dirs=data_dir, device=device, say=say, progress=progress,
                     report_dir=out_dir)


def main_table(report: Path) -> str:
    """The report's first table with what follows it up to its note: what the brackets are and
    the paired comparisons of ME-Net against vanilla, in words (what the demo prints at the end)."""
    lines = report.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("### "))
    end = next((i for i in range(start + 2, len(lines)) if not lines[i].startswith("|")), len(lines))
    while end < len(lines):  # the paragraphs after the table that belong to it
        paragraph = next((i for i in range(end, len(lines)) if lines[i].strip()), len(lines))
        if paragraph == len(lines) or not lines[paragraph].startswith(("In brackets", "Paired comparisons", "Convergence",
                                                                       "- ")):
            break
        end = next((i for i in range(paragraph, len(lines)) if not lines[i].strip()), len(lines))
        if lines[paragraph].startswith(("Paired comparisons", "Convergence")):  # its list follows a blank line
            end = next((i for i in range(end + 1, len(lines)) if not lines[i].startswith("- ")), len(lines))
    return "\n".join(lines[start:end]).rstrip()


def failed_checks(report: Path) -> list[str]:
    """The report's sanity-check rows that failed (printed after the table, so none goes unseen)."""
    return [line for line in report.read_text().splitlines() if line.startswith("|") and "**FAIL**" in line]
