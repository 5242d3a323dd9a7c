"""The numbers of an evaluation result: accuracies with their 95% intervals, the per-example
outcomes behind them, the result's Markdown table, and reading a result file.

Pure numpy (no torch), so reports read results without the evaluation machinery. A result
record (``menet.evaluation.evaluate``) holds per scored name ("clean", each attack) a list over
scoring draws of lists over examples of 1 / 0 / None (None: skipped by the cascade, counted as
broken). Its ``summary`` holds per name, and for the worst case over the attacks:

- ``robust_all_draws``: the fraction of examples correct in every draw (robust also needs
  clean-correct in every draw), ``all_draws_ci`` its 95% Clopper-Pearson interval (exact, over
  ``n`` examples);
- ``robust_mean_over_draws``: the mean over draws and examples, ``mean_over_draws_ci`` its 95%
  bootstrap interval over examples (each example's draws resampled together);
- ``n`` and ``ci``: the number of examples and how the intervals were made (level, methods,
  bootstrap resamples and seed).

Result files written before the intervals existed get them on reading (``read_result``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from menet import stats

RESULT_FORMAT = "menet-eval-v1"
CLEAN = "clean"
WORST = "worst case"
CI_METHODS = {"level": stats.LEVEL, "all_draws": "clopper-pearson", "mean_over_draws": "paired bootstrap over examples",
              "resamples": stats.RESAMPLES, "seed": stats.BOOTSTRAP_SEED}


def robust_tables(outcomes: Mapping[str, list[list[int | None]]], names: list[str]) -> dict[str, np.ndarray]:
    """Per scored name, and WORST when there are attacks: the (draws, n) 0/1 int table of
    correct (clean) or robust (attacks: also clean-correct in every draw) outcomes.

    An example counts as robust to an attack in a draw only if it is also classified correctly
    clean in every draw (robust accuracy never exceeds clean accuracy: an attack that happens
    to fix a misclassified example is no credit to the model); the worst case is robust only
    if robust to every attack. With a cascade, examples not attacked (already broken) count
    as broken in every draw, which also lowers the mean over draws.
    """
    def table(name: str) -> np.ndarray:
        rows = outcomes[name]
        return np.array([[0 if v is None else v for v in row] for row in rows], dtype=np.int64).reshape(len(rows), -1)

    clean = table(CLEAN)
    clean_all = clean.min(0, initial=1)[None, :] if clean.size else clean
    tables = {CLEAN: clean, **{name: np.minimum(table(name), clean_all) for name in names}}
    if names:
        tables[WORST] = np.stack([tables[name] for name in names]).min(0)
    return tables


def accuracies(table: np.ndarray) -> dict[str, Any]:
    """(draws, n) 0/1 outcomes -> accuracy in all draws and mean over draws, their intervals, n."""
    n = table.shape[1]
    correct = int(table.min(0).sum()) if n else 0
    return {
        "robust_all_draws": correct / n if n else float("nan"),
        "robust_mean_over_draws": float(table.mean()) if n else float("nan"),
        "n": n,
        "all_draws_ci": list(stats.clopper_pearson(correct, n)),
        "mean_over_draws_ci": list(stats.paired_bootstrap(table)),
        "ci": dict(CI_METHODS),
    }


def summarise(outcomes: Mapping[str, list[list[int | None]]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Accuracy per scored name, and the worst case over the attacks (see ``robust_tables``),
    each with its intervals (see the module docstring)."""
    return {name: accuracies(table) for name, table in robust_tables(outcomes, names).items()}


def _attack_names(result: Mapping[str, Any]) -> list[str]:
    return [name for name in result.get("settings", {}).get("attacks", {}) if name in result.get("outcomes", {})]


