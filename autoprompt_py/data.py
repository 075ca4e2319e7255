"""Reading labeled examples (TSV, CSV, JSONL) and LAMA relation facts into Example records."""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from autoprompt_py.errors import AutopromptError, shown
from autoprompt_py.template import OBJECT_FIELD, SUBJECT_FIELD
from autoprompt_py.textfile import (
    decode_utf8,
    lines,
    load_with,
    open_binary,
    parse_json,
    read_text,
    reason,
    regular_file,
)

DATA_FIX = "give the path of a .tsv/.csv/.jsonl file, e.g. examples/sentiment/dev.tsv in a checkout"


@dataclass(frozen=True)
class Example:
    """One input: its text fields by name, its gold label (a string) and where it came from."""

    fields: dict[str, str]
    label: str | None = None
    source: str = field(default="", compare=False)  # "file:line", for error messages


def read_examples(
    path: str | Path,
    label_field: str | None = "label",
    columns: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[Example]:
    """Read a .tsv, .csv or .jsonl file of labeled examples.

    Delimited files have a header row unless ``columns`` names the columns (then every row is
    data, as in AG News' test.tsv). ``label_field=None`` reads unlabeled examples.
    """
    path = regular_file(path, "data file", fix=DATA_FIX)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
    elif suffix in (".tsv", ".csv", ".txt"):
        rows = _read_delimited(path, "," if suffix == ".csv" else "\t", columns)
    else:
        raise AutopromptError(f"{path}: unknown data format {suffix!r}; use .tsv, .csv or .jsonl")
    examples = []
    where = f"{path}:"
    for line, row in rows:
        if limit is not None and len(examples) >= limit:
            break
        label = None
        if label_field is not None:
            if label_field not in row or row[label_field] in (None, ""):
                raise AutopromptError(
                    f"{path}:{line}: no label field {label_field!r} (fields: "
                    f"{_names(row)}); "
                    + (
                        _HEADERLESS
                        if columns is None and _looks_like_data(row)
                        else "choose it with --label-field"
                    )
                )
            label = _as_text(row[label_field])
        fields = {
            k: v if v.__class__ is str else _as_text(v)  # str, the common case, skips the call
            for k, v in row.items()
            if k != label_field and v is not None
        }
        examples.append(Example(fields, label, f"{where}{line}"))
    if not examples:
        raise AutopromptError(f"{path}: no examples in the file")
    return examples


def read_facts(path: str | Path, relation: str | None = None) -> dict[str, list[Example]]:
    """Read LAMA facts (``sub_label``, ``obj_label``) from a .jsonl file or a folder of P*.jsonl.

    Returns relation id (the file's stem) → examples whose label is the object.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise AutopromptError(f"{path}: no .jsonl fact files in the folder")
    else:
        files = [regular_file(path, "fact file or folder")]
    facts: dict[str, list[Example]] = {}
    for file in files:
        examples = []
        for line, row in _read_jsonl(file, "fact file"):
            for key in (SUBJECT_FIELD, OBJECT_FIELD):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise AutopromptError(
                        f"{file}:{line}: a fact needs a text field {key!r} "
                        f'(e.g. {{"sub_label": "Dante", "obj_label": "Florence"}})'
                    )
            fields = {k: _as_text(v) for k, v in row.items() if v is not None}
            examples.append(Example(fields, row[OBJECT_FIELD].strip(), f"{file}:{line}"))
        if not examples:
            raise AutopromptError(f"{file}: no facts in the file")
        facts[relation if relation and len(files) == 1 else file.stem] = examples
    return facts


def labels_of(examples: Sequence[Example]) -> list[str]:
    """The distinct labels, in order of first appearance."""
    return list(dict.fromkeys(e.label for e in examples if e.label is not None))


def check_fields(examples: Sequence[Example], fields: Sequence[str], template: str) -> None:
    """Fail on a template with no field at all, or on the first example that lacks one."""
    if not fields:
        raise AutopromptError(
            f"template {shown(template)} has no field placeholder, so every example would read "
            "the same; put the input in it, e.g. {sentence} ({{sentence}} is a literal brace)"
        )
    for e in examples:
        for name in fields:
            if name not in e.fields:
                fix = (
                    _HEADERLESS
                    if _looks_like_data(e.fields)
                    else "rename the column or the template field, or name the columns with "
                    "--columns"
                )
                raise AutopromptError(
                    f"{e.source}: no field {name!r} that template {shown(template)} needs "
                    f"(fields: {_names(e.fields) or 'none'}); {fix}"
                )


_HEADERLESS = (
    "these field names look like a row of data, so the file seems to have no header row: "
    "name its columns with --columns (e.g. --columns sentence,label)"
)


def _looks_like_data(row: dict) -> bool:
    """Field names that read as data (a sentence, a number): a header-less file whose first
    row was taken for the header."""
    names = [str(k).strip() for k in row]
    return any(
        " " in n or len(n) > 40 or n.lstrip("-").replace(".", "", 1).isdigit() for n in names
    )


def _as_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return (
        value
        if isinstance(value, str)
        else json.dumps(value)
        if isinstance(value, (list, dict))
        else str(value)
    )


def _names(row: dict) -> str:
    return shown(", ".join(map(str, row)))[1:-1]


def _read_jsonl(path: Path, what: str = "data file") -> list[tuple[int, dict]]:
    rows = []
    for line_no, line in lines(read_text(path, what)):
        if not line.strip():
            continue
        row = parse_json(line, f"{path}:{line_no}", line=False)
        if not isinstance(row, dict):
            raise AutopromptError(f"{path}:{line_no}: each line must be a JSON object")
        rows.append((line_no, row))
    return rows


def _read_delimited(
    path: Path, delimiter: str, columns: Sequence[str] | None
) -> list[tuple[int, dict]]:
    text = read_text(path, "data file")
    rows = (_tsv_rows(text) if delimiter == "\t" else None) or _csv_rows(path, text, delimiter)
    if not rows:
        raise AutopromptError(f"{path}: no examples in the file (it is empty)")
    if columns:
        header = unique_columns(columns, "--columns")
    else:
        header = unique_columns([c.strip() for c in rows[0][1]], f"{path}:{rows[0][0]}")
        rows = rows[1:]
    out = []
    for line, r in rows:
        if len(r) != len(header):
            raise AutopromptError(
                f"{path}:{line}: {len(r)} columns, but the header has {len(header)} "
                f"({_names(dict.fromkeys(header))}); fix the row or name the columns with --columns"
            )
        out.append((line, dict(zip(header, r))))
    return out


def _tsv_rows(text: str) -> list[tuple[int, list[str]]] | None:
    """The rows with text of a TSV read without quoting, as ``csv`` with QUOTE_NONE reads them
    at a tenth of its cost; None where only ``csv`` knows the rules (a NUL, a lone \\r)."""
    if "\0" in text or "\r" in text.replace("\r\n", ""):
        return None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    rows = []
    for i, line in enumerate(lines, 1):
        row = (line[:-1] if line.endswith("\r") else line).split("\t")
        if "".join(row).strip():
            rows.append((i, row))
    return rows


def _csv_rows(path: Path, text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """Rows of a delimited file with the line each starts on (quoted fields span lines)."""
    # QUOTE_NONE for TSV: SST-2 and AG News hold bare quotes that are part of the text.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows = []
    # csv refuses a cell over 128 KB; JSONL takes any length and the encoder cuts it to the
    # model's length, so delimited files do the same (the limit is csv's process-wide one)
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))
    try:
        start = 1
        for row in reader:
            if "".join(row).strip():  # a row with any text (one C call, not one per cell)
                rows.append((start, row))  # the line the row starts on (quoted fields span)
            start = reader.line_num + 1
    except csv.Error as e:  # an unclosed quote at the end
        raise AutopromptError(f"{path}:{reader.line_num}: not a valid row ({e})") from None
    finally:
        csv.field_size_limit(limit)
    return rows


# -- streaming: one row at a time, for files of any size (``autoprompt predict``) -------------

ROW_FORMATS = ("tsv", "csv", "jsonl", "parquet")


def row_format(path: str, given: str | None = None, option: str = "--data") -> str:
    """The format of a data file from ``given`` or its suffix (``-``, standard input: jsonl)."""
    if given:
        if given not in ROW_FORMATS:
            raise AutopromptError(f"--input-format {given!r}: use one of {', '.join(ROW_FORMATS)}")
        return given
    if path == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = {"json": "jsonl", "txt": "tsv"}.get(suffix, suffix)
    if fmt not in ROW_FORMATS:
        raise AutopromptError(
            f"{option} {path}: unknown data format {suffix!r}; use .tsv, .csv, .jsonl or "
            ".parquet, or name it with --input-format"
        )
    return fmt


def iter_rows(
    path: str | Path,
    fmt: str,
    columns: Sequence[str] | None = None,
    stream: BinaryIO | None = None,
) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a data file, read one row at a time (constant memory).

    ``stream`` replaces opening ``path`` (standard input). Rows are checked as ``read_examples``
    checks them: UTF-8, JSON objects, as many columns as the header.
    """
    if fmt == "parquet":
        yield from _iter_parquet(Path(path))
        return
    if stream is None:
        stream = open_binary(path, "data file")  # closed below, as the generator ends
        owned = True
    else:
        owned = False
    try:
        text = _decoded_lines(stream, str(path))
        if fmt == "jsonl":
            for line_no, line in enumerate(text, 1):
                if not line.strip():
                    continue
                row = parse_json(line, f"{path}:{line_no}", line=False)
                if not isinstance(row, dict):
                    raise AutopromptError(f"{path}:{line_no}: each line must be a JSON object")
                yield line_no, row
        else:
            yield from _iter_delimited(text, str(path), "," if fmt == "csv" else "\t", columns)
    finally:
        if owned:
            stream.close()


def _decoded_lines(stream: BinaryIO, source: str) -> Iterator[str]:
    """Lines of a byte stream as text (with their line end), refusing what is not UTF-8."""
    for line_no, raw in enumerate(stream, 1):
        if line_no == 1:
            if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                decode_utf8(raw, source)  # raises: UTF-16 (or UTF-32) text, save it as UTF-8
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise AutopromptError(
                f"{source}:{line_no}: not UTF-8 text (byte 0x{raw[e.start]:02X} at column "
                f"{e.start + 1}; Latin-1 or Windows-1252?); save it as UTF-8"
            ) from None
        yield line.removesuffix("\n").removesuffix("\r") + "\n"


def _iter_delimited(
    text: Iterator[str], path: str, delimiter: str, columns: Sequence[str] | None
) -> Iterator[tuple[int, dict]]:
    # QUOTE_NONE for TSV, as _read_delimited: bare quotes there are part of the text
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(text, delimiter=delimiter, quoting=quoting)
    header = unique_columns(columns, "--columns") if columns else None
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise AutopromptError(f"{path}:{reader.line_num}: not a valid row ({e})") from None
        line, start = start, reader.line_num + 1
        if not any(c.strip() for c in row):
            continue
        if header is None:
            header = unique_columns([c.strip() for c in row], f"{path}:{line}")
            continue
        if len(row) != len(header):
            raise AutopromptError(
                f"{path}:{line}: {len(row)} columns, but the header has {len(header)} "
                f"({_names(dict.fromkeys(header))}); fix the row or name the columns with --columns"
            )
        yield line, dict(zip(header, row))


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise AutopromptError(
            f"{path}: reading Parquet needs pyarrow; pip install 'autoprompt_py[parquet]' "
            "(or pip install pyarrow)"
        ) from None
    file = load_with(path, pq.ParquetFile, "Parquet file", "give a whole Parquet file")
    unique_columns(file.schema_arrow.names, str(path))
    number = 0
    batches = file.iter_batches(batch_size=1024)
    while True:
        try:
            batch = next(batches, None)
        except Exception as e:  # a row group cut short or damaged: pyarrow's own types
            raise AutopromptError(
                f"{path}: damaged Parquet file after row {number} ({reason(e)}); give a whole "
                "Parquet file"
            ) from None
        if batch is None:
            return
        for row in batch.to_pylist():
            number += 1
            yield number, row


def unique_columns(names: Sequence[str], source: str) -> list[str]:
    """The column names of a header (or of --columns), each named once: of two columns of one
    name a row would keep one cell and silently drop the other. The one check every tabular
    reader (TSV, CSV, Parquet; whole or streamed) makes; JSON objects: ``parse_json``."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise AutopromptError(
                f"{source}: the column {shown(name)} is named twice; only one of the two could "
                "be read: rename or remove one of them"
            )
        seen.add(name)
    return list(names)


def cell_text(value: object) -> str:
    """A cell's value as text, as the readers turn cells into fields (1.0 → "1")."""
    return _as_text(value)


def split_dev(n: int, n_dev: int, seed: int | Sequence[int]) -> tuple[list[int], list[int]]:
    """A seeded split of ``n`` rows into (dev, rest) row indices, each in the file's order:
    the first ``n_dev`` of a permutation drawn from ``numpy.random.default_rng(seed)``. The
    one dev split of the package (search: ``--dev-fraction`` of --train; probe: per relation)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[:n_dev].tolist()), sorted(order[n_dev:].tolist())
