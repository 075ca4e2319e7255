"""A run stopped part-way continues with ``--resume`` and ends as an uninterrupted run would:
``tune`` after SIGTERM (what Slurm and Kubernetes send before a requeue), Ctrl-C (SIGINT) and
kill -9 between two checkpoints.

The stop comes at a fixed training step (a hook on the training step's loss, not on
``Objective.loss``, which dev evaluation calls too), never after a delay: the tests do not
depend on timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from autoprompt_py.cli import main
from autoprompt_py.tune.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
STOP_AT = 5  # the 5th training step: after the checkpoint of step 4, before the one of step 6

# the same hook in a child process, which it kills (-9 cannot be caught, so not in-process)
KILL = """
import os, signal, sys
from autoprompt_py.tune.loop import Trainer
original, calls = Trainer._loss, [0]
def loss(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *args, **kwargs)
Trainer._loss = loss
from autoprompt_py.cli import main
main(sys.argv[2:], prog_name="autoprompt")
"""


def tune_args(model: Path, output: Path, *extra: str) -> list[str]:
    return [
        "tune", "--model", str(model), "--device", "cpu", "--train",
        str(REPO / "examples" / "sst2_mini.tsv"), "--template",
        "{sentence} [T] [T] It was [MASK] .", "--verbalizer", "sst2", "--method", "soft",
        "--init", "vocab", "--steps", "6", "--eval-every", "2", "--batch-size", "4",
        "--lr", "0.1", "--quiet", "--output", str(output), *extra,
    ]  # fmt: skip


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """SIGINT as an interactive shell leaves it. A suite started in the background by a
    non-interactive shell (``cmd &``, nohup) inherits it ignored, and the CLI keeps an ignored
    Ctrl-C ignored (``cli/group.py``), so the Ctrl-C tests set it as a terminal would."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def signal_at(monkeypatch, step: int, signum: int) -> None:
    """Send ``signum`` to this process's main thread during the ``step``-th training step.

    To the main thread, not the process: a process-wide signal may land on another thread
    (one left by an earlier test), and the handler then runs at the main thread's next
    bytecode, which may be inside a ``__del__``, where CPython drops the exception."""
    original, calls = Trainer._loss, [0]

    def loss(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == step:
            signal.pthread_kill(threading.main_thread().ident, signum)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_loss", loss)


@pytest.fixture(scope="module")
def whole(tiny_model_dirs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "t"
    r = invoke(tune_args(tiny_model_dirs["bert"], out))
    assert r.exit_code == 0, r.output
    return out


def assert_same_run(folder: Path, whole: Path, steps: int | None = 6) -> None:
    a = json.loads((folder / "result.json").read_text())
    b = json.loads((whole / "result.json").read_text())
    assert not a["interrupted"] and a["steps"] == b["steps"] == (steps or b["steps"])
    assert a["select"] == b["select"]
    assert [(c["step"], c["dev"]) for c in a["curve"]] == [
        (c["step"], c["dev"]) for c in b["curve"]
    ]
    assert [c["train_loss"] or 0 for c in a["curve"]] == pytest.approx(
        [c["train_loss"] or 0 for c in b["curve"]], rel=1e-6
    )
    assert a["best_step"] == b["best_step"] and a["dev"] == b["dev"]
    x, y = load_file(folder / "embeddings.safetensors"), load_file(whole / "embeddings.safetensors")
    assert x.keys() == y.keys()
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "signum, code, says",
    [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted")],
)
def test_tune_resumes_after_a_signal(
    tiny_model_dirs, tmp_path, monkeypatch, whole, signum, code, says
):
    out = tmp_path / "t"
    signal_at(monkeypatch, STOP_AT, signum)
    r = invoke(tune_args(tiny_model_dirs["bert"], out))
    assert r.exit_code == code, r.output
    assert says in r.stderr and "Traceback" not in r.output
    # the best so far is written, and the checkpoint of step 4 is kept
    assert json.loads((out / "result.json").read_text())["interrupted"]
    assert json.loads((Path(f"{out}.ckpt") / "state.json").read_text())["state"]["step"] == 4
    monkeypatch.undo()
    # the same command again is refused: it would replace the run's folder
    r = invoke(tune_args(tiny_model_dirs["bert"], out))
    assert r.exit_code == 2 and "--resume" in r.stderr and "--force" in r.stderr, r.output
    r = invoke(tune_args(tiny_model_dirs["bert"], out, "--resume"))
    assert r.exit_code == 0, r.output
    assert_same_run(out, whole)
    assert not Path(f"{out}.lock").exists()


def test_cv_resumes_after_a_signal_inside_a_fold(tiny_model_dirs, tmp_path, monkeypatch):
    model, cv = tiny_model_dirs["bert"], ("--select", "cv", "--cv-folds", "2")
    whole = tmp_path / "whole"
    assert invoke(tune_args(model, whole, *cv)).exit_code == 0
    out = tmp_path / "t"
    signal_at(monkeypatch, 8, signal.SIGTERM)  # the second fold's second step (6 a fold)
    r = invoke(tune_args(model, out, *cv))
    assert r.exit_code == 143 and "terminated (SIGTERM)" in r.stderr, r.output
    assert not out.exists()  # nothing trained on all rows yet: no folder
    ckpt = Path(f"{out}.ckpt")
    assert json.loads((ckpt / "fold-0" / "state.json").read_text())["state"]["finished"]
    assert not json.loads((ckpt / "fold-1" / "state.json").read_text())["state"]["finished"]
    monkeypatch.undo()
    r = invoke(tune_args(model, out, *cv, "--resume"))
    assert r.exit_code == 0, r.output
    assert_same_run(out, whole, steps=None)


def test_tune_resumes_after_kill_9_between_checkpoints(tiny_model_dirs, tmp_path, whole):
    out = tmp_path / "t"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = tune_args(tiny_model_dirs["bert"], out)
    p = subprocess.run(
        [sys.executable, "-c", KILL, str(STOP_AT), *args],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert not out.exists()  # no folder: the process had no time to write one
    assert Path(f"{out}.lock").exists()  # the dead run's lock
    r = invoke(args)
    assert r.exit_code == 2 and f"an interrupted run left {out}.ckpt" in r.stderr, r.output
    r = invoke([*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert "taking over the lock" in r.stderr  # of a process that no longer runs
    assert_same_run(out, whole)


def test_resume_without_a_checkpoint_says_so(tiny_model_dirs, tmp_path):
    out = tmp_path / "t"
    r = invoke(tune_args(tiny_model_dirs["bert"], out, "--resume"))
    assert r.exit_code == 2 and "nothing to resume" in r.stderr, r.output
    assert r.stderr.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize(
    "change, differs",
    [(["--lr", "0.2"], "config"), (["--verbalizer", '{"0": "bad", "1": "good"}'], "verbalizer")],
)
def test_resume_with_other_settings_is_refused_by_name(
    tiny_model_dirs, tmp_path, whole, change, differs
):
    import shutil

    out = tmp_path / "t"
    shutil.copytree(whole, out)
    shutil.copytree(f"{whole}.ckpt", f"{out}.ckpt")
    args = tune_args(tiny_model_dirs["bert"], out, "--resume")
    for i in range(0, len(change), 2):
        args[args.index(change[i]) + 1] = change[i + 1]
    before = (out / "result.json").read_bytes()
    r = invoke(args)
    assert r.exit_code == 2 and "is of another run" in r.stderr and differs in r.stderr, r.output
    assert (out / "result.json").read_bytes() == before


class _SignalInDel:
    """Sends a signal from a ``__del__``: its handler's exception is raised there, where
    CPython drops it ("Exception ignored in ..."), as when a real signal lands during GC."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        signal.pthread_kill(threading.main_thread().ident, self.signum)
        sum(range(10))  # bytecode after the signal: the handler runs (and raises) here


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop
@pytest.mark.parametrize(
    "signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
def test_a_signal_dropped_inside_a_del_still_stops_the_run(
    tiny_model_dirs, tmp_path, monkeypatch, signum, code
):
    original, calls = Trainer._loss, [0]

    def loss(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == STOP_AT:
            _SignalInDel(signum)  # dropped at once: refcount zero
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_loss", loss)
    out = tmp_path / "t"
    r = invoke(tune_args(tiny_model_dirs["bert"], out))
    assert r.exit_code == code, r.output
    result = json.loads((out / "result.json").read_text())
    assert result["interrupted"] and result["steps"] == STOP_AT  # one step late, not lost
