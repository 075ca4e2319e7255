"""Input file options: every file a command reads is checked while its options are parsed, so
before any work (no model loaded, nothing written), with one line naming the option, the path
and the fix. A new file option declares ``type=InputFile(...)`` and is checked alike
(``tests/test_input_files.py`` walks every command's options to make sure)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import click

from autoprompt_py.errors import AutopromptError, shown

DATA_FIX = "give the path of a .tsv/.csv/.jsonl file, e.g. examples/sentiment/dev.tsv in a checkout"


class InputFile(click.ParamType):
    """A file the command reads: it must exist, be a file (or, with ``folder``, a folder),
    be readable and not be empty. ``what`` names it in messages ("data file"); ``stdin``
    accepts ``-``; ``fix`` is said after a missing file; ``as_path``: the value as a ``Path``."""

    name = "file"

    def __init__(
        self,
        what: str = "file",
        folder: bool = False,
        stdin: bool = False,
        fix: str = "",
        as_path: bool = False,
    ) -> None:
        self.what, self.folder, self.stdin, self.fix = what, folder, stdin, fix
        self.as_path = as_path

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str | None:
        if isinstance(param, click.Argument):
            return None  # an argument keeps its name (RESULTS)
        return "FOLDER|FILE" if self.folder else ("FILE|-" if self.stdin else "FILE")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        if not (self.stdin and text == "-"):
            check_input(text, option_name(param), self.what, self.folder, self.fix)
        return Path(text) if self.as_path else text


def option_name(param: click.Parameter | None) -> str:
    """``--data`` for an option; "" for an argument (its value alone names it)."""
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return ""


def check_input(
    path: str, option: str = "", what: str = "file", folder: bool = False, fix: str = ""
) -> None:
    """Raise an ``AutopromptError`` unless ``path`` is a readable, non-empty file (or folder)."""
    head = f"{option} {shown(path) if not path.strip() else path}".strip()
    if not path.strip():
        raise AutopromptError(f"{head}: an empty path; give a {what}")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        where = "" if Path(path).is_absolute() else f" (relative to {Path.cwd()})"
        raise AutopromptError(
            f"{head}: no such {what}{where}" + (f"; {fix}" if fix else "")
        ) from None
    except (OSError, ValueError) as e:  # a file used as a folder, a link loop, a NUL byte
        raise AutopromptError(f"{head}: cannot read the {what} ({_reason(e)})") from None
    if stat.S_ISDIR(mode):
        if not folder:
            raise AutopromptError(f"{head}: a folder, not a {what}; give a file in it")
        if not os.access(path, os.R_OK | os.X_OK):
            raise AutopromptError(f"{head}: cannot read the folder (permission denied)")
        return
    if not stat.S_ISREG(mode):  # a FIFO or /dev/stdin: reading it to check would consume it
        return
    try:
        with open(path, "rb") as f:
            empty = f.read(1) == b""
    except OSError as e:
        raise AutopromptError(f"{head}: cannot read the {what} ({_reason(e)})") from None
    if empty:
        raise AutopromptError(f"{head}: an empty file (0 bytes); give a {what} with content")


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__
