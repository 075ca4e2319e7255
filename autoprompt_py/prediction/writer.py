"""Output rows of ``predict``: JSON lines, CSV, TSV or Parquet, chosen by the suffix, or ``-``
(standard output). Files are written to ``<output>.partial`` and renamed when complete
(``output.py`` keeps the partial file resumable). Parquet keeps its footer at the end, so a
partial Parquet file is not a valid prefix: its partial file is JSON lines, converted to
Parquet (in row groups, constant memory) when complete."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from autoprompt_py.data import cell_text
from autoprompt_py.errors import AutopromptError
from autoprompt_py.textfile import open_binary

FORMATS = ("jsonl", "csv", "tsv", "parquet")
PARTIAL_FORMAT = {"parquet": "jsonl"}  # what a format's partial file is written in


def output_format(path: str, given: str | None = None) -> str:
    """The output format from ``given`` or the suffix (standard output: jsonl)."""
    if given:
        if given not in FORMATS:
            raise AutopromptError(f"--output-format {given!r}: use one of {', '.join(FORMATS)}")
        return given
    if path == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = {"json": "jsonl", "ndjson": "jsonl"}.get(suffix, suffix)
    if fmt not in FORMATS:
        raise AutopromptError(
            f"--output {path}: the suffix {Path(path).suffix or '(none)'!r} names no format; "
            "use .jsonl, .csv, .tsv or .parquet (or --output-format)"
        )
    return fmt


class RowWriter(Protocol):
    """Writes rows (dicts with the writer's columns) to a binary stream, window by window."""

    def write(self, rows: Sequence[dict]) -> None: ...

    def close(self) -> None: ...


class JsonlWriter:
    def __init__(self, stream: BinaryIO, columns: Sequence[str], header: bool) -> None:
        self.stream = stream

    def write(self, rows: Sequence[dict]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
        self.stream.write(text.encode("utf-8"))

    def close(self) -> None:
        pass


class DelimitedWriter:
    """CSV or TSV with a header row (not repeated when a resumed run appends)."""

    delimiter = ","

    def __init__(self, stream: BinaryIO, columns: Sequence[str], header: bool) -> None:
        self.stream = stream
        self.columns = list(columns)
        if header:
            self.write([dict(zip(self.columns, self.columns))])

    def write(self, rows: Sequence[dict]) -> None:
        buf = io.StringIO(newline="")
        out = csv.writer(buf, delimiter=self.delimiter, lineterminator="\n")
        for r in rows:
            out.writerow(["" if r.get(c) is None else cell_text(r[c]) for c in self.columns])
        self.stream.write(buf.getvalue().encode("utf-8"))

    def close(self) -> None:
        pass


class TsvWriter(DelimitedWriter):
    delimiter = "\t"


class ParquetWriter:
    """One row group per window; text columns as strings, figures as numbers."""

    def __init__(self, stream: BinaryIO, columns: Sequence[str], header: bool) -> None:
        pa, pq = _pyarrow()
        self.pa = pa
        self.columns = list(columns)
        types = {c: pa.float64() for c in columns if c.startswith("p_") or c == "margin"}
        types.update({"rank": pa.int64()} if "rank" in columns else {})
        self.schema = pa.schema([(c, types.get(c, pa.string())) for c in columns])
        self.writer = pq.ParquetWriter(stream, self.schema)

    def write(self, rows: Sequence[dict]) -> None:
        data = {}
        for c in self.columns:
            numeric = self.schema.field(c).type != self.pa.string()
            data[c] = [r.get(c) if numeric or r.get(c) is None else cell_text(r[c]) for r in rows]
        self.writer.write_table(self.pa.table(data, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise AutopromptError(
            "writing Parquet needs pyarrow; pip install 'autoprompt_py[parquet]' (or pip "
            "install pyarrow), or write .jsonl/.csv/.tsv"
        ) from None
    return pa, pq


WRITERS = {"jsonl": JsonlWriter, "csv": DelimitedWriter, "tsv": TsvWriter, "parquet": ParquetWriter}


def open_writer(fmt: str, stream: BinaryIO, columns: Sequence[str], header: bool) -> RowWriter:
    return WRITERS[fmt](stream, columns, header)


def partial_format(fmt: str) -> str:
    return PARTIAL_FORMAT.get(fmt, fmt)


def convert_partial(
    fmt: str, partial: Path, out: Path, columns: Sequence[str], group_rows: int
) -> None:
    """Write the finished ``partial`` file (in ``partial_format(fmt)``) to ``out`` as ``fmt``,
    ``group_rows`` rows at a time: the same file whether or not the run was resumed."""
    assert partial_format(fmt) == "jsonl" and fmt == "parquet"
    with open_binary(partial, "partial output") as src, open(out, "wb") as dst:
        writer = ParquetWriter(dst, columns, True)
        rows: list[dict] = []
        for line in src:
            rows.append(json.loads(line))
            if len(rows) == group_rows:
                writer.write(rows)
                rows = []
        if rows:
            writer.write(rows)
        writer.close()
