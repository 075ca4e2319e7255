"""tune at scale (tune/parallel.py): DDP and FSDP under torchrun (gloo, CPU, 2 processes), the
global batch over processes × micro-batches, SIGTERM and resume at another world size.

Equal means: the dev metric of every evaluation identical, the training loss to a relative
1e-5, the tuned weights to an absolute 1e-4 (float summation order differs between layouts,
and AdamW's normalised update magnifies differences of near-zero gradients). Every run uses
``--no-dropout``: dropout masks come from each process's own random stream.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from optional import requires
from safetensors.torch import load_file
from test_distributed import invoke, ranks

from autoprompt_py.errors import AutopromptError
from autoprompt_py.tune import TuneConfig
from autoprompt_py.tune.parallel import layout

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = {"soft": "embeddings.safetensors", "full": "model.safetensors",
           "lora": "adapter_model.safetensors"}  # fmt: skip


def args(model, method: str, out, *extra) -> list:
    template = (
        "{sentence} [T] [T] It was [MASK] ." if method == "soft" else "{sentence} It was [MASK] ."
    )
    lr = {"soft": "0.1", "full": "1e-3", "lora": "1e-2"}[method]
    return ["tune", "--model", model, "--train", REPO / "examples/sst2_mini.tsv",
            "--template", template, "--verbalizer", "sst2", "--method", method,
            "--init", "vocab", "--steps", "4", "--eval-every", "2", "--lr", lr,
            "--no-dropout", "--quiet", "--device", "cpu", "--output", out, *extra]  # fmt: skip


def read(folder: Path, method: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The result, and the weights: the folder's (the best on dev) and the last step's (the
    checkpoint beside it), so that every step's update is compared."""
    weights = {f"best/{k}": v for k, v in load_file(folder / WEIGHTS[method]).items()}
    ckpt = torch.load(Path(f"{folder}.ckpt") / "tensors.pt", weights_only=False)
    weights.update({f"last/{k}": v for k, v in ckpt["current"].items()})
    result = json.loads((folder / "result.json").read_text())
    # the run trained: its best is past the start, or its last step differs from it
    result["moved"] = result["best_step"] > 0 or any(
        not torch.equal(v, ckpt["best"][k]) for k, v in ckpt["current"].items()
    )
    return result, weights


def assert_same_run(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    (ra, wa), (rb, wb) = a, b
    assert [c["dev"] for c in ra["curve"]] == [c["dev"] for c in rb["curve"]]
    assert [c["train_loss"] or 0 for c in ra["curve"]] == pytest.approx(
        [c["train_loss"] or 0 for c in rb["curve"]], rel=1e-5
    )
    assert ra["moved"] and ra["best_step"] == rb["best_step"] and set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-4, msg=k)


def one(model, method, out, *extra) -> tuple[dict, dict]:
    r = invoke(*args(model, method, out, *extra))
    assert r.exit_code == 0, r.output
    return read(out, method)


def two(model, method, out, *extra, world: int = 2) -> tuple[dict, dict]:
    """``world`` processes with the variables torchrun sets (no agent: a faster start)."""
    procs = ranks(["-m", "autoprompt_py", *map(str, args(model, method, out, *extra))], world)
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0] * world, outs[0][1][-2000:]
    assert outs[0][0].count("wrote") == 1  # rank 0 alone writes and speaks
    assert all(o == "" for o, _ in outs[1:])
    return read(out, method)


# -- the layout: one process, no model -----------------------------------------------------------


