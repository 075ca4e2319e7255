"""Faults of the kinds issue 25 lists, on every command they reach: a data error leaves no
half-written file, standard input says its format, a full disk is one line and loses nothing,
a damaged record of an interrupted run is refused by name.

Each refusal: exit code 2, one ``error:`` line, no traceback, no result changed.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

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
    """Every command locks its output for the whole run (cli.common.claim_output)."""
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
