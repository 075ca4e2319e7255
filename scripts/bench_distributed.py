"""Throughput of search iterations and of scoring at several world sizes (torch.distributed).

For each world size W this launches ``torchrun --standalone --nproc-per-node W`` on itself
(``--worker``); every rank runs the same fixed workload, rows sharded as the commands shard
them, and rank 0 reports:

* search: seconds per ``TriggerSearch.step`` (gradient over ``accumulation × batch`` rows,
  ``num_cand`` candidates per slot scored on as many fresh rows, dev after an accepted flip)
  and examples·candidates/s = accumulation × batch × (1 + candidates) / iteration time;
* score: rows/s of ``classify`` over ``--score-rows`` examples.

Scaling efficiency at W = throughput(W) / (W × throughput(1)).

    # CPU, gloo (overhead and correctness; one thread per rank)
    python scripts/bench_distributed.py --worlds 1,2
    # one GPU per rank, NCCL, bf16 autocast, BERT-large-sized random weights
    python scripts/bench_distributed.py --device cuda --dtype bfloat16 --bert-large --worlds 1,2,4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprompt_py import distributed  # noqa: E402
from autoprompt_py.data import Example, read_examples  # noqa: E402
from autoprompt_py.model import MaskedLM, load_model  # noqa: E402
from autoprompt_py.resources import load_templates, load_verbalizer  # noqa: E402
from autoprompt_py.scoring import classify  # noqa: E402
from autoprompt_py.search import SearchConfig, TriggerSearch, load_task  # noqa: E402


def bert_large(tokenizer_from: str, device: str, dtype: str) -> MaskedLM:
    """A randomly initialised BertForMaskedLM of the bert-large size (offline), the same on
    every rank (seeded), with the tokenizer of ``tokenizer_from``."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from, trust_remote_code=False)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model = BertForMaskedLM(config)
    dev = torch.device(distributed.local_device(device) if device != "cpu" else "cpu")
    autocast = torch.bfloat16 if dtype == "bfloat16" and dev.type == "cuda" else None
    return MaskedLM(model.to(dev), tokenizer, "bert-large (random)", autocast)


def examples(args: argparse.Namespace, n: int) -> list[Example]:
    path = Path(args.data) / "train.tsv"
    if path.is_file():
        return read_examples(path, limit=n)
    words = "good bad movie plot acting great boring fun slow charming".split()
    return [
        Example({"sentence": " ".join(words[(i + j) % 10] for j in range(5 + i % 20))}, str(i % 2))
        for i in range(n)
    ]


