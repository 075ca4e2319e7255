"""Bad input: every reader refuses text that is not UTF-8, outputs are
checked before the model loads and never clobbered, checkpoints are JSON checked field by
field, a second run on the same output is refused while the first holds its lock.

Every refusal is exit code 2, one ``error:`` line naming the file or option, no traceback and
no output file created or changed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoprompt_py.cli import main
from autoprompt_py.data import read_examples, read_facts
from autoprompt_py.errors import AutopromptError
from autoprompt_py.resources import load_templates
from autoprompt_py.results import atomic_write, check_output_path, output_lock, read_json
from autoprompt_py.search import read_stop_list
from autoprompt_py.verbalizer import Verbalizer
from autoprompt_py.vocab import read_vocab

REPO = Path(__file__).resolve().parents[1]
SST = [
    ("the movie was great , really", 1),
    ("a waste of time", 0),
    ("boring and slow", 0),
    ("i loved it", 1),
    ("the plot is a mess", 0),
    ("a beautiful , charming film", 1),
    ("the acting is weak", 0),
    ("fun and lovely music", 1),
]
FACTS = [("dante", "florence"), ("mozart", "salzburg"), ("galileo", "pisa"), ("italy", "rome")]
LATIN = "caf\xe9"  # "é" is the byte 0xE9 in Latin-1 and cp1252, two bytes in UTF-8


@pytest.fixture(scope="module")
def f(tmp_path_factory, tiny_model_dirs) -> dict[str, Path]:
    """Good files, and for each reader a Latin-1 twin whose 0xE9 byte sits on line 2."""
    root = tmp_path_factory.mktemp("bad_input")
    files: dict[str, Path] = {"root": root, "bert": tiny_model_dirs["bert"]}

    def write(name: str, text: str, encoding: str = "utf-8") -> None:
        files[name] = root / name
        files[name].write_bytes(text.encode(encoding))

    tsv = "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in SST)
    facts = "".join(json.dumps({"sub_label": s, "obj_label": o}) + "\n" for s, o in FACTS)
    write("train.tsv", tsv)
    write("P19.jsonl", facts)
    write("vocab.txt", "\n".join(o for _, o in FACTS) + "\n")
    write("stop.txt", "the\nmovie\n")
    write("verb.json", '{"0": "bad", "1": "good"}')
    write("templates.txt", "{sentence} It was [MASK] .\n")
    write("relations.jsonl", '{"relation": "P19", "template": "[X] was born in [Y] ."}\n')
    # Latin-1 twins
    write("latin.tsv", f"sentence\tlabel\n{LATIN} is good\t1\n", "latin-1")
    write("latin.csv", f"sentence,label\n{LATIN} is good,1\n", "latin-1")
    write(
        "latin.jsonl", f'{{"sentence": "ok", "label": 1}}\n{{"sentence": "{LATIN}"}}\n', "latin-1"
    )
    write(
        "latin_facts.jsonl",
        f'{{"sub_label": "a", "obj_label": "b"}}\n{{"sub_label": "{LATIN}", "obj_label": "b"}}\n',
        "latin-1",
    )
    write("latin_vocab.txt", f"rome\n{LATIN}\n", "latin-1")
    write("latin_stop.txt", f"the\n{LATIN}\n", "latin-1")
    write("latin_verb.json", f'{{"0": "bad",\n "1": "{LATIN}"}}', "latin-1")
    write(
        "latin_templates.txt",
        f"{{sentence}} It was [MASK] .\n{LATIN} {{sentence}} [MASK] .\n",
        "latin-1",
    )
    write(
        "latin_relations.jsonl",
        f'{{"relation": "P19", "template": "[X] [Y] ."}}\n{{"relation": "P1", "template": "[X] {LATIN} [Y] ."}}\n',
        "latin-1",
    )
    write(
        "latin_result.json",
        f'{{"kind": "autoprompt-search",\n "template": "{LATIN} [T] [P]"}}',
        "latin-1",
    )
    write("utf16.tsv", tsv, "utf-16")
    return files


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_refused(r, *fragments):
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def no_output_in(folder: Path, *keep: str) -> None:
    """Nothing was written in ``folder`` beyond the files named (no temp file, no result)."""
    left = sorted(p.name for p in folder.iterdir() if p.name not in keep)
    assert left == [], left


# --------------------------------------------------------------------------------------------
# encodings: one reader, every file kind
# --------------------------------------------------------------------------------------------

READERS = {
    "latin.tsv": lambda p: read_examples(p),
    "latin.csv": lambda p: read_examples(p),
    "latin.jsonl": lambda p: read_examples(p),
    "latin_facts.jsonl": lambda p: read_facts(p),
    "latin_vocab.txt": read_vocab,
    "latin_stop.txt": read_stop_list,
    "latin_verb.json": Verbalizer.from_file,
    "latin_templates.txt": lambda p: load_templates(str(p)),
    "latin_relations.jsonl": lambda p: load_templates(str(p), "--relations"),
    "latin_result.json": lambda p: read_json(p),
}


@pytest.mark.parametrize("name", list(READERS))
def test_every_reader_refuses_latin1_naming_line_and_byte(f, name):
    with pytest.raises(AutopromptError) as info:
        READERS[name](f[name])
    message = str(info.value)
    assert f"{f[name]}:2: not UTF-8 text (byte 0xE9 at column " in message, message
    assert message.endswith("save it as UTF-8")


def test_utf16_file_is_named(f):
    with pytest.raises(AutopromptError, match="UTF-16 text .* save it as UTF-8"):
        read_examples(f["utf16.tsv"])


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl"])
def test_a_utf8_bom_is_accepted_and_the_header_read(tmp_path, suffix):
    path = tmp_path / f"bom{suffix}"
    body = {
        ".tsv": "sentence\tlabel\ngood film\t1\n",
        ".csv": "sentence,label\ngood film,1\n",
        ".jsonl": '{"sentence": "good film", "label": 1}\n',
    }[suffix]
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    [example] = read_examples(path)
    assert example.fields == {"sentence": "good film"} and example.label == "1"


def test_line_numbers_of_crlf_and_u2028(tmp_path):
    # JSON strings may hold U+2028 raw; it does not end a line of a .jsonl file
    path = tmp_path / "d.jsonl"
    path.write_bytes('{"sentence": "a\u2028b", "label": 0}\r\n{"label": 1}\r\n'.encode())
    with pytest.raises(AutopromptError, match=r"d.jsonl:2: no field 'sentence'"):
        from autoprompt_py.data import check_fields

        check_fields(read_examples(path), ["sentence"], "{sentence} [P]")


# the CLI: each command names the file it could not read, before loading the model
def _score(f, **kw):
    args = dict(data=f["train.tsv"], verbalizer=f["verb.json"], template="{sentence} is [MASK] .")
    args.update(kw)
    return [
        "score",
        "--model",
        f["bert"],
        "--device",
        "cpu",
        "--data",
        args["data"],
        "--verbalizer",
        args["verbalizer"],
        "--template",
        args["template"],
    ]


def _search(f, out, *extra, **kw):
    args = dict(train=f["train.tsv"], template="{sentence} [T] [P] .", verbalizer=f["verb.json"])
    args.update(kw)
    cmd = [
        "search",
        "--model",
        f["bert"],
        "--device",
        "cpu",
        "--train",
        args["train"],
        "--template",
        args["template"],
        "--iters",
        "1",
        "--batch-size",
        "4",
        "--accumulation-steps",
        "1",
        "--num-cand",
        "2",
        "--output",
        out,
        "--quiet",
    ]
    if args["verbalizer"] is not None:
        cmd += ["--verbalizer", args["verbalizer"]]
    return cmd + list(extra)


def _latin_cases(f, out):
    tensors = out.with_suffix(".safetensors")  # what --format embeddings writes
    return {
        "score --data": (_score(f, data=f["latin.tsv"]), "latin.tsv"),
        "score --data csv": (_score(f, data=f["latin.csv"]), "latin.csv"),
        "score --data jsonl": (_score(f, data=f["latin.jsonl"]), "latin.jsonl"),
        "score --verbalizer": (_score(f, verbalizer=f["latin_verb.json"]), "latin_verb.json"),
        "score --template": (_score(f, template=f["latin_templates.txt"]), "latin_templates.txt"),
        "probe --facts": (
            ["probe", "--model", f["bert"], "--facts", f["latin_facts.jsonl"]],
            "latin_facts.jsonl",
        ),
        "probe --vocab": (
            [
                "probe",
                "--model",
                f["bert"],
                "--facts",
                f["P19.jsonl"],
                "--vocab",
                f["latin_vocab.txt"],
            ],
            "latin_vocab.txt",
        ),
        "probe --relations": (
            [
                "probe",
                "--model",
                f["bert"],
                "--facts",
                f["P19.jsonl"],
                "--relations",
                f["latin_relations.jsonl"],
            ],
            "latin_relations.jsonl",
        ),
        "search --train": (_search(f, out, train=f["latin.tsv"]), "latin.tsv"),
        "search --dev": (_search(f, out, "--dev", f["latin.jsonl"]), "latin.jsonl"),
        "search --verbalizer": (
            _search(f, out, verbalizer=f["latin_verb.json"]),
            "latin_verb.json",
        ),
        "search --stop-list": (
            _search(f, out, "--stop-list", f["latin_stop.txt"]),
            "latin_stop.txt",
        ),
        "search --template": (
            _search(f, out, template=f["latin_templates.txt"]),
            "latin_templates.txt",
        ),
        "search relation --train": (
            _search(
                f, out, train=f["latin_facts.jsonl"], template="[X] [T] [Y] .", verbalizer=None
            ),
            "latin_facts.jsonl",
        ),
        "search relation --vocab": (
            _search(
                f,
                out,
                "--vocab",
                f["latin_vocab.txt"],
                train=f["P19.jsonl"],
                template="[X] [T] [Y] .",
                verbalizer=None,
            ),
            "latin_vocab.txt",
        ),
        "labels --train": (
            [
                "labels",
                "--model",
                f["bert"],
                "--train",
                f["latin.tsv"],
                "--template",
                "{sentence} [P] .",
                "--output",
                out,
            ],
            "latin.tsv",
        ),
        "labels --stop-list": (
            [
                "labels",
                "--model",
                f["bert"],
                "--train",
                f["train.tsv"],
                "--template",
                "{sentence} [P] .",
                "--output",
                out,
                "--stop-list",
                f["latin_stop.txt"],
            ],
            "latin_stop.txt",
        ),
        "export RESULT": (
            ["export", f["latin_result.json"], "--format", "embeddings", "--out", tensors],
            "latin_result.json",
        ),
        "export --template": (
            [
                "export",
                "--template",
                f["latin_templates.txt"],
                "--model",
                f["bert"],
                "--format",
                "embeddings",
                "--out",
                tensors,
            ],
            "latin_templates.txt",
        ),
    }


CASES = [
    "score --data",
    "score --data csv",
    "score --data jsonl",
    "score --verbalizer",
    "score --template",
    "probe --facts",
    "probe --vocab",
    "probe --relations",
    "search --train",
    "search --dev",
    "search --verbalizer",
    "search --stop-list",
    "search --template",
    "search relation --train",
    "search relation --vocab",
    "labels --train",
    "labels --stop-list",
    "export RESULT",
    "export --template",
]


@pytest.mark.parametrize("case", CASES)
def test_every_command_refuses_latin1_in_one_line(f, tmp_path, case, monkeypatch):
    out = tmp_path / "out.json"
    args, name = _latin_cases(f, out)[case]
    # the model must never load: the file is checked first
    for module in ("model",):  # the commands import load_model from it when they run
        monkeypatch.setattr(f"autoprompt_py.{module}.load_model", _no_model)
    r = invoke(*args)
    assert_refused(r, f"{f[name]}:2: not UTF-8 text (byte 0xE9", "save it as UTF-8")
    no_output_in(tmp_path)


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the input was checked")


def test_score_reads_a_bom_tsv_end_to_end(f, tmp_path):
    data = tmp_path / "bom.tsv"
    data.write_bytes(b"\xef\xbb\xbf" + f["train.tsv"].read_bytes())
    r = invoke(*_score(f, data=data), "--bootstrap", "0")
    assert r.exit_code == 0, r.stderr
    assert f"{len(SST)} examples from {data}" in r.stdout


# --------------------------------------------------------------------------------------------
# outputs: checked before the model loads, never replaced when not a regular file
# --------------------------------------------------------------------------------------------


def _commands(f, out):
    """Each command's output option, with otherwise good arguments."""
    return {
        "score": (_score(f) + ["--output", out], "--output"),
        "probe": (
            ["probe", "--model", f["bert"], "--facts", f["P19.jsonl"], "--output", out],
            "--output",
        ),
        "search": (_search(f, out), "--output"),
        "search --checkpoint": (
            _search(f, f["root"] / "never.json", "--checkpoint", out),
            "--checkpoint",
        ),
        "labels": (
            [
                "labels",
                "--model",
                f["bert"],
                "--train",
                f["train.tsv"],
                "--template",
                "{sentence} [P] .",
                "--output",
                out,
            ],
            "--output",
        ),
        "export": (
            [
                "export",
                "--template",
                "{sentence} It was [MASK] .",
                "--model",
                f["bert"],
                "--format",
                "embeddings",
                "--out",
                out,
            ],
            "--out",
        ),
    }


