"""Reading a user's text file: the one place that opens data, facts, vocabulary, verbalizer,
template, stop-list, result and checkpoint files.

Every reader goes through ``read_text``, so every one of them refuses a file that is not UTF-8
with the same one-line message (where the first bad byte is, and the fix), accepts a UTF-8 byte
order mark (Excel and Notepad write one), and turns a missing file, a folder or an unreadable
file into an ``AutopromptError``.
"""

from __future__ import annotations

import codecs
import io
import json
from collections.abc import Iterator
from pathlib import Path

from autoprompt_py.errors import AutopromptError, shown

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_UTF32_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)


def read_text(path: str | Path, what: str = "file", option: str | None = None) -> str:
    """The text of a UTF-8 file, without a leading byte order mark.

    ``what`` names the file in messages ("data file"); ``option`` (``--vocab``) is put first
    when the file came from a command-line option.
    """
    path = Path(path)
    head = f"{option} {path}" if option else str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AutopromptError(f"{head}: no such {what}") from None
    except IsADirectoryError:
        raise AutopromptError(f"{head}: a folder, not a {what}") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL character in the path
        raise AutopromptError(
            f"{head}: cannot read the {what} ({getattr(e, 'strerror', None) or e})"
        ) from None
    return decode_utf8(data, str(path))


def decode_utf8(data: bytes, source: str) -> str:
    """``data`` as text; a one-line error naming the line and byte where it is not UTF-8."""
    if data.startswith(_UTF32_BOMS) or data.startswith(_UTF16_BOMS):
        kind = "UTF-32" if data.startswith(_UTF32_BOMS) else "UTF-16"
        raise AutopromptError(
            f"{source}: {kind} text (it starts with a {kind} byte order mark), not UTF-8; "
            "save it as UTF-8"
        )
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise AutopromptError(
            f"{source}:{line}: not UTF-8 text (byte 0x{data[e.start]:02X} at column {column}; "
            "Latin-1 or Windows-1252?); save it as UTF-8"
        ) from None


def parse_json(text: str, source: str, line: bool = True) -> object:
    """``json.loads`` whose every failure is an AutopromptError naming ``source`` (and the
    line of a multi-line document unless ``line`` is False: ``source`` already names it)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f":{e.lineno}" if line else ""
        raise AutopromptError(f"{source}{where}: not valid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:  # a 5000-digit number, [[[[... nested too deep
        raise AutopromptError(f"{source}: not valid JSON ({shown(str(e))[1:-1]})") from None


def lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) as a text file counts them: only \\n, \\r\\n and \\r end a line
    (``str.splitlines`` would also split at U+2028 and friends, which JSON strings may hold)."""
    for number, line in enumerate(io.StringIO(text, newline=None), 1):
        yield number, line.rstrip("\n")