def example_outcomes(result: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per scored name (and WORST): the (n,) bool "correct in all draws" of each example, from
    the stored outcomes; empty when the result holds none that can be read."""
    try:
        return {name: t.min(0, initial=1).astype(bool) for name, t in robust_tables(result["outcomes"], _attack_names(result)).items()}
    except (KeyError, TypeError, ValueError):
        return {}


def examples_key(result: Mapping[str, Any]) -> tuple[Any, ...]:
    """What fixes the examples a result was measured on: (dataset, split, offset, n). Two results
    with the same key scored the same test images in the same order, so their per-example
    outcomes pair up (the seeds may differ: they key masks and attack starts, not the images).
    Unrecorded parts (``evaluate`` called from Python without ``inputs``) read as None."""
    settings = result.get("settings", {})
    inputs = settings.get("inputs", {}) or {}
    return (inputs.get("dataset", result.get("dataset")), inputs.get("split"),
            inputs.get("offset", result.get("offset", 0)), settings.get("n"))


def with_intervals(result: dict[str, Any]) -> dict[str, Any]:
    """Add the intervals to a result's summary rows that lack them (files written before they
    existed), in place: from the stored outcomes, else Clopper-Pearson from the stored accuracy
    and n; a row with neither is left as it is. Never raises on a malformed record."""
    summary = result.get("summary")
    if not isinstance(summary, dict):
        return result
    missing = [name for name, row in summary.items() if isinstance(row, dict) and "all_draws_ci" not in row]
    if not missing:
        return result
    try:
        tables = robust_tables(result["outcomes"], _attack_names(result))
    except (KeyError, TypeError, ValueError):
        tables = {}
    for name in missing:
        row = summary[name]
        if name in tables and tables[name].shape[1] == row.get("n", tables[name].shape[1]):
            fresh = accuracies(tables[name])
            row.update({key: fresh[key] for key in ("all_draws_ci", "mean_over_draws_ci", "ci")})
            row.setdefault("n", fresh["n"])
        elif isinstance(row.get("n"), int) and isinstance(row.get("robust_all_draws"), float) and row["n"] > 0:
            k = min(max(round(row["robust_all_draws"] * row["n"]), 0), row["n"])
            row.update(all_draws_ci=list(stats.clopper_pearson(k, row["n"])), mean_over_draws_ci=None,
                       ci={"level": stats.LEVEL, "all_draws": "clopper-pearson"})
    return result


def pct_ci(value: float | None, interval: list[float] | tuple[float, float] | None = None) -> str:
    """An accuracy and its interval, compactly: "44.9% [41.8, 48.0]" ("n/a" for no value)."""
    if value is None or value != value:
        return "n/a"
    return f"{100 * value:.1f}% {bracket(interval)}".rstrip()


def bracket(interval: list[float] | tuple[float, float] | None) -> str:
    """An interval of fractions in percent points: "[41.8, 48.0]" ("" for None)."""
    return "" if interval is None else f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def interval_note(n: int | str | None = None) -> str:
    """The sentence that says what the brackets are (and, given ``n``, on how many examples)."""
    on = f" over the {n} test images each number rests on" if n is not None else ""
    return (f"In brackets: 95% intervals{on} (Clopper-Pearson for correct in all draws; a bootstrap over examples, "
            f"{stats.RESAMPLES} resamples, seed {stats.BOOTSTRAP_SEED}, for the mean over draws).")


def describe(settings: Mapping[str, Any]) -> str:
    """A short text of an attack's settings (eps as x/255 where that is exact)."""
    if settings.get("attack") == "transfer":
        return "transfer of " + describe(settings["of"])
    parts = [settings["attack"]]
    for key, value in settings.items():
        if key in ("attack", "max_batch"):
            continue
        if key in ("eps", "step_size") and isinstance(value, float) and abs(value * 255 - round(value * 255)) < 1e-6:
            value = f"{round(value * 255)}/255"
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{key} {value}")
    return ", ".join(parts)


