"""The report: tables in the paper's layout with the paper's numbers beside ours, the settings
behind every number, figures, and the sanity checks of Carlini et al. (2019).

It only reads run folders, result files and stored features, and renders them:
``write_report(out_dir, recipe=..., runs_root=...)`` for a recipe's runs,
``write_report(out_dir, run_dirs=[...])`` for whatever evaluations those runs hold.
Every number is shown with its 95% interval, and two numbers are compared by a paired test
(McNemar's exact test on the same test images), "within noise" when not significant.
Modules: ``results`` (reading result files), ``paired`` (comparisons), ``checks`` (sanity
checks), ``tables``, ``figures`` and ``write`` (report.md).
"""

from menet.report.checks import Check, sanity_checks
from menet.report.figures import MissingFeatures
from menet.report.results import ResultFiles, run_results, stale_results
from menet.report.tables import recipe_tables, settings_lines
from menet.report.write import write_report

__all__ = ["Check", "MissingFeatures", "ResultFiles", "recipe_tables", "run_results", "sanity_checks",
           "settings_lines", "stale_results", "write_report"]
