"""``autoprompt score`` and ``autoprompt probe`` end to end on tiny models, and every bad input.

A user's mistake must give exit code 2, exactly one line on stderr starting with ``error:`` that
names the file/line/field and what to do, no traceback, and no output file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_models import MAX_LENGTH
from transformers import AutoModelForMaskedLM, AutoTokenizer, T5Config, T5ForConditionalGeneration

from autoprompt_py.cli import main
from autoprompt_py.resources import load_templates

REPO = Path(__file__).resolve().parents[1]

SST = [
    ("the movie was great , really", 1),
    ("a waste of time", 0),
    ("boring and slow", 0),
    ("i loved it", 1),
    ("the plot is a mess", 0),
    ("a beautiful , charming film", 1),
]
FACTS = {
    "P19": [
        ("Dante", "Florence"),
        ("Mozart", "Salzburg"),
        ("Einstein", "Ulm"),
        ("Galileo", "Pisa"),
        ("Goethe", "Frankfurt"),
    ],
    "P36": [
        ("France", "Paris"),
        ("Italy", "Rome"),
        ("Germany", "Berlin"),
        ("Japan", "Tokyo"),
        ("Spain", "Madrid"),
    ],
}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dirs) -> dict[str, Path]:
    """Data, verbalizer, template and model folders shared by the tests of this module."""
    root = tmp_path_factory.mktemp("cli")
    f: dict[str, Path] = {
        "root": root,
        "bert": tiny_model_dirs["bert"],
        "roberta": tiny_model_dirs["roberta"],
    }

    def write(name: str, text: str) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        f[name] = path
        return path

    write("sst.tsv", "sentence\tlabel\n" + "".join(f"{s}\t{lab}\n" for s, lab in SST))
    write(
        "sst3.tsv", "sentence\tlabel\n" + "".join(f"{s}\t{i % 3}\n" for i, (s, _) in enumerate(SST))
    )
    write(
        "long.tsv",
        "sentence\tlabel\n"
        + "".join(f"{s}\t{lab}\n" for s, lab in SST)
        + " ".join(["very"] * 90)
        + "\t1\n"
        + " ".join(["good"] * 70)
        + "\t0\n",
    )
    rows = [{"sentence": s, "label": lab} for s, lab in SST]
    rows[2] = {"text": rows[2]["sentence"], "label": 0}  # line 3 lacks the field
    write("missing.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write("nolabel.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "bad"}\n')
    write("empty.tsv", "")
    write("unk.json", json.dumps({"0": ["terrible"], "1": ["great", "☃"]}))
    write("three.json", json.dumps({"0": "terrible", "1": "great", "2": "fine"}))
    write("badjson.json", '{\n  "0": "terrible",\n  "1": great\n}\n')
    write("templates.txt", "{sentence} It was [MASK] .\n{sentence} It was good .\n")
    write("mine.txt", "{sentence} It was [MASK] .\nJust [MASK] ! {sentence}\n")
    for rel, pairs in FACTS.items():
        write(
            f"facts/{rel}.jsonl",
            "".join(
                json.dumps({"sub_label": s, "obj_label": o, "uuid": f"{rel}-{i}"}) + "\n"
                for i, (s, o) in enumerate(pairs)
            ),
        )
    write("other/P9999.jsonl", '{"sub_label": "Dante", "obj_label": "Italy"}\n')
    write(
        "badfacts/P19.jsonl",
        '{"sub_label": "Dante", "obj_label": "Florence"}\n{"sub_label": "Mozart"}\n',
    )
    write(
        "vocab.txt",
        "\n".join(o for pairs in FACTS.values() for _, o in pairs) + "\nItaly\nLondon\ncity\n",
    )

    # model folders that are not masked LMs
    (root / "empty_model").mkdir()
    f["empty_model"] = root / "empty_model"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["bert"])
    mlm = AutoModelForMaskedLM.from_pretrained(tiny_model_dirs["bert"])
    mlm.base_model.save_pretrained(root / "bare_encoder")  # BertModel: no MLM head
    tokenizer.save_pretrained(root / "bare_encoder")
    f["bare_encoder"] = root / "bare_encoder"
    t5 = T5ForConditionalGeneration(  # an encoder-decoder: refused (decoders load)
        T5Config(num_layers=1, d_model=16, d_kv=8, d_ff=16, num_heads=2, vocab_size=len(tokenizer))
    )
    t5.save_pretrained(root / "seq2seq")
    tokenizer.save_pretrained(root / "seq2seq")
    f["seq2seq"] = root / "seq2seq"
    return f


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def score_args(
    files,
    *extra,
    data="sst.tsv",
    template="{sentence} It was [MASK] .",
    verbalizer="sst2",
    model="bert",
):
    args = [
        "score",
        "--model",
        files[model],
        "--device",
        "cpu",
        "--data",
        files[data],
        "--verbalizer",
        files.get(verbalizer, verbalizer),
        "--bootstrap",
        "50",
    ]
    if template is not None:
        args += ["--template", template]
    return args + list(extra)


# --------------------------------------------------------------------------------------------
# success
# --------------------------------------------------------------------------------------------


def test_score_shipped_resources_with_predictions(files, tmp_path):
    out = tmp_path / "score.json"
    r = invoke(*score_args(files, "--output", out, "--predictions", template="sst2"))
    assert r.exit_code == 0, r.stderr
    assert "Traceback" not in r.stderr
    result = json.loads(out.read_text())
    assert result["command"] == "score"
    cfg = result["config"]
    assert cfg["templates"] == ["sst2"] and cfg["verbalizer"] == "sst2"
    assert cfg["model"] == str(files["bert"]) and cfg["seed"] == 0 and cfg["bootstrap"] == 50
    assert cfg["aggregation"] == "sum" and cfg["batch_size"] == 32
    versions = result["versions"]
    for lib in ("autoprompt_py", "torch", "transformers", "numpy", "python"):
        assert versions[lib]
    assert result["n"] == len(SST)
    assert result["verbalizer"] == {"0": ["terrible"], "1": ["great"]}
    names = {t.name for t in load_templates("sst2")}
    assert {t["name"] for t in result["templates"]} == names
    gold = [str(lab) for _, lab in SST]
    for t in result["templates"]:
        for key in (
            "accuracy",
            "accuracy_ci95",
            "macro_f1",
            "recall",
            "n",
            "truncated",
            "template",
            "multi_piece_words",
        ):
            assert key in t
        preds = t["predictions"]
        assert [p["gold"] for p in preds] == gold
        assert [p["source"] for p in preds] == [f"{files['sst.tsv']}:{i}" for i in range(2, 8)]
        assert t["accuracy"] == pytest.approx(
            sum(p["predicted"] == p["gold"] for p in preds) / len(preds)
        )
        for p in preds:
            assert p["predicted"] == ["0", "1"][p["scores"].index(max(p["scores"]))]
    # the table ranks by accuracy and names every template
    accs = [t["accuracy"] for t in result["templates"]]
    assert accs == sorted(accs, reverse=True)
    for name in names:
        assert name in r.stdout
    assert f"wrote {out}" in r.stdout


def test_score_several_templates_without_predictions(files, tmp_path):
    out = tmp_path / "score.json"
    r = invoke(
        *score_args(
            files,
            "--template",
            files["mine.txt"],
            "--aggregation",
            "mean-logit",
            "--metric",
            "macro_f1",
            "--output",
            out,
            model="roberta",
            verbalizer='{"0": ["terrible", "bad"], "1": ["great"]}',
        )
    )
    assert r.exit_code == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["ranked_by"] == "macro_f1"
    assert len(result["templates"]) == 3
    assert all("predictions" not in t for t in result["templates"])
    f1 = [t["macro_f1"] for t in result["templates"]]
    assert f1 == sorted(f1, reverse=True)


def test_long_rows_are_truncated_counted_and_reported_once(files, tmp_path):
    out = tmp_path / "score.json"
    r = invoke(*score_args(files, "--output", out, data="long.tsv"))
    assert r.exit_code == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "were cut" in line]
    assert notes == [
        f"note: {{sentence}} It was [MASK] .: 2 inputs longer than {MAX_LENGTH} "
        "tokens were cut from their shortenable field"
    ]
    assert json.loads(out.read_text())["templates"][0]["truncated"] == 2


def test_multi_piece_words_are_noted(files):
    r = invoke(*score_args(files, verbalizer='{"0": "unwatchable", "1": "fantastic"}'))
    assert r.exit_code == 0, r.stderr
    assert "note: label words split into several tokens" in r.stderr
    assert "fantastic, unwatchable" in r.stderr


def test_score_headerless_tsv_with_columns_and_shipped_agnews(files, tmp_path):
    data = tmp_path / "test.tsv"
    data.write_text(
        "Wall St. stocks rally #39;\tBusiness\nthe team won the cup\tSports\n"
        "new tech and science news\tSci/Tech\nthe world news\tWorld\n"
        "not read\tOther\n"
    )
    out = tmp_path / "agnews.json"
    r = invoke(
        "score",
        "--model",
        files["bert"],
        "--device",
        "cpu",
        "--data",
        data,
        "--columns",
        "text,label",
        "--limit",
        "4",
        "--template",
        "agnews",
        "--verbalizer",
        "agnews",
        "--output",
        out,
        "--predictions",
    )
    assert r.exit_code == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["n"] == 4
    assert len(result["templates"]) == len(load_templates("agnews"))
    preds = result["templates"][0]["predictions"]
    assert [p["gold"] for p in preds] == ["Business", "Sports", "Sci/Tech", "World"]
    assert preds[0]["source"] == f"{data}:1"


def test_inline_template_and_verbalizer_longer_than_a_file_name(files):
    # a text over 255 bytes used to crash the file lookup with ENAMETOOLONG
    template = "{sentence} " + "really " * 35 + "it was [MASK] ."
    words = [
        "terrible",
        "bad",
        "awful",
        "boring",
        "dull",
        "poor",
        "weak",
        "worst",
        "slow",
        "mess",
        "waste",
    ]
    verbalizer = json.dumps({"0": words * 3, "1": ["great", "good", "fine"] * 10})
    assert len(template) > 255 and len(verbalizer) > 255
    r = invoke(*score_args(files, template=template, verbalizer=verbalizer))
    assert r.exit_code == 0, r.stderr
    assert "rank" in r.stdout


def test_probe_shipped_relations(files, tmp_path):
    out = tmp_path / "probe.json"
    r = invoke(
        "probe",
        "--model",
        files["bert"],
        "--device",
        "cpu",
        "--facts",
        files["root"] / "facts",
        "--relations",
        "lama_trex",
        "--vocab",
        files["vocab.txt"],
        "--output",
        out,
        "--predictions",
    )
    assert r.exit_code == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["command"] == "probe"
    assert result["config"]["relations"] == ["lama_trex"]
    assert result["versions"]["transformers"]
    rels = {s["relation"]: s for s in result["relations"]}
    assert set(rels) == {"P19", "P36"}
    assert rels["P19"]["template"] == "[X] was born in [Y] ."
    assert rels["P36"]["template"] == "The capital of [X] is [Y] ."
    for rel, s in rels.items():
        assert s["facts"] == 5 and s["skipped"] == 0
        assert 0 <= s["p@1"] <= s["p@10"] <= 1 and 0 < s["mrr"] <= 1
        assert [p["obj_label"] for p in s["predictions"]] == [o for _, o in FACTS[rel]]
        vocab_size = 13  # distinct words of vocab.txt, each one token
        assert all(1 <= p["rank"] <= vocab_size and len(p["top"]) == 10 for p in s["predictions"])
        ranks = [p["rank"] for p in s["predictions"]]
        assert s["mrr"] == pytest.approx(sum(1 / x for x in ranks) / len(ranks))
    assert result["micro"]["n"] == 10
    assert result["macro"]["relations"] == 2
    assert result["macro"]["mrr"] == pytest.approx((rels["P19"]["mrr"] + rels["P36"]["mrr"]) / 2)
    assert "micro" in r.stdout and "macro" in r.stdout
    # the API gives a notebook the record the command wrote, from the same calls
    from autoprompt_py import load_model, load_templates, probe_record, probe_templates
    from autoprompt_py.data import read_facts
    from autoprompt_py.vocab import read_vocab

    probes = probe_templates(
        load_model(str(files["bert"]), device="cpu"),
        load_templates("lama_trex"),
        read_facts(str(files["root"] / "facts")),
        vocab=read_vocab(str(files["vocab.txt"])),
        batch_size=32,
        progress=False,
    )
    record = probe_record(probes, predictions=True)
    assert record == {k: result[k] for k in record}


def test_probe_one_template_for_every_relation(files):
    r = invoke(
        "probe",
        "--model",
        files["roberta"],
        "--device",
        "cpu",
        "--facts",
        files["root"] / "facts",
        "--template",
        "[X] is in [Y] .",
    )
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("[X] is in [Y] .") == 2


def test_probe_notes_relations_without_a_template(files):
    r = invoke(
        "probe",
        "--model",
        files["bert"],
        "--device",
        "cpu",
        "--facts",
        files["root"] / "other",
        "--relations",
        "lama_trex",
        "--template",
        "[X] is in [Y] .",
    )
    assert r.exit_code == 0, r.stderr
    r = invoke(
        "probe", "--model", files["bert"], "--device", "cpu", "--facts", files["root"] / "other"
    )
    assert r.exit_code == 2
    assert r.stderr.startswith("error: no relation of the facts has a template")


# --------------------------------------------------------------------------------------------
# bad input: exit 2, one line, no traceback, no output file
# --------------------------------------------------------------------------------------------

BAD_SCORE = {
    "template without prediction slot": (
        dict(template="{sentence} It was ."),
        ["'{sentence} It was .' has no prediction slot", "write exactly one [P]"],
    ),
    "template with an unknown field": (
        dict(template="{sentence} {topic} It was [MASK] ."),
        ["{sst.tsv}:2: no field 'topic'", "rename the column or the template field"],
    ),
    "template with an unknown marker": (
        dict(template="{sentence} It was [MASK] [Z] ."),
        ["unknown marker [Z]"],
    ),
    "template with an unknown field option": (
        dict(template="{sentence:bold} It was [MASK] ."),
        ["unknown field option 'bold'"],
    ),
    "template with an unmatched brace": (
        dict(template="{sentence It was [MASK] ."),
        ["unmatched '{'", "{{"],
    ),
    "template file line": (
        dict(template="{templates.txt}"),
        ["{templates.txt}:2: ", "has no prediction slot"],
    ),
    "field missing in a data row": (
        dict(data="missing.jsonl"),
        ["{missing.jsonl}:3: no field 'sentence'", "(fields: text)"],
    ),
    "row without a label": (
        dict(data="nolabel.jsonl"),
        ["{nolabel.jsonl}:2: no label field 'label'", "--label-field"],
    ),
    "one word for two labels": (
        dict(verbalizer='{"0": ["terrible", "fine"], "1": ["great", "fine"]}'),
        ["--verbalizer: word 'fine' is given for labels '0' and '1'", "its own words"],
    ),
    "data label the verbalizer lacks": (
        dict(data="sst3.tsv"),
        ["{sst3.tsv}: labels '2' are not in", "add them to the verbalizer"],
    ),
    "verbalizer word that is the unknown token": (
        dict(verbalizer="unk.json"),
        ["{unk.json}: word '☃' of label '1' maps to the unknown token", "choose another word"],
    ),
    "verbalizer file that is not JSON": (
        dict(verbalizer="badjson.json"),
        ["{badjson.json}:3: not valid JSON"],
    ),
    "unknown verbalizer": (dict(verbalizer="nonesuch"), ["--verbalizer 'nonesuch': not a file"]),
    "empty data file": (dict(data="empty.tsv"), ["--data {empty.tsv}: an empty file (0 bytes)"]),
    "empty model folder": (
        dict(model="empty_model"),
        ["--model {empty_model}: this folder is not a model"],
    ),
    "bare encoder without an MLM head": (
        dict(model="bare_encoder"),
        ["--model {bare_encoder}:", "masked LM", "MLM head"],
    ),
    "encoder-decoder folder": (
        dict(model="seq2seq"),
        ["--model {seq2seq}: T5ForConditionalGeneration is an encoder-decoder", "decoders"],
    ),
    "template longer than the model allows": (
        dict(template="{sentence} " + "very " * 70 + "[MASK] ."),
        ["{sst.tsv}:2: template", "more than the model's 64", "shorter template"],
    ),
    "open trigger slots": (
        dict(template="{sentence} [T] [T] [MASK] ."),
        ["has 2 open trigger slots [T]"],
    ),
}


def _format(text: str, files) -> str:
    for key, value in files.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def _check_error(r, out: Path, expected: list[str], files) -> None:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in r.stderr
    assert r.stdout == ""  # no partial table either
    for part in expected:
        assert _format(part, files) in lines[0], (part, lines[0])
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))  # no temporary file left behind


@pytest.mark.parametrize("case", list(BAD_SCORE))
def test_score_bad_input(case, files, tmp_path):
    kw, expected = BAD_SCORE[case]
    if "template" in kw:
        kw = dict(kw, template=_format(kw["template"], files))
    out = tmp_path / "out.json"
    r = invoke(*score_args(files, "--output", out, **kw))
    _check_error(r, out, expected, files)


def test_score_output_in_a_missing_directory(files, tmp_path):
    out = tmp_path / "nope" / "out.json"
    r = invoke(*score_args(files, "--output", out))
    _check_error(r, out, [f"--output {out}: the folder", "does not exist; create it first"], files)
    assert not out.parent.exists()


def test_probe_bad_input(files, tmp_path):
    out = tmp_path / "out.json"
    base = ["probe", "--model", files["bert"], "--device", "cpu", "--output", out]
    r = invoke(*base, "--facts", files["root"] / "badfacts")
    _check_error(
        r,
        out,
        [f"{files['root'] / 'badfacts' / 'P19.jsonl'}:2: a fact needs a text field 'obj_label'"],
        files,
    )
    r = invoke(*base, "--facts", files["root"] / "facts", "--template", "It is [Y] .")
    _check_error(r, out, ["has no subject slot [X]"], files)
    r = invoke(*base, "--facts", files["root"] / "nope")
    _check_error(r, out, ["no such fact file or folder"], files)
    r = invoke(*base, "--facts", files["root"] / "facts", "--vocab", files["root"] / "nope.txt")
    _check_error(r, out, ["no such vocabulary file"], files)
    missing = tmp_path / "nope" / "out.json"
    r = invoke(*base[:-1], missing, "--facts", files["root"] / "facts")
    _check_error(r, missing, ["does not exist; create it first"], files)


# --------------------------------------------------------------------------------------------
# a real process: exit code and stderr as a user sees them
# --------------------------------------------------------------------------------------------


def _run(*args) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return subprocess.run(
        [sys.executable, "-m", "autoprompt_py", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_subprocess_bad_input_and_success(files, tmp_path):
    out = tmp_path / "out.json"
    p = _run(*score_args(files, "--output", out, data="missing.jsonl"))
    assert p.returncode == 2, p.stderr
    assert p.stderr.splitlines() == [
        f"error: {files['missing.jsonl']}:3: no field 'sentence' that template "
        "'{sentence} It was [MASK] .' needs (fields: text); rename the column or the "
        "template field, or name the columns with --columns"
    ]
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert not out.exists()

    p = _run(*score_args(files, "--output", out, "--predictions", template="sst2"))
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    result = json.loads(out.read_text())
    assert len(result["templates"]) == len(load_templates("sst2"))
    assert len(result["templates"][0]["predictions"]) == len(SST)
