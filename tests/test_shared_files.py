"""Under torchrun, rank 0 alone decides what happens to every output, partial file and
checkpoint (fresh, resume, replace, refuse); the other ranks learn its decision through the
process group (``results.claim_output``).

A rank that looked for itself saw whatever rank 0 had just begun to write (``<out>.partial``,
``<out>.ckpt``) and stopped with "an interrupted run left ...", one run in two, depending on
which process was faster. To make that outcome certain rather than a matter of timing, rank 1
here runs with a *phantom*: the files rank 0 writes look as if they already existed to rank 1.
A rank 1 that decides for itself then refuses every time; one that takes rank 0's decision
never looks. The runs are two plain processes with the variables torchrun sets (gloo, CPU),
on a tiny model; few, as they are the slow part of the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoprompt_py.cli import main
from autoprompt_py.model import load_model
from autoprompt_py.prediction.output import write_predictions
from autoprompt_py.prediction.run import PredictConfig

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "sst2_mini.tsv"
TEMPLATE = "{sentence} It was [MASK] ."

# rank 1 sees the names in $PHANTOM as existing files; then the command runs as usual
PHANTOM = """
import os, pathlib, sys
if os.environ.get("RANK") == "1":
    names = set(os.environ["PHANTOM"].split(","))
    exists = pathlib.Path.exists
    pathlib.Path.exists = lambda self, *a, **k: self.name in names or exists(self, *a, **k)
from autoprompt_py.cli import main
main(sys.argv[1:], prog_name="autoprompt")
"""


def two_ranks(*args, phantom: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The command on two processes, with the variables torchrun sets (rank 1 may see a
    phantom); both processes' exit codes must agree, and their stderr is joined."""
    from test_distributed import ranks

    argv = ["-c", PHANTOM, *map(str, args), "--backend", "gloo", "--dist-timeout", "60"]
    os.environ["PHANTOM"] = ",".join(phantom)
    try:
        procs = ranks(argv)
    finally:
        del os.environ["PHANTOM"]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes[0] == codes[1], (codes, outs[0][1][-2000:], outs[1][1][-2000:])
    return subprocess.CompletedProcess(args, codes[0], outs[0][0], outs[0][1] + outs[1][1])


def predict_args(model: Path, out: Path, *extra) -> list:
    return ["predict", "--model", model, "--device", "cpu", "--data", DATA, "--template",
            TEMPLATE, "--verbalizer", "sst2", "--window", "8", "--batch-size", "4",
            "--output", out, *extra]  # fmt: skip


def search_args(model: Path, out: Path, *extra) -> list:
    return ["search", "--model", model, "--device", "cpu", "--train", DATA, "--template",
            "{sentence} [T] It was [MASK] .", "--verbalizer", "sst2", "--iters", "2",
            "--batch-size", "4", "--accumulation-steps", "1", "--num-cand", "4",
            "--train-eval-limit", "4", "--dev-limit", "8", "--quiet", "--output", out,
            *extra]  # fmt: skip


def tune_args(model: Path, out: Path, *extra) -> list:
    return ["tune", "--model", model, "--device", "cpu", "--train", DATA, "--template",
            "{sentence} [T] It was [MASK] .", "--verbalizer", "sst2", "--steps", "2",
            "--eval-every", "1", "--batch-size", "4", "--no-dropout", "--quiet",
            "--output", out, *extra]  # fmt: skip


def one_line_error(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize(
    "command, phantom",
    [
        ("predict", ("out.jsonl.partial", "out.jsonl.partial.json")),
        ("search", ("out.json.ckpt",)),
        ("tune", ("out", "out.ckpt")),
    ],
)
def test_a_fresh_run_on_two_processes_never_sees_its_own_files(
    tiny_model_dirs, tmp_path, command, phantom
):
    name = {"predict": "out.jsonl", "search": "out.json", "tune": "out"}[command]
    args = {"predict": predict_args, "search": search_args, "tune": tune_args}[command]
    out = tmp_path / name
    r = two_ranks(*args(tiny_model_dirs["bert"], out), phantom=phantom)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "error" not in r.stderr
    assert out.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        {
            "predict": [name, f"{name}.run.json"],
            "search": [name, f"{name}.ckpt"],
            "tune": [name, f"{name}.ckpt"],
        }[command]  # fmt: skip
    )


def test_predict_on_two_processes_from_each_state(tiny_model_dirs, tmp_path):
    """Complete: refused, kept. Partial: --resume ends byte for byte as one whole run.
    --force: replaced. Each decision is rank 0's, taken once for both processes."""
    model = tiny_model_dirs["bert"]
    whole = tmp_path / "whole.jsonl"
    r = CliRunner().invoke(main, list(map(str, predict_args(model, whole))))
    assert r.exit_code == 0, r.output
    # complete: refused on both ranks with rank 0's one line, the file kept
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"earlier\n")
    r = two_ranks(*predict_args(model, out))
    assert r.returncode == 2
    assert f"--output {out} already exists" in one_line_error(r)
    assert out.read_bytes() == b"earlier\n"
    # --force: replaced by the run's rows
    r = two_ranks(*predict_args(model, out, "--force"), phantom=("out.jsonl.partial",))
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.read_bytes() == whole.read_bytes()
    # partial: an interrupted run left two windows; --resume on two processes goes on
    part = tmp_path / "part.jsonl"
    config = PredictConfig(templates=(TEMPLATE,), verbalizers=("sst2",), window=8, batch_size=4)
    lm = load_model(model, device="cpu")

    def stop(n: int) -> None:
        if n == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_predictions(config, str(DATA), str(part), lm, str(model), progress=False,
                          on_window=stop)  # fmt: skip
    assert json.loads(Path(f"{part}.partial.json").read_text())["read"] == 16
    r = two_ranks(*predict_args(model, part, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed after input row 16" in r.stderr
    assert part.read_bytes() == whole.read_bytes()


NESTED = """
import sys
from pathlib import Path
from autoprompt_py import distributed
from autoprompt_py.results import claim_output, from_main

def work():
    out = sys.argv[1]
    # a command's own decision that calls the output decision: one exchange, no deadlock
    start, decided_by = from_main(lambda: (claim_output(out, partials=[out + ".ckpt"]).start,
                                           distributed.rank()))
    Path(f"{out}.rank{distributed.rank()}").write_text(f"{start} {decided_by}")

distributed.run(work, "gloo", "cpu", 30.0)
"""


def test_decisions_nest_and_rank_0_takes_them(tmp_path):
    from test_distributed import ranks

    out = tmp_path / "out.json"
    procs = ranks(["-c", NESTED, str(out)])
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [Path(f"{out}.rank{r}").read_text() for r in (0, 1)] == ["fresh 0", "fresh 0"]
