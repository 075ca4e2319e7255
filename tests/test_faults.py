"""Faults on every command they reach: a data error leaves no half-written file, standard
input says its format, a full disk is one line and loses nothing, a damaged record of an
interrupted run is refused by name, a column (or JSON key) named twice is refused by every
reader, and every kind of file the commands read, cut short or a FIFO, is one line at once.

Each refusal: exit code 2, one ``error:`` line, no traceback, no result changed.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from optional import requires

from autoprompt_py.cli import main

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "sst2_mini.tsv"
TEMPLATE = "{sentence} It was [MASK] ."


def invoke(*args, input: bytes | str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def refused(r, *fragments) -> str:
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.stderr
    for fragment in fragments:
        assert str(fragment) in errors[0], (fragment, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def bert(tiny_model_dirs) -> Path:
    return tiny_model_dirs["bert"]


def predict(bert, data, out, *extra, input: str | None = None):
    return invoke("predict", "--model", bert, "--device", "cpu", "--data", data, "--template",
                  TEMPLATE, "--verbalizer", "sst2", "--window", "8", "--batch-size", "4",
                  "--output", out, *extra, input=input)  # fmt: skip


def rows_with(tmp_path: Path, bad_line: bytes, at: int = 20) -> Path:
    """sst2_mini with line ``at`` replaced by ``bad_line`` (after two whole windows)."""
    lines = DATA.read_bytes().splitlines(keepends=True)
    lines[at] = bad_line
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"".join(lines))
    return path


@pytest.mark.parametrize(
    "bad_line, says, extra",
    [
        (b"\t1\n", "an empty field 'sentence'", ("--on-error", "fail")),
        (b"caf\xe9 au lait\t1\n", "not UTF-8 text", ()),
    ],
)
def test_a_data_error_leaves_no_half_written_file(bert, tmp_path, bad_line, says, extra):
    data = rows_with(tmp_path, bad_line)
    out = tmp_path / "out.jsonl"
    line = refused(predict(bert, data, out, *extra), f"{data}:21", says)
    assert "nothing written" in line and "removed" in line and "fix the input" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tsv"]
    # fixed, the same command runs from the start (no --resume, no --force needed)
    data.write_bytes(DATA.read_bytes())
    r = predict(bert, data, out, *extra)
    assert r.exit_code == 0, r.output


def test_stdin_tsv_is_read_as_tsv(bert, tmp_path):
    tsv = DATA.read_text(encoding="utf-8")
    whole = tmp_path / "whole.jsonl"
    assert predict(bert, DATA, whole).exit_code == 0
    r = predict(bert, "-", "-", input=tsv)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == whole.read_text(encoding="utf-8")
    csv = "".join(line.replace("\t", ",") + "\n" for line in tsv.splitlines()[:3])
    r = predict(bert, "-", "-", input=csv)
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 2, r.output


def test_stdin_of_no_known_format_names_the_option(bert):
    r = predict(bert, "-", "-", input="sentence\na fine film\n")
    refused(r, "--data -", "--input-format")
    r = predict(bert, "-", "-", "--input-format", "jsonl", input="sentence\tlabel\nok\t1\n")
    refused(r, "<stdin>:1: not valid JSON")


def test_a_full_disk_while_predicting_keeps_what_was_saved(bert, tmp_path, monkeypatch):
    from autoprompt_py.prediction.writer import JsonlWriter

    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    assert predict(bert, DATA, whole).exit_code == 0
    original, calls = JsonlWriter.write, [0]

    def write(self, rows):
        calls[0] += 1
        if calls[0] == 3:  # the disk fills up half-way through the third window
            self.stream.write(b'{"half": ')
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, rows)

    monkeypatch.setattr(JsonlWriter, "write", write)
    line = refused(predict(bert, DATA, out), "No space left on device", "--resume")
    assert f"{out}.partial" in line and not out.exists()
    monkeypatch.undo()
    r = predict(bert, DATA, out, "--resume")
    assert r.exit_code == 0, r.output
    assert "resumed after input row 16" in r.stderr
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.parametrize("command", ["score", "labels", "tune", "export"])
def test_a_full_disk_is_one_line_and_leaves_nothing(bert, tmp_path, monkeypatch, command):
    """The writers every command shares (atomic_write, staged_folder): the temporary file
    goes, the message says what to do, exit 2."""
    import autoprompt_py.results as results

    real = results.os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(results.os, "replace", full)
    out = tmp_path / "out"
    args = {
        "score": ["score", "--data", DATA, "--template", TEMPLATE, "--verbalizer", "sst2",
                  "--bootstrap", "0", "--output", out],
        "labels": ["labels", "--train", DATA, "--template", "{sentence} [P] .", "--output", out],
        "tune": ["tune", "--train", DATA, "--template", "{sentence} [T] It was [MASK] .",
                 "--verbalizer", "sst2", "--steps", "1", "--quiet", "--output", out],
        "export": ["export", "--template", TEMPLATE, "--format", "embeddings", "--out",
                   out.with_suffix(".safetensors")],
    }[command]  # fmt: skip
    r = invoke(*args, "--model", bert, *(["--device", "cpu"] if command != "export" else []))
    refused(r, "No space left on device", "make room")
    monkeypatch.setattr(results.os, "replace", real)
    left = [p.name for p in tmp_path.iterdir()]
    assert not any(n.endswith(".tmp") or n.startswith("out") for n in left), left


def test_a_damaged_record_of_an_interrupted_predict_is_refused_by_name(bert, tmp_path):
    out = tmp_path / "out.jsonl"
    Path(f"{out}.partial").write_text('{"id": "1"}\n')
    for record in ("{not json", "[]", json.dumps({"read": "x", "bytes": 1})):
        Path(f"{out}.partial.json").write_text(record)
        refused(predict(bert, DATA, out, "--resume"), f"{out}.partial.json is damaged", "--force")
    r = predict(bert, DATA, out, "--force")
    assert r.exit_code == 0, r.output
    assert not Path(f"{out}.partial.json").exists()


@pytest.fixture(scope="module")
def tuned(bert, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tuned") / "t"
    r = invoke("tune", "--model", bert, "--device", "cpu", "--train", DATA, "--template",
               "{sentence} [T] It was [MASK] .", "--verbalizer", "sst2", "--steps", "1",
               "--quiet", "--output", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


def _truncate(folder: Path) -> None:
    weights = folder / "embeddings.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])


def _record(**changes):
    def edit(folder: Path) -> None:
        record = json.loads((folder / "result.json").read_text())
        record.update(changes)
        record = {k: v for k, v in record.items() if v is not None}
        (folder / "result.json").write_text(json.dumps(record))

    return edit


@pytest.mark.parametrize(
    "damage, says",
    [
        (_truncate, "embeddings.safetensors: damaged safetensors file"),
        (lambda f: (f / "embeddings.safetensors").unlink(), "embeddings.safetensors: No such"),
        (lambda f: (f / "embeddings.safetensors").write_bytes(b""), "an empty file"),
        (_record(template=None), "result.json: no 'template'"),
        (_record(method="nope"), "result.json: method 'nope' is none of"),
        (lambda f: (f / "result.json").write_text('{"kind": "autoprompt-tune", '), "not valid"),
    ],
)
@pytest.mark.parametrize("command", ["score", "predict", "score --model"])
def test_a_damaged_tuned_folder_is_one_line(
    bert, tuned, tmp_path, monkeypatch, damage, says, command
):
    import shutil

    from test_input_files import _no_model

    folder = tmp_path / "t"
    shutil.copytree(tuned, folder)
    damage(folder)
    monkeypatch.setattr("autoprompt_py.model.load_model", _no_model)
    out = tmp_path / "out.jsonl"
    args = [command.split()[0], "--data", DATA, "--verbalizer", "sst2"]
    if command == "score --model":
        args += ["--template", TEMPLATE, "--model", folder]
    else:
        args += ["--template", folder, "--model", bert]
    refused(invoke(*args, *(["--output", out] if command == "predict" else [])), says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_a_failure_before_the_first_saved_window_leaves_no_partial(bert, tmp_path, monkeypatch):
    from autoprompt_py.prediction.run import Predictor

    def broken(self, rows, encoded):
        raise RuntimeError("a device error")

    monkeypatch.setattr(Predictor, "window", broken)
    out = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="a device error"):
        predict(bert, DATA, out)
    assert list(tmp_path.iterdir()) == []


HOLD = """
import sys
from autoprompt_py.results import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize(
    "command", ["score", "probe", "labels", "predict", "tune", "search", "export"]
)
def test_a_second_run_on_the_same_output_is_refused(bert, tmp_path, monkeypatch, command):
    """Every command locks its output for the whole run (cli.outputs.claim_and_lock)."""
    import os
    import subprocess
    import sys

    from test_input_files import _no_model, base_args

    monkeypatch.setattr("autoprompt_py.model.load_model", _no_model)
    args = base_args(tmp_path)[command]
    if command == "export":
        args = ["--template", TEMPLATE, *args[1:]]
    out = args[args.index("--out" if command == "export" else "--output") + 1]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, out], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = invoke(command, *([] if command == "export" else ["--model", bert]), *args)
        refused(r, f"{out} is being written by another run (pid {holder.pid} on ")
    finally:
        holder.communicate("")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the holder's lock went with it


