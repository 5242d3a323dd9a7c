"""Progress reporting hooks: the library takes a wrapper, the CLI passes tqdm."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol


class Progress(Protocol):
    """Wraps an iterable, e.g. ``functools.partial(tqdm, leave=False)``."""

    def __call__(self, items: Iterable, *, desc: str, total: int | None = ...) -> Iterable: ...


def no_progress(items: Iterable, **_: Any) -> Iterable:
    """The default: report nothing."""
    return items
