"""Reading labeled examples (TSV, CSV, JSONL) and LAMA facts; errors name the file and line."""

from __future__ import annotations

import json

import pytest

from autoprompt_py.data import Example, check_fields, labels_of, read_examples, read_facts
from autoprompt_py.errors import AutopromptError


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_with_header_keeps_quotes_and_trailing_space(tmp_path):
    path = _write(
        tmp_path / "dev.tsv",
        'sentence\tlabel\nit \'s a "charming" film \t1\n\nbad , bad movie \t0\n',
    )
    examples = read_examples(path)
    assert examples == [
        Example({"sentence": 'it \'s a "charming" film '}, "1"),
        Example({"sentence": "bad , bad movie "}, "0"),
    ]
    assert [e.source for e in examples] == [f"{path}:2", f"{path}:4"]  # blank line 3 skipped
    assert labels_of(examples) == ["1", "0"]


def test_tsv_without_header_via_columns(tmp_path):
    path = _write(tmp_path / "test.tsv", "Wall St. rallies #39;\tBusiness\nGoal!\tSports\n")
    examples = read_examples(path, columns=["text", "label"])
    assert [(e.fields, e.label) for e in examples] == [
        ({"text": "Wall St. rallies #39;"}, "Business"),
        ({"text": "Goal!"}, "Sports"),
    ]
    assert examples[0].source == f"{path}:1"


def test_csv_with_quotes(tmp_path):
    path = _write(
        tmp_path / "data.csv", 'text,label\n"Hello, world",pos\n"She said ""no""",neg\nplain,pos\n'
    )
    examples = read_examples(path)
    assert [e.fields["text"] for e in examples] == ["Hello, world", 'She said "no"', "plain"]
    assert [e.label for e in examples] == ["pos", "neg", "pos"]


def test_jsonl_with_int_labels_and_other_fields(tmp_path):
    rows = [
        {"sentence": "good", "label": 1, "idx": 7},
        {"sentence": "bad", "label": 0, "score": 2.0, "tags": ["a"]},
        {"sentence": "ok", "label": 1.0},
    ]
    path = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    examples = read_examples(path)
    assert [e.label for e in examples] == ["1", "0", "1"]
    assert examples[0].fields == {"sentence": "good", "idx": "7"}
    assert examples[1].fields == {"sentence": "bad", "score": "2", "tags": '["a"]'}
    assert labels_of(examples) == ["1", "0"]


def test_unlabeled_and_limit(tmp_path):
    path = _write(tmp_path / "d.tsv", "text\na\nb\nc\n")
    examples = read_examples(path, label_field=None, limit=2)
    assert [(e.fields["text"], e.label) for e in examples] == [("a", None), ("b", None)]


