"""The sanity checks of Carlini et al. (2019) ("On Evaluating Adversarial Robustness"), judged
per run from its result records: accuracy falls towards 0 as eps grows (a plateau flags
gradient masking); accuracy converges as attack steps grow; white-box accuracy is at most
transfer accuracy; EOT accuracy is at most plain BPDA accuracy. A failed check is printed in bold.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from menet.report.results import records as result_records

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
    variance = sum(r["accuracy"] * (1 - r["accuracy"]) / max(r["n"], 1) for r in (a, b))
    return max(TOLERANCE, 2 * math.sqrt(variance))


def _still_falling(more: dict[str, Any], fewer: dict[str, Any]) -> bool:
    """Whether accuracy still drops from ``fewer`` to ``more`` attack steps beyond noise. Both run
    on the same examples, so the difference is paired: an example the shorter attack broke stays
    broken, and the noise of the drop d over n examples is about 2 sqrt(d / n) (McNemar)."""
    drop = fewer["accuracy"] - more["accuracy"]
    n = max(min(more["n"], fewer["n"]), 1)
    return drop > max(TOLERANCE, 2 * math.sqrt(max(drop, 0.0) / n))


def pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}%"


def sanity_checks(run: str, results: Mapping[str, dict[str, Any]]) -> list[Check]:
    """The four checks of Carlini et al. (2019) for one run, from its results."""
    records = [r for r in result_records(results) if r["attack"] == "pgd"]
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
        points = ", ".join(f"{r['eps']:.3g}: {pct(r['accuracy'])}" for r in sweep)
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
        points = ", ".join(f"{r['steps']}: {pct(r['accuracy'])}" for r in sweep)
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
                            f"white-box {w['tag']}/{w['name']} {pct(w['accuracy'])}, transfer {t['tag']}/{t['name']} {pct(t['accuracy'])}"))
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
        checks.append(Check(run, "EOT at most BPDA", verdict, f"EOT-{e['eot']} {pct(e['accuracy'])}, BPDA {pct(b['accuracy'])}"))
    else:
        checks.append(Check(run, "EOT at most BPDA", "not run", "needs PGD with and without EOT at the same eps and steps"))
    return checks
