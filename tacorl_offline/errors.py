"""One exception type for user errors.

Anything the user can fix (bad data, bad config, unreachable teacher, locked warehouse)
raises :class:`UserError` with a one-line message that says what is wrong and what to do.
The CLI prints that line and exits non-zero; tracebacks are reserved for bugs.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. ``str(err)`` is the whole message, one line."""

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(" ".join(message.split()))
        if exit_code is not None:
            self.exit_code = exit_code


class BudgetExhausted(Exception):
    """Raised inside a phase when --max-cost-usd or --max-calls is reached (not an error)."""