COMMANDS = ["score", "probe", "search", "search --checkpoint", "labels", "export"]


@pytest.fixture
def no_model(monkeypatch):
    for module in ("model",):  # the commands import load_model from it when they run
        monkeypatch.setattr(f"autoprompt_py.{module}.load_model", _no_model)


@pytest.mark.parametrize("command", COMMANDS)
def test_empty_output_path(f, tmp_path, command, no_model):
    args, option = _commands(f, "")[command]
    assert_refused(invoke(*args), f"{option} '': an empty path")


@pytest.mark.parametrize("command", COMMANDS)
def test_output_folder_missing(f, tmp_path, command, no_model):
    out = tmp_path / "nope" / "out.json"
    args, option = _commands(f, out)[command]
    assert_refused(invoke(*args), f"{option} {out}: the folder {out.parent} does not exist")
    assert not out.parent.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_output_folder_not_writable(f, tmp_path, command, no_model, monkeypatch):
    # The tests run as root, whom permission bits do not stop: os.access is what the check
    # asks (it is False for a non-root user's read-only folder), so it is mocked here; the
    # immutable-folder test below checks the real thing where chattr works.
    folder = tmp_path / "ro"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        "autoprompt_py.results.os.access",
        lambda p, mode: False if Path(p) == folder else real_access(p, mode),
    )
    args, option = _commands(f, folder / "out.json")[command]
    assert_refused(invoke(*args), f"{option} {folder / 'out.json'}", f"{folder} is not writable")
    assert list(folder.iterdir()) == []


