"""Errors for bad input: each names the file, the column and the problem, so the CLI can print one
clear line and exit with status 2 instead of a traceback."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input data or configuration (CLI exit status 2).

    Messages never contain patient or visit identifiers: they name files, columns, counts and row
    numbers only, so they are safe to log.
    """

    def __init__(self, problem: str, *, file: str | None = None, column: str | None = None):
        self.file = file
        self.column = column
        self.problem = problem
        where = ": ".join(part for part in (file, f"column '{column}'" if column else None) if part)
        super().__init__(f"{where}: {problem}" if where else problem)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say): one line on stderr, exit status 1."""
