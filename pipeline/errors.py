"""The two kinds of input problem, kept apart because the cache DAG treats them differently.

`InputError` is one bad file (unreadable, truncated, missing): the DAG records it in failures.parquet and
carries on with the other samples (or stops with --strict). `DatasetLayoutError` means the dataset root itself
is wrong, so nothing can be listed: it stops the command and its message names the layout that was expected.
"""

from __future__ import annotations


class InputError(Exception):
    """A bad input file. The cache DAG records it in failures.parquet and carries on (or stops with --strict)."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = str(reason)
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self):
        # Ray ships exceptions between processes by pickling; keep both fields across the trip.
        return (type(self), (self.path, self.reason))


class DatasetLayoutError(ValueError):
    """The root does not look like the dataset; the message names the expected layout."""
