"""Writing a report: ``report.md`` with a recipe's tables, the settings behind the numbers and
their sources, figures, and the sanity checks, or, for run folders, each run's evaluations.

A pure reader of run folders, result files and stored features: it trains nothing, loads no
model and runs no attack, so re-rendering a report takes seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from menet.io_atomic import write_text_atomic
from menet.recipe import Recipe
from menet.report.checks import sanity_checks
from menet.report.figures import recipe_figures, run_figures
from menet.report.results import ResultFiles
from menet.report.tables import other_source_lines, recipe_tables, run_sections, settings_lines
from menet.scaling import scale_summary

log = logging.getLogger(__name__)


def _named(given: Iterable[str | Path], taken: Iterable[Path]) -> dict[str, Path]:
    """Each run under its folder name; runs whose folders share a name (a/x, b/x) under the
    shortest trailing path that tells them apart, so that none replaces another."""
    given, taken = [Path(path) for path in given], list(taken)
    runs = {}
    for path in given:
        parts = path.resolve().parts
        others = {other.resolve().parts for other in [*given, *taken]} - {parts}
        depth = 1
        while depth < len(parts) and any(other[-depth:] == parts[-depth:] for other in others):
            depth += 1
        runs["/".join(parts[-depth:])] = path
    return runs


def _named_results(label: str, what: str, by_run: Mapping[str, list[str]]) -> list[str]:
    """A "**Left out:**"-style paragraph naming each run's results in ``by_run``; none if empty."""
    if not any(by_run.values()):
        return []
    return [f"**{label}:** {what}: " + "; ".join(f"{name}: {', '.join(tags)}" for name, tags in by_run.items() if tags)
            + ".", ""]


def _with_source(by_tag: Mapping[str, str]) -> list[str]:
    return [f"{tag} (source {src})" for tag, src in by_tag.items()]


def write_report(
    out_dir: str | Path,
    *,
    recipe: Recipe | None = None,
    runs_root: str | Path | None = None,
    run_dirs: Iterable[str | Path] = (),
    scale: str = "full",
    data_dirs: Mapping[str, str] | str | None = None,
    say: Callable[[str], None] = log.info,
) -> Path:
    """Write ``out_dir/report.md`` (and its PNGs) for a recipe's runs under ``runs_root``, or for
    ``run_dirs``; returns its path. A result file that cannot be read is named in the report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = ResultFiles()
    lines: list[str] = []
    runs: dict[str, Path] = {}
    if recipe is not None:
        root = Path(runs_root)
        runs = {name: root / name for name in recipe.runs}
        lines += [f"# {recipe.title}", ""]
        if scale != "full":
            lines += [f"Scale **{scale}**: data, epochs, models and attack steps are shrunk to fit a small machine; "
                      "the numbers show the pipeline working, not the paper's results (run `--scale full` for those). "
                      f"Caps: {scale_summary(scale)}.", ""]
        if recipe.notes:
            lines += [recipe.notes.strip(), ""]
        table_lines, used = recipe_tables(recipe, root, files)
        lines += table_lines
        if used:
            lines += ["### Settings behind these numbers", "", *settings_lines(used), ""]
        lines += recipe_figures(recipe, root, out, data_dirs=data_dirs, say=say, files=files)
        lines += other_source_lines(recipe)
    runs.update(_named(run_dirs, runs.values()))
    if recipe is None:
        lines += ["# menet report", ""]
        lines += run_sections(runs, files)
        lines += run_figures(runs, out, files)
    checks = []
    for name, path in runs.items():
        if results := files.current(path):
            checks.extend(sanity_checks(name, results))
    if checks:
        lines += ["## Sanity checks (Carlini et al., 2019)", "",
                  "Robust accuracy must fall towards 0 as eps grows (a plateau flags gradient masking) and converge "
                  "as steps grow; white-box must be at most transfer; EOT at most plain BPDA. Each ordering is judged by "
                  "McNemar's exact test on the same test images (else Fisher's exact test, said so): a difference "
                  "within noise (p >= 0.05) fails nothing, whatever its sign. Failed checks are in bold.",
                  "", "| run | check | verdict | evidence |", "|---|---|---|---|", *[c.line() for c in checks], ""]
    lines += _named_results("Left out", "results made with other weights than the run's current model.pt (the run "
                            "was trained again or further since)", {name: files.stale(path) for name, path in runs.items()})
    lines += _named_results("Left out", "transfer results crafted on other weights of their source run than its "
                            "current model.pt (the source was trained again or further since)",
                            {name: _with_source(files.stale_sources(path)) for name, path in runs.items()})
    lines += _named_results("Unchecked", "transfer results whose source run was not found, so whether they were "
                            "crafted on its current weights is unknown (kept)",
                            {name: _with_source(files.missing_sources(path)) for name, path in runs.items()})
    for path in files.unreadable:
        lines += [f"**Left out:** {path}, not readable (see the warning logged for it).", ""]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines).rstrip() + "\n")
    return path
