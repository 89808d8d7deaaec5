"""One progress display for every long step (synth, fetch, train, tune): rich's, transient, off when asked."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

T = TypeVar("T")


def bar(enabled: bool = True) -> Progress:
    """A transient bar (description, bar, done/total, elapsed); a no-op display when not `enabled`."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        disable=not enabled,
    )


def track(items: Iterable[T], description: str, enabled: bool = True) -> Iterator[T]:
    """`items` one by one under a bar named `description`."""
    items = list(items)
    with bar(enabled and bool(items)) as p:
        yield from p.track(items, description=description)
