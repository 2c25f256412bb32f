"""Progress of `compact plan` on a terminal: the phase it is in, and how long each one took.

Drawn on stderr, and only when it is a terminal: stdout carries only what the user asked for,
and scripts get quiet, parseable output.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def phases(enabled: bool, command: str, names: tuple[str, ...]) -> Iterator[Callable[[str], None] | None]:
    """``update(name)`` starts the next phase: a spinner names it while it runs, and a line with
    its time stays once it is done, so a long phase never leaves the terminal silent."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:  # fmt: skip
        task = bar.add_task(f"{command}: starting", total=None)
        current: list[tuple[str, float]] = []

        def finish() -> None:
            if current:
                name, started = current.pop()
                console.print(f"{command}: {name} done in {time.monotonic() - started:.2f} s", highlight=False)

        def update(name: str) -> None:
            finish()
            current.append((name, time.monotonic()))
            bar.update(task, description=f"{command}: {name} ({names.index(name) + 1}/{len(names)})")

        yield update
        finish()