def describe_convergence(record: Mapping[str, Any]) -> str:
    """One paragraph: the curve, and whether it converged or stopped at the cap (and by how much
    the last doubling still lowered the number)."""
    points = ", ".join(f"{p['steps']}: {100 * p['accuracy']:.1f}%" for p in record["curve"])
    last = record["curve"][-1]
    if record["converged"]:
        verdict = (f"converged at {last['steps']} steps: the last doubling lost {last['lost']} and gained {last['gained']} "
                   f"robust examples of {last['n']} (one-sided McNemar p = {last['p_drop']:.3f} >= {record['alpha']})")
    elif len(record["curve"]) == 1:
        verdict = f"NOT CHECKED: one step count only ({last['steps']} = cap), so no doubling was tested"
    else:
        before = record["curve"][-2]
        verdict = (f"NOT CONVERGED: stopped at the cap of {record['cap']} steps while still falling "
                   f"({100 * before['accuracy']:.1f}% -> {100 * last['accuracy']:.1f}% over the last doubling, "
                   f"one-sided McNemar p = {last['p_drop']:.3g}); the number is an upper bound")
    return f"Steps doubled until no significant drop ({record['attack']}): {points}; {verdict}."


def format_table(result: Mapping[str, Any]) -> str:
    """The result as a Markdown table: per attack the accuracy in all draws and the mean over
    draws, each with its 95% interval, and the number of examples it rests on."""
    settings, summary = result["settings"], result["summary"]
    draws = settings["draws"]
    lines = [
        f"# Evaluation {result.get('tag', '')}".rstrip(),
        "",
        f"{settings['n']} test images, {draws} scoring draw(s) per example, seed {settings['seed']}"
        + (", cascade" if settings["cascade"] else "") + ". " + interval_note(),
        "",
        f"| attack | settings | images | accuracy (correct in all {draws} draws) | mean over draws | seconds |",
        "|---|---|---|---|---|---|",
    ]
    seconds = result.get("timing", {}).get("attack_seconds", {})
    for name, row in summary.items():
        described = describe(settings["attacks"][name]) if name in settings["attacks"] else ""
        time_taken = f"{seconds[name]:.1f}" if name in seconds else ""
        lines.append(f"| {name} | {described} | {row.get('n', settings['n'])} | "
                     f"{pct_ci(row['robust_all_draws'], row.get('all_draws_ci'))} | "
                     f"{pct_ci(row['robust_mean_over_draws'], row.get('mean_over_draws_ci'))} | {time_taken} |")
    if isinstance(result.get("convergence"), dict):
        lines += ["", describe_convergence(result["convergence"])]
    if isinstance(result.get("protocol"), dict):
        lines += ["", describe_protocol_record(result["protocol"])]
    for warning in result.get("warnings", []):
        lines += ["", f"**Warning:** {warning}"]
    return "\n".join(lines) + "\n"


def describe_protocol_record(record: Mapping[str, Any]) -> str:
    """One line: the protocol a result followed and the settings overridden by flags."""
    overridden = record.get("overridden") or []
    return (f"Protocol: {record.get('name')} ({record.get('summary', '')})"
            + (f"; overridden: {', '.join(overridden)}" if overridden else "; no setting overridden")
            + (f". Source: {record['reference']}" if record.get("reference") else "") + ".")


def read_result(path: str | Path) -> dict[str, Any]:
    """A result record written by ``ResultStore.write``, with intervals in every summary row that
    the stored outcomes allow (older files get them computed here); ValueError if not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable evaluation result ({err})") from None
    if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT:
        raise ValueError(f"{path}: not a menet evaluation result (format {RESULT_FORMAT})")
    return with_intervals(data)


__all__ = ["CLEAN", "RESULT_FORMAT", "WORST", "bracket", "describe", "describe_convergence", "describe_protocol_record",
           "example_outcomes", "examples_key", "format_table",
           "interval_note", "pct_ci", "read_result", "robust_tables", "summarise", "with_intervals"]
