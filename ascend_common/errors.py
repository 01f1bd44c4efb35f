"""Errors a user can act on.

Every command turns a `UserError` into one line on stderr and a non-zero exit, with no traceback
unless `--debug`: the message must name the file, tensor or field and say what is wrong.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type name when the message is empty):
    what goes inside a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class UserError(Exception):
    """Bad input or a refused operation; `exit_code` is what the CLI exits with."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class CheckFailed(UserError):
    """A check ran to the end and found a problem (verify mismatch, cast overflow): exit 1."""

    exit_code = 1
