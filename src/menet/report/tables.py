"""The report's tables: a recipe's tables in the paper's layout (our number beside the paper's),
the settings behind every number and where each setting comes from (the recipe's ``sources``),
and per run the table of each of its evaluations.

Numbers come from result files only (``ResultFiles``); a cell without a result reads "not run".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from menet.recipe import Recipe
from menet.report.paired import HEADING, compare_measured, in_words, measured
from menet.report.results import ResultFiles
from menet.runs import read_config
from menet.summary import bracket, describe, describe_convergence, example_outcomes, format_table, interval_note, pct_ci


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


def _ours(value: float | None, result: dict[str, Any] | None, name: str, show_n: bool = False) -> str:
    """Our number in bold (correct in every draw) with its 95% interval and, with several draws,
    the mean over draws with its interval; ``show_n``: the number of images too."""
    if value is None or result is None:
        return "not run"
    row = result["summary"][name]
    text = f"**{pct_ci(value)}** {bracket(row.get('all_draws_ci'))}".rstrip()
    if result["settings"]["draws"] > 1 and row["robust_mean_over_draws"] != value:
        text += f" (mean over draws {pct_ci(row['robust_mean_over_draws'], row.get('mean_over_draws_ci'))})"
    if show_n:
        text += f", n = {row.get('n', result['settings']['n'])}"
    return text


def _comparisons(table: Mapping[str, Any], found: dict[tuple[int, int, str], tuple[dict[str, Any], str]]) -> list[str]:
    """Per column, each row against the column's first row with a number (e.g. ME-Net against
    vanilla under the same attack), and each adaptive cell against its row's cell (BPDA + EOT
    against BPDA): paired where on the same images, "within noise" when not significant."""
    lines, outcomes = [], {}  # id(result) -> its per-example outcomes, read once

    def measured_cell(key: tuple[int, int, str]) -> dict[str, Any]:
        result, name = found[key]
        if id(result) not in outcomes:
            outcomes[id(result)] = example_outcomes(result)
        return measured(result, name, outcomes[id(result)])

    rows = table["rows"]
    for j, column in enumerate(table["columns"]):
        present = [i for i in range(len(rows)) if (i, j, "cells") in found]
        for i in present[1:]:
            label, base_label = rows[i]["label"], rows[present[0]]["label"]
            words = in_words(compare_measured(measured_cell((i, j, "cells")), measured_cell((present[0], j, "cells"))),
                             label, base_label)
            lines.append(f"- {column}: {label} vs {base_label}: {words}")
        for i in range(len(rows)):
            if (i, j, "adaptive") in found and (i, j, "cells") in found:
                words = in_words(compare_measured(measured_cell((i, j, "adaptive")), measured_cell((i, j, "cells"))),
                                 "BPDA+EOT", "the cell's attack")
                lines.append(f"- {column}, {rows[i]['label']}: BPDA+EOT vs the cell's attack: {words}")
    return [HEADING, "", *lines, ""] if lines else []


def _convergence_lines(table: Mapping[str, Any], found: dict[tuple[int, int, str], tuple[dict[str, Any], str]]
                       ) -> list[str]:
    """Per cell measured with its steps doubled to convergence: the curve, and whether it
    converged or stopped at its cap (then its number is an upper bound)."""
    lines = []
    for (i, j, _kind), (result, _name) in sorted(found.items()):
        if isinstance(result.get("convergence"), dict):
            lines.append(f"- {table['columns'][j]}, {table['rows'][i]['label']}: {describe_convergence(result['convergence'])}")
    return ["Convergence (the attack's steps doubled until McNemar's test, one-sided, sees no further drop):", "",
            *lines, ""] if lines else []


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
        found: dict[tuple[int, int, str], tuple[dict[str, Any], str]] = {}  # (row, column, kind) -> (result, attack)
        for i, row in enumerate(table["rows"]):
            for j in range(len(columns)):
                for kind in ("cells", "adaptive"):
                    cell = resolved((row.get(kind) or [None] * len(columns))[j])
                    value, result = _cell(runs_root, cell, files, recipe.name)
                    if result is not None and value is not None:
                        found[(i, j, kind)] = (result, cell.rsplit("/", 1)[1])
                        used[id(result)] = (cell.rsplit("/", 1)[0], result)
        sizes = {result["summary"][name].get("n", result["settings"]["n"]) for result, name in found.values()}
        lines += [f"### {table['title']}", "", "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for i, row in enumerate(table["rows"]):
            paper = row.get("paper") or [None] * len(columns)
            shown = []
            for j, paper_value in enumerate(paper):
                parts = []
                for kind, prefix in (("cells", ""), ("adaptive", "BPDA+EOT: ")):
                    if (row.get(kind) or [None] * len(columns))[j] is None:
                        if kind == "cells" and paper_value is not None:
                            parts.append(f"paper {paper_value:.1f}%")
                        continue
                    result, name = found.get((i, j, kind), (None, ""))
                    value = result["summary"][name]["robust_all_draws"] if result is not None else None
                    parts.append(prefix + _ours(value, result, name, show_n=len(sizes) > 1))
                    if kind == "cells" and paper_value is not None:
                        parts.append(f"paper {paper_value:.1f}%")
                shown.append("; ".join(parts) if parts else "—")
            lines.append(f"| {row['label']} | " + " | ".join(shown) + " |")
        if found:
            lines += ["", interval_note(next(iter(sizes)) if len(sizes) == 1 else None), ""]
            lines += _comparisons(table, found)
            lines += _convergence_lines(table, found)
        if table.get("note"):
            lines += ["", str(table["note"]).strip()] if not found else [str(table["note"]).strip()]
        lines.append("")
        lines += source_lines(recipe, _table_keys(recipe, [table]), "behind this table")
    return lines, list(used.values())


def _table_keys(recipe: Recipe, tables: Iterable[Mapping[str, Any]]) -> list[str]:
    """The recipe's source keys for the settings behind ``tables``: of the runs their cells name
    (and the transfer sources of those evaluations), of those evaluations, and of the attacks named."""
    runs: set[str] = set()
    attacks: dict[str, set[str]] = {}  # tag -> the attacks named
    for table in tables:
        for row in table["rows"]:
            for cell in [*(row.get("cells") or []), *(row.get("adaptive") or [])]:
                if cell is not None:
                    run, tag, name = cell.split("/")
                    runs.add(run)
                    attacks.setdefault(tag, set()).add(name)
    for spec in recipe.evaluations:
        if spec.tag in attacks and spec.transfer_from:
            runs.add(spec.transfer_from)
    keys = []
    for key in recipe.sources:
        parts = key.split(".")
        if parts[0] == "runs" and parts[1] in runs:
            keys.append(key)
        elif parts[0] == "evaluations" and parts[1] in attacks:
            if len(parts) < 4 or parts[2] != "attacks" or parts[3] in attacks[parts[1]]:
                keys.append(key)
    return keys


def _owner(key: str) -> tuple[str, str]:
    """(whose setting, which setting) of a source key: a run by name, an evaluation as tag or
    tag/attack; "all settings" where the key covers every setting below it."""
    parts = key.split(".")
    if parts[0] == "runs":
        return parts[1], ".".join(parts[2:]) or "all settings"
    if len(parts) >= 4 and parts[2] == "attacks":
        return f"{parts[1]}/{parts[3]}", ".".join(parts[4:]) or "all settings"
    return parts[1], ".".join(parts[2:]) or "all settings"


def source_lines(recipe: Recipe, keys: Iterable[str], what: str) -> list[str]:
    """Markdown lines: the sources of the settings ``keys`` name, the same source said once for
    all the settings and runs / evaluations that share it; none when there are no keys."""
    by_field: dict[tuple[str, str], list[str]] = {}  # (setting, source) -> whose
    for key in keys:
        owner, field = _owner(key)
        by_field.setdefault((field, recipe.sources[key]), []).append(owner)
    grouped: dict[tuple[tuple[str, ...], str], list[str]] = {}  # (whose, source) -> settings
    for (field, text), owners in by_field.items():
        grouped.setdefault((tuple(owners), text), []).append(field)
    if not grouped:
        return []
    lines = [f"**Sources of the settings {what}** (runs by name, evaluations as tag or tag/attack; the recipe's "
             "values, before any scale's caps; \"original code\" is github.com/YyzHarry/ME-Net):", ""]
    for (owners, text), fields in grouped.items():
        lines.append(f"- {', '.join(owners)}: {', '.join(fields)}: {text}")
    return [*lines, ""]


def other_source_lines(recipe: Recipe) -> list[str]:
    """The sources of the recipe's settings that no table shows (e.g. those behind its figures)."""
    shown = set(_table_keys(recipe, recipe.tables))
    rest = [key for key in recipe.sources if key not in shown]
    return source_lines(recipe, rest, "behind the figures" if not recipe.tables else "that no table shows")


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
