"""Input rows for ``predict``: read in a stream, checked, and handed out in bounded windows."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autoprompt_py.data import Example, cell_text, iter_rows, row_format
from autoprompt_py.errors import AutopromptError

ON_ERROR = ("skip", "fail")


@dataclass
class InputRow:
    """One input row: its identifier, the example the prompt reads, and passed-through columns."""

    id: str
    example: Example
    keep: dict[str, object] = field(default_factory=dict)


def stdin_format(first: bytes) -> str:
    """The format of standard input from its first line: a JSON object is JSON lines, a line
    with tabs a TSV header (or row), with commas and no tab CSV; else ask for the option."""
    text = first.removeprefix(b"\xef\xbb\xbf").strip()
    if not first or text.startswith(b"{"):  # nothing at all: no rows, in any format
        return "jsonl"
    if b"\t" in text:
        return "tsv"
    if b"," in text:
        return "csv"
    shown = text[:40].decode("utf-8", "backslashreplace") or "(empty)"
    raise AutopromptError(
        f"--data -: cannot tell the format of standard input from its first line ({shown!r}); "
        "name it with --input-format jsonl, tsv or csv"
    )


class RowReader:
    """Rows of a data file (or standard input) in windows of at most ``window`` rows.

    Rows whose template fields are missing or empty are skipped and counted (``skipped``), or
    fail with ``on_error="fail"``. ``high_water`` is the most rows this reader ever held at
    once (the rows of a window stay held until the next window is asked for): the check that
    memory is bounded however long the input is.
    """

    def __init__(
        self,
        path: str,
        fields: Sequence[str],
        label_field: str | None = None,
        keep_columns: Sequence[str] | str | None = None,
        columns: Sequence[str] | None = None,
        fmt: str | None = None,
        on_error: str = "skip",
        limit: int | None = None,
    ) -> None:
        if on_error not in ON_ERROR:
            raise AutopromptError(f"--on-error {on_error!r}: use one of {', '.join(ON_ERROR)}")
        self.path = path
        # standard input without --input-format: read from its first line (``_rows``)
        self.fmt = None if path == "-" and not fmt else row_format(path, fmt)
        self.fields = list(fields)
        self.label_field = label_field
        self.keep_columns = keep_columns
        self.columns = columns
        self.on_error = on_error
        self.limit = limit
        self.rows_read = 0  # rows consumed from the input, skipped ones included
        self.skipped = 0
        self.held = 0
        self.high_water = 0

    def _rows(self) -> Iterator[tuple[int, dict]]:
        if self.path != "-":
            return iter_rows(Path(self.path), self.fmt, self.columns)
        if self.fmt == "parquet":
            raise AutopromptError(
                "--data -: Parquet cannot be read from standard input; give a file"
            )
        stream: Iterable[bytes] = sys.stdin.buffer
        if self.fmt is None:
            first = sys.stdin.buffer.readline()
            self.fmt = stdin_format(first)
            stream = itertools.chain([first], stream)
        return iter_rows("<stdin>", self.fmt, self.columns, stream)  # type: ignore[arg-type]

    def windows(self, window: int, skip: int = 0) -> Iterator[list[InputRow]]:
        """Lists of at most ``window`` rows, in input order; the first ``skip`` input rows
        (a resumed run's finished part) are read and dropped without being held."""
        name = "<stdin>" if self.path == "-" else self.path
        buffer: list[InputRow] = []
        for line, raw in self._rows():
            if self.limit is not None and self.rows_read >= self.limit:
                break
            self.rows_read += 1
            if self.rows_read <= skip:
                continue
            row = self._row(name, line, raw)
            if row is None:
                continue
            buffer.append(row)
            self.held += 1
            self.high_water = max(self.high_water, self.held)
            if len(buffer) == window:
                yield buffer
                self.held -= len(buffer)
                buffer = []
        if buffer:
            yield buffer
            self.held -= len(buffer)

    def _row(self, name: str, line: int, raw: dict) -> InputRow | None:
        source = f"{name}:{line}"
        for f in self.fields:
            value = raw.get(f)
            if value is None or (isinstance(value, str) and not value.strip()):
                if self.on_error == "fail":
                    what = "no field" if f not in raw else "an empty field"
                    raise AutopromptError(
                        f"{source}: {what} {f!r} that the template needs (fields: "
                        f"{', '.join(map(str, raw)) or 'none'}); fix the row, or pass "
                        "--on-error skip to skip such rows"
                    )
                self.skipped += 1
                return None
        label = None
        if self.label_field is not None:
            value = raw.get(self.label_field)
            if value is None or value == "":
                raise AutopromptError(
                    f"{source}: no label field {self.label_field!r} (fields: "
                    f"{', '.join(map(str, raw))}); choose it with --label-field, or drop "
                    "--with-labels"
                )
            label = cell_text(value)
        fields = {k: cell_text(v) for k, v in raw.items() if k in self.fields}
        rid = raw.get("id")
        rid = str(line) if rid is None or rid == "" else cell_text(rid)
        if self.keep_columns == "all":
            keep = {k: v for k, v in raw.items() if k != "id"}
        else:
            keep = {k: raw.get(k) for k in self.keep_columns or ()}
        return InputRow(rid, Example(fields, label, source), keep)
