"""Comparing two accuracies of the report: paired on the same test images where the results
allow it, said in words, and "within noise" when the difference is not significant.

Two results are on the same examples when they record the same dataset, split, offset and
number of images (``menet.summary.examples_key``, every part recorded): then their per-example
outcomes (correct in all draws) pair up and McNemar's exact test compares them. Results of the
same dataset, split and offset but of different lengths are paired on the images both scored
(the first of the longer one), which the words say. Otherwise the two counts are
compared by Fisher's exact test, which the words say ("unpaired"), and a result with no count
is "not comparable".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from menet.stats import Comparison, compare, compare_unpaired
from menet.summary import example_outcomes, examples_key

HEADING = ("Paired comparisons (McNemar's exact test on the per-example outcomes where both numbers are measured on "
           "the same test images, else Fisher's exact test, said so; p >= 0.05 reads \"within noise\", whatever the sign):")


def measured(result: Mapping[str, Any], name: str, outcomes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a comparison needs of one number: accuracy, n, the examples' key and per-example
    outcomes (``outcomes``: the result's ``example_outcomes``, when the caller has them)."""
    row = result["summary"][name]
    outcomes = example_outcomes(result) if outcomes is None else outcomes
    return {"accuracy": row["robust_all_draws"], "n": row.get("n", result["settings"].get("n", 0)),
            "examples": examples_key(result), "outcome": outcomes.get(name)}


def compare_measured(a: Mapping[str, Any], b: Mapping[str, Any]) -> Comparison | None:
    """A against B (records with ``accuracy``, ``n``, ``examples``, ``outcome``, e.g. from
    ``measured`` or ``menet.report.results.records``): paired when on the same examples,
    else unpaired; None when either lacks a count of examples."""
    oa, ob = a.get("outcome"), b.get("outcome")
    key = a.get("examples")
    # Unrecorded parts of the key (None) say nothing about the images: never paired on them.
    known = key is not None and all(part is not None for part in key)
    other = b.get("examples")
    if known and oa is not None and ob is not None and key == other and len(oa) == len(ob) > 0:
        return compare(oa, ob)
    if (known and oa is not None and ob is not None and other is not None and key[:-1] == other[:-1]
            and min(len(oa), len(ob)) > 0):  # the same images from the same offset, one set longer: pair the shared ones
        shared = min(len(oa), len(ob))
        paired = compare(oa[:shared], ob[:shared])
        return dataclasses.replace(paired, method=f"McNemar exact on the first {shared} images both scored")
    counts = []
    for r in (a, b):
        n, accuracy = r.get("n"), r.get("accuracy")
        if not isinstance(n, int) or n <= 0 or accuracy is None or accuracy != accuracy:
            return None
        counts += [min(max(round(accuracy * n), 0), n), n]
    return compare_unpaired(*counts)


def in_words(comparison: Comparison | None, label_a: str, label_b: str) -> str:
    """E.g. "ME-Net higher (48.0% vs 30.3%; ...; McNemar exact p < 0.001)" or "within noise (...)"."""
    if comparison is None:
        return f"{label_a} and {label_b}: not comparable (no count of examples recorded)"
    return comparison.words(label_a, label_b)


def significantly_higher(comparison: Comparison | None, which: str) -> bool:
    """Whether ``which`` ("A" or "B") is higher beyond noise; False when not comparable."""
    return comparison is not None and comparison.verdict == f"{which} higher"
