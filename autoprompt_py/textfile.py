"""Reading a file the product did not just write: the one place that opens data, facts,
vocabulary, verbalizer, template, stop-list, result and checkpoint files, tuned folders' and
exports' weights.

Every reader goes through ``regular_file`` first: the file is looked at with ``stat`` alone,
and a missing file, a folder, and anything that is not a regular file (a FIFO that no one
writes would block the read forever, a device may never end) are refused in one line without
being opened. ``read_text`` then refuses a file that is not UTF-8 with the same one-line
message everywhere (where the first bad byte is, and the fix) and accepts a UTF-8 byte order
mark (Excel and Notepad write one); ``parse_json`` refuses bad or ambiguous JSON (a key given
twice); ``load_with`` turns any failure of a library's parser (torch, safetensors, pyarrow)
on a truncated or damaged file into one line naming the file.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from autoprompt_py.errors import AutopromptError, shown

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_UTF32_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)
T = TypeVar("T")


def _head(path: str | Path, option: str | None) -> str:
    return f"{option} {path}" if option else str(path)


def reason(e: BaseException) -> str:
    """What an error says, in one short line without its errno and file name."""
    text = getattr(e, "strerror", None) or str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def special_kind(mode: int) -> str:
    """What a file that is neither a folder nor a regular file is, for a message."""
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def regular_file(
    path: str | Path, what: str = "file", option: str | None = None, fix: str = ""
) -> Path:
    """``path``, once ``stat`` says it is a regular file; else one line naming it (and
    ``fix`` after a missing file). Never opens it, so nothing can block here."""
    path = Path(path)
    head = _head(path, option)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise AutopromptError(
            f"{head}: no such {what}{where}" + (f"; {fix}" if fix else "")
        ) from None
    except (OSError, ValueError) as e:  # a file used as a folder, a link loop, a NUL byte
        raise AutopromptError(f"{head}: cannot read the {what} ({reason(e)})") from None
    if stat.S_ISDIR(mode):
        raise AutopromptError(f"{head}: a folder, not a {what}; give a file in it")
    if not stat.S_ISREG(mode):
        raise AutopromptError(
            f"{head}: {special_kind(mode)}, not a regular file; give a {what} that is a "
            "regular file"
        )
    return path


def names_file(path: str | Path) -> bool:
    """Whether ``path`` names something there that is not a folder: a regular file, or a FIFO
    or device that ``regular_file`` then refuses by name (a value that is text or a file must
    not take a FIFO for text). False where the text cannot be a path at all (an inline
    template or JSON longer than a file name may be: ENAMETOOLONG)."""
    try:
        return not stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_binary(path: str | Path, what: str = "file", option: str | None = None) -> BinaryIO:
    """``path`` opened for reading bytes, once ``regular_file`` accepts it."""
    path = regular_file(path, what, option)
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as e:
        raise AutopromptError(
            f"{_head(path, option)}: cannot read the {what} ({reason(e)})"
        ) from None


def read_bytes(path: str | Path, what: str = "file", option: str | None = None) -> bytes:
    """The bytes of a regular file (``regular_file``), one line for any failure."""
    with open_binary(path, what, option) as f:
        try:
            return f.read()
        except OSError as e:  # an I/O error part-way (a failing disk, a network mount)
            raise AutopromptError(
                f"{_head(path, option)}: cannot read the {what} ({reason(e)})"
            ) from None


def read_text(path: str | Path, what: str = "file", option: str | None = None) -> str:
    """The text of a UTF-8 file, without a leading byte order mark.

    ``what`` names the file in messages ("data file"); ``option`` (``--vocab``) is put first
    when the file came from a command-line option.
    """
    return decode_utf8(read_bytes(path, what, option), str(path))


def load_with(
    path: str | Path,
    load: Callable[[Path], T],
    what: str = "file",
    fix: str = "",
    option: str | None = None,
) -> T:
    """``load(path)`` for a file a library parses (``torch.load``, safetensors, pyarrow), once
    ``regular_file`` accepts it: whatever the library raises on a truncated or damaged file
    (RuntimeError, OSError, its own types) is one line naming the file and ``fix``."""
    path = regular_file(path, what, option)
    try:
        return load(path)
    except AutopromptError:
        raise
    except PermissionError as e:
        raise AutopromptError(
            f"{_head(path, option)}: cannot read the {what} ({reason(e)})"
        ) from None
    except Exception as e:  # each library has its own types for a file cut short
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
            raise  # no room to load it (CUDA out of memory): not the file's fault
        raise AutopromptError(
            f"{_head(path, option)}: damaged {what} ({reason(e)})" + (f"; {fix}" if fix else "")
        ) from None


def check_safetensors(
    path: str | Path, what: str = "safetensors file", fix: str = "", option: str | None = None
) -> None:
    """A safetensors file whose header reads and whose tensors all lie within it (a file cut
    short is refused here, naming it, before a loader or PEFT reads it)."""
    from safetensors import safe_open

    def keys(path: Path) -> list[str]:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())

    load_with(path, keys, what, fix, option)


def damaged_file(folder: Path) -> str | None:
    """After a library failed to load a folder (a model): its JSON or safetensors file that
    is damaged, if one is, as a line with the fix (the library's message names the fault,
    not the file)."""
    for path in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
        try:
            if path.suffix == ".json":
                parse_json(read_text(path, "model file"), str(path))
            else:
                check_safetensors(path)
        except AutopromptError as e:
            return f"{e}; save the model again (save_pretrained) or download it again"
    return None


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


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are each given once: ``json`` would keep the last of two, so
    the first would be silently unread."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _RepeatedKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def parse_json(text: str, source: str, line: bool = True) -> object:
    """``json.loads`` whose every failure is an AutopromptError naming ``source`` (and the
    line of a multi-line document unless ``line`` is False: ``source`` already names it). A
    key given twice in one object is refused: only one of the two values could be read."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        where = f":{e.lineno}" if line else ""
        raise AutopromptError(f"{source}{where}: not valid JSON ({e.msg})") from None
    except _RepeatedKey as e:
        raise AutopromptError(
            f"{source}: the key {shown(e.key)} is given twice in one object; only one value "
            "can be read: keep one of them"
        ) from None
    except (ValueError, RecursionError) as e:  # a 5000-digit number, [[[[... nested too deep
        raise AutopromptError(f"{source}: not valid JSON ({shown(str(e))[1:-1]})") from None


def lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) as a text file counts them: only \\n, \\r\\n and \\r end a line
    (``str.splitlines`` would also split at U+2028 and friends, which JSON strings may hold)."""
    for number, line in enumerate(io.StringIO(text, newline=None), 1):
        yield number, line.rstrip("\n")