# -- a column or key named twice: refused by every reader, never half-read -------------------

DUPLICATED = {
    "csv": b"sentence,label,sentence\na fine film,1,a dull film\n",
    "tsv": b"sentence\tlabel\tsentence\na fine film\t1\ta dull film\n",
    "jsonl": b'{"sentence": "a fine film", "label": "1", "sentence": "a dull film"}\n',
}


FORMATS = ["csv", "tsv", "jsonl", pytest.param("parquet", marks=requires("pyarrow"))]


def _duplicated(tmp_path: Path, fmt: str) -> Path:
    path = tmp_path / f"dup.{fmt}"
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            [["a fine film"], ["1"], ["a dull film"]], ["sentence", "label", "sentence"]
        )
        pq.write_table(table, path)
    else:
        path.write_bytes(DUPLICATED[fmt])
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_score_refuses_a_column_named_twice(bert, tmp_path, fmt):
    data = _duplicated(tmp_path, fmt)
    r = invoke("score", "--model", bert, "--device", "cpu", "--data", data, "--template",
               TEMPLATE, "--verbalizer", "sst2", "--bootstrap", "0")  # fmt: skip
    refused(r, str(data), "'sentence'", "twice")


@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_refuses_a_column_named_twice(bert, tmp_path, fmt):
    data = _duplicated(tmp_path, fmt)
    refused(predict(bert, data, tmp_path / "out.jsonl"), str(data), "'sentence'", "twice")
    assert sorted(p.name for p in tmp_path.iterdir()) == [data.name]


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_readers_refuse_a_column_named_twice(tmp_path, fmt):
    from autoprompt_py.data import iter_rows, read_examples
    from autoprompt_py.errors import AutopromptError

    data = _duplicated(tmp_path, fmt)
    with pytest.raises(AutopromptError, match="'sentence' is .*twice"):
        list(iter_rows(data, fmt))
    if fmt != "parquet":
        with pytest.raises(AutopromptError, match="'sentence' is .*twice"):
            read_examples(data)
    if fmt in ("csv", "tsv"):  # the names given on the command line, in place of a header
        with pytest.raises(AutopromptError, match="--columns: the column 'label' is named twice"):
            read_examples(data, columns=["label", "label", "sentence"])
        with pytest.raises(AutopromptError, match="--columns: the column 'label' is named twice"):
            list(iter_rows(data, fmt, ["label", "label", "sentence"]))


