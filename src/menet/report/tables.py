"""The report's tables: a recipe's tables in the paper's layout (our number beside the paper's),
the settings behind every number, and per run the table of each of its evaluations.

Numbers come from result files only (``ResultFiles``); a cell without a result reads "not run".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from menet.recipe import Recipe
from menet.report.checks import pct
from menet.report.results import ResultFiles
from menet.runs import read_config
from menet.summary import describe, format_table


def _cell(runs_root: Path, cell: str | None, files: ResultFiles, recipe_name: str
          ) -> tuple[float | None, dict[str, Any] | None]:
    """The accuracy a table cell "run/tag/attack" names, from the recipe's result file RECIPE-TAG."""
    if cell is None:
        return None, None
    run, tag, name = cell.split("/")
    result = files.current(runs_root / run).get(f"{recipe_name}-{tag}")
    if result is None or name not in result["summary"]:
        return None, None
    return result["summary"][name]["robust_all_draws"], result


def _ours(value: float | None, result: dict[str, Any] | None, name: str) -> str:
    """Our number in bold (correct in every draw) and, with several draws, the mean over draws."""
    if value is None or result is None:
        return "not run"
    text = f"**{pct(value)}**"
    if result["settings"]["draws"] > 1 and result["summary"][name]["robust_mean_over_draws"] != value:
        text += f" (mean over draws {pct(result['summary'][name]['robust_mean_over_draws'])})"
    return text


def recipe_tables(recipe: Recipe, runs_root: Path, files: ResultFiles | None = None
                  ) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """Markdown lines of the recipe's tables, and the results they used."""
    files = files or ResultFiles()
    used: dict[int, tuple[str, dict[str, Any]]] = {}
    aliases = {(spec.tag, name): kept for spec in recipe.evaluations for name, kept in spec.aliases.items()}

    def resolved(cell: str | None) -> str | None:
        """The cell, naming the attack that was run where a smaller scale merged identical ones."""
        if cell is None:
            return None
        run, tag, name = cell.split("/")
        return f"{run}/{tag}/{aliases.get((tag, name), name)}"

    lines = []
    for table in recipe.tables:
        columns = list(table["columns"])
        lines += [f"### {table['title']}", "", "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for row in table["rows"]:
            cells = row.get("cells") or [None] * len(columns)
            paper = row.get("paper") or [None] * len(columns)
            adaptive = row.get("adaptive") or [None] * len(columns)
            shown = []
            for cell, paper_value, adaptive_cell in zip(cells, paper, adaptive):
                cell, adaptive_cell = resolved(cell), resolved(adaptive_cell)
                ours, result = _cell(runs_root, cell, files, recipe.name)
                if result is not None:
                    used[id(result)] = (cell.rsplit("/", 1)[0], result)
                parts = []
                if cell is not None:
                    parts.append(_ours(ours, result, cell.rsplit("/", 1)[1]))
                if paper_value is not None:
                    parts.append(f"paper {paper_value:.1f}%")
                if adaptive_cell is not None:
                    value, result = _cell(runs_root, adaptive_cell, files, recipe.name)
                    if result is not None:
                        used[id(result)] = (adaptive_cell.rsplit("/", 1)[0], result)
                    parts.append(f"BPDA+EOT: {_ours(value, result, adaptive_cell.rsplit('/', 1)[1])}")
                shown.append("; ".join(parts) if parts else "—")
            lines.append(f"| {row['label']} | " + " | ".join(shown) + " |")
        if table.get("note"):
            lines += ["", str(table["note"]).strip()]
        lines.append("")
    return lines, list(used.values())


def settings_lines(used: Iterable[tuple[str, dict[str, Any]]]) -> list[str]:
    """What stands behind each number: data size, attack settings, draws, seed, hardware, time."""
    lines = ["| result | images | draws | seed | attacks | hardware | seconds |", "|---|---|---|---|---|---|---|"]
    for label, result in used:
        s = result["settings"]
        attacks = "; ".join(f"{name}: {describe(a)}" for name, a in s["attacks"].items()) or "clean only"
        seconds = sum(result.get("timing", {}).get("attack_seconds", {}).values())
        hardware = result.get("hardware", {}).get("device", "?")
        lines.append(f"| {label} | {s['n']} | {s['draws']} | {s['seed']} | {attacks} | {hardware} | {seconds:.0f} |")
    return lines


def run_sections(runs: Mapping[str, Path], files: ResultFiles | None = None) -> list[str]:
    """Per run: what was trained, its clean test accuracy, and each evaluation's table."""
    files = files or ResultFiles()
    lines = []
    for name, path in runs.items():
        config = read_config(path)
        lines += [f"## {name}", "", f"{config.mode} {config.model} on {config.dataset}, {config.epochs} epochs"
                  + (f", defense {config.defense.method} at p = {config.defense.inference_p():g}" if config.defended else ""), ""]
        for tag, result in files.current(path).items():
            table = format_table(result).split("\n", 2)[2]  # without its title line
            lines += [f"### {tag}", "", table.strip(), ""]
    return lines
