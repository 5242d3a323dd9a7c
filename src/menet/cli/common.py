"""What the ``menet`` subcommands share: progress on stderr, status lines, number arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from menet.progress import Progress, stream_progress


def progress(quiet: bool) -> Progress:
    """Progress on stderr: bars on a terminal, a plain line every few percent on a pipe or file."""
    return stream_progress(sys.stderr, quiet=quiet)


def say(quiet: bool) -> Callable[[str], None]:
    """A function printing one status line (nothing with --quiet)."""
    def say_line(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    return say_line


def fraction(text: str) -> float:
    """A number, or a fraction like 8/255."""
    try:
        if "/" in text:
            top, bottom = text.split("/", 1)
            return float(top) / float(bottom)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 8/255, got {text!r}") from None