def test_a_json_key_given_twice_is_refused(bert):
    r = invoke("score", "--model", bert, "--device", "cpu", "--data", DATA, "--template",
               TEMPLATE, "--verbalizer", '{"0": "bad", "1": "good", "0": "terrible"}')  # fmt: skip
    refused(r, "the key '0' is given twice")


# -- every file the product reads: cut short, damaged or a FIFO is one line, at once ----------

SEARCH_TEMPLATE = "{sentence} [T] It was [MASK] ."


@pytest.fixture(scope="module")
def made(bert, tuned, tmp_path_factory):
    """What the commands write and read back: a search result and its checkpoint, an export."""
    root = tmp_path_factory.mktemp("made")
    r = invoke("search", "--model", bert, "--device", "cpu", "--train", DATA, "--template",
               SEARCH_TEMPLATE, "--verbalizer", "sst2", "--iters", "1", "--num-cand", "4",
               "--train-eval-limit", "4", "--dev-limit", "4", "--quiet", "--output",
               root / "r.json")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = invoke("export", "--model", bert, "--template", root / "r.json", "--format",
               "embeddings", "--out", root / "e.safetensors")  # fmt: skip
    assert r.exit_code == 0, r.output
    from autoprompt_py.prediction.writer import JsonlWriter

    original, calls = JsonlWriter.write, [0]

    def write(self, rows):  # the disk fills up at the third window: two are kept
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, rows)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(JsonlWriter, "write", write)
        assert predict(bert, DATA, root / "p.jsonl").exit_code == 2
    assert Path(f"{root}/p.jsonl.partial.json").is_file()
    return root


