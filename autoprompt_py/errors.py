"""The one exception type for mistakes a user can make and fix, and the one warning type."""

from __future__ import annotations

import errno
import warnings

SHOWN_LIMIT = 200  # characters of a user's value quoted in a message


class AutopromptError(Exception):
    """A user-facing error: the message names what is wrong and how to fix it.

    The CLI prints it as a single line and exits with code 2; it is never a bug in the library.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm, Kubernetes or ``kill`` send before they kill a job), raised as an
    interrupt: every long command keeps what it found on it, as on Ctrl-C."""


# A signal's exception raised while CPython runs a ``__del__`` or a weakref callback is dropped
# ("Exception ignored in ..."): the CLI's handlers also note it here, and the long loops call
# ``raise_pending_stop`` between steps, so a stop is never lost, only late by one step.
_PENDING: list[KeyboardInterrupt] = []


def note_stop(stop: KeyboardInterrupt) -> KeyboardInterrupt:
    """Remember a stop that a signal handler is about to raise; return it."""
    _PENDING[:] = [stop]
    return stop


def clear_stops() -> None:
    _PENDING.clear()


def raise_pending_stop() -> None:
    """Raise (once) a stop whose exception was dropped; called between steps of long loops.
    A stop that was raised and caught is raised here again only if the loop goes on."""
    if _PENDING:
        raise _PENDING.pop()


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


# what a user can do about an OSError from the environment (a full disk, a permission)
_OS_FIXES = {
    errno.ENOSPC: "make room on the disk",
    errno.EDQUOT: "make room within the disk quota",
    errno.EROFS: "write to a writable file system",
    errno.EACCES: "check the permissions",
    errno.EPERM: "check the permissions",
}


def os_error(e: BaseException) -> AutopromptError | None:
    """A full disk, a read-only file system or a permission as one user-facing line (its
    fix: make room, then run again, with --resume where the command has it); None for any
    other error."""
    if not os_fix(e):
        return None
    where = f"{e.filename}: " if getattr(e, "filename", None) else ""
    return AutopromptError(f"{where}{getattr(e, 'strerror', None) or e}{os_fix(e)}")


def os_fix(e: BaseException) -> str:
    """ "; make room on the disk, then run again ..." for an OSError a user can fix, else ""."""
    fix = _OS_FIXES.get(getattr(e, "errno", None)) if isinstance(e, OSError) else None
    if fix is None:
        return ""
    return f"; {fix}, then run again (--resume continues a search, a tune or a predict run)"
