"""The sanity checks of Carlini et al. (2019) ("On Evaluating Adversarial Robustness"), judged
per run from its result records: accuracy falls towards 0 as eps grows (a plateau flags
gradient masking); accuracy converges as attack steps grow; white-box accuracy is at most
transfer accuracy; EOT accuracy is at most plain BPDA accuracy. A failed check is printed in bold.

Every ordering is judged by a test, not by the sign of a difference: two results on the same
test images are compared by McNemar's exact test on their per-example outcomes (otherwise by
Fisher's exact test, said so), and a difference with p >= 0.05 is "within noise" (see
``menet.report.paired``): it neither fails a check nor counts as the attack still improving.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from menet.report.paired import compare_measured, in_words, significantly_higher
from menet.report.results import records as result_records
from menet.summary import pct_ci

PLATEAU = 0.02  # an accuracy drop this small when eps doubles is a plateau (an effect size, not a test)
TOLERANCE = 0.02  # slack of an ordering that no test can judge (a result without a count of examples)
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


def _point(r: dict[str, Any]) -> str:
    return pct_ci(r["accuracy"], r.get("interval"))


def _higher(a: dict[str, Any], b: dict[str, Any], label_a: str, label_b: str) -> tuple[bool, str]:
    """Whether record ``a``'s accuracy is higher than ``b``'s beyond noise, and the comparison in
    words. Records with no count of examples (hand-made results) cannot be tested: they are read
    with a TOLERANCE of slack instead, and the words say so."""
    comparison = compare_measured(a, b)
    if comparison is not None:
        return significantly_higher(comparison, "A"), in_words(comparison, label_a, label_b)
    return (a["accuracy"] > b["accuracy"] + TOLERANCE,
            f"no count of examples recorded, so no test: read with {100 * TOLERANCE:g} points of slack")


def _first_rise(sweep: list[dict[str, Any]], key: str) -> str | None:
    """The first step of a sweep (sorted by ``key``: eps or steps) where accuracy rises beyond
    noise, in words; None when it never does."""
    for a, b in zip(sweep, sweep[1:]):
        up, words = _higher(b, a, f"{key} {b[key]:g}", f"{key} {a[key]:g}")
        if up:
            return f"{key} {a[key]:g} -> {b[key]:g}: {words}"
    return None


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
        points = ", ".join(f"{r['eps']:.3g}: {_point(r)}" for r in sweep)
        rise = _first_rise(sweep, "eps")
        falls = rise is None
        if rise:
            points += f"; rises {rise}"
        largest = sweep[-1]
        # A plateau: eps at least doubles but accuracy (still well above 0) hardly moves.
        # (A curve that reaches about 0 at its largest eps is not one, however flat its start.)
        plateau = largest["accuracy"] > NEAR_ZERO and any(
            b["eps"] >= 2 * a["eps"] and a["accuracy"] - b["accuracy"] < PLATEAU for a, b in zip(sweep, sweep[1:]))
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
        points = ", ".join(f"{r['steps']}: {_point(r)}" for r in sweep)
        last, before = sweep[-1], sweep[-2]
        falling, words = _higher(before, last, f"{before['steps']} steps", f"{last['steps']} steps")  # still falling
        converged = not falling
        points += f"; {before['steps']} -> {last['steps']} steps: {words}"
        rise = _first_rise(sweep, "steps")
        if rise:
            points += f"; rises {rise}"
        checks.append(Check(run, f"accuracy converges in the steps (eps {sweep[0]['eps']:.3g})",
                            "pass" if converged and not rise else "FAIL", points))
    pairs = [(w, t) for w in white for t in records if t["transfer"] and t["eps"] == w["eps"] and w["eot"] == 1]
    if pairs:
        w = min((p[0] for p in pairs), key=lambda r: r["accuracy"])
        t = min((p[1] for p in pairs if p[1]["eps"] == w["eps"]), key=lambda r: r["accuracy"])
        higher, words = _higher(w, t, "white-box", "transfer")
        checks.append(Check(run, "white-box at most transfer", "FAIL" if higher else "pass",
                            f"white-box {w['tag']}/{w['name']} {_point(w)}, transfer {t['tag']}/{t['name']} {_point(t)}: {words}"))
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
        higher, words = _higher(e, b, "EOT", "BPDA")
        checks.append(Check(run, "EOT at most BPDA", "FAIL" if higher else "pass", f"EOT-{e['eot']} {_point(e)}, BPDA {_point(b)}: {words}"))
    else:
        checks.append(Check(run, "EOT at most BPDA", "not run", "needs PGD with and without EOT at the same eps and steps"))
    return checks
