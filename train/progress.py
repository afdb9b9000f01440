"""Progress bars for long training work."""
from __future__ import annotations

import logging

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger("train.fit")


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))


def tracked(items: list, progress: Progress | None, what: str):
    """`items`, advancing a progress bar for `what` as they are used."""
    task = progress.add_task(what, total=len(items), info="") if progress else None
    for item in items:
        yield item
        if progress:
            progress.update(task, advance=1)
