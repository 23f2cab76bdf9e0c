"""One progress display for osp: rich progress bars, or nothing when disabled (tests, --quiet)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Update = Callable[[int, int], None]


class ProgressDisplay:
    """Hands out ``update(done, total)`` callbacks, each shown as one bar while its step runs."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
            disable=not enabled,
        )

    def __enter__(self) -> ProgressDisplay:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:  # failing: the error message alone, not half-filled bars above it
            for task in self._progress.task_ids:
                self._progress.update(task, visible=False)
        self._progress.__exit__(*exc)  # type: ignore[arg-type]

    @contextmanager
    def step(self, description: str, total: int | None = None) -> Iterator[Update]:
        task = self._progress.add_task(description, total=total)
        known = {"total": total}

        def update(done: int, new_total: int) -> None:
            known["total"] = new_total
            self._progress.update(task, completed=done, total=new_total)

        yield update
        final = known["total"] or 1  # a step without tiles is one unit of work
        self._progress.update(task, completed=final, total=final)


def silent() -> ProgressDisplay:
    return ProgressDisplay(enabled=False)
