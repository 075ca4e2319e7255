"""A model folder's own code (``auto_map`` in config.json) never runs without --trust-remote-code.

One tiny BERT folder whose config.json maps to configuration/modeling files beside it, under a
model type transformers does not know (so transformers itself would ask on the terminal). Those
files append to a marker file when imported. Refusals run in-process (CliRunner); where
standard input is the point (a pipe holding ``y``, a real terminal) and under torchrun, the
commands run in fresh processes.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from autoprompt_py import remote_code
from autoprompt_py.cli import main
from autoprompt_py.errors import AutopromptError
from autoprompt_py.remote_code import needs_code

REPO = Path(__file__).resolve().parents[1]
SST = REPO / "examples" / "sst2_mini.tsv"
MODEL_TYPE = "autoprompt-custom-bert"
CONFIG_CODE = """from transformers import BertConfig

with open({marker!r}, "a") as _f:
    _f.write("configuration_custom imported\\n")


class CustomBertConfig(BertConfig):
    model_type = {model_type!r}
"""
MODELING_CODE = """from transformers import BertForMaskedLM

from .configuration_custom import CustomBertConfig

with open({marker!r}, "a") as _f:
    _f.write("modeling_custom imported\\n")


class CustomBertForMaskedLM(BertForMaskedLM):
    config_class = CustomBertConfig
"""


@pytest.fixture(scope="module")
def custom(tmp_path_factory, tiny_model_dirs) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("remote")
    folder = root / "custom-bert"
    shutil.copytree(tiny_model_dirs["bert"], folder)
    marker = root / "marker.txt"
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type=MODEL_TYPE,
        architectures=["CustomBertForMaskedLM"],
        auto_map={
            "AutoConfig": "configuration_custom.CustomBertConfig",
            "AutoModelForMaskedLM": "modeling_custom.CustomBertForMaskedLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    fill = {"marker": str(marker), "model_type": MODEL_TYPE}
    (folder / "configuration_custom.py").write_text(CONFIG_CODE.format(**fill))
    (folder / "modeling_custom.py").write_text(MODELING_CODE.format(**fill))
    refusal = (
        f"error: --model {folder}: this model needs code of its own (CustomBertForMaskedLM "
        "from modeling_custom.py, named by auto_map in config.json); autoprompt never runs a "
        "model's code unless asked: read that code, then pass --trust-remote-code "
        "(Python: trust_remote_code=True)"
    )
    return SimpleNamespace(folder=folder, marker=marker, refusal=refusal, root=root)


def commands(model: Path, out: Path) -> dict[str, list[str]]:
    """One small run of every command that loads a model, writing under ``out``."""
    sst, mask = str(SST), "{sentence} It was [MASK] ."
    args = {
        "score": ["--data", sst, "--template", "sst2", "--verbalizer", "sst2",
                  "--output", out / "score.json"],
        "probe": ["--facts", REPO / "examples/lama_mini", "--vocab",
                  REPO / "examples/lama_vocab.txt", "--output", out / "probe.json"],
        "search": ["--train", sst, "--dev", sst, "--template", "{sentence} [T] [P] .",
                   "--verbalizer", "sst2", "--iters", "1", "--num-cand", "4",
                   "--train-eval-limit", "4", "--dev-limit", "4", "--output",
                   out / "search.json", "--quiet"],
        "labels": ["--train", sst, "--template", "{sentence} It was [P] .", "--train-limit",
                   "8", "--output", out / "labels.json"],
        "tune": ["--train", sst, "--template", mask, "--verbalizer", "sst2", "--method",
                 "full", "--steps", "2", "--eval-every", "2", "--batch-size", "4",
                 "--output", out / "tuned", "--quiet"],
        "predict": ["--data", sst, "--template", mask, "--verbalizer", "sst2", "--output",
                    out / "predictions.jsonl"],
        "export": ["--template", mask, "--format", "embeddings", "--out",
                   out / "prompt.safetensors"],
    }  # fmt: skip
    return {c: [c, "--model", str(model), *map(str, a)] for c, a in args.items()}


COMMANDS = list(commands(Path("m"), Path("o")))


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    out.update(
        PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra,
    )  # fmt: skip
    return out


# Runs each command of argv[2] (a JSON list of argument lists) in this one process, on the
# standard input it was given; prints, per command, its exit code and whether the marker exists.
RUNNER = """
import json, sys
from pathlib import Path
from autoprompt_py.cli import main

marker, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
report = {"tty": sys.stdin.isatty(), "runs": []}
for args in cases:
    try:
        main.main(args=args, prog_name="autoprompt")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    report["runs"].append([args[0], code, marker.exists()])
