"""Reading labeled examples (TSV, CSV, JSONL) and LAMA relation facts into Example records."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autoprompt_py.errors import AutopromptError, shown
from autoprompt_py.template import OBJECT_FIELD, SUBJECT_FIELD
from autoprompt_py.textfile import lines, parse_json, read_text


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
    path = Path(path)
    if not path.exists():
        raise AutopromptError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
    elif suffix in (".tsv", ".csv", ".txt"):
        rows = _read_delimited(path, "," if suffix == ".csv" else "\t", columns)
    else:
        raise AutopromptError(f"{path}: unknown data format {suffix!r}; use .tsv, .csv or .jsonl")
    examples = []
    for line, row in rows:
        if limit is not None and len(examples) >= limit:
            break
        label = None
        if label_field is not None:
            if label_field not in row or row[label_field] in (None, ""):
                raise AutopromptError(
                    f"{path}:{line}: no label field {label_field!r} (fields: "
                    f"{_names(row)}); choose it with --label-field"
                )
            label = _as_text(row[label_field])
        fields = {k: _as_text(v) for k, v in row.items() if k != label_field and v is not None}
        examples.append(Example(fields, label, f"{path}:{line}"))
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
    elif path.is_file():
        files = [path]
    else:
        raise AutopromptError(f"{path}: no such fact file or folder")
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
                raise AutopromptError(
                    f"{e.source}: no field {name!r} that template {shown(template)} needs "
                    f"(fields: {_names(e.fields) or 'none'}); rename the column or the "
                    "template field, or name the columns with --columns"
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
    # QUOTE_NONE for TSV: SST-2 and AG News hold bare quotes that are part of the text.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows = []
    try:
        start = 1
        for row in reader:
            if any(c.strip() for c in row):
                rows.append((start, row))  # the line the row starts on (quoted fields span)
            start = reader.line_num + 1
    except csv.Error as e:  # a field over csv's size limit, an unclosed quote at the end
        raise AutopromptError(f"{path}:{reader.line_num}: not a valid row ({e})") from None
    if not rows:
        raise AutopromptError(f"{path}: no examples in the file (it is empty)")
    if columns:
        header = list(columns)
    else:
        header = [c.strip() for c in rows[0][1]]
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


def split_dev(n: int, n_dev: int, seed: int | Sequence[int]) -> tuple[list[int], list[int]]:
    """A seeded split of ``n`` rows into (dev, rest) row indices, each in the file's order:
    the first ``n_dev`` of a permutation drawn from ``numpy.random.default_rng(seed)``. The
    one dev split of the package (search: ``--dev-fraction`` of --train; probe: per relation)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[:n_dev].tolist()), sorted(order[n_dev:].tolist())
