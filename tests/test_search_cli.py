"""``autoprompt search`` and ``autoprompt labels`` end to end on tiny models, and bad input.

A user's mistake gives exit code 2, one line on stderr starting with ``error:``, no traceback,
and neither a result nor a checkpoint file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoprompt_py.cli import main
from autoprompt_py.search import TriggerSearch

SST = [
    ("the movie was great , really", 1),
    ("a waste of time", 0),
    ("boring and slow", 0),
    ("i loved it", 1),
    ("the plot is a mess", 0),
    ("a beautiful , charming film", 1),
    ("the acting is weak", 0),
    ("fun and lovely music", 1),
    ("the worst script ever", 0),
    ("a brilliant ending", 1),
    ("dull , long and poor", 0),
    ("we loved every minute", 1),
]
FACTS = [
    ("dante", "florence"),
    ("mozart", "salzburg"),
    ("einstein", "ulm"),
    ("galileo", "pisa"),
    ("goethe", "frankfurt"),
    ("france", "paris"),
    ("italy", "rome"),
    ("spain", "madrid"),
    ("japan", "tokyo"),
    ("darwin", "fantastic"),
]
TEMPLATE = "{sentence} [T] [T] [P] ."


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dirs) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("search_cli")
    f: dict[str, Path] = {"bert": tiny_model_dirs["bert"], "roberta": tiny_model_dirs["roberta"]}

    def write(name: str, text: str) -> None:
        f[name] = root / name
        f[name].write_text(text, encoding="utf-8")

    write("train.tsv", "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in SST))
    write("dev.tsv", "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in SST[:6]))
    write("empty.tsv", "")
    write("header_only.tsv", "sentence\tlabel\n")
    write("text.tsv", "text\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in SST))
    write(
        "P19.jsonl", "".join(json.dumps({"sub_label": s, "obj_label": o}) + "\n" for s, o in FACTS)
    )
    write(
        "P99.jsonl",
        json.dumps({"sub_label": "darwin", "obj_label": "fantastic"})
        + "\n"
        + json.dumps({"sub_label": "dante", "obj_label": "unwatchable"})
        + "\n",
    )
    write("vocab.txt", "\n".join(o for _, o in FACTS) + "\n")
    write("stop.txt", "the\nmovie\n")
    return f


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def search_args(
    files,
    out,
    *extra,
    template=TEMPLATE,
    model="bert",
    verbalizer="sst2",
    train="train.tsv",
    dev="dev.tsv",
):
    args = [
        "search",
        "--model",
        files[model],
        "--device",
        "cpu",
        "--train",
        files[train],
        "--template",
        template,
        "--iters",
        "3",
        "--batch-size",
        "4",
        "--accumulation-steps",
        "1",
        "--num-cand",
        "3",
        "--output",
        out,
        "--quiet",
    ]
    if dev is not None:
        args += ["--dev", files.get(dev, dev)]
    if verbalizer is not None:
        args += ["--verbalizer", files.get(verbalizer, verbalizer)]
    return args + list(extra)


def assert_user_error(r, *fragments, absent=()):
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    for path in absent:
        assert not Path(path).exists(), path
        assert not Path(str(path) + ".ckpt").exists(), path


# --------------------------------------------------------------------------------------------
# success
# --------------------------------------------------------------------------------------------


def test_search_then_score_the_result(files, tmp_path):
    out = tmp_path / "trigger.json"
    r = invoke(*search_args(files, out, "--stop-list", files["stop.txt"], "--seed", "5"))
    assert r.exit_code == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["kind"] == "autoprompt-search" and result["mode"] == "classification"
    assert result["config"]["seed"] == 5 and result["config"]["model"] == str(files["bert"])
    assert result["filters"]["stop_words"] == ["movie", "the"]
    assert not {"the", "movie"} & set(result["trigger"]["words"])
    assert len(result["history"]) == 3 and Path(str(out) + ".ckpt").is_file()
    assert result["prompt"] in r.stdout and f"wrote {out}" in r.stdout
    scored = tmp_path / "score.json"
    r = invoke(
        "score",
        "--model",
        files["bert"],
        "--device",
        "cpu",
        "--data",
        files["dev.tsv"],
        "--template",
        out,
        "--verbalizer",
        "sst2",
        "--output",
        scored,
        "--bootstrap",
        "10",
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(scored.read_text())["templates"][0]["accuracy"] == pytest.approx(
        result["dev"]["accuracy"]
    )


def test_resume_on_the_command_line(files, tmp_path):
    out = tmp_path / "r.json"
    assert invoke(*search_args(files, out)).exit_code == 0
    r = invoke(*search_args(files, out, "--resume"), "--iters", "5")
    assert r.exit_code == 0, r.stderr
    history = json.loads(out.read_text())["history"]
    assert [h["iteration"] for h in history] == [1, 2, 3, 4, 5]
    whole = tmp_path / "whole.json"
    assert invoke(*search_args(files, whole), "--iters", "5").exit_code == 0
    assert json.loads(whole.read_text())["history"] == history


def test_relation_search_with_vocab_and_split_dev(files, tmp_path):
    out = tmp_path / "p19.json"
    r = invoke(
        *search_args(
            files,
            out,
            "--vocab",
            files["vocab.txt"],
            "--dev-fraction",
            "0.3",
            template="[X] [T] [T] [T] [Y] .",
            train="P19.jsonl",
            dev=None,
            verbalizer=None,
            model="roberta",
        )
    )
    assert r.exit_code == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["mode"] == "relation" and result["relation"] == "P19"
    assert result["metric"] == "p@1" and "p@1" in result["dev"]
    assert result["verbalizer"] is None
    assert result["data"]["dev"]["source"].startswith("0.3 of")
    skipped = result["data"]["train"]["skipped"] + result["data"]["dev"]["skipped"]
    assert skipped == 1  # "fantastic" is two tokens
    assert result["prompt"].startswith("[X] ") and result["prompt"].endswith(" [Y] .")


def test_labels_writes_a_verbalizer_that_search_reads(files, tmp_path):
    verbalizer = tmp_path / "auto.json"
    r = invoke(
        "labels",
        "--model",
        files["bert"],
        "--device",
        "cpu",
        "--train",
        files["train.tsv"],
        "--template",
        TEMPLATE,
        "--trigger",
        "movie film",
        "--per-class",
        "2",
        "--output",
        verbalizer,
    )
    assert r.exit_code == 0, r.stderr
    words = json.loads(verbalizer.read_text())
    assert sorted(words) == ["0", "1"] and all(len(w) == 2 for w in words.values())
    assert "classifier train accuracy" in r.stdout
    # the verbalizer holds words only; what made it is recorded beside it
    record = json.loads((tmp_path / "auto.json.run.json").read_text())
    assert record["command"] == "labels" and record["config"]["per_class"] == 2
    assert record["config"]["trigger"] == "movie film" and "torch" in record["versions"]
    assert record["model"]["kind"] == "masked"
    assert {label: list(s) for label, s in record["scores"].items()} == words
    out = tmp_path / "t.json"
    r = invoke(*search_args(files, out, verbalizer=verbalizer))
    assert r.exit_code == 0, r.stderr
    assert json.loads(out.read_text())["verbalizer"] == words


def test_ctrl_c_writes_the_best_so_far_and_exits_130(files, tmp_path, monkeypatch):
    original = TriggerSearch.step
    calls = {"n": 0}

    def step(self, state):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, state)

    monkeypatch.setattr(TriggerSearch, "step", step)
    out = tmp_path / "r.json"
    r = invoke(*search_args(files, out))
    assert r.exit_code == 130
    assert "continue with --resume" in r.stderr and "Traceback" not in r.stderr
    result = json.loads(out.read_text())
    assert result["stopped"] == "interrupted" and result["iterations"] == 1
    monkeypatch.setattr(TriggerSearch, "step", original)
    r = invoke(*search_args(files, out, "--resume"))
    assert r.exit_code == 0
    assert json.loads(out.read_text())["iterations"] == 3


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_template_without_trigger_slots(files, tmp_path):
    out = tmp_path / "r.json"
    r = invoke(*search_args(files, out, template="{sentence} It was [P] ."))
    assert_user_error(r, "no trigger slot [T]", absent=[out])


def test_more_triggers_than_fit(files, tmp_path):
    out = tmp_path / "r.json"
    r = invoke(*search_args(files, out, template="{sentence} " + "[T] " * 70 + "[P] ."))
    assert_user_error(r, "more than the model's 64", "fewer trigger tokens", absent=[out])


@pytest.mark.parametrize(
    "train,dev,message",
    [
        ("empty.tsv", "dev.tsv", "--train"),
        ("train.tsv", "empty.tsv", "--dev"),
        ("header_only.tsv", "dev.tsv", "no examples"),
    ],
)
def test_empty_train_or_dev(files, tmp_path, train, dev, message):
    out = tmp_path / "r.json"
    r = invoke(*search_args(files, out, train=train, dev=dev))
    # a 0-byte file is refused while the options are read, naming the option
    empty = "an empty file (0 bytes)" if message.startswith("--") else message
    assert_user_error(r, message, empty, absent=[out])


def test_resume_with_another_template_is_refused(files, tmp_path):
    out = tmp_path / "r.json"
    assert invoke(*search_args(files, out)).exit_code == 0
    before = out.read_text()
    r = invoke(*search_args(files, out, "--resume", template="{sentence} [T] [T] [T] [P] ."))
    assert_user_error(r, "--resume", "another template")
    assert out.read_text() == before
    missing = tmp_path / "never.json"
    r = invoke(*search_args(files, missing, "--resume"))
    assert_user_error(r, "no checkpoint", absent=[missing])


@pytest.mark.parametrize(
    "extra,fragments",
    [
        (dict(train="text.tsv"), ["no field 'sentence'", "text.tsv:2"]),
        (
            dict(verbalizer='{"0": "bad", "1": ["good", "bad"]}'),
            ["word 'bad' is given for labels '0' and '1'"],
        ),
        (dict(verbalizer='{"0": "bad", "1": "☃"}'), ["unknown token", "'☃'"]),
        (dict(verbalizer=None), ["needs --verbalizer"]),
        (dict(template="{sentence} [T] [T] [P] [P]"), ["2 prediction slots"]),
    ],
)
def test_core_input_errors(files, tmp_path, extra, fragments):
    out = tmp_path / "r.json"
    r = invoke(*search_args(files, out, **extra))
    assert_user_error(r, *fragments, absent=[out])


def test_output_folder_missing_and_bad_initial_trigger(files, tmp_path):
    out = tmp_path / "no" / "such" / "r.json"
    assert_user_error(invoke(*search_args(files, out)), "does not exist")
    assert_user_error(invoke(*search_args(files, tmp_path)), "is a folder")
    out = tmp_path / "r.json"
    r = invoke(*search_args(files, out, "--initial-trigger", "movie"))
    assert_user_error(r, "1 token for the 2 trigger slots", absent=[out])
    r = invoke(*search_args(files, out, "--initial-trigger", "movie fantastic"))
    assert_user_error(r, "'fantastic' is not one token", absent=[out])


def test_relation_errors(files, tmp_path):
    out = tmp_path / "r.json"
    common = dict(template="[X] [T] [Y] .", dev=None, verbalizer=None)
    r = invoke(*search_args(files, out, train="P99.jsonl", **common))
    assert_user_error(r, "too few to split off a dev set", absent=[out])
    r = invoke(*search_args(files, out, "--dev", files["P99.jsonl"], train="P99.jsonl", **common))
    assert_user_error(r, "one token of this model's vocabulary", absent=[out])
    r = invoke(*search_args(files, out, train="P19.jsonl", **{**common, "verbalizer": "sst2"}))
    assert_user_error(r, "--verbalizer is for classification", absent=[out])


def test_labels_errors(files, tmp_path):
    out = tmp_path / "v.json"
    base = [
        "labels",
        "--model",
        files["bert"],
        "--device",
        "cpu",
        "--train",
        files["train.tsv"],
        "--output",
        out,
    ]
    r = invoke(*base, "--template", TEMPLATE, "--trigger", "movie")
    assert_user_error(r, "--trigger", "1 token for the 2 trigger slots", absent=[out])
    r = invoke(*base, "--template", TEMPLATE, "--label-field", "nope")
    assert_user_error(r, "no label field 'nope'", absent=[out])


def test_an_existing_result_is_kept_unless_resume_or_force(files, tmp_path):
    out = tmp_path / "r.json"
    assert invoke(*search_args(files, out, "--iters", "1")).exit_code == 0
    before = out.read_bytes(), Path(f"{out}.ckpt").read_bytes()
    r = invoke(*search_args(files, out, "--iters", "1"))
    assert_user_error(r, f"--output {out} already exists", "--resume", "--force")
    assert (out.read_bytes(), Path(f"{out}.ckpt").read_bytes()) == before
    out.unlink()  # a checkpoint alone is kept too
    r = invoke(*search_args(files, out, "--iters", "1"))
    assert_user_error(r, f"--checkpoint {out}.ckpt already exists", "--resume", "--force")
    r = invoke(*search_args(files, out, "--iters", "2", "--resume"))
    assert r.exit_code == 0, r.stderr
    assert json.loads(out.read_text())["iterations"] == 2
    r = invoke(*search_args(files, out, "--iters", "1", "--force"))
    assert r.exit_code == 0, r.stderr
    assert json.loads(out.read_text())["iterations"] == 1
    labels = ["labels", "--model", files["bert"], "--device", "cpu", "--train", files["train.tsv"]]
    labels += ["--template", TEMPLATE, "--per-class", "1", "--output", tmp_path / "v.json"]
    assert invoke(*labels).exit_code == 0
    assert_user_error(invoke(*labels), "v.json already exists", "--force")
    assert invoke(*labels, "--force").exit_code == 0


def test_each_warning_prints_once(files, tmp_path):
    one_label = tmp_path / "ones.tsv"
    one_label.write_text("sentence\tlabel\n" + "".join(f"{s}\t1\n" for s, y in SST if y == 1))
    files = {**files, "ones.tsv": one_label}
    out = tmp_path / "w.json"
    r = invoke(*search_args(files, out, "--time-budget", "1e-9", train="ones.tsv"))
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("allowed no iteration") == 1, r.stderr
    assert r.stderr.count("never occur in") == 1, r.stderr
    assert all(line.startswith("warning: ") for line in r.stderr.splitlines()), r.stderr