print("REPORT " + json.dumps(report))
"""


def run_commands(custom, cases: list[list[str]], stdin: str, **extra_env: str) -> dict:
    """The commands in one fresh process whose standard input is ``pipe`` (holding ``y``
    lines) or ``tty`` (a pseudo-terminal with ``y`` lines typed in)."""
    argv = [sys.executable, "-c", RUNNER, str(custom.marker), json.dumps(cases)]
    answers = "y\n" * 200
    if stdin == "pipe":
        r = subprocess.run(
            argv, input=answers, env=env(**extra_env), capture_output=True, text=True, timeout=300
        )
    else:
        primary, secondary = pty.openpty()
        try:
            proc = subprocess.Popen(
                argv, stdin=secondary, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env(**extra_env), text=True,
            )  # fmt: skip
            os.close(secondary)
            os.write(primary, answers.encode())  # typed ahead: there for any question
            stdout, stderr = proc.communicate(timeout=300)
        finally:
            os.close(primary)
        r = SimpleNamespace(returncode=proc.returncode, stdout=stdout, stderr=stderr)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("REPORT "))
    return {**json.loads(line[len("REPORT ") :]), "stderr": r.stderr}


def errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


# -- without the flag: refused, before anything is imported or written -----------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_refused_in_one_line_and_nothing_written(custom, tmp_path, command):
    args = commands(custom.folder, tmp_path)[command]
    r = CliRunner().invoke(main, args, input="y\n" * 20)
    assert r.exit_code == 2, r.output
    assert errors(r.stderr) == [custom.refusal]
    assert "Traceback" not in r.output
    assert not custom.marker.exists()
    assert list(tmp_path.iterdir()) == []  # no output, no lock, no staging folder


@pytest.mark.parametrize("stdin", ["pipe", "tty"])
def test_never_imported_whatever_stdin_holds(custom, tmp_path, stdin):
    cases = list(commands(custom.folder, tmp_path).values())
    report = run_commands(custom, cases, stdin)
    assert report["tty"] is (stdin == "tty")
    assert report["runs"] == [[c, 2, False] for c in COMMANDS]
    assert errors(report["stderr"]) == [custom.refusal] * len(COMMANDS)
    assert "[y/N]" not in report["stderr"]  # nothing was asked
    assert list(tmp_path.iterdir()) == []


def test_never_imported_under_torchrun(custom, tmp_path):
    score = commands(custom.folder, tmp_path)["score"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    r = subprocess.run(
        [*cmd, "-m", "autoprompt_py", *score, "--device", "cpu", "--backend", "gloo"],
        input="y\n" * 20, env=env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode != 0
    assert errors(r.stderr) == [custom.refusal]  # every rank stopped; rank 0 speaks
    assert "exitcode  : 2" in r.stderr or "exit code 2" in r.stderr.lower(), r.stderr[-2000:]
    assert not custom.marker.exists()
    assert list(tmp_path.iterdir()) == []


def test_transformers_is_told_false_where_the_check_cannot_look(custom, tmp_path, monkeypatch):
    """With autoprompt's own check out of the way (as for a hub id not yet downloaded), the
    load itself passes trust_remote_code=False: transformers refuses without asking, and
    CliRunner's standard input (``y``) is never read."""
    import autoprompt_py.model as model

    monkeypatch.setattr(model, "check_remote_code", lambda *a, **k: None)
    monkeypatch.setattr("autoprompt_py.remote_code.check_remote_code", lambda *a, **k: None)
    r = CliRunner().invoke(main, commands(custom.folder, tmp_path)["score"], input="y\n" * 20)
    assert r.exit_code == 2, r.output
    [line] = errors(r.stderr)
    assert line.startswith(f"error: --model {custom.folder}: this model needs code of its own")
    assert line.endswith("pass --trust-remote-code (Python: trust_remote_code=True)")
    assert not custom.marker.exists()


@pytest.mark.parametrize(
    "missing, why",
    [
        ("modeling_custom.py", "auto_map in config.json names it"),
        ("helpers_custom.py", "the model's code imports it"),  # a file no auto_map names
    ],
)
def test_a_local_folder_missing_its_code_is_named_not_a_hub_address(custom, tmp_path, missing, why):
    """With --trust-remote-code, a code file the folder lacks is said of the folder (and the
    file), never as a hub address built from the folder's path; nothing is imported."""
    folder = shutil.copytree(custom.folder, tmp_path / "model")
    marker = tmp_path / "marker.txt"  # this copy's own: trusted code may run here
    fill = {"marker": str(marker), "model_type": MODEL_TYPE}
    (folder / "configuration_custom.py").write_text(CONFIG_CODE.format(**fill))
    (folder / "modeling_custom.py").write_text(MODELING_CODE.format(**fill))
    if missing == "helpers_custom.py":
        code = (folder / "modeling_custom.py").read_text()
        (folder / "modeling_custom.py").write_text("from .helpers_custom import HELP\n" + code)
    else:
        (folder / missing).unlink()
    out = tmp_path / "out"
    out.mkdir()
    r = CliRunner().invoke(main, [*commands(folder, out)["score"], "--trust-remote-code"])
    assert r.exit_code == 2, r.output
    assert errors(r.stderr) == [
        f"error: --model {folder}: the folder {folder} has no {missing} ({why}); put the "
        "model's code files beside its config.json, as they were saved"
    ]
    assert "huggingface.co" not in r.output and "Traceback" not in r.output
    assert list(out.iterdir()) == []
    # a file auto_map names is looked for before any of the code is imported
    assert marker.exists() is (missing == "helpers_custom.py")


