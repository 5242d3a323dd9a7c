"""The report: tables in the paper's layout with the paper's numbers beside ours, the settings
behind every number, figures, and the sanity checks of Carlini et al. (2019).

``write_report(out_dir, recipe=..., runs_root=...)`` reads the result files of a recipe's runs
(it never trains; figures that need features load the trained models and data), and
``write_report(out_dir, run_dirs=[...])`` reports whatever evaluations those runs hold.

Sanity checks ("On Evaluating Adversarial Robustness", Carlini et al., 2019), computed per run
from its results: accuracy falls towards 0 as eps grows (a plateau flags gradient masking);
accuracy converges as attack steps grow; white-box accuracy is at most transfer accuracy; EOT
accuracy is at most plain BPDA accuracy. A failed check is printed in bold.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from menet.evaluation import read_result
from menet.io_atomic import write_text_atomic

log = logging.getLogger(__name__)
TOLERANCE = 0.02  # accuracy slack of the ordering checks (sampling noise of small evaluations)
NEAR_ZERO = 0.1  # "accuracy falls to 0": at most this at the largest eps
LARGE_EPS = 0.5  # an L-inf budget (of [0, 1] pixels) at which accuracy must be about 0


@dataclasses.dataclass(frozen=True)
class Check:
    """One sanity check of one run: its name, verdict ("pass", "FAIL", "inconclusive", "not run")
    and evidence."""

    run: str
    name: str
    verdict: str
    evidence: str

    def line(self) -> str:
        verdict = f"**{self.verdict}**" if self.verdict == "FAIL" else self.verdict
        return f"| {self.run} | {self.name} | {verdict} | {self.evidence} |"


def _noise(a: dict[str, Any], b: dict[str, Any]) -> float:
    """How far two accuracies may differ by sampling alone: two standard errors of the
    difference of independent proportions, at least TOLERANCE."""
    import math

    variance = sum(r["accuracy"] * (1 - r["accuracy"]) / max(r["n"], 1) for r in (a, b))
    return max(TOLERANCE, 2 * math.sqrt(variance))


def _still_falling(more: dict[str, Any], fewer: dict[str, Any]) -> bool:
    """Whether accuracy still drops from ``fewer`` to ``more`` attack steps beyond noise. Both run
    on the same examples, so the difference is paired: an example the shorter attack broke stays
    broken, and the noise of the drop d over n examples is about 2 sqrt(d / n) (McNemar)."""
    import math

    drop = fewer["accuracy"] - more["accuracy"]
    n = max(min(more["n"], fewer["n"]), 1)
    return drop > max(TOLERANCE, 2 * math.sqrt(max(drop, 0.0) / n))


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}%"


def run_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """tag -> result record of every finished evaluation of a run's current weights (results of
    other weights, e.g. before a resumed or repeated training, are left out; see stale_results)."""
    return {tag: result for tag, result in _all_results(run_dir).items() if not _is_stale(run_dir, result)}


def stale_results(run_dir: Path) -> list[str]:
    """Tags of a run's finished evaluations that were made with other weights than its model.pt."""
    return [tag for tag, result in _all_results(run_dir).items() if _is_stale(run_dir, result)]


def _all_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted((run_dir / "eval").glob("*.json")):
        try:
            out[path.stem] = read_result(path)
        except ValueError as err:
            log.warning("%s", err)
    return out


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}  # (model.pt, mtime, size) -> fingerprint


def _current_fingerprint(run_dir: Path) -> str | None:
    """The run's model.pt fingerprint (hashed once per file version), or None without one."""
    from menet.runs import MODEL_FILE, model_fingerprint

    path = Path(run_dir) / MODEL_FILE
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = model_fingerprint(run_dir)
    return _FINGERPRINTS[key]


def _is_stale(run_dir: Path, result: dict[str, Any]) -> bool:
    recorded = result.get("settings", {}).get("inputs", {}).get("model")
    current = _current_fingerprint(run_dir)
    # Without a record (evaluate() from Python) or without model.pt (results copied without the
    # weights) there is nothing to compare: the result is kept.
    return recorded is not None and current is not None and recorded != current


