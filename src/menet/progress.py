"""Progress reporting: the library takes a wrapper (``Progress``); only the CLI chooses one.

``stream_progress(stream)`` suits the stream it writes to: tqdm bars on a terminal; on a pipe or
a file (nohup, a cluster job's log) plain lines, at most one per ``percent`` of a loop and per
``seconds`` of time, never carriage-return frames; nothing when quiet.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Protocol


class Progress(Protocol):
    """Wraps an iterable, e.g. ``functools.partial(tqdm, leave=False)``."""

    def __call__(self, items: Iterable, *, desc: str, total: int | None = ...) -> Iterable: ...


def no_progress(items: Iterable, **_: Any) -> Iterable:
    """The default: report nothing."""
    return items


class LineProgress:
    """Progress as plain lines, for streams that are not terminals.

    A loop of known length prints ``desc: done/total (pct%), T s`` when at least ``percent`` of
    it has passed since the last line and at least ``seconds`` of time (so at most 100 / percent
    lines per loop), and a closing line if the loop took ``seconds`` or more; a loop of unknown
    length prints at most one line per ``interval`` seconds. Short loops print nothing.
    """

    def __init__(self, stream: IO[str], *, percent: float = 5.0, seconds: float = 2.0, interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < percent <= 100 or seconds < 0 or interval <= 0:
            raise ValueError(f"need 0 < percent <= 100, seconds >= 0, interval > 0; got {percent}, {seconds}, {interval}")
        self.stream, self.percent, self.seconds, self.interval, self.clock = stream, percent, seconds, interval, clock

    def __call__(self, items: Iterable, desc: str = "", total: int | None = None) -> Iterator:
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        return self._wrap(items, desc, total)

    def _line(self, desc: str, done: int, total: int | None, elapsed: float) -> None:
        count = f"{done}/{total} ({100 * done / total:.0f}%)" if total else f"{done}"
        self.stream.write(f"{desc + ': ' if desc else ''}{count}, {elapsed:.0f} s\n")
        self.stream.flush()

    def _wrap(self, items: Iterable, desc: str, total: int | None) -> Iterator:
        start = last_time = self.clock()
        last_done = done = 0
        for item in items:
            yield item
            done += 1
            now = self.clock()
            if total:
                due = 100 * (done - last_done) / total >= self.percent and now - last_time >= self.seconds and done < total
            else:
                due = now - last_time >= self.interval
            if due:
                self._line(desc, done, total, now - start)
                last_done, last_time = done, now
        if done and self.clock() - start >= self.seconds and done != last_done:
            self._line(desc, done, total, self.clock() - start)


def stream_progress(stream: IO[str] | None = None, *, quiet: bool = False, **line_options: Any) -> Progress:
    """The progress wrapper that suits ``stream`` (default: sys.stderr): nothing when ``quiet``,
    tqdm bars (left off when done) on a terminal, else ``LineProgress(stream, **line_options)``."""
    if quiet:
        return no_progress
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        from tqdm import tqdm

        return lambda items, desc="", total=None: tqdm(items, desc=desc, total=total, leave=False, file=stream)
    return LineProgress(stream, **line_options)
