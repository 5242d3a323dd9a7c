"""The ``menet`` command: its parser and entry point ``main``, which turns bad input into one line.

Each subcommand lives in a module of this package (parse, seed, call the library, print):
``train`` (train, import-run), ``attack``, ``chain`` (demo, reproduce, report) and ``info``
(data info, models); ``common`` holds what they share. Only this package prints and draws
progress bars; the library logs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from menet import __version__
from menet.checkpoint import CheckpointError
from menet.cli import attack, chain, info, train
from menet.config import ConfigError
from menet.data import DatasetError
from menet.devices import check_device

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `menet` command and its subcommands."""
    parser = argparse.ArgumentParser(prog="menet", description="ME-Net: matrix-estimation defense")
    parser.add_argument("--version", action="version", version=f"menet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library messages")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (chain.add_demo_parser, chain.add_reproduce_parser, chain.add_report_parser, info.add_data_parser,
                train.add_train_parser, attack.add_attack_parser, train.add_import_run_parser, info.add_models_parser):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `menet`: returns the exit status (2 for bad input, with a one-line error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        check_device(getattr(args, "device", None))  # every command with --device, before any work
        return args.func(args)
    except (ConfigError, CheckpointError, DatasetError, ValueError, TypeError, FileExistsError) as err:
        print(f"menet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hints = {"train": ": the run keeps its last finished epoch; add --resume to continue",
                 "attack": ": finished batches are kept; add --resume to continue"}
        hint = hints.get(args.command, "")
        print(f"menet {args.command}: interrupted{hint}", file=sys.stderr)
        return 130