def _records(results: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat record per (result, attack): its settings and accuracy."""
    records = []
    for tag, result in results.items():
        for name, settings in result["settings"]["attacks"].items():
            transfer = settings.get("attack") == "transfer"
            inner = settings["of"] if transfer else settings
            records.append({"tag": tag, "name": name, "transfer": transfer, "attack": inner.get("attack"),
                            "eps": inner.get("eps"), "steps": inner.get("steps"), "eot": inner.get("eot", 1),
                            "step_size": inner.get("step_size"), "loss": inner.get("loss"),
                            "draws": result["settings"].get("draws", 1),
                            "n": result["summary"][name].get("n", result["settings"].get("n", 0)),
                            "accuracy": result["summary"][name]["robust_all_draws"]})
    return records


def sanity_checks(run: str, results: Mapping[str, dict[str, Any]]) -> list[Check]:
    """The four checks of Carlini et al. (2019) for one run, from its results."""
    records = [r for r in _records(results) if r["attack"] == "pgd"]
    white = [r for r in records if not r["transfer"]]
    checks = []

    def grouped(key: str, fixed: tuple[str, ...]) -> list[list[dict[str, Any]]]:
        """Sweeps over ``key`` with ``fixed`` settings equal: the strongest result per value, sorted."""
        groups: dict[tuple, dict[Any, dict[str, Any]]] = {}
        for r in white:
            best = groups.setdefault(tuple(r[k] for k in fixed), {})
            if r[key] not in best or r["accuracy"] < best[r[key]]["accuracy"]:
                best[r[key]] = r
        return [sorted(g.values(), key=lambda r: r[key]) for g in groups.values() if len(g) >= 3]

    sweeps = grouped("eps", ("steps", "eot", "loss"))
    if not sweeps:
        checks.append(Check(run, "accuracy falls to 0 as eps grows", "not run", "needs PGD at 3 or more eps"))
    for sweep in sweeps:
        points = ", ".join(f"{r['eps']:.3g}: {_pct(r['accuracy'])}" for r in sweep)
        falls = all(b["accuracy"] <= a["accuracy"] + TOLERANCE for a, b in zip(sweep, sweep[1:]))
        largest = sweep[-1]
        # A plateau: eps at least doubles but accuracy (still well above 0) hardly moves.
        # (A curve that reaches about 0 at its largest eps is not one, however flat its start.)
        plateau = largest["accuracy"] > NEAR_ZERO and any(
            b["eps"] >= 2 * a["eps"] and a["accuracy"] - b["accuracy"] < TOLERANCE for a, b in zip(sweep, sweep[1:]))
        if not falls or plateau:
            verdict = "FAIL"
        elif largest["accuracy"] <= NEAR_ZERO:
            verdict = "pass"
        elif largest["eps"] >= LARGE_EPS:  # a budget that can turn any image into another class
            verdict = "FAIL"
        else:  # falling but not near 0 yet: only a larger eps can tell a plateau from a slope
            verdict = "inconclusive"
            points += f" (add eps >= {LARGE_EPS:g}: accuracy must reach about 0 there)"
        checks.append(Check(run, f"accuracy falls to 0 as eps grows (PGD-{sweep[0]['steps']})", verdict, points))
    steps_sweeps = grouped("steps", ("eps", "step_size", "eot", "loss"))
    if not steps_sweeps:
        checks.append(Check(run, "accuracy converges in the attack steps", "not run", "needs PGD at 3 or more step counts"))
    for sweep in steps_sweeps:
        points = ", ".join(f"{r['steps']}: {_pct(r['accuracy'])}" for r in sweep)
        last, before = sweep[-1], sweep[-2]
        converged = not _still_falling(last, before)
        rising = any(b["accuracy"] > a["accuracy"] + _noise(a, b) for a, b in zip(sweep, sweep[1:]))
        checks.append(Check(run, f"accuracy converges in the steps (eps {sweep[0]['eps']:.3g})",
                            "pass" if converged and not rising else "FAIL", points))
    pairs = [(w, t) for w in white for t in records if t["transfer"] and t["eps"] == w["eps"] and w["eot"] == 1]
    if pairs:
        w = min((p[0] for p in pairs), key=lambda r: r["accuracy"])
        t = min((p[1] for p in pairs if p[1]["eps"] == w["eps"]), key=lambda r: r["accuracy"])
        verdict = "pass" if w["accuracy"] <= t["accuracy"] + TOLERANCE else "FAIL"
        checks.append(Check(run, "white-box at most transfer", verdict,
                            f"white-box {w['tag']}/{w['name']} {_pct(w['accuracy'])}, transfer {t['tag']}/{t['name']} {_pct(t['accuracy'])}"))
    else:
        checks.append(Check(run, "white-box at most transfer", "not run", "needs white-box and transfer PGD at one eps"))
    # The strongest EOT result against the strongest plain BPDA one at the same eps, steps and
    # number of scoring draws (a weaker BPDA variant must not excuse EOT).
    settings_of = {(r["eps"], r["steps"], r["draws"]) for r in white if r["eot"] > 1}
    eot_pairs = []
    for key in sorted(settings_of, key=str):
        same = [r for r in white if (r["eps"], r["steps"], r["draws"]) == key]
        with_eot, plain = [r for r in same if r["eot"] > 1], [r for r in same if r["eot"] == 1]
        if with_eot and plain:
            eot_pairs.append((min(with_eot, key=lambda r: r["accuracy"]), min(plain, key=lambda r: r["accuracy"])))
    if eot_pairs:
        e, b = max(eot_pairs, key=lambda p: p[0]["accuracy"] - p[1]["accuracy"])
        verdict = "pass" if e["accuracy"] <= b["accuracy"] + TOLERANCE else "FAIL"
        checks.append(Check(run, "EOT at most BPDA", verdict, f"EOT-{e['eot']} {_pct(e['accuracy'])}, BPDA {_pct(b['accuracy'])}"))
    else:
        checks.append(Check(run, "EOT at most BPDA", "not run", "needs PGD with and without EOT at the same eps and steps"))
    return checks


def _cell(runs_root: Path, cell: str | None, cache: dict[str, dict[str, Any]], recipe_name: str
          ) -> tuple[float | None, dict[str, Any] | None]:
    """The accuracy a table cell "run/tag/attack" names, from the recipe's result file RECIPE-TAG."""
    if cell is None:
        return None, None
    run, tag, name = cell.split("/")
    if run not in cache:
        cache[run] = run_results(runs_root / run)
    result = cache[run].get(f"{recipe_name}-{tag}")
    if result is None or name not in result["summary"]:
        return None, None
    return result["summary"][name]["robust_all_draws"], result


def _ours(value: float | None, result: dict[str, Any] | None, name: str) -> str:
    """Our number in bold (correct in every draw) and, with several draws, the mean over draws."""
    if value is None or result is None:
        return "not run"
    text = f"**{_pct(value)}**"
    if result["settings"]["draws"] > 1 and result["summary"][name]["robust_mean_over_draws"] != value:
        text += f" (mean over draws {_pct(result['summary'][name]['robust_mean_over_draws'])})"
    return text


def recipe_tables(recipe: Any, runs_root: Path) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """Markdown lines of the recipe's tables, and the results they used."""
    cache: dict[str, dict[str, Any]] = {}
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
                ours, result = _cell(runs_root, cell, cache, recipe.name)
                if result is not None:
                    used[id(result)] = (cell.rsplit("/", 1)[0], result)
                parts = []
                if cell is not None:
                    parts.append(_ours(ours, result, cell.rsplit("/", 1)[1]))
                if paper_value is not None:
                    parts.append(f"paper {paper_value:.1f}%")
                if adaptive_cell is not None:
                    value, result = _cell(runs_root, adaptive_cell, cache, recipe.name)
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
    from menet.evaluation import _describe

    lines = ["| result | images | draws | seed | attacks | hardware | seconds |", "|---|---|---|---|---|---|---|"]
    for label, result in used:
        s = result["settings"]
        attacks = "; ".join(f"{name}: {_describe(a)}" for name, a in s["attacks"].items()) or "clean only"
        seconds = sum(result.get("timing", {}).get("attack_seconds", {}).values())
        hardware = result.get("hardware", {}).get("device", "?")
        lines.append(f"| {label} | {s['n']} | {s['draws']} | {s['seed']} | {attacks} | {hardware} | {seconds:.0f} |")
    return lines


def write_report(
    out_dir: str | Path,
    *,
    recipe: Any | None = None,
    runs_root: str | Path | None = None,
    run_dirs: Iterable[str | Path] = (),
    scale: str = "full",
    data_dirs: Mapping[str, str] | str | None = None,
    device: str | None = None,
    say: Callable[[str], None] = log.info,
) -> Path:
    """Write ``out_dir/report.md`` (and its PNGs) for a recipe's runs, or for ``run_dirs``."""
    from menet.report_figures import recipe_figures, run_figures

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    runs: dict[str, Path] = {}
    if recipe is not None:
        root = Path(runs_root)
        runs = {name: root / name for name in recipe.runs}
        lines += [f"# {recipe.title}", ""]
        if scale != "full":
            from menet.reproduce import scale_summary

            lines += [f"Scale **{scale}**: data, epochs, models and attack steps are shrunk to fit a small machine; "
                      "the numbers show the pipeline working, not the paper's results (run `--scale full` for those). "
                      f"Caps: {scale_summary(scale)}.", ""]
        if recipe.notes:
            lines += [recipe.notes.strip(), ""]
        table_lines, used = recipe_tables(recipe, root)
        lines += table_lines
        if used:
            lines += ["### Settings behind these numbers", "", *settings_lines(used), ""]
        figure_lines = recipe_figures(recipe, root, out, data_dirs=data_dirs, device=device, say=say)
        lines += figure_lines
    # Each run under its folder name; runs whose folders share a name (a/x, b/x) under the
    # shortest trailing path that tells them apart, so that none replaces another.
    given = [Path(path) for path in run_dirs]
    for path in given:
        parts = path.resolve().parts
        others = {other.resolve().parts for other in [*given, *runs.values()]} - {parts}
        depth = 1
        while depth < len(parts) and any(other[-depth:] == parts[-depth:] for other in others):
            depth += 1
        runs["/".join(parts[-depth:])] = path
    if recipe is None:
        lines += ["# menet report", ""]
        lines += run_sections(runs)
        lines += run_figures(runs, out)
    checks = [c for name, path in runs.items() if run_results(path) for c in sanity_checks(name, run_results(path))]
    if checks:
        lines += ["## Sanity checks (Carlini et al., 2019)", "",
                  "Robust accuracy must fall towards 0 as eps grows (a plateau flags gradient masking) and converge "
                  "as steps grow; white-box must be at most transfer; EOT at most plain BPDA. Failed checks are in bold.",
                  "", "| run | check | verdict | evidence |", "|---|---|---|---|", *[c.line() for c in checks], ""]
    stale = {name: stale_results(path) for name, path in runs.items()}
    if any(stale.values()):
        lines += ["**Left out:** results made with other weights than the run's current model.pt (the run was "
                  "trained again or further since): "
                  + "; ".join(f"{name}: {', '.join(tags)}" for name, tags in stale.items() if tags) + ".", ""]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines).rstrip() + "\n")
    return path


def run_sections(runs: Mapping[str, Path]) -> list[str]:
    """Per run: what was trained, its clean test accuracy, and each evaluation's table."""
    from menet.evaluation import format_table
    from menet.runs import read_config

    lines = []
    for name, path in runs.items():
        config = read_config(path)
        lines += [f"## {name}", "", f"{config.mode} {config.model} on {config.dataset}, {config.epochs} epochs"
                  + (f", defense {config.defense.method} at p = {config.defense.inference_p():g}" if config.defended else ""), ""]
        for tag, result in run_results(path).items():
            table = format_table(result).split("\n", 2)[2]  # without its title line
            lines += [f"### {tag}", "", table.strip(), ""]
    return lines


__all__ = ["Check", "recipe_tables", "run_results", "stale_results", "sanity_checks", "settings_lines", "write_report"]