def test_output_in_an_immutable_folder(f, tmp_path, no_model):
    folder = tmp_path / "immutable"
    folder.mkdir()
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", folder]).returncode:
        pytest.skip("chattr +i is not available here (needs root and ext4/xfs)")
    try:
        for command in COMMANDS:
            args, option = _commands(f, folder / "out.json")[command]
            assert_refused(invoke(*args), option, f"{folder} is not writable")
    finally:
        subprocess.run(["chattr", "-i", folder], check=True)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_dev_null_a_fifo_and_a_folder_are_never_replaced(f, tmp_path, command, no_model):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    link = tmp_path / "link"
    link.symlink_to("/dev/null")
    for out, what in [
        (Path("/dev/null"), "is a device, not a regular file; it is never replaced"),
        (fifo, "is a FIFO (named pipe), not a regular file"),
        (link, "(a link to /dev/null) is a device"),
        (folder, "is a folder" if command != "export" else "is a folder, but --format"),
    ]:
        args, option = _commands(f, out)[command]
        assert_refused(invoke(*args), f"{option} {out}", what)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and link.is_symlink()
    assert list(folder.iterdir()) == []
    no_output_in(tmp_path, "fifo", "folder", "link")


def test_search_default_checkpoint_that_is_a_folder(f, tmp_path, no_model):
    out = tmp_path / "r.json"
    (tmp_path / "r.json.ckpt").mkdir()
    assert_refused(invoke(*_search(f, out)), f"--checkpoint {out}.ckpt is a folder")


