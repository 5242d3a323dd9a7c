"""``menet demo``, ``menet reproduce`` and ``menet report``: a recipe run end to end, and its report."""

from __future__ import annotations

import argparse
from pathlib import Path

from menet.cli.common import progress, say


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from menet.demo import failed_checks, main_table, run_demo

    started = time.perf_counter()
    report = run_demo(args.out, data_dir=args.data_dir, device=args.device, say=say(args.quiet),
                      progress=progress(args.quiet), scale=args.scale)
    print(main_table(report))
    failed = failed_checks(report)
    if failed:
        print(f"\n{len(failed)} sanity check(s) of Carlini et al. (2019) failed (robust accuracy is an upper bound; these say it may be loose):")
        print("\n".join(failed))
    print(f"\nwrote {report} (with its figures) in {time.perf_counter() - started:.0f} s")
    return 0


def data_dirs(items: list[str] | None) -> dict[str, str] | str | None:
    """--data-dir DIR (every dataset) or --data-dir NAME=DIR (repeatable)."""
    if not items:
        return None
    if len(items) == 1 and "=" not in items[0]:
        return items[0]
    dirs = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--data-dir {item!r}: with several, each must look like NAME=DIR")
        name, directory = item.split("=", 1)
        dirs[name] = directory
    return dirs


def cmd_reproduce(args: argparse.Namespace) -> int:
    from menet.recipe import load_paper_recipe
    from menet.reproduce import reproduce

    recipe = load_paper_recipe(args.recipe)
    runs = Path(args.runs) / f"paper-{args.scale}"
    if args.plan:  # what would be run, marked done or not, with a cost estimate measured here
        from menet.plan import format_plan, plan

        steps, rates = plan(recipe, runs, scale=args.scale, data_dirs=data_dirs(args.data_dir), device=args.device)
        print(format_plan(recipe.name, args.scale, runs, steps, rates))
        return 0
    report = reproduce(recipe, runs, scale=args.scale, data_dirs=data_dirs(args.data_dir), device=args.device,
                       say=say(args.quiet), progress=progress(args.quiet))
    print(f"wrote {report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from menet.report import write_report
    from menet.runs import read_config

    for run in args.run_dirs:
        read_config(run)  # one clear line for a folder that is not a run, before writing anything
    report = write_report(args.out, run_dirs=args.run_dirs)
    print(f"wrote {report}")
    return 0


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """The ``demo`` subcommand."""
    demo = sub.add_parser("demo", help="train, attack and report ME-Net on the built-in Fashion-MNIST (minutes)")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--data-dir", default=None, help="directory of the IDX files "
                      "(default: $MENET_DATA_DIR, else /usr/share/datasets/fashion-mnist)")
    demo.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if available)")
    demo.add_argument("--scale", choices=["full", "small", "tiny"], default="full",
                      help="full: the demo (default); small / tiny: shrunk further, for a quick look or tests")
    demo.add_argument("--quiet", action="store_true", help="no progress lines or bars")
    demo.set_defaults(func=cmd_demo)


def add_reproduce_parser(sub: argparse._SubParsersAction) -> None:
    """The ``reproduce`` subcommand."""
    reproduce = sub.add_parser("reproduce", help="a paper table or figure from its recipe: train, attack, report",
                               description="Train the recipe's missing runs, run its missing evaluations (both "
                               "resume), and write the report under RUNS/paper-SCALE/reports/RECIPE/.")
    reproduce.add_argument("recipe", help="a paper recipe, e.g. recipes/table1.yaml")
    reproduce.add_argument("--scale", choices=["full", "small", "tiny"], default="full",
                           help="full: the paper's settings; small: minutes on a 2-core CPU; tiny: tests")
    reproduce.add_argument("--runs", default="runs", help="directory holding the runs (default: runs)")
    reproduce.add_argument("--data-dir", action="append", metavar="DIR|NAME=DIR",
                           help="where the datasets' files are (one for all, or NAME=DIR per dataset)")
    reproduce.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if available)")
    reproduce.add_argument("--quiet", action="store_true", help="no progress lines or bars")
    reproduce.add_argument("--plan", action="store_true", help="run nothing: list the runs to train and the evaluations "
                           "to run (marking what exists) with a cost estimate measured on this machine")
    reproduce.set_defaults(func=cmd_reproduce)


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    """The ``report`` subcommand."""
    report = sub.add_parser("report", help="a report (tables, sanity checks, figures) of trained and attacked runs")
    report.add_argument("run_dirs", nargs="+", help="run folders")
    report.add_argument("--out", default="runs/report", help="output directory (default: runs/report)")
    report.set_defaults(func=cmd_report)
