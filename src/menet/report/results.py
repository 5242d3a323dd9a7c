"""Reading a run's result files for a report: each file read once, results of other weights
(stale) told apart, and a file that cannot be read logged once and named, never dropped silently.

Only reads ``RUN/eval/*.json`` and the run's model.pt (to fingerprint it); writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from menet.evaluation import read_result
from menet.runs import EVAL_DIR, MODEL_FILE, model_fingerprint

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
            self._results[key] = out
        return self._results[key]

    def current(self, run_dir: str | Path) -> dict[str, dict[str, Any]]:
        """tag -> result of the run's current weights (see ``stale``)."""
        return {tag: r for tag, r in self.all(run_dir).items() if not is_stale(run_dir, _fingerprint_of(r))}

    def stale(self, run_dir: str | Path) -> list[str]:
        """Tags of the run's results made with other weights than its model.pt (the run was
        trained again or further since)."""
        return [tag for tag, r in self.all(run_dir).items() if is_stale(run_dir, _fingerprint_of(r))]


def run_results(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """tag -> result record of every finished evaluation of a run's current weights (results of
    other weights, e.g. before a resumed or repeated training, are left out; see stale_results)."""
    return ResultFiles().current(run_dir)


def stale_results(run_dir: str | Path) -> list[str]:
    """Tags of a run's finished evaluations that were made with other weights than its model.pt."""
    return ResultFiles().stale(run_dir)


def records(results: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
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