def _copy(source: Path, target: Path) -> Path:
    import shutil

    (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    return target


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _not_utf8(data: bytes) -> bytes:  # a text file whose half would still read well
    return data + b"caf\xe9\n"


def _search_resume(bert, made, tmp):
    out = _copy(made / "r.json", tmp / "r.json")
    ckpt = _copy(made / "r.json.ckpt", tmp / "r.json.ckpt")
    return ["search", "--model", bert, "--device", "cpu", "--train", DATA, "--template",
            SEARCH_TEMPLATE, "--verbalizer", "sst2", "--iters", "2", "--num-cand", "4",
            "--train-eval-limit", "4", "--dev-limit", "4", "--quiet", "--output", out,
            "--resume"], ckpt  # fmt: skip


def _tune_resume(name):
    def case(bert, tuned, tmp):
        out = _copy(tuned, tmp / "t")
        ckpt = _copy(Path(f"{tuned}.ckpt"), tmp / "t.ckpt")
        return ["tune", "--model", bert, "--device", "cpu", "--train", DATA, "--template",
                SEARCH_TEMPLATE, "--verbalizer", "sst2", "--steps", "1", "--quiet",
                "--output", out, "--resume"], ckpt / name  # fmt: skip

    return case


def _tuned_folder(name):
    def case(bert, tuned, tmp):
        folder = _copy(tuned, tmp / "t")
        return ["score", "--model", bert, "--data", DATA, "--template", folder,
                "--verbalizer", "sst2"], folder / name  # fmt: skip

    return case


def _predict_resume(name):
    def case(bert, made, tmp):
        out = tmp / "out.jsonl"
        for suffix in (".partial", ".partial.json"):
            _copy(made / f"p.jsonl{suffix}", Path(f"{out}{suffix}"))
        return ["predict", "--model", bert, "--device", "cpu", "--data", DATA, "--template",
                TEMPLATE, "--verbalizer", "sst2", "--window", "8", "--batch-size", "4",
                "--output", out, "--resume"], Path(f"{out}{name}")  # fmt: skip

    return case


def _option(command, option, source, *rest, out=".json"):
    """``command`` with ``option`` naming a copy of ``source`` (the file to damage; a name:
    a file of the ``made`` fixture; option None: the argument), writing in the test's folder."""

    def case(bert, made, tmp):
        origin = made / source if isinstance(source, str) else source
        path = _copy(origin, tmp / f"in{origin.suffix}")
        given = [option, path] if option else [path]
        output = "--out" if command == "export" else "--output"
        return [command, "--model", bert, *given, *rest, output, tmp / f"out{out}"], path

    return case


def _parquet(bert, tmp):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp / "in.parquet"
    rows = [line.split("\t") for line in DATA.read_text().splitlines()[1:]]
    pq.write_table(pa.table([[r[0] for r in rows], [r[1] for r in rows]], ["sentence", "label"]),
                   path)  # fmt: skip
    return ["predict", "--model", bert, "--data", path, "--template", TEMPLATE, "--verbalizer",
            "sst2", "--output", tmp / "out.jsonl"], path  # fmt: skip


def _model_file(name):
    def case(bert, tmp):
        folder = _copy(bert, tmp / "m")
        return ["score", "--model", folder, "--data", DATA, "--template", TEMPLATE,
                "--verbalizer", "sst2"], folder / name  # fmt: skip

    return case


FACTS = REPO / "examples" / "P19" / "train.jsonl"
VOCAB = REPO / "examples" / "lama_vocab.txt"
SCORE = ("--template", TEMPLATE, "--verbalizer", "sst2")
LABELS = ("--train", DATA, "--template", "{sentence} [P] .")
TUNE_SEED = ("--train", DATA, "--verbalizer", "sst2", "--steps", "1", "--quiet")
# kind of file -> (the command reading it, with the file to damage; the damage a whole-file
# reader sees: cut in half, or bad bytes where half a text file would still read well)
READ_FILES = {
    "data (tsv)": (_option("score", "--data", DATA, *SCORE), _not_utf8),
    "data (parquet)": (_parquet, _cut),
    "facts": (_option("probe", "--facts", FACTS), _cut),
    "vocabulary": (_option("probe", "--vocab", VOCAB, "--facts", FACTS), _not_utf8),
    "stop list": (_option("labels", "--stop-list", VOCAB, *LABELS), _not_utf8),
    "template file": (
        _option(
            "score", "--template", REPO / "templates" / "sst2.jsonl", *SCORE[2:], "--data", DATA
        ),
        _cut,
    ),
    "verbalizer file": (
        _option(
            "score", "--verbalizer", REPO / "verbalizers" / "sst2.json", *SCORE[:2], "--data", DATA
        ),
        _cut,
    ),
    "search result": (
        _option("export", None, "r.json", "--format", "embeddings", out=".safetensors"),
        _cut,
    ),
    "search checkpoint": (_search_resume, _cut),
    "tune checkpoint record": (_tune_resume("state.json"), _cut),
    "tune checkpoint tensors": (_tune_resume("tensors.pt"), _cut),
    "tuned folder record": (_tuned_folder("result.json"), _cut),
    "tuned folder weights": (_tuned_folder("embeddings.safetensors"), _cut),
    "exported safetensors": (
        _option("tune", "--template", "e.safetensors", *TUNE_SEED, out=""),
        _cut,
    ),
    "predict record": (_predict_resume(".partial.json"), _cut),
    "predict partial output": (_predict_resume(".partial"), _cut),
    "model config": (_model_file("config.json"), _cut),
    "model tokenizer": (_model_file("tokenizer.json"), _cut),
    "model weights": (_model_file("model.safetensors"), _cut),
}


@pytest.fixture
def deadline():
    """A read that blocks (a FIFO no one writes) fails the test rather than hang the suite."""
    import signal

    class Blocked(BaseException):  # not an OSError: no reader may take it for a bad file
        pass

    def expired(signum, frame):
        raise Blocked("a file that should be refused unopened was opened, and blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    "kind, fault",
    [
        pytest.param(k, f, marks=requires("pyarrow") if "parquet" in k else ())
        for k, (_, damage) in READ_FILES.items()
        for f in ("damaged", "fifo")
        if damage or f == "fifo"
    ],
)
def test_every_file_read_is_refused_in_one_line_when_bad(
    bert, tuned, made, tmp_path, deadline, kind, fault
):
    """Each kind of file the commands read, cut short (or damaged) and as a FIFO no one
    writes: one line naming the file, exit 2, within the deadline (a FIFO is never opened)."""
    import inspect
    import os

    case, damage = READ_FILES[kind]
    given = {"bert": bert, "tuned": tuned, "made": made, "tmp": tmp_path}
    args, path = case(*(given[p] for p in inspect.signature(case).parameters))
    if fault == "damaged":
        path.write_bytes(damage(path.read_bytes()))
    else:
        path.unlink()
        os.mkfifo(path)
    line = refused(invoke(*args))
    assert path.name in line and str(path.parent.name) in line, line
