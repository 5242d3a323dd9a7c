"""Reading a run's result files for a report: each file read once, results of other weights
(stale) told apart, and a file that cannot be read logged once and named, never dropped silently.

A transfer result is stale too when its examples were crafted on other weights of the source
run than the source's model.pt (the source was trained again since); a source that cannot be
found is named, not trusted silently.

Only reads ``RUN/eval/*.json`` and the model.pt of each run and transfer source (to fingerprint
them); writes nothing.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from menet.report.paired import measured
from menet.runs import EVAL_DIR, MODEL_FILE, model_fingerprint
from menet.summary import example_outcomes, read_result

log = logging.getLogger(__name__)
_FINGERPRINTS: dict[tuple[str, int, int], str] = {}  # (model.pt, mtime, size) -> fingerprint


def current_fingerprint(run_dir: str | Path) -> str | None:
    """The run's model.pt fingerprint (hashed once per file version), or None without one."""
    path = Path(run_dir) / MODEL_FILE
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = model_fingerprint(run_dir)
    return _FINGERPRINTS[key]


def is_stale(run_dir: str | Path, recorded: str | None) -> bool:
    """Whether a product recording model fingerprint ``recorded`` was made with other weights
    than the run's model.pt. Without a record (evaluate() from Python) or without model.pt
    (results copied without the weights) there is nothing to compare: not stale."""
    current = current_fingerprint(run_dir)
    return recorded is not None and current is not None and recorded != current


def _fingerprint_of(result: Mapping[str, Any]) -> str | None:
    return result.get("settings", {}).get("inputs", {}).get("model")


def transfer_source(run_dir: str | Path, result: Mapping[str, Any]) -> Path | None:
    """The run folder a transfer result's examples were crafted on, as seen from here; None when
    no folder with a model.pt is found there. ``transfer_from`` is stored as given where the
    attack ran (``menet attack --transfer-from``, or the chain's RUNS/NAME), possibly relative to
    that directory, beside the target's path ``run`` as given there: the source is looked for (1)
    where it lies relative to the target then, from the target's folder now (the runs were moved
    or copied together), (2) at the stored path, (3) beside the target under its folder name."""
    recorded = result.get("settings", {}).get("inputs", {}).get("transfer_from")
    if recorded is None:
        return None
    source, target = Path(recorded), result.get("run")
    candidates = []
    if target is not None and source.is_absolute() == Path(target).is_absolute():
        candidates.append(Path(os.path.normpath(Path(run_dir) / os.path.relpath(source, target))))  # both relative to the same place
    candidates += [source, Path(run_dir).parent / source.name]
    return next((c for c in candidates if (c / MODEL_FILE).is_file()), None)


def source_state(run_dir: str | Path, result: Mapping[str, Any]) -> str:
    """Of a result's transfer source: "none" (not a transfer result, or no source fingerprint
    recorded), "current" (its model.pt is the one the examples were crafted on), "stale" (the
    source was trained again since) or "missing" (not found: see ``transfer_source``)."""
    inputs = result.get("settings", {}).get("inputs", {})
    if inputs.get("transfer_from") is None or inputs.get("source_model") is None:
        return "none"
    source = transfer_source(run_dir, result)
    if source is None:
        return "missing"
    return "stale" if current_fingerprint(source) != inputs["source_model"] else "current"


class ResultFiles:
    """The result files of runs as one report sees them: each run's ``eval/*.json`` read once;
    ``unreadable`` lists the files that could not be read (each logged once)."""

    def __init__(self) -> None:
        self._results: dict[Path, dict[str, dict[str, Any]]] = {}
        self.unreadable: list[Path] = []

    def all(self, run_dir: str | Path) -> dict[str, dict[str, Any]]:
        """tag -> result record of every readable finished evaluation of the run."""
        key = Path(run_dir)
        if key not in self._results:
            out = {}
            for path in sorted((key / EVAL_DIR).glob("*.json")):
                try:
                    out[path.stem] = read_result(path)
                except ValueError as err:
                    log.warning("%s", err)
                    self.unreadable.append(path)
            self._results[key] = {tag: r for tag, r in out.items() if not _left_over_step(tag, out)}
        return self._results[key]

    def current(self, run_dir: str | Path) -> dict[str, dict[str, Any]]:
        """tag -> result of the run's current weights and, for a transfer result, of its source's
        current weights (see ``stale`` and ``stale_sources``; a missing source is kept)."""
        return {tag: r for tag, r in self.all(run_dir).items()
                if not is_stale(run_dir, _fingerprint_of(r)) and source_state(run_dir, r) != "stale"}

    def stale(self, run_dir: str | Path) -> list[str]:
        """Tags of the run's results made with other weights than its model.pt (the run was
        trained again or further since)."""
        return [tag for tag, r in self.all(run_dir).items() if is_stale(run_dir, _fingerprint_of(r))]

    def _sources(self, run_dir: str | Path, state: str) -> dict[str, str]:
        return {tag: str(transfer_source(run_dir, r) or r["settings"]["inputs"]["transfer_from"])
                for tag, r in self.all(run_dir).items()
                if not is_stale(run_dir, _fingerprint_of(r)) and source_state(run_dir, r) == state}

    def stale_sources(self, run_dir: str | Path) -> dict[str, str]:
        """tag -> source folder, of the run's transfer results crafted on other weights of their
        source than its model.pt (the source was trained again since); left out of ``current``."""
        return self._sources(run_dir, "stale")

    def missing_sources(self, run_dir: str | Path) -> dict[str, str]:
        """tag -> recorded source, of the run's transfer results whose source run is not found:
        kept in ``current``, but whether they were crafted on its current weights is unknown."""
        return self._sources(run_dir, "missing")


def _left_over_step(tag: str, results: Mapping[str, dict[str, Any]]) -> bool:
    """Whether ``tag`` is a step count TAG-stepsN of a converged result TAG whose curve does not
    hold N (left from an earlier cap or start): not a number of the current evaluation."""
    match = re.fullmatch(r"(.+)-steps(\d+)", tag)
    parent = results.get(match.group(1)) if match else None
    record = parent.get("convergence") if isinstance(parent, dict) else None
    if not isinstance(record, dict):
        return False
    return int(match.group(2)) not in {p.get("steps") for p in record.get("curve", []) if isinstance(p, dict)}


def run_results(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """tag -> result record of every finished evaluation of a run's current weights (results of
    other weights, e.g. before a resumed or repeated training, or crafted on other weights of a
    transfer source, are left out; see stale_results)."""
    return ResultFiles().current(run_dir)


def stale_results(run_dir: str | Path) -> list[str]:
    """Tags of a run's finished evaluations that were made with other weights than its model.pt."""
    return ResultFiles().stale(run_dir)


def records(results: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat record per (result, attack): its settings, accuracy, n, the key of the examples
    it was measured on and their per-example outcomes (for paired comparisons; None if absent)."""
    records = []
    for tag, result in results.items():
        outcomes = example_outcomes(result)
        for name, settings in result["settings"]["attacks"].items():
            transfer = settings.get("attack") == "transfer"
            inner = settings["of"] if transfer else settings
            records.append({"tag": tag, "name": name, "transfer": transfer, "attack": inner.get("attack"),
                            "eps": inner.get("eps"), "steps": inner.get("steps"), "eot": inner.get("eot", 1),
                            "step_size": inner.get("step_size"), "loss": inner.get("loss"),
                            "draws": result["settings"].get("draws", 1),
                            "interval": result["summary"][name].get("all_draws_ci"),
                            **measured(result, name, outcomes)})  # accuracy, n, examples, outcome
    return records