def test_the_global_batch_splits_into_processes_and_micro_batches():
    def lay(world, **kw):
        got = layout(TuneConfig(**kw), world)
        return got.global_batch, got.accum, got.micro

    assert lay(2, batch_size=16) == (16, 1, 8)  # --batch-size alone: the step's rows, shared
    assert lay(1, batch_size=4, grad_accum=4) == (16, 4, 4)  # accumulation: a larger batch
    assert lay(2, batch_size=4, grad_accum=4) == (16, 4, 2)
    # --global-batch: --batch-size caps a micro-batch, the accumulation follows the launch
    for world, accum in ((1, 4), (2, 2), (4, 1)):
        assert lay(world, global_batch=16, batch_size=4) == (16, accum, 4)
    assert lay(1, global_batch=12, batch_size=5) == (12, 3, 4)
    rows = list(range(16))
    lay2 = layout(TuneConfig(global_batch=16, batch_size=4), 2)
    shares = [m for r in range(2) for m in lay2.micro_batches(rows, r)]
    assert sorted(x for m in shares for x in m) == rows  # every row once
    with pytest.raises(
        AutopromptError, match=r"--global-batch 7: does not split over 2 .* e\.g\. 8"
    ):
        layout(TuneConfig(global_batch=7), 2)
    with pytest.raises(AutopromptError, match=r"--grad-accum 3: .* 8 rows per process"):
        layout(TuneConfig(global_batch=16, grad_accum=3), 2)
    # what decides the run is the global batch: the same identity for any split
    same = TuneConfig(global_batch=16, batch_size=4).identity()
    assert (
        same
        == TuneConfig(batch_size=16).identity()
        == TuneConfig(batch_size=8, grad_accum=2).identity()
    )


def test_layout_and_shard_mistakes_are_one_line_before_the_model_loads(tmp_path):
    bad = [
        (["--global-batch", "8", "--grad-accum", "3"], "--grad-accum 3"),
        (["--shard", "--method", "soft"], "--shard splits the model's weights"),
        (["--grad-accum", "0"], "--grad-accum 0: must be a whole number"),
    ]
    for extra, says in bad:
        r = invoke("tune", "--model", "/nonexistent/model", "--train", REPO / "examples/sst2_mini.tsv",
                   "--template", "{sentence} [T] It was [MASK] .", "--verbalizer", "sst2",
                   "--output", tmp_path / "o", *extra)  # fmt: skip
        assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_accumulation_equals_a_larger_batch(tiny_model_dirs, tmp_path):
    model = tiny_model_dirs["bert"]
    big = one(model, "full", tmp_path / "big", "--batch-size", "8")
    acc = one(model, "full", tmp_path / "acc", "--global-batch", "8", "--batch-size", "2")
    assert acc[0]["config"]["global_batch"] == 8 and acc[0]["config"]["grad_accum"] is None
    assert_same_run(big, acc)


def test_grad_checkpointing_changes_memory_not_the_run(tiny_model_dirs, tmp_path, monkeypatch):
    """Recomputed activations give the same gradients, dropout included (its RNG is kept)."""
    model = tiny_model_dirs["bert"]
    a = args(model, "full", tmp_path / "a", "--batch-size", "8")
    a.remove("--no-dropout")
    r = invoke(*a)
    assert r.exit_code == 0, r.output
    b = args(model, "full", tmp_path / "b", "--batch-size", "8", "--grad-checkpointing")
    b.remove("--no-dropout")
    r = invoke(*b)
    assert r.exit_code == 0, r.output
    assert_same_run(read(tmp_path / "a", "full"), read(tmp_path / "b", "full"))
    import transformers.modeling_utils

    from autoprompt_py.model import load_model
    from autoprompt_py.tune import load_tune_task, tune

    lm = load_model(model, "cpu")
    task = load_tune_task("{sentence} It was [MASK] .", REPO / "examples/sst2_mini.tsv",
                          verbalizer="sst2")  # fmt: skip
    config = TuneConfig(method="full", steps=1, batch_size=4, grad_checkpointing=True,
                        dropout=False)  # fmt: skip
    calls = []
    original = transformers.modeling_utils.checkpoint

    def counted(*a, **k):
        calls.append(1)
        return original(*a, **k)

    # what the layers get to call (read when checkpointing is enabled)
    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counted)
    tune(lm, task, config, progress=False)
    # it did run checkpointed, also with dropout off (the model in eval mode otherwise)
    assert lm.model.is_activation_checkpointing and len(calls) >= 2


