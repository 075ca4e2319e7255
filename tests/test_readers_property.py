"""Property tests of every reader: random bytes, text in other encodings and random TSV/JSONL
shapes give a result or an AutopromptError, never another exception."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoprompt_py.data import read_examples, read_facts
from autoprompt_py.errors import AutopromptError
from autoprompt_py.prompt import read_result
from autoprompt_py.resources import load_templates
from autoprompt_py.results import read_json
from autoprompt_py.search import read_stop_list
from autoprompt_py.search.state import load_checkpoint
from autoprompt_py.verbalizer import Verbalizer
from autoprompt_py.vocab import read_vocab

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# file name → the reader, as the commands call it
READERS: dict[str, Callable[[Path], object]] = {
    "data.tsv": lambda p: read_examples(p),
    "data.csv": lambda p: read_examples(p),
    "data.jsonl": lambda p: read_examples(p),
    "headerless.tsv": lambda p: read_examples(p, columns=["sentence", "label"]),
    "P19.jsonl": lambda p: read_facts(p),
    "vocab.txt": read_vocab,
    "stop.txt": read_stop_list,
    "verbalizer.json": Verbalizer.from_file,
    "templates.txt": lambda p: load_templates(str(p)),
    "templates.jsonl": lambda p: load_templates(str(p), "--relations"),
    "result.json": lambda p: load_templates(str(p)),
    "found.json": read_result,
    "any.json": read_json,
    "r.json.ckpt": lambda p: load_checkpoint(p, {"model": {"vocab_size": 10}}),
}


def only_user_errors(name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            READERS[name](path)
        except AutopromptError as e:
            assert "\n" not in str(e), str(e)  # the CLI prints it as one line


@pytest.mark.parametrize("name", list(READERS))
@SETTINGS
@given(data=st.binary(max_size=300))
def test_random_bytes(name, data):
    only_user_errors(name, data)


# inputs that broke naive readers: deep nesting (RecursionError), a huge integer (ValueError),
# a field over csv's limit (csv.Error), NUL bytes, a lone surrogate, a UTF-32 byte order mark
TRAPS = [
    b"[" * 100_000,
    b'{"sentence": ' + b"9" * 5000 + b', "label": 1}',
    b"sentence\tlabel\n" + b"x" * 200_000 + b"\t1\n",
    b'sentence,label\n"unclosed,1\n',
    b"sentence\tlabel\na\x00b\t1\n",
    b'{"sentence": "\\ud800", "label": "\\udfff", "template": "\\ud800 [P]"}\n',
    b"\xff\xfe\x00\x00s\x00\x00\x00",
]


@pytest.mark.parametrize("name", list(READERS))
@pytest.mark.parametrize("trap", range(len(TRAPS)))
def test_known_traps(name, trap):
    only_user_errors(name, TRAPS[trap])


TEXT = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Z", "Cc")), max_size=120
)


@pytest.mark.parametrize("name", list(READERS))
@SETTINGS
@given(text=TEXT, encoding=st.sampled_from(["latin-1", "cp1252", "utf-16", "utf-8-sig"]))
def test_text_in_other_encodings(name, text, encoding):
    data = text.encode(encoding, errors="replace")
    only_user_errors(name, data)


CELL = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@pytest.mark.parametrize("suffix,sep", [(".tsv", "\t"), (".csv", ",")])
@SETTINGS
@given(rows=st.lists(st.lists(CELL, min_size=0, max_size=4), max_size=6))
def test_random_delimited_shapes(suffix, sep, rows):
    text = "\n".join(sep.join(row) for row in rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d{suffix}"
        path.write_text(text, encoding="utf-8")
        try:
            examples = read_examples(path)
        except AutopromptError:
            return
        assert all(isinstance(e.label, str) for e in examples)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | CELL,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(CELL, inner, max_size=3),
    max_leaves=8,
)


@pytest.mark.parametrize("reader", ["examples", "facts", "templates", "verbalizer"])
@SETTINGS
@given(
    rows=st.lists(
        st.one_of(
            st.dictionaries(
                st.sampled_from(["sentence", "label", "sub_label", "obj_label", "template"]),
                JSON,
            ),
            JSON,
        ),
        max_size=5,
    )
)
def test_random_jsonl_shapes(reader, rows):
    text = "\n".join(json.dumps(r) for r in rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("P1.jsonl" if reader != "verbalizer" else "v.json")
        path.write_text(text if reader != "verbalizer" else json.dumps(rows[:1] and rows[0]))
        call = {
            "examples": lambda: read_examples(path),
            "facts": lambda: read_facts(path),
            "templates": lambda: load_templates(str(path)),
            "verbalizer": lambda: Verbalizer.from_file(path),
        }[reader]
        try:
            call()
        except AutopromptError:
            pass
