"""What a new user meets: no silent overwrite, messages that point the right way,
no small untruths, a fast first contact, hand-edited inputs refused by name, SIGTERM kept."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from optional import requires

from autoprompt_py.cli import COMMANDS, main
from autoprompt_py.resources import shipped_names

REPO_ROOT = Path(__file__).resolve().parents[1]
MINI = REPO_ROOT / "examples" / "sst2_mini.tsv"
FACTS = REPO_ROOT / "examples" / "lama_mini"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(r, *parts: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output and r.output.startswith("error: "), r.output
    for part in parts:
        assert part in r.output, (part, r.output)


def score_args(model, out, *extra):
    return [
        "score", "--model", model, "--data", MINI, "--template", "{sentence} It was [MASK] .",
        "--verbalizer", "sst2", "--bootstrap", "0", "--output", out, *extra,
    ]  # fmt: skip


def result_file(path: Path, lm, **trigger) -> Path:
    """A search result as `autoprompt search` writes one, with its trigger fields replaceable."""
    from autoprompt_py.encoding import tokenize_piece
    from autoprompt_py.prompt import model_record

    ids = [tokenize_piece(lm.tokenizer, w, True)[0] for w in ("really", "truly", "so")]
    record = {"ids": ids, "tokens": lm.tokenizer.convert_ids_to_tokens(ids)}
    record.update(trigger)
    data = {
        "kind": "autoprompt-search",
        "template": "{sentence} [T] [T] [T] [P] .",
        "trigger": record,
        "mode": "classification",
        "model": model_record(lm),
        "curve": [[0.0, 0, 0.5], [1.0, 10, 0.6]],
        "cost": {"seconds": 1.0, "forward_passes": 10},
        "method": "gcg",
        "config": {"seed": 0},
    }
    path.write_text(json.dumps(data, allow_nan=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bert(tiny_model_dirs):
    return str(tiny_model_dirs["bert"])


@pytest.fixture(scope="module")
def lm(bert):
    from autoprompt_py.model import load_model

    return load_model(bert, device="cpu")


# ---------------------------------------------------------------- 2: overwrite needs --force


def test_score_refuses_an_existing_output_without_force(bert, tmp_path):
    out = tmp_path / "scores.json"
    out.write_text("an earlier result\n")
    refused(invoke(*score_args(bert, out)), f"--output {out} already exists", "--force")
    assert out.read_text() == "an earlier result\n"
    r = invoke(*score_args(bert, out, "--force"))
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["command"] == "score"


def test_probe_refuses_an_existing_output_without_force(bert, tmp_path):
    out = tmp_path / "probe.json"
    out.write_text("an earlier result\n")
    args = ["probe", "--model", bert, "--facts", FACTS, "--template", "[X] lives in [Y] .",
            "--output", out]  # fmt: skip
    refused(invoke(*args), f"--output {out} already exists", "--force")
    assert out.read_text() == "an earlier result\n"
    assert invoke(*args, "--force").exit_code == 0
    assert json.loads(out.read_text())["command"] == "probe"


@requires("matplotlib")
def test_plot_refuses_an_existing_output_without_force(lm, tmp_path):
    result = result_file(tmp_path / "r.json", lm)
    out = tmp_path / "curve.png"
    out.write_bytes(b"an earlier figure")
    refused(invoke("plot", result, "--output", out), f"--output {out} already exists", "--force")
    assert out.read_bytes() == b"an earlier figure"
    assert invoke("plot", result, "--output", out, "--force").exit_code == 0
    assert out.read_bytes().startswith(b"\x89PNG")


def test_export_refuses_an_existing_out_without_force(bert, lm, tmp_path):
    result = result_file(tmp_path / "r.json", lm)
    out = tmp_path / "e.safetensors"
    out.write_bytes(b"earlier")
    args = ["export", result, "--model", bert, "--format", "embeddings", "--out", out]
    refused(invoke(*args), f"--out {out} already exists", "--force")
    assert out.read_bytes() == b"earlier"
    assert invoke(*args, "--force").exit_code == 0


# ------------------------------------------------------------ 5: messages that point the way


def test_a_headerless_tsv_is_told_to_use_columns(bert, tmp_path):
    data = tmp_path / "noheader.tsv"
    data.write_text("i have to say the plot is a real treat .\t1\na dull film .\t0\n")
    args = score_args(bert, tmp_path / "s.json")
    args[args.index(MINI)] = data
    r = invoke(*args)
    refused(r, "look like a row of data", "--columns")
    assert "--label-field" not in r.output
    # a file with a real header but another label name keeps the --label-field advice
    data.write_text("sentence\tstars\na dull film .\t0\n")
    refused(invoke(*args), "no label field 'label'", "choose it with --label-field")


def test_a_missing_data_file_names_the_fix(bert, tmp_path):
    args = score_args(bert, tmp_path / "s.json")
    args[args.index(MINI)] = "dev.tsv"
    refused(invoke(*args), "dev.tsv: no such data file", "give the path of a .tsv/.csv/.jsonl")


def test_a_folder_that_is_not_a_model_says_so(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a model")
    r = invoke(*score_args(folder, tmp_path / "s.json"))
    refused(r, f"--model {folder}: this folder is not a model (no config.json)")
    assert "backend tokenizer" not in r.output


@pytest.mark.parametrize(
    "command, typed, meant",
    [("search", "--iter", "--iters"), ("score", "--tempalte", "--template")],
)
def test_a_mistyped_option_suggests_the_one_meant(command, typed, meant):
    r = invoke(command, typed, "3")
    assert r.exit_code == 2
    assert f"No such option '{typed}'. Did you mean '{meant}'?" in r.output, r.output


# --------------------------------------------------------------------- 6: small untruths


def test_bootstrap_0_prints_and_writes_no_interval(bert, tmp_path):
    out = tmp_path / "s.json"
    r = invoke(*score_args(bert, out))
    assert r.exit_code == 0, r.output
    assert "0.000-0.000" not in r.output
    assert json.loads(out.read_text())["templates"][0]["accuracy_ci95"] is None
    out.unlink()
    r = invoke(*[a for a in score_args(bert, out) if a not in ("--bootstrap", "0")])
    assert r.exit_code == 0
    low, high = json.loads(out.read_text())["templates"][0]["accuracy_ci95"]
    assert 0 <= low <= high <= 1 and f"{low:.3f}-{high:.3f}" in r.output


def test_export_embeddings_wants_a_safetensors_name(bert, lm, tmp_path):
    result = result_file(tmp_path / "r.json", lm)
    r = invoke("export", result, "--model", bert, "--format", "embeddings", "--out",
               tmp_path / "e.npy")  # fmt: skip
    refused(r, "--format embeddings writes one safetensors file; name it e.safetensors")
    assert not (tmp_path / "e.npy").exists()


@requires("peft")
def test_peft_files_get_the_umask_permissions(bert, lm, tmp_path):
    result = result_file(tmp_path / "r.json", lm)
    out = tmp_path / "peft"
    mask = os.umask(0o022)
    try:
        r = invoke("export", result, "--model", bert, "--format", "peft", "--out", out)
    finally:
        os.umask(mask)
    assert r.exit_code == 0, r.output
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes["adapter_model.safetensors"] == 0o644, modes
    assert set(modes.values()) == {0o644}, modes


def test_score_help_and_errors_name_the_same_shipped_sets(bert, tmp_path):
    text = " ".join(invoke("score", "--help").output.split())
    for kind in ("templates", "verbalizers"):
        assert f"({', '.join(shipped_names(kind))})" in text
    args = score_args(bert, tmp_path / "s.json")
    args[args.index("{sentence} It was [MASK] .")] = "no-such-set"
    refused(invoke(*args), f"({', '.join(shipped_names('templates'))})")


def test_the_export_message_reads_correctly(bert, lm, tmp_path):
    result = result_file(tmp_path / "r.json", lm)
    out = tmp_path / "e.safetensors"
    r = invoke("export", result, "--model", bert, "--format", "embeddings", "--out", out)
    assert r.exit_code == 0, r.output
    tokens = " ".join(json.loads(result.read_text())["trigger"]["tokens"])
    assert r.output.startswith(f"wrote embeddings seed of 3 trigger tokens {tokens!r} from ")
    assert "triggers tokens" not in r.output and f"({tokens!r})" not in r.output


# ---------------------------------------------------------------- 7: a fast first contact

_NO_TORCH = """
import sys
from autoprompt_py.cli import main
for argv in {argvs!r}:
    try:
        main(argv)
    except SystemExit:
        pass