HUB_ID, COMMIT = "someone/custom-bert", "a" * 40


def hub_cache(custom, root: Path) -> Path:
    """A Hugging Face cache holding the custom folder as hub id HUB_ID at commit COMMIT."""
    snapshot = root / "models--someone--custom-bert" / "snapshots" / COMMIT
    shutil.copytree(custom.folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(COMMIT)
    return root


def test_a_hub_id_in_the_local_cache_is_checked(custom, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache(custom, tmp_path / "hub")))
    args = commands(Path(HUB_ID), tmp_path / "out")["score"]
    r = CliRunner().invoke(main, args, input="y\n")
    assert r.exit_code == 2
    assert errors(r.stderr) == [custom.refusal.replace(str(custom.folder), HUB_ID)]
    assert not custom.marker.exists()


def test_the_python_api_refuses_by_default(custom):
    from autoprompt_py.model import load_model

    with pytest.raises(AutopromptError, match="--trust-remote-code"):
        load_model(custom.folder, "cpu")
    assert not custom.marker.exists()


@pytest.mark.parametrize(
    "config, tokenizer_config, asks",
    [
        ({"model_type": "bert"}, None, None),
        (  # a known type with an auto_map: its code is what the author meant to run
            {"model_type": "bert", "auto_map": {"AutoModelForMaskedLM": "m.MyBert"}},
            None,
            "MyBert from m.py, named by auto_map in config.json",
        ),
        (
            {"model_type": "bert"},
            {"auto_map": {"AutoTokenizer": ["tok.Slow", None]}},
            "Slow from tok.py, named by auto_map in tokenizer_config.json",
        ),
        (
            {"auto_map": {"AutoModel": "org/repo--modeling_x.X"}},
            None,
            "X from modeling_x.py, named by auto_map in config.json",
        ),
        ({"model_type": "no-such-type", "architectures": ["Odd"]}, None, "Odd of model_type"),
    ],
)
def test_what_needs_code(config, tokenizer_config, asks):
    found = needs_code(config, tokenizer_config)
    assert found == asks if found is None or asks is None else found.startswith(asks)


# -- with the flag: imported, working, and recorded ------------------------------------------


def test_with_the_flag_it_runs_and_every_result_records_it(custom, tmp_path):
    cases = commands(custom.folder, tmp_path)
    (tmp_path / "hub").mkdir()
    hub = commands(Path(HUB_ID), tmp_path / "hub")["score"]  # last: the process ran both
    report = run_commands(
        custom,
        [cases[c] + ["--trust-remote-code"] for c in COMMANDS] + [hub + ["--trust-remote-code"]],
        "pipe",
        HF_MODULES_CACHE=str(tmp_path / "modules"),  # where transformers copies the code
        HF_HUB_CACHE=str(hub_cache(custom, tmp_path / "cache")),
    )
    ran = [[c, 0, True] for c in [*COMMANDS, "score"]]
    assert report["runs"] == ran, report["stderr"][-3000:]
    assert "modeling_custom imported" in custom.marker.read_text()
    assert (tmp_path / "labels.json").is_file()  # a verbalizer: words only; its record beside it
    names = ["score.json", "probe.json", "search.json", "tuned/result.json", "labels.json.run.json"]
    records = [json.loads((tmp_path / n).read_text()) for n in names]
    records.append(json.loads((tmp_path / "predictions.jsonl.run.json").read_text()))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "prompt.safetensors"), "pt") as f:  # string metadata
        records.append({k: json.loads(v) for k, v in f.metadata().items() if "trust" in k})
    for record in records:
        assert record["trust_remote_code"] is True
        [trusted] = record["trusted_models"]
        assert trusted["model"] == str(custom.folder)
        assert trusted["revision"] is None  # a local folder has no hub commit
        assert set(trusted["code"]) == {"configuration_custom.py", "modeling_custom.py"}
    local, from_hub = json.loads((tmp_path / "hub" / "score.json").read_text())["trusted_models"]
    assert local["model"] == str(custom.folder)
    assert from_hub == {"model": HUB_ID, "revision": COMMIT, "code": {}}  # the commit pins it
    # the tuned model keeps its code: loading it asks for the flag again
    custom.marker.unlink()
    tuned = tmp_path / "tuned"
    r = CliRunner().invoke(main, commands(tuned, tmp_path / "again")["score"])
    assert r.exit_code == 2
    assert errors(r.stderr) == [custom.refusal.replace(str(custom.folder), str(tuned))]
    assert not custom.marker.exists()


def test_results_record_nothing_without_trust(monkeypatch):
    from autoprompt_py.results import provenance

    monkeypatch.setattr(remote_code, "_TRUSTED", {})
    assert "trust_remote_code" not in provenance("score", {})
