"""The one exception type for mistakes a user can make and fix, and the one warning type."""

from __future__ import annotations

import warnings

SHOWN_LIMIT = 200  # characters of a user's value quoted in a message


class AutopromptError(Exception):
    """A user-facing error: the message names what is wrong and how to fix it.

    The CLI prints it as a single line and exits with code 2; it is never a bug in the library.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm, Kubernetes or ``kill`` send before they kill a job), raised as an
    interrupt: every long command keeps what it found on it, as on Ctrl-C."""


class AutopromptWarning(UserWarning):
    """Something a user should know that does not stop the run (the CLI prints one line)."""


def warn(message: str) -> None:
    """Warn the user; the CLI shows it as ``warning: message`` on stderr."""
    warnings.warn(message, AutopromptWarning, stacklevel=2)


def shown(value: object, limit: int = SHOWN_LIMIT) -> str:
    """``repr(value)`` for a message, cut to about ``limit`` characters (a 5 KB template
    would otherwise bury the message)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(str(value))} characters)"