def test_lama_facts_file_and_folder(tmp_path):
    folder = tmp_path / "facts"
    folder.mkdir()
    _write(
        folder / "P19.jsonl",
        '{"sub_label": "Dante", "obj_label": "Florence", "uuid": "u1"}\n'
        '{"sub_label": "Mozart", "obj_label": " Salzburg "}\n',
    )
    _write(folder / "P36.jsonl", '{"sub_label": "France", "obj_label": "Paris"}\n')
    _write(folder / "notes.txt", "not facts\n")
    facts = read_facts(folder)
    assert list(facts) == ["P19", "P36"]
    dante = facts["P19"][0]
    assert dante.fields == {"sub_label": "Dante", "obj_label": "Florence", "uuid": "u1"}
    assert dante.label == "Florence"
    assert dante.source == f"{folder / 'P19.jsonl'}:1"
    assert facts["P19"][1].label == "Salzburg"
    one = read_facts(folder / "P36.jsonl")
    assert list(one) == ["P36"]
    assert list(read_facts(folder / "P36.jsonl", relation="capital")) == ["capital"]


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def _error(call, *args, **kw) -> str:
    with pytest.raises(AutopromptError) as info:
        call(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_missing_and_unknown_files(tmp_path):
    assert "no such data file" in _error(read_examples, tmp_path / "nope.tsv")
    path = _write(tmp_path / "d.xml", "<a/>")
    assert "unknown data format '.xml'" in _error(read_examples, path)
    assert "no such fact file or folder" in _error(read_facts, tmp_path / "nope")
    (tmp_path / "empty_dir").mkdir()
    assert "no .jsonl fact files" in _error(read_facts, tmp_path / "empty_dir")


@pytest.mark.parametrize("name", ["empty.tsv", "empty.csv", "empty.jsonl"])
def test_empty_files(tmp_path, name):
    path = _write(tmp_path / name, "")
    msg = _error(read_examples, path)
    assert msg.startswith(f"{path}: no examples")


def test_header_only_file(tmp_path):
    path = _write(tmp_path / "h.tsv", "sentence\tlabel\n")
    assert _error(read_examples, path).startswith(f"{path}: no examples")


def test_bad_json_line(tmp_path):
    path = _write(tmp_path / "d.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": "b",\n')
    assert _error(read_examples, path).startswith(f"{path}:2: not valid JSON")
    path = _write(tmp_path / "e.jsonl", '{"sentence": "a", "label": 1}\n["b", 0]\n')
    assert _error(read_examples, path).startswith(f"{path}:2: each line must be a JSON object")


def test_wrong_number_of_columns(tmp_path):
    path = _write(tmp_path / "d.tsv", "sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    msg = _error(read_examples, path)
    assert msg.startswith(f"{path}:3: 3 columns, but the header has 2")
    assert "--columns" in msg


def test_missing_label(tmp_path):
    path = _write(tmp_path / "d.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": "b"}\n')
    msg = _error(read_examples, path)
    assert msg.startswith(f"{path}:2: no label field 'label'")
    assert "--label-field" in msg
    path = _write(tmp_path / "d.tsv", "text\tgold\na\t1\n")
    assert _error(read_examples, path).startswith(f"{path}:2: no label field 'label'")


def test_missing_field_names_the_row(tmp_path):
    path = _write(
        tmp_path / "d.jsonl", '{"sentence": "a", "label": 1}\n\n{"text": "b", "label": 0}\n'
    )
    examples = read_examples(path)
    msg = _error(check_fields, examples, ["sentence"], "{sentence} It was [MASK] .")
    assert msg.startswith(f"{path}:3: no field 'sentence'")
    assert "'{sentence} It was [MASK] .'" in msg
    assert "(fields: text)" in msg


def test_bad_facts(tmp_path):
    path = _write(
        tmp_path / "P1.jsonl",
        '{"sub_label": "a", "obj_label": "b"}\n{"sub_label": "a", "obj_label": ""}\n',
    )
    assert _error(read_facts, path).startswith(f"{path}:2: a fact needs a text field 'obj_label'")
    path = _write(tmp_path / "P2.jsonl", '{"obj_label": "b"}\n')
    assert _error(read_facts, path).startswith(f"{path}:1: a fact needs a text field 'sub_label'")
    path = _write(tmp_path / "P3.jsonl", "\n")
    assert _error(read_facts, path).startswith(f"{path}: no facts")


@pytest.mark.parametrize(
    "text",
    [
        'sentence\tlabel\na "quoted" one\t1\n\n  \t \nlast\t0',  # quotes, blank rows, no final \n
        "sentence\tlabel\r\nwindows\t1\r\nlines\t0\r\n",
        "sentence\tlabel\nlone\rreturn\t1\n",  # a lone \r: csv's own line rules
        "sentence\tlabel\nnul\x00inside\t1\n",  # csv's own error
        "sentence\tlabel\n  spaced  \t 1 \n\t\nx\t0\n",
    ],
)
def test_tsv_reads_as_csv_does(tmp_path, text):
    # TSVs are split without the csv module when nothing in them needs it: the same rows
    from autoprompt_py.data import _csv_rows, _tsv_rows

    fast = _tsv_rows(text)
    if "\x00" in text or "lone" in text:
        assert fast is None  # left to csv
    else:
        assert fast == _csv_rows(tmp_path / "d.tsv", text, "\t")
