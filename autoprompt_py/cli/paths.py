"""Input file options: every file a command reads is checked while its options are parsed, so
before any work (no model loaded, nothing written), with one line naming the option, the path
and the fix. A new file option declares ``type=InputFile(...)`` and is checked alike
(``tests/test_input_files.py`` walks every command's options to make sure)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from autoprompt_py.data import DATA_FIX  # noqa: F401 - the commands take it from here
from autoprompt_py.errors import AutopromptError, shown
from autoprompt_py.textfile import reason, regular_file


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
    """Raise an ``AutopromptError`` unless ``path`` is a readable, non-empty regular file (or,
    with ``folder``, a readable folder). A FIFO or a device is refused unopened
    (``textfile.regular_file``): ``predict --data -`` is how a stream is given."""
    head = f"{option} {shown(path) if not path.strip() else path}".strip()
    if not path.strip():
        raise AutopromptError(f"{head}: an empty path; give a {what}")
    if folder and os.path.isdir(path):
        if not os.access(path, os.R_OK | os.X_OK):
            raise AutopromptError(f"{head}: cannot read the folder (permission denied)")
        return
    regular_file(path, what, option or None, fix)
    try:
        with open(path, "rb") as f:
            empty = f.read(1) == b""
    except OSError as e:
        raise AutopromptError(f"{head}: cannot read the {what} ({reason(e)})") from None
    if empty:
        raise AutopromptError(f"{head}: an empty file (0 bytes); give a {what} with content")
