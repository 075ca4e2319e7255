"""torch.distributed: the helpers in one process, and real runs of two processes (gloo, CPU).

Two-process runs are launched as a user launches them, ``torchrun --standalone
--nproc-per-node 2 -m autoprompt_py ...`` (or, for faults, two plain processes with the
variables torchrun sets), on a tiny model; their output is compared with one process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from autoprompt_py import distributed
from autoprompt_py.cli import main
from autoprompt_py.errors import AutopromptError
from autoprompt_py.memory import auto_max_batch_tokens, batch_tokens_for, bytes_per_token
from autoprompt_py.search.state import load_checkpoint

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
    ("the worst script ever", 0),
    ("a brilliant ending", 1),
    ("dull , long and poor", 0),
    ("we loved every minute", 1),
]
FACTS = {
    "P19": [("dante", "florence"), ("mozart", "salzburg"), ("einstein", "ulm"), ("x", "pisa")],
    "P36": [("france", "paris"), ("italy", "rome"), ("spain", "madrid"), ("japan", "tokyo")],
}
# provenance that differs between runs by design
# wall-clock figures, and the cost and curve (checked apart: their seconds and call counts vary)
VOLATILE = {"created", "world_size", "backend", "elapsed_s", "cost", "curve"}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dirs) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist")
    f: dict[str, Path] = {"bert": tiny_model_dirs["bert"], "root": root}
    f["electra"] = tiny_model_dirs["electra"]  # the same WordPiece vocabulary as bert

    def write(name: str, text: str) -> None:
        f[name] = root / name
        f[name].parent.mkdir(parents=True, exist_ok=True)
        f[name].write_text(text, encoding="utf-8")

    write("train.tsv", "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in SST))
    write("dev.tsv", "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in SST[:7]))
    write("one.tsv", "sentence\tlabel\n" + f"{SST[0][0]}\t{SST[0][1]}\n")
    for rel, facts in FACTS.items():
        write(
            f"facts/{rel}.jsonl",
            "".join(json.dumps({"sub_label": s, "obj_label": o}) + "\n" for s, o in facts),
        )
    write("vocab.txt", "\n".join(o for fs in FACTS.values() for _, o in fs) + "\nthe\nis\n")
    return f


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    out.update(
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        **extra,
    )
    return out


def torchrun(*args, nproc: int = 2, timeout: float = 180) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N -m autoprompt_py ARGS``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", "-m", "autoprompt_py", *map(str, args)]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ranks(argv: list[str], world: int = 2, only: list[int] | None = None) -> list[subprocess.Popen]:
    """``world`` plain processes (or the ranks ``only``) with the variables torchrun would set
    (no agent around them, so each one's own exit code and stderr can be checked)."""
    port = str(free_port())
    return [
        subprocess.Popen(
            [sys.executable, *argv],
            env=env(
                WORLD_SIZE=str(world),
                RANK=str(r),
                LOCAL_RANK=str(r),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (range(world) if only is None else only)
    ]


def stable(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in VOLATILE}


def assert_close(a, b, path: str = "") -> None:
    """Equal structures; floats to 1e-5 (summation order over ranks differs)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, a, b)
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-5), (path, a, b)
    else:
        assert a == b, (path, a, b)


# -- one process: the helpers ------------------------------------------------------------------


def test_one_process_is_untouched(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.Launch.from_env() == distributed.Launch(1, 0, 0)
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.describe() == {"world_size": 1, "backend": None}
    index = np.array([5, 3, 9])
    assert distributed.shard_rows(index, np.arange(10)).tolist() == [5, 3, 9]
    assert distributed.mine([1, 2, 3]) == [1, 2, 3]
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_(t) is t and t.tolist() == [1.0, 2.0]
    assert distributed.agree_min(7) == 7
    assert distributed.run(lambda: 42, "gloo") == 42


def test_launch_variables_are_checked(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(AutopromptError, match="WORLD_SIZE='two'"):
        distributed.Launch.from_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(AutopromptError, match="RANK=2 does not fit WORLD_SIZE=2"):
        distributed.Launch.from_env()
    monkeypatch.setenv("RANK", "1")
    assert not distributed.is_main()  # before any group: the launcher's RANK decides


def test_shards_cover_the_rows_once_and_balance_lengths(monkeypatch):
    lengths = np.array([9, 1, 8, 2, 7, 3, 6, 4, 5, 10, 11])
    index = np.array([0, 2, 4, 6, 8, 9, 10, 1, 3])
    shards = []
    for r in range(3):
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shards.append(distributed.shard_rows(index, lengths))
    assert sorted(np.concatenate(shards).tolist()) == sorted(index.tolist())
    assert [len(s) for s in shards] == [3, 3, 3]
    # every shard gets short and long rows: each takes every third row in length order
    ordered = sorted(lengths[index].tolist())
    for j in range(3):
        assert {sorted(lengths[s].tolist())[j] for s in shards} == set(ordered[3 * j : 3 * j + 3])


def test_backend_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.choose_backend("auto") == "gloo"
    assert distributed.choose_backend("gloo", "cpu") == "gloo"
    with pytest.raises(AutopromptError, match="--backend nccl: no CUDA GPU"):
        distributed.choose_backend("nccl")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.choose_backend("auto") == "nccl"
    assert distributed.choose_backend("auto", "cpu") == "gloo"
    with pytest.raises(AutopromptError, match="drop --device cpu"):
        distributed.choose_backend("nccl", "cpu")


def test_each_rank_takes_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.local_device("auto") == "cuda:1"
    assert distributed.local_device("cuda") == "cuda:1"
    assert distributed.local_device("cpu") == "cpu"
    with pytest.raises(AutopromptError, match="cuda:LOCAL_RANK"):
        distributed.local_device("cuda:3")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert distributed.local_device("cuda:3") == "cuda:3"


def test_more_processes_than_rows_is_a_launch_mistake(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(AutopromptError, match="--data d.tsv: 3 rows for 4 processes.*at most 3"):
        distributed.require_rows(3, "--data d.tsv")
    distributed.require_rows(4, "--data d.tsv")


def test_backend_nccl_without_cuda_is_one_line(files, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = invoke(
        "score",
        "--model",
        files["bert"],
        "--data",
        files["dev.tsv"],
        "--template",
        "sst2",
        "--verbalizer",
        "sst2",
        "--backend",
        "nccl",
    )
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        "error: --backend nccl: no CUDA GPU is available here (NCCL needs one GPU per "
        "process); use --backend gloo, or auto, on CPUs"
    ]


# -- memory budget and autocast ------------------------------------------------------------------


BERT_LARGE = SimpleNamespace(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    vocab_size=28996,
)


def test_auto_batch_tokens_from_a_free_memory_figure():
    per_token = bytes_per_token(BERT_LARGE, "bfloat16", 256)
    # 24 layers × (10·1024 + 2·4096 + 3·16·256) × 2 bytes + float32 copies + the head
    assert 1.0e6 < per_token < 2.0e6
    assert bytes_per_token(BERT_LARGE, "float32", 256) > per_token
    free = 70 * 2**30  # an H100 with ~70 GiB free
    tokens = batch_tokens_for(free, BERT_LARGE, "bfloat16", 256)
    assert tokens % 256 == 0 and tokens * per_token <= 0.6 * free
    assert tokens > 0.6 * free / per_token - 256
    assert batch_tokens_for(2 * free, BERT_LARGE, "bfloat16", 256) > tokens
    with pytest.raises(AutopromptError, match="only 100 MiB of device memory are free"):
        batch_tokens_for(100 * 2**20, BERT_LARGE, "bfloat16", 256)
    distil = SimpleNamespace(dim=768, n_layers=6, n_heads=12, hidden_dim=3072, vocab_size=30522)
    assert batch_tokens_for(free, distil) > tokens  # a smaller model fits more


def test_auto_batch_tokens_on_cpu_is_the_default(files):
    from autoprompt_py.model import load_model

    lm = load_model(files["bert"], "cpu")
    assert auto_max_batch_tokens(lm, "bfloat16") == 65536


def test_search_accepts_max_batch_tokens_auto(files, tmp_path):
    out = tmp_path / "auto.json"
    r = invoke(*search_args(files, out, iters=1), "--max-batch-tokens", "auto")
    assert r.exit_code == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["config"]["max_batch_tokens"] == 65536  # CPU
    assert result["config"]["max_batch_tokens_option"] == "auto"
    r = invoke(*search_args(files, out, iters=1), "--max-batch-tokens", "lots")
    assert r.exit_code == 2 and "positive number of tokens, or auto" in r.stderr


def test_bf16_autocast_keeps_float32_weights(files):
    from autoprompt_py.data import read_examples
    from autoprompt_py.model import load_model
    from autoprompt_py.resources import load_templates, load_verbalizer
    from autoprompt_py.scoring import classify

    lm32 = load_model(files["bert"], "cpu")
    lm16 = load_model(files["bert"], "cpu", "bfloat16", autocast=True)
    assert lm16.dtype == torch.float32 and lm16.autocast_dtype == torch.bfloat16
    assert load_model(files["bert"], "cpu", "bfloat16").dtype == torch.bfloat16  # CPU default
    template = load_templates("sst2")[0].template
    examples = read_examples(files["dev.tsv"])
    verb = load_verbalizer("sst2").resolve(lm32.tokenizer, "sum", True)
    a = classify(lm32, template, examples, verb)
    b = classify(lm16, template, examples, verb)
    assert not np.array_equal(a.scores, b.scores)  # it did run in bfloat16
    assert np.allclose(a.scores, b.scores, atol=0.1)


# -- two processes ---------------------------------------------------------------------------------


def search_args(files, out, *extra, iters: int = 3, device: str = "cpu") -> list:
    return [
        "search",
        "--model",
        files["bert"],
        "--device",
        device,
        "--train",
        files["train.tsv"],
        "--dev",
        files["dev.tsv"],
        "--template",
        "{sentence} [T] [T] [P] .",
        "--verbalizer",
        "sst2",
        "--iters",
        str(iters),
        "--batch-size",
        "5",
        "--accumulation-steps",
        "2",
        "--num-cand",
        "8",
        "--train-eval-limit",
        "9",
        "--output",
        out,
        "--quiet",
        *extra,
    ]


METHOD_ARGS = {
    "autoprompt": ("--method", "autoprompt", "--initial", "mask"),
    "gcg": ("--method", "gcg", "--search-width", "6", "--topk", "4"),
}


@pytest.mark.parametrize("method", list(METHOD_ARGS))
def test_search_on_two_processes_matches_one_and_resumes_on_one(files, tmp_path, method):
    two, one, resumed, whole = (tmp_path / f"{n}.json" for n in ("two", "one", "res", "whole"))
    extra = METHOD_ARGS[method]
    r = torchrun(*search_args(files, two, *extra, iters=3))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("wrote") == 1  # only rank 0 speaks
    assert r.stderr.count("error") == 0
    assert invoke(*search_args(files, one, *extra, iters=3)).exit_code == 0
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world_size"], a["backend"]) == (1, None)
    assert (b["world_size"], b["backend"]) == (2, "gloo")
    assert [h["trigger"] for h in a["history"]] == [h["trigger"] for h in b["history"]]
    assert any(h.get("accepted") or h.get("moved") for h in a["history"])  # it did move
    # the model work is counted over all ranks: the same figures for any world size
    work = ("forward_passes", "backward_passes", "candidate_evaluations")
    assert [a["cost"][k] for k in work] == [b["cost"][k] for k in work]
    assert [p[1:] for p in a["curve"]] == [p[1:] for p in b["curve"]]
    assert_close(stable(a), stable(b))
    # the checkpoint of two processes, resumed by one, continues as one process would have
    os.replace(str(two) + ".ckpt", str(resumed) + ".ckpt")
    r = invoke(*search_args(files, resumed, *extra, "--resume", iters=5))
    assert r.exit_code == 0, r.stderr
    assert invoke(*search_args(files, whole, *extra, iters=5)).exit_code == 0
    c, d = json.loads(resumed.read_text()), json.loads(whole.read_text())
    assert [h["trigger"] for h in c["history"]] == [h["trigger"] for h in d["history"]]
    assert_close(c["history"], d["history"])
    assert_close(c["dev"], d["dev"])


def test_a_search_over_two_models_on_two_processes_matches_one(files, tmp_path):
    two, one = tmp_path / "two.json", tmp_path / "one.json"
    extra = (*METHOD_ARGS["gcg"], "--model", files["electra"])
    r = torchrun(*search_args(files, two, *extra, iters=2))
    assert r.returncode == 0, r.stderr[-2000:]
    assert invoke(*search_args(files, one, *extra, iters=2)).exit_code == 0
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert len(a["dev"]["models"]) == 2 and b["world_size"] == 2
    assert [h["trigger"] for h in a["history"]] == [h["trigger"] for h in b["history"]]
    work = ("forward_passes", "backward_passes", "candidate_evaluations")
    assert [a["cost"][k] for k in work] == [b["cost"][k] for k in work]
    assert_close(stable(a), stable(b))


def test_score_on_two_processes_matches_one(files, tmp_path):
    args = [
        "score",
        "--model",
        files["bert"],
        "--device",
        "cpu",
        "--data",
        files["train.tsv"],
        "--template",
        "sst2",
        "--verbalizer",
        "sst2",
        "--batch-size",
        "2",
        "--bootstrap",
        "50",
        "--predictions",
    ]
    r = torchrun(*args, "--output", tmp_path / "two.json")
    assert r.returncode == 0, r.stderr[-2000:]
    one = invoke(*args, "--output", tmp_path / "one.json")
    assert one.exit_code == 0
    assert r.stdout == one.stdout.replace("one.json", "two.json")  # rank 0 alone, same table
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert b["world_size"] == 2 and b["backend"] == "gloo"
    assert stable(a) == stable(b)  # the same batches, each on one rank: bit for bit


def test_probe_on_two_processes_matches_one(files, tmp_path):
    args = [
        "probe",
        "--model",
        files["bert"],
        "--device",
        "cpu",
        "--facts",
        files["root"] / "facts",
        "--vocab",
        files["vocab.txt"],
        "--batch-size",
        "1",
        "--predictions",
    ]
    r = torchrun(*args, "--output", tmp_path / "two.json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert invoke(*args, "--output", tmp_path / "one.json").exit_code == 0
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert stable(a) == stable(b)
    assert a["micro"]["n"] == 8 and len(a["relations"][0]["predictions"][0]["top"]) == 10


def test_more_processes_than_rows_stops_every_rank_with_one_line(files, tmp_path):
    r = torchrun(
        "score",
        "--model",
        files["bert"],
        "--data",
        files["one.tsv"],
        "--template",
        "sst2",
        "--verbalizer",
        "sst2",
    )
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert lines == [
        f"error: --data {files['one.tsv']}: 1 row for 2 processes; every process needs at "
        "least one: run with at most 1 processes (torchrun --nproc-per-node)"
    ]


def test_an_error_on_one_rank_ends_both_with_its_message(tmp_path):
    """Rank 1 finds a mistake late, while rank 0 is in collectives with it."""
    script = tmp_path / "late.py"
    script.write_text(
        "import sys, time, torch\n"
        "from autoprompt_py import distributed\n"
        "from autoprompt_py.errors import AutopromptError\n"
        "def work():\n"
        "    if distributed.rank() == 1:\n"
        "        time.sleep(0.5)\n"
        "        raise AutopromptError('dev.tsv:7: a mistake found late')\n"
        "    for _ in range(100000):\n"
        "        distributed.all_reduce_(torch.ones(3))\n"
        "distributed.run(work, 'gloo', 'cpu', 60.0)\n"
    )
    started = time.monotonic()
    procs = ranks([str(script)])
    outs = [p.communicate(timeout=60) for p in procs]
    elapsed = time.monotonic() - started
    assert [p.returncode for p in procs] == [2, 2]
    assert outs[0][1].strip().splitlines() == ["error: rank 1: dev.tsv:7: a mistake found late"]
    assert outs[1][1].strip() == ""  # rank 0 speaks for everyone
    assert elapsed < 30  # far from the 60 s timeout: the failing rank let the others go


def test_a_killed_rank_ends_the_other_and_the_checkpoint_resumes(files, tmp_path):
    out = tmp_path / "k.json"
    ckpt = Path(str(out) + ".ckpt")
    argv = ["-m", "autoprompt_py", *map(str, search_args(files, out, iters=100000))]
    procs = ranks([*argv, "--dist-timeout", "20"])
    deadline = time.monotonic() + 90
    iteration = 0
    while iteration < 2 and time.monotonic() < deadline:
        try:
            iteration = json.loads(ckpt.read_text())["state"]["iteration"]
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    assert iteration >= 2, [p.poll() for p in procs]
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, err = procs[0].communicate(timeout=60)
    procs[1].communicate(timeout=10)
    assert time.monotonic() - killed < 20  # within --dist-timeout
    assert procs[0].returncode != 0 and procs[1].returncode == -signal.SIGKILL
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: rank 1 died or stopped responding")
    assert "--resume" in lines[-1] and "Traceback" not in err
    assert not out.exists()
    # the checkpoint is whole, and one process resumes from it
    saved = json.loads(ckpt.read_text())
    state = load_checkpoint(ckpt, saved["identity"])
    assert state.iteration >= 2
    r = invoke(*search_args(files, out, "--resume", iters=state.iteration + 1))
    assert r.exit_code == 0, r.stderr
    assert json.loads(out.read_text())["iterations"] == state.iteration + 1


def test_an_unreachable_rendezvous_is_a_clear_error(files):
    """Rank 1 alone: rank 0, which would host the rendezvous, never comes."""
    p = ranks(
        [
            "-m",
            "autoprompt_py",
            "score",
            "--model",
            files["bert"],
            "--data",
            files["dev.tsv"],
            "--template",
            "sst2",
            "--verbalizer",
            "sst2",
            "--dist-timeout",
            "2",
        ],
        only=[1],
    )
    _, err = p[0].communicate(timeout=60)
    assert p[0].returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: rank 1: could not join the other 1")
    assert "within --dist-timeout 2 s" in lines[0]


def test_label_features_are_the_sum_of_the_ranks_shares(files, monkeypatch):
    """``labels`` shards like score: simulated ranks' shares add up to one process's features."""
    from autoprompt_py.data import read_examples
    from autoprompt_py.labels import mask_features
    from autoprompt_py.model import load_model
    from autoprompt_py.template import parse_template

    lm = load_model(files["bert"], "cpu")
    template = parse_template("{sentence} [T] [T] [P] .").with_triggers(
        [lm.tokenizer.mask_token_id] * 2
    )
    examples = read_examples(files["train.tsv"])
    whole = mask_features(lm, template, examples, batch_size=3)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "all_reduce_", lambda t, op="sum": t)
    shares = []
    for r in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shares.append(mask_features(lm, template, examples, batch_size=3))
    assert all((s.abs().sum(1) > 0).sum() == 6 for s in shares)  # 2 of 4 batches each
    assert torch.equal(shares[0] + shares[1], whole)