# -- two processes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, world, extra",
    [
        ("soft", 2, ["--batch-size", "2"]),  # DDP on the vectors alone, 2 processes × 2 micro
        ("full", 2, ["--batch-size", "4", "--shard"]),  # FSDP, 2 × 1
        pytest.param(  # FSDP over a frozen base, 2 × 2
            "lora", 2, ["--batch-size", "2", "--shard"], marks=requires("peft")
        ),
    ],
)
def test_ddp_and_fsdp_equal_one_process_for_the_same_global_batch(
    tiny_model_dirs, tmp_path, method, world, extra
):
    """One process × 4 micro-batches of 2 rows against 2 × 2, and 2 × 1 of 4 rows (4 × 1:
    ``two(..., world=4)`` passes too, in about a minute on two cores: docs/scaling.md)."""
    model = tiny_model_dirs["bert"]
    alone = one(model, method, tmp_path / "one", "--global-batch", "8", "--batch-size", "2")
    spread = two(model, method, tmp_path / "two", "--global-batch", "8", *extra, world=world)
    assert alone[0]["world_size"] == 1 and spread[0]["world_size"] == world
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(
        p.name for p in (tmp_path / "two").iterdir()
    )  # the folder one process writes
    assert_same_run(alone, spread)


def test_sigterm_then_resume_on_one_process_equals_an_uninterrupted_run(tiny_model_dirs, tmp_path):
    """A sharded run of two processes is stopped by SIGTERM (as Slurm preempts a job); one
    process resumes its checkpoint and ends where an uninterrupted run ends."""
    model = tiny_model_dirs["bert"]
    extra = ["--steps", "40", "--global-batch", "8"]  # --steps last: it overrides args' 4
    cut = [*args(model, "full", tmp_path / "cut"), *extra]
    ckpt = tmp_path / "cut.ckpt" / "state.json"
    procs = ranks(["-m", "autoprompt_py", *map(str, cut), "--shard", "--dist-timeout", "20"])
    step, deadline = 0, time.monotonic() + 120
    while step < 2 and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        try:  # synchronised on the checkpoint file: the run has passed step 2
            step = json.loads(ckpt.read_text())["state"]["step"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.02)
    assert step >= 2, [p.communicate() for p in procs]
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode != 0 for p in procs), outs  # stopped, not finished
    assert "Traceback" not in outs[0][1] and not (tmp_path / "cut").exists()
    resumed = one(model, "full", tmp_path / "cut", *extra, "--resume")
    whole = one(model, "full", tmp_path / "whole", *extra)
    assert resumed[0]["steps"] == whole[0]["steps"] == 40
    assert_same_run(whole, resumed)


def test_bf16_autocast_trains_float32_weights_and_float16_is_refused(tiny_model_dirs):
    """What --dtype bfloat16 does on a GPU (autocast), forced here on the CPU."""
    from autoprompt_py.model import load_model
    from autoprompt_py.tune import load_tune_task, tune

    model = tiny_model_dirs["bert"]
    task = load_tune_task("{sentence} It was [MASK] .", REPO / "examples/sst2_mini.tsv",
                          verbalizer="sst2")  # fmt: skip
    config = TuneConfig(method="full", steps=2, eval_every=1, batch_size=8, lr=1e-3, dropout=False)
    curves = {}
    for name, lm in (("32", load_model(model, "cpu")),
                     ("bf16", load_model(model, "cpu", "bfloat16", autocast=True))):  # fmt: skip
        out = tune(lm, task, config, progress=False)
        curves[name] = [c["train_loss"] or 0 for c in out.result["curve"]]
        assert lm.dtype == torch.float32  # the weights (and AdamW's moments) stay float32
    assert curves["bf16"] != curves["32"]  # the forward did run in bfloat16
    assert curves["bf16"] == pytest.approx(curves["32"], abs=0.05)
    lm16 = load_model(model, "cpu", "float16", autocast=True)
    with pytest.raises(AutopromptError, match="float16 autocast needs loss scaling"):
        tune(lm16, task, config, progress=False)


def test_bench_scaling_worker_reports_a_step(capsys):
    """One rank of ``bench_tune.py --scaling`` (the processes it starts run this)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_tune", REPO / "scripts/bench_tune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--worker", "single", "--methods", "full", "--steps", "1", "--global-batch", "4"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["step_s"] > 0 and row["gpu_mb"] is None
    # weights, gradients and two AdamW moments of every weight of the bundled BERT
    assert row["state_mb"] == pytest.approx(4 * 4416698 * 4 / 2**20, rel=0.01)