def test_a_symlink_is_followed_and_kept_and_the_mode_kept(f, tmp_path):
    """The policy: a link is followed; the file it names is replaced atomically, keeping its
    permissions, and the link stays a link."""
    real = tmp_path / "real" / "scores.json"
    real.parent.mkdir()
    real.write_text("old\n")
    real.chmod(0o640)
    link = tmp_path / "scores.json"
    link.symlink_to(real)
    r = invoke(*_score(f), "--bootstrap", "0", "--output", link, "--force")
    assert r.exit_code == 0, r.stderr
    assert link.is_symlink() and link.resolve() == real
    assert json.loads(real.read_text())["command"] == "score"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert sorted(p.name for p in real.parent.iterdir()) == ["scores.json"]  # no temp left


def test_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "target.json")
    atomic_write(link, lambda p: p.write_text("x"))
    assert link.is_symlink() and (tmp_path / "target.json").read_text() == "x"


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    path.chmod(0o604)
    atomic_write(path, lambda p: p.write_text("new"))
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o604
    fresh = tmp_path / "fresh.json"
    atomic_write(fresh, lambda p: p.write_text("x"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


def test_a_read_only_file_is_not_replaced(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    path.write_text("keep")
    real_access = os.access
    # as root a 0444 file is writable; os.access is what a non-root user's run asks
    monkeypatch.setattr(
        "autoprompt_py.results.os.access",
        lambda p, mode: False if Path(p) == path else real_access(p, mode),
    )
    with pytest.raises(AutopromptError, match="is read-only"):
        check_output_path(path)
    with pytest.raises(AutopromptError, match="is read-only"):
        atomic_write(path, lambda p: p.write_text("new"))
    assert path.read_text() == "keep"


# --------------------------------------------------------------------------------------------
# checkpoints: JSON only, checked before resuming
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(f, tmp_path_factory):
    """A search run of one iteration, with its checkpoint."""
    root = tmp_path_factory.mktemp("ckpt")
    out = root / "r.json"
    r = invoke(*_search(f, out))
    assert r.exit_code == 0, r.stderr
    return out, Path(f"{out}.ckpt")


def _resume_with(f, tmp_path, finished, content: bytes | None = None, edit=None):
    out = tmp_path / "r.json"
    ckpt = Path(f"{out}.ckpt")
    if content is None:
        data = json.loads(finished[1].read_text())
        edit(data)
        content = json.dumps(data).encode()
    ckpt.write_bytes(content)
    r = invoke(*_search(f, out, "--resume", "--iters", "2"))
    if r.exit_code == 2:
        assert ckpt.read_bytes() == content  # the refused checkpoint is left as it was
        assert not out.exists()
    return r


def test_resume_from_binary_garbage(f, tmp_path, finished):
    r = _resume_with(f, tmp_path, finished, bytes(range(256)) * 4)
    assert_refused(r, "--resume: ", "r.json.ckpt:2: not UTF-8 text", "not a search checkpoint")


def test_resume_from_a_truncated_checkpoint(f, tmp_path, finished):
    r = _resume_with(f, tmp_path, finished, finished[1].read_bytes()[:300])
    assert_refused(r, "--resume: ", "not valid JSON", "not a search checkpoint (they are JSON)")


def test_resume_from_a_pickle_never_runs_it(f, tmp_path, finished):
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    r = _resume_with(f, tmp_path, finished, pickle.dumps(Payload()))
    assert_refused(r, "--resume: ")
    assert not marker.exists()


@pytest.mark.parametrize(
    "edit,fragments",
    [
        (lambda d: d.update(autoprompt_py="0.0.1"), ["another version (autoprompt_py 0.0.1"]),
        (lambda d: d.pop("format"), ["another version", "format unknown"]),
        (
            lambda d: d["identity"]["model"].update(weights_sha256="0" * 64),
            ["made for another model (different weights)"],
        ),
        (
            lambda d: d["identity"]["train"].update(sha256="0" * 64),
            ["made for another train data (file contents differ)"],
        ),
        (lambda d: d["identity"].update(template="x"), ["another template ('x' there"]),
        (lambda d: d["state"].update(trigger=["a"]), ["damaged (trigger = ['a'] is not a"]),
        (lambda d: d["state"].update(best_trigger=[10**9]), ["token ids outside the model's"]),
        (lambda d: d["state"].pop("rng"), ["damaged (fields rng do not fit"]),
        (lambda d: d["state"].update(rng={"x": 1}), ["rng is not a random generator state"]),
        (lambda d: d.update(state=[]), ["damaged (no state)"]),
    ],
)
def test_resume_refuses_another_run_or_a_damaged_state(f, tmp_path, finished, edit, fragments):
    assert_refused(_resume_with(f, tmp_path, finished, edit=edit), "--resume: ", *fragments)


def test_resume_of_an_intact_copy_still_works(f, tmp_path, finished):
    r = _resume_with(f, tmp_path, finished, edit=lambda d: None)
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["iterations"] == 2


# --------------------------------------------------------------------------------------------
# concurrent runs: a lock beside the output
# --------------------------------------------------------------------------------------------

HOLD = """
import sys, time
from autoprompt_py.results import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_search_on_the_same_output_is_refused(f, tmp_path, no_model):
    out = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert_refused(
            invoke(*_search(f, out)),
            f"{out} is being written by another run (pid {holder.pid} on ",
            f"delete {out}.lock",
        )
        # the same holds for a checkpoint that another run writes
        other = tmp_path / "other.json"
        assert_refused(invoke(*_search(f, other, "--checkpoint", out)), f"(pid {holder.pid} on ")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json.lock"]  # the killed run's


def test_a_stale_lock_is_taken_over_with_a_warning(f, tmp_path):
    out = tmp_path / "r.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    Path(f"{out}.lock").write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"})
    )
    r = invoke(*_search(f, out))
    assert r.exit_code == 0, r.stderr
    assert f"warning: {out}.lock: taking over the lock of pid {dead.pid}, which no longer runs" in (
        r.stderr
    )
    assert out.exists() and not Path(f"{out}.lock").exists()  # removed at the end


def test_the_lock_holds_our_pid_and_is_removed_on_exit(tmp_path):
    out = tmp_path / "r.json"
    with output_lock(out):
        lock = json.loads(Path(f"{out}.lock").read_text())
        assert lock["pid"] == os.getpid()
    assert not Path(f"{out}.lock").exists()


# --------------------------------------------------------------------------------------------
# verbalizers, templates, messages, --num-cand
# --------------------------------------------------------------------------------------------


def test_words_that_are_one_token_for_two_labels_are_refused(tiny_model_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dirs["bert"])  # lower-cases its input
    v = Verbalizer.from_dict({"0": ["bad"], "1": ["Bad"]}, "v.json")
    with pytest.raises(AutopromptError) as info:
        v.resolve(tok)
    assert str(info.value).startswith(
        "v.json: words 'bad' (label '0') and 'Bad' (label '1') are the same tokens for this model"
    )


@pytest.mark.parametrize("command", ["score", "search", "labels"])
def test_a_template_without_a_field_is_refused(f, tmp_path, command, no_model):
    template = {"score": "{{sentence}} It was [MASK] .", "search": "{{sentence}} [T] [P] ."}
    template["labels"] = "{{sentence}} It was [P] ."
    out = tmp_path / "o.json"
    args = {
        "score": _score(f, template=template["score"]),
        "search": _search(f, out, template=template["search"]),
        "labels": [
            "labels",
            "--model",
            f["bert"],
            "--train",
            f["train.tsv"],
            "--template",
            template["labels"],
            "--output",
            out,
        ],
    }[command]
    assert_refused(
        invoke(*args),
        f"template {template[command]!r} has no field placeholder",
        "{{sentence}} is a literal brace",
    )
    no_output_in(tmp_path)


def test_a_one_row_file_is_scored_with_a_warning(f, tmp_path):
    one = tmp_path / "one.tsv"
    one.write_text("sentence\tlabel\ni loved it\t1\n")
    r = invoke(*_score(f, data=one), "--bootstrap", "0")
    assert r.exit_code == 0, r.stderr
    assert f"warning: {f['verb.json']}: labels '0' never occur in {one}" in r.stderr
    assert "1 examples from" in r.stdout


def test_a_missing_relations_file_names_relations(f, no_model):
    r = invoke(
        "probe", "--model", f["bert"], "--facts", f["P19.jsonl"], "--relations", "nope.jsonl"
    )
    assert_refused(r, "--relations 'nope.jsonl': no such file")


def test_a_5kb_template_is_cut_in_the_message(f, no_model):
    template = "{sentence} " + "very " * 1000 + "good ."  # no prediction slot
    line = assert_refused(invoke(*_score(f, template=template)), "has no prediction slot")
    assert len(line) < 400, len(line)
    assert "… (5017 characters)" in line


@pytest.mark.parametrize("method, option", [("autoprompt", "--num-cand"), ("gcg", "--topk")])
def test_num_cand_beyond_the_vocabulary_is_clamped_with_a_warning(f, tmp_path, method, option):
    out = tmp_path / "r.json"
    args = [*_search(f, out), "--method", method]
    if option in args:
        args[args.index(option) + 1] = "100000"
    else:
        args += [option, "100000"]
    r = invoke(*args)
    assert r.exit_code == 0, r.stderr
    assert f"warning: {option} 100000 is more than the " in r.stderr
    assert "other tokens the filters leave in this model's vocabulary; using " in r.stderr


def test_checkpoint_that_is_the_output_is_refused(f, tmp_path, no_model):
    out = tmp_path / "r.json"
    r = invoke(*_search(f, out, "--checkpoint", out))
    assert_refused(r, f"--checkpoint {out} is the --output file")
    no_output_in(tmp_path)


def test_state_type_check_follows_the_hints():
    from dataclasses import dataclass

    from autoprompt_py.search.state import _fits

    @dataclass
    class Inner:
        x: int

    assert _fits(1, float) and not _fits(True, int) and not _fits("1", float)
    assert _fits(None, str | None) and _fits([1, 2], list[int]) and not _fits([1.5], list[int])
    assert _fits({"x": 1}, Inner) and not _fits([1], Inner) and _fits([[1]], list[dict]) is False