def worker(args: argparse.Namespace) -> None:
    distributed.init(args.backend, args.device, 600)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bert_large:
        lm = bert_large(args.model, args.device, args.dtype)
    else:
        lm = load_model(args.model, args.device, "float32")
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    out: dict = {"world_size": distributed.world_size(), "backend": distributed.backend()}

    # search: a fixed workload, the same draws on every world size
    with tempfile.TemporaryDirectory() as tmp:
        rows = examples(args, args.train_rows + args.dev_rows)
        train = Path(tmp) / "train.tsv"
        dev = Path(tmp) / "dev.tsv"
        for path, part in ((train, rows[: args.train_rows]), (dev, rows[args.train_rows :])):
            path.write_text(
                "sentence\tlabel\n"
                + "".join(f"{e.fields['sentence'].strip()}\t{e.label}\n" for e in part)
            )
        task = load_task(args.template, train, dev, "sst2", seed=0)
    if args.max_batch_tokens == "auto":
        from autoprompt_py.memory import auto_max_batch_tokens

        tokens = distributed.agree_min(auto_max_batch_tokens(lm, args.dtype))
    else:
        tokens = int(args.max_batch_tokens)
    config = SearchConfig(
        iters=args.warmup + args.iters,
        num_cand=args.num_cand,
        batch_size=args.batch_size,
        accumulation_steps=args.accumulation_steps,
        max_batch_tokens=tokens,
        dtype=args.dtype,
    )
    search = TriggerSearch(lm, task, config)
    state = search.start()
    times = []
    for i in range(args.warmup + args.iters):
        sync()
        started = time.perf_counter()
        search.step(state)
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - started)
    per_iter = statistics.median(times)
    n_slots = len(state.trigger)
    candidates = args.num_cand * (n_slots if config.position == "all" else 1)
    work = args.accumulation_steps * args.batch_size * (1 + candidates)
    out["search"] = {
        "s_per_iter": per_iter,
        "ex_cand_per_s": work / per_iter,
        "triggers": state.trigger,
        "max_batch_tokens": tokens,
    }

    # score: rows/s of one template over a fixed set
    template = load_templates("sst2")[0].template
    rows = examples(args, args.score_rows)
    verb = load_verbalizer("sst2").resolve(lm.tokenizer, "sum", template.predict.space_before)
    classify(lm, template, rows[: args.score_batch * 2 * distributed.world_size()], verb)
    times = []
    for _ in range(args.score_repeats):
        sync()
        started = time.perf_counter()
        scores = classify(lm, template, rows, verb, args.score_batch).scores
        sync()
        times.append(time.perf_counter() - started)
    out["score"] = {
        "s": statistics.median(times),
        "rows_per_s": len(rows) / statistics.median(times),
        "checksum": float(scores.sum()),
    }
    if distributed.is_main():
        Path(args.out).write_text(json.dumps(out))
    distributed.shutdown()


def launch(world: int, argv: list[str], out: Path, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={world}", __file__, "--worker", "--out", str(out), *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_CPP_LOG_LEVEL": "ERROR"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"world size {world} failed:\n{r.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=str(ROOT.parent / "shared/models/bert-tiny-splade"))
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/sst2"))
    p.add_argument("--bert-large", action="store_true", help="random bert-large-sized weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--backend", default="auto")
    p.add_argument("--worlds", default="1,2", help="world sizes, e.g. 1,2,4")
    p.add_argument("--template", default="{sentence} [T] [T] [T] [T] [T] [P] .")
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--dev-rows", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--accumulation-steps", type=int, default=10)
    p.add_argument("--num-cand", type=int, default=10)
    p.add_argument("--max-batch-tokens", default="65536", help="a number, or auto")
    p.add_argument("--iters", type=int, default=5, help="timed search iterations")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--score-rows", type=int, default=2000)
    p.add_argument("--score-batch", type=int, default=64)
    p.add_argument("--score-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (CPU)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    argv = [a for a in sys.argv[1:]]
    worlds = [int(w) for w in args.worlds.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in worlds:
            results[w] = launch(w, argv, Path(tmp) / f"w{w}.json", args.timeout)
    base = results[worlds[0]]
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    model = "bert-large (random)" if args.bert_large else Path(args.model).name
    print(
        f"{model}, {args.dtype}, {device}; search: {args.accumulation_steps} × "
        f"{args.batch_size} rows, {args.num_cand} candidates; score: {args.score_rows} rows"
    )
    print(
        "| world | backend | s/iter | ex·cand/s | efficiency | score rows/s | efficiency |"
        " same triggers, score |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for w in worlds:
        r = results[w]
        s, c = r["search"], r["score"]
        b_s, b_c = base["search"], base["score"]
        eff_s = s["ex_cand_per_s"] / (w / worlds[0] * b_s["ex_cand_per_s"])
        eff_c = c["rows_per_s"] / (w / worlds[0] * b_c["rows_per_s"])
        same = s["triggers"] == b_s["triggers"] and abs(c["checksum"] - b_c["checksum"]) <= 1e-3
        print(
            f"| {w} | {r['backend'] or '-'} | {s['s_per_iter']:.3f} | {s['ex_cand_per_s']:.0f} | "
            f"{eff_s:.0%} | {c['rows_per_s']:.0f} | {eff_c:.0%} | {'yes' if same else 'NO'} |"
        )


if __name__ == "__main__":
    main()