heavy = [m for m in ("torch", "transformers", "numpy", "peft", "matplotlib") if m in sys.modules]
print("HEAVY", heavy)
"""


def test_help_version_and_option_errors_import_nothing_heavy():
    argvs = [["--help"], ["--version"], ["nosuch"]]
    for name in COMMANDS:
        argvs += [[name, "--help"], [name, "--no-such-option"]]
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH.format(argvs=argvs)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=120,
    )
    assert "HEAVY []" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_the_static_command_list_matches_the_commands():
    import importlib

    for name, (module, short) in COMMANDS.items():
        command = {c.name: c for c in importlib.import_module(module).COMMANDS}[name]
        assert command.help.strip().splitlines()[0] == short, name
    assert "Search trigger tokens" in invoke("--help").output


def test_the_cli_copies_of_the_choices_match_their_modules():
    from autoprompt_py import ensemble, export, prompt, verbalizer
    from autoprompt_py.cli import evaluation_options as cli_evaluation
    from autoprompt_py.cli import export as cli_export
    from autoprompt_py.cli import options as cli_options

    assert cli_options.AGGREGATIONS == verbalizer.AGGREGATIONS
    assert cli_evaluation.RULES == ensemble.RULES
    assert cli_export.FORMATS == export.FORMATS
    assert cli_export.TOKEN_CHOICES == prompt.TOKEN_CHOICES


# ----------------------------------------------------------------- 8: hand-edited inputs


@pytest.mark.parametrize(
    "trigger, field",
    [
        ({"ids": [1, 2, 10**7]}, "outside the vocabulary"),
        ({"ids": [1, 2]}, "trigger.ids holds 2 ids but its template has 3"),
        ({"ids": [1, 2, float("nan")]}, "trigger.ids must be a list of token ids"),
        ({"ids": [1, 2, float("inf")]}, "trigger.ids must be a list of token ids"),
        ({"ids": [1, 2, -3]}, "trigger.ids must be a list of token ids"),
        ({"ids": [1, 2, 3.5]}, "trigger.ids must be a list of token ids"),
        ({"ids": [1, 2, 3], "tokens": ["a", "b"]}, "trigger.tokens must be a list of 3"),
    ],
)
def test_a_hand_edited_result_is_refused_by_every_reader(bert, lm, tmp_path, trigger, field):
    result = result_file(tmp_path / "r.json", lm, **trigger)
    if "tokens" not in trigger:
        data = json.loads(result.read_text())
        data["trigger"].pop("tokens")
        result.write_text(json.dumps(data, allow_nan=True))
    args = score_args(bert, tmp_path / "s.json")
    args[args.index("{sentence} It was [MASK] .")] = result
    refused(invoke(*args), field)
    out = tmp_path / "e.safetensors"
    refused(invoke("export", result, "--model", bert, "--format", "embeddings", "--out", out))
    assert not out.exists() and not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.5", True])
@requires("matplotlib")
def test_plot_refuses_a_curve_with_bad_numbers(lm, tmp_path, bad):
    result = result_file(tmp_path / "r.json", lm)
    data = json.loads(result.read_text())
    data["curve"][1][2] = bad
    result.write_text(json.dumps(data, allow_nan=True))
    refused(invoke("plot", result, "--output", tmp_path / "c.png"), 'point 2 of its "curve"')
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("suffix, sep", [(".tsv", "\t"), (".csv", ",")])
def test_a_cell_over_the_csv_field_limit_is_read_like_jsonl(tmp_path, suffix, sep):
    from autoprompt_py.data import read_examples

    long = "word " * 40_000  # 200 KB, over csv's 128 KB field limit
    path = tmp_path / f"long{suffix}"
    path.write_text(f"sentence{sep}label\n{long}{sep}1\nshort{sep}0\n")
    jsonl = tmp_path / "long.jsonl"
    jsonl.write_text(json.dumps({"sentence": long, "label": 1}) + "\n")
    examples = read_examples(path)
    assert examples[0].fields == read_examples(jsonl)[0].fields
    assert examples[1].fields == {"sentence": "short"}
    import csv

    assert csv.field_size_limit() == 131072  # the process-wide limit is left as it was


def _catches_sigterm(pid: int) -> bool:
    """True once the process has installed a SIGTERM handler (the command is running)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(ln for ln in status.splitlines() if ln.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("command", ["score", "probe"])
def test_sigterm_ends_a_long_command_cleanly(bert, tmp_path, command):
    out = tmp_path / "out.json"
    if command == "score":
        data = tmp_path / "many.tsv"
        data.write_text("sentence\tlabel\n" + "a long and winding film .\t1\n" * 200_000)
        args = score_args(bert, out)
        args[args.index(MINI)] = data
    else:
        facts = tmp_path / "P19.jsonl"
        row = json.dumps({"sub_label": "Dante", "obj_label": "Florence"})
        facts.write_text((row + "\n") * 100_000)
        args = ["probe", "--model", bert, "--facts", facts, "--template", "[X] lives in [Y] .",
                "--output", out]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoprompt_py", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    deadline = time.monotonic() + 120
    while not _catches_sigterm(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(3)  # past the imports (the handler is set first), into reading and scoring
    assert proc.poll() is None, "the command ended before SIGTERM could be sent"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "many.tsv" if command == "score" else "P19.jsonl"
    ]  # no output, no temporary file


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "30522", 0])
def test_export_refuses_a_model_record_with_bad_numbers(bert, lm, tmp_path, bad):
    result = result_file(tmp_path / "r.json", lm)
    data = json.loads(result.read_text())
    data["model"]["vocab_size"] = bad
    result.write_text(json.dumps(data, allow_nan=True))
    out = tmp_path / "e.safetensors"
    r = invoke("export", result, "--model", bert, "--format", "embeddings", "--out", out)
    refused(r, "model.vocab_size must be a whole number")
    assert not out.exists()


def test_probe_leaves_a_relation_with_no_scorable_fact_out_and_refuses_when_none_is_left(
    tmp_path,
):
    """Point 8: --vocab that leaves a relation no fact is reported as such and not averaged;
    a run where no relation keeps a fact is refused, and nothing is written."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("paris\nrome\nberlin\n", encoding="utf-8")  # P36's objects, none of P19's
    out = tmp_path / "probe.json"
    args = ["probe", "--facts", FACTS, "--template", "[X] lives in [Y] .", "--vocab", vocab]
    r = invoke(*args, "--output", out)
    assert r.exit_code == 0, r.output
    assert "P19: none of its" in r.output and "left out of the averages" in r.output
    averages = json.loads(out.read_text())["averages"]
    assert averages and all(kind["macro"]["relations"] == 1 for kind in averages.values())
    vocab.write_text("zzzzqq\n", encoding="utf-8")
    r = invoke(*args, "--output", tmp_path / "none.json")
    refused(r, "nothing can be scored", "--vocab")
    assert not (tmp_path / "none.json").exists()
