"""One rich console and progress-bar factory for every command (progress on stderr, summaries on stdout)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)


def progress(transient: bool = False) -> Progress:
    """A progress bar that degrades to nothing noisy when stderr is not a terminal (CI logs)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not sys.stderr.isatty(),
    )


def warn_loud(message: str) -> None:
    """For things a researcher must not miss, e.g. running with random weights."""
    console.print(f"[bold red]WARNING[/bold red] {message}")


def summary(line: str) -> None:
    """The one-line summary every command ends with (stdout, so scripts can capture it)."""
    print(line, flush=True)
