"""``autoprompt predict``: equal to ``score``/``probe`` per row, streamed, resumable, sharded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from optional import requires

from autoprompt_py.cli import main
from autoprompt_py.data import read_examples
from autoprompt_py.errors import AutopromptError
from autoprompt_py.evaluation import score_prompts
from autoprompt_py.model import load_model
from autoprompt_py.prediction.models import predict
from autoprompt_py.prediction.output import write_predictions
from autoprompt_py.prediction.reader import RowReader
from autoprompt_py.prediction.run import PredictConfig
from autoprompt_py.probing import probe_templates
from autoprompt_py.resources import load_templates, load_verbalizer

REPO = Path(__file__).resolve().parents[1]
WORDS = "good bad great awful fine dull lovely boring charming weak fun slow film plot".split()
SUBJECTS = "dante mozart einstein paris rome london france italy japan berlin".split()
OBJECTS = "florence salzburg germany france italy england europe asia tokyo city".split()


def sentences(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(2, 12)))
        out.append((" ".join(words), str(i % 2)))
    return out


@pytest.fixture(scope="module")
def lm():
    return load_model()  # the bundled bert-tiny-splade: a real vocabulary, offline


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("predict") / "dev.tsv"
    path.write_text(
        "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in sentences(36)), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def facts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("facts") / "P1.jsonl"
    rng = np.random.default_rng(1)
    rows = [
        {"sub_label": str(s), "obj_label": str(o)}
        for s, o in zip(rng.choice(SUBJECTS, 24), rng.choice(OBJECTS, 24))
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows_of(config: PredictConfig, data: Path, lm) -> list[dict]:
    return list(predict(config, str(data), lm))


@pytest.mark.parametrize(
    "templates,ensemble,calibrate",
    [
        (("{sentence} It was [MASK] .",), False, False),
        (("{sentence} It was [MASK] .",), False, True),
        (("sst2",), True, False),
        (("sst2",), True, True),
    ],
)
def test_classification_equals_score(lm, data, templates, ensemble, calibrate) -> None:
    named = [t for spec in templates for t in load_templates(spec)]
    verb = load_verbalizer("sst2")
    examples = read_examples(data)
    cf = ("N/A", "", "[MASK]") if calibrate else None
    report = score_prompts(
        lm, named, examples, [("sst2", verb)], progress=False, bootstrap=0,
        calibrate_with=cf, ensemble_rule="mean-logprob" if ensemble else None,
    )  # fmt: skip
    ref = report.ensemble if ensemble else report.members[0]
    if calibrate:
        ref = ref.calibrated
    config = PredictConfig(
        templates, ("sst2",), ensemble=ensemble, calibrate=calibrate, window=10, with_labels=True
    )
    rows = rows_of(config, data, lm)
    assert [r["prediction"] for r in rows] == ref.predictions
    assert [r["gold"] for r in rows] == [e.label for e in examples]
    probs = np.array([[r["p_0"], r["p_1"]] for r in rows])
    np.testing.assert_allclose(probs, np.exp(ref.scores), atol=1e-6)
    assert len(set(probs[:, 1])) > 20  # rows differ: equal constants would prove little


@pytest.mark.parametrize("calibrate,ensemble", [(False, False), (True, False), (True, True)])
def test_relation_equals_probe(lm, facts, tmp_path, calibrate, ensemble) -> None:
    template = "[X] was born in [Y] ."
    if ensemble:  # two templates of the relation, combined
        template = tmp_path / "two.jsonl"
        template.write_text(
            '{"relation": "P1", "template": ["[X] was born in [Y] .", "[X] is from [Y] ."]}\n',
            encoding="utf-8",
        )
    cf = ("N/A", "", "[MASK]") if calibrate else None
    probes = probe_templates(
        lm, load_templates(str(template)), {"P1": read_facts_list(facts)}, progress=False,
        calibrate_with=cf, dev_fraction=None, ensemble_rule="mean-logprob" if ensemble else None,
    )  # fmt: skip
    member = probes[0].ensemble if ensemble else probes[0].members[0]
    want = member.cal_ranks if calibrate else member.ranks
    config = PredictConfig(
        (str(template),), calibrate=calibrate, ensemble=ensemble, with_labels=True, window=7
    )
    rows = rows_of(config, facts, lm)
    got = [r["rank"] for r in rows if r["rank"] is not None]
    assert got == want.tolist()
    assert len(set(got)) > 3
    if not calibrate:
        assert [r["top_1"] for r in rows] == [t[0] for t in member.top]


def read_facts_list(path: Path):
    from autoprompt_py.data import read_facts

    return next(iter(read_facts(path).values()))


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "csv"])
def test_reader_holds_a_bounded_number_of_rows(tmp_path, fmt) -> None:
    n, window = 50_000, 1000
    path = tmp_path / f"big.{fmt}"
    with open(path, "w", encoding="utf-8") as f:
        if fmt == "jsonl":
            f.writelines(json.dumps({"text": f"row {i}", "label": i % 2}) + "\n" for i in range(n))
        else:
            sep = "\t" if fmt == "tsv" else ","
            f.write(f"text{sep}label\n")
            f.writelines(f"row {i}{sep}{i % 2}\n" for i in range(n))
    reader = RowReader(str(path), ["text"])
    total = last = 0
    for rows in reader.windows(window):
        total += len(rows)
        last = rows[-1]
    assert total == n and last.id == str(n + (fmt != "jsonl"))
    assert 0 < reader.high_water <= window


def test_resume_is_byte_identical(lm, data, tmp_path) -> None:
    config = PredictConfig(("{sentence} It was [MASK] .",), ("sst2",), window=8, with_labels=True)
    whole, part = tmp_path / "whole.csv", tmp_path / "part.csv"
    full = write_predictions(config, str(data), str(whole), lm, "default", progress=False)

    def stop(n: int) -> None:
        if n == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_predictions(
            config, str(data), str(part), lm, "default", progress=False, on_window=stop
        )
    assert not part.exists() and (tmp_path / "part.csv.partial").exists()
    # a window written after the last saved count is dropped on resume
    with open(tmp_path / "part.csv.partial", "ab") as f:
        f.write(b"half a ro")
    with pytest.raises(AutopromptError, match="--resume"):
        write_predictions(config, str(data), str(part), lm, "default", progress=False)
    other = PredictConfig(("{sentence} It was [MASK] !",), ("sst2",), window=8, with_labels=True)
    with pytest.raises(AutopromptError, match="templates"):
        write_predictions(other, str(data), str(part), lm, "default", progress=False, resume=True)
    s = write_predictions(config, str(data), str(part), lm, "default", progress=False, resume=True)
    assert s.resumed_from == 16 and s.rows == 36
    assert s.metrics == full.metrics  # the saved part's labels are read back for the metrics
    assert part.read_bytes() == whole.read_bytes()
    assert not (tmp_path / "part.csv.partial").exists()
    assert not (tmp_path / "part.csv.partial.json").exists()


def invoke(*args):
    return CliRunner().invoke(main, ["predict", *map(str, args)])


def test_bad_input_one_line(data, facts, tmp_path, monkeypatch) -> None:
    tpl = ("--template", "{sentence} It was [MASK] .", "--verbalizer", "sst2")
    out = tmp_path / "out.jsonl"
    subjects = tmp_path / "subjects.jsonl"
    subjects.write_text('{"subject": "Dante"}\n', encoding="utf-8")
    cases = [
        (("--data", data, *tpl, "--output", tmp_path / "o.xyz"), "names no format"),
        (("--data", data, *tpl, "--output", data), "is the input file"),
        (("--data", subjects, "--template", "[X] is in [Y] ."), "no field 'sub_label'"),
        (("--data", data, "--template", "[X] is in [Y] ."), "sub_label"),
        (("--data", data, "--template", "{text} It was [MASK] .", "--verbalizer", "sst2"), "text"),
        (("--data", data, *tpl, "--resume", "--output", out), None),
    ]
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("sentence\tlabel\ncaf\xe9\t1\n".encode("latin-1"))
    cases.append((("--data", latin, *tpl), "not UTF-8"))
    empty = tmp_path / "empty.tsv"
    empty.write_text("sentence\tlabel\n\t1\n", encoding="utf-8")
    cases.append((("--data", empty, *tpl, "--on-error", "fail"), "empty field 'sentence'"))
    for args, message in cases[:5] + cases[6:]:
        r = invoke(*args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output and r.output.count("\n") <= 2, r.output
    out.write_text("done\n")
    r = invoke("--data", data, *tpl, "--output", out)
    assert r.exit_code == 2 and "already exists" in r.output and out.read_text() == "done\n"
    r = invoke("--data", data, *tpl, "--output", out, "--resume")
    assert r.exit_code == 2 and "already complete" in r.output
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")  # a file: the input check comes first
    r = invoke("--data", tmp_path / "x.parquet", *tpl)
    assert r.exit_code == 2 and "pip install" in r.output, r.output
    r = invoke("--data", data, *tpl, "--output", tmp_path / "o.parquet")
    assert r.exit_code == 2 and "pip install" in r.output, r.output
    assert not (tmp_path / "o.parquet").exists()


@requires("pyarrow")
def test_formats_and_passthrough(data, tmp_path) -> None:
    tpl = ("--template", "{sentence} It was [MASK] .", "--verbalizer", "sst2")
    outs = {}
    for suffix in ("jsonl", "csv", "tsv", "parquet"):
        out = tmp_path / f"out.{suffix}"
        r = invoke(
            "--data", data, *tpl, "--output", out, "--keep-columns", "sentence", "--with-labels"
        )
        assert r.exit_code == 0, r.output
        assert "accuracy" in r.output
        reader = RowReader(str(out), [], keep_columns="all")
        outs[suffix] = [
            {k: str(v) for k, v in row.keep.items()} | {"id": row.id}
            for rows in reader.windows(100)
            for row in rows
        ]
    assert outs["jsonl"] == outs["csv"] == outs["tsv"] == outs["parquet"]
    assert outs["csv"][0]["sentence"] == sentences(36)[0][0]
    # a Parquet input reads as the TSV did
    r = invoke("--data", tmp_path / "out.parquet", *tpl, "--output", tmp_path / "again.jsonl")
    assert r.exit_code == 0, r.output


def _env() -> dict:
    import os

    return {
        **{k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")},
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
CLASSIFY = ("--template", "sst2", "--verbalizer", "sst2", "--ensemble", "--calibrate")
RELATE = ("--template", "[X] was born in [Y] .", "--top-k", "3", "--with-labels", "--calibrate")


@pytest.mark.parametrize("task", ["classification", "relation"])
def test_torchrun_two_processes_write_the_same_file(data, facts, tmp_path, task) -> None:
    rows, options = (data, CLASSIFY) if task == "classification" else (facts, RELATE)
    args = ["predict", "--data", rows, *options, "--window", "10", "--batch-size", "4"]
    one = tmp_path / "one.jsonl"
    two = tmp_path / "two.jsonl"
    r = subprocess.run(
        [sys.executable, "-m", "autoprompt_py", *map(str, args), "--output", str(one)],
        env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [*TORCHRUN, "-m", "autoprompt_py", *map(str, args), "--output", str(two)],
        env=_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert two.read_bytes() == one.read_bytes()


def test_torchrun_run_stopped_by_sigterm_resumes_to_the_same_file(tmp_path) -> None:
    # what a scheduler does: SIGTERM to torchrun part-way, then the same command with --resume
    import os
    import signal
    import time

    big = tmp_path / "big.tsv"
    big.write_text(
        "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in sentences(1000, seed=3)),
        encoding="utf-8",
    )
    args = ["predict", "--data", big, *CLASSIFY, "--window", "20", "--batch-size", "16"]
    whole, part = tmp_path / "whole.csv", tmp_path / "part.csv"
    r = subprocess.run(
        [sys.executable, "-m", "autoprompt_py", *map(str, args), "--output", str(whole)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    sidecar = tmp_path / "part.csv.partial.json"
    run = subprocess.Popen(
        [*TORCHRUN, "-m", "autoprompt_py", *map(str, args), "--output", str(part)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not sidecar.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sidecar.exists(), "the run ended before its first window was saved"
    os.killpg(run.pid, signal.SIGTERM)
    run.wait(timeout=60)
    assert run.returncode != 0 and not part.exists()
    saved = json.loads(sidecar.read_text())["read"]
    assert 0 < saved < 1000
    r = subprocess.run(
        [*TORCHRUN, "-m", "autoprompt_py", *map(str, args), "--output", str(part), "--resume"],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed after input row" in r.stderr
    assert part.read_bytes() == whole.read_bytes()


def test_stdin_to_stdout_and_keep_all(data, tmp_path) -> None:
    lines = data.read_text(encoding="utf-8").splitlines()[1:6]
    jsonl = "".join(
        json.dumps({"id": f"a{i}", "sentence": s.split("\t")[0], "extra": [i]}) + "\n"
        for i, s in enumerate(lines)
    )
    r = CliRunner().invoke(
        main,
        ["predict", "--data", "-", "--template", "{sentence} It was [MASK] .", "--verbalizer",
         "sst2", "--keep-columns", "extra"],
        input=jsonl,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [row["id"] for row in rows] == [f"a{i}" for i in range(5)]
    assert [row["extra"] for row in rows] == [[i] for i in range(5)]  # passed through as is
    out = tmp_path / "all.csv"
    r = invoke("--data", data, "--template", "{sentence} It was [MASK] .", "--verbalizer", "sst2",
               "--output", out,
               "--keep-columns", "all")  # fmt: skip
    header = out.read_text(encoding="utf-8").splitlines()[0] if out.exists() else r.output
    assert header.startswith("id,sentence,label,prediction,margin,p_0,p_1"), header


@requires("pyarrow")
def test_parquet_resumes_byte_identical_and_every_output_has_its_record(lm, data, tmp_path):
    config = PredictConfig(("{sentence} It was [MASK] .",), ("sst2",), window=8, with_labels=True)
    whole, part = tmp_path / "whole.parquet", tmp_path / "part.parquet"
    full = write_predictions(config, str(data), str(whole), lm, "default", progress=False)

    def stop(n: int) -> None:
        if n == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_predictions(
            config, str(data), str(part), lm, "default", progress=False, on_window=stop
        )
    assert not part.exists() and not (tmp_path / "part.parquet.run.json").exists()
    s = write_predictions(config, str(data), str(part), lm, "default", progress=False, resume=True)
    assert s.resumed_from == 24 and s.metrics == full.metrics
    assert part.read_bytes() == whole.read_bytes()
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(whole).metadata
    assert meta.num_rows == 36 and meta.num_row_groups == 5  # a row group per window of 8
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "part.parquet", "part.parquet.run.json", "whole.parquet", "whole.parquet.run.json"
    ]  # fmt: skip
    record = json.loads((tmp_path / "part.parquet.run.json").read_text())
    assert record["command"] == "predict" and record["config"]["templates"] == list(
        config.templates
    )
    assert record["counts"]["rows"] == 36 and record["counts"]["resumed_from"] == 24
    assert record["metrics"] == json.loads(json.dumps(full.metrics))
    assert record["input"]["bytes"] == data.stat().st_size and "torch" in record["versions"]


@pytest.mark.parametrize("aggregation", ["sum", "mean-logprob", "mean-logit"])
def test_multi_piece_label_words_equal_score(lm, data, tmp_path, aggregation) -> None:
    # words of 1 and 3 pieces: the vocabulary normalizer no longer cancels, and is kept
    words = {"0": ["terrible", "unwatchable"], "1": ["great", "wonderful"]}
    path = tmp_path / "verb.json"
    path.write_text(json.dumps(words), encoding="utf-8")
    verb = load_verbalizer(str(path))
    assert len(verb.resolve(lm.tokenizer, aggregation, True).piece_counts) > 1
    named = load_templates("{sentence} It was [MASK] .")
    report = score_prompts(
        lm, named, read_examples(data), [("v", verb)], progress=False, bootstrap=0,
        aggregation=aggregation,
    )  # fmt: skip
    ref = report.members[0]
    config = PredictConfig(
        ("{sentence} It was [MASK] .",), (str(path),), aggregation=aggregation, window=10
    )
    rows = rows_of(config, data, lm)
    assert [r["prediction"] for r in rows] == ref.predictions
    probs = np.array([[r["p_0"], r["p_1"]] for r in rows])
    np.testing.assert_allclose(probs, np.exp(ref.scores), atol=1e-6)


def test_prefetch_keeps_order_raises_in_place_and_stops_when_closed() -> None:
    import threading

    from autoprompt_py.prediction.prefetch import prefetch

    assert list(prefetch(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise AutopromptError("row 3 is bad")

    got = []
    with pytest.raises(AutopromptError, match="row 3"):
        for x in prefetch(failing()):
            got.append(x)
    assert got == [1, 2]  # the items before the error, then the error

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    stream = prefetch(endless(), depth=1)
    assert next(stream) == 0
    stream.close()  # what an interrupt in the consumer does
    n = len(produced)
    assert n <= 4 and not any(t.name == "predict-prefetch" for t in threading.enumerate())
