"""Errors for bad input: each names the file, the column (or the setting) and the problem, so
the CLI can print one clear line and exit with status 2 instead of a traceback."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input data or configuration (CLI exit status 2).

    The message names where the problem is: the file, then the column of a table (`column`) or
    the setting of a configuration ("section.key", `setting`), then the problem. Messages never
    contain patient or visit identifiers: they name files, columns, settings, counts and row
    numbers only, so they are safe to log.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        column: str | None = None,
        setting: str | None = None,
    ):
        self.file = file
        self.column = column
        self.setting = setting
        self.problem = problem
        parts = (
            file,
            f"column '{column}'" if column else None,
            f"setting '{setting}'" if setting else None,
        )
        where = ": ".join(part for part in parts if part)
        super().__init__(f"{where}: {problem}" if where else problem)

    def in_file(self, file: str) -> InputError:
        """The same error, naming `file` (where the table or the settings came from)."""
        return InputError(self.problem, file=file, column=self.column, setting=self.setting)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say): one line on stderr, exit status 1."""
