"""Time per search iteration against the bare model-compute floor of the same iteration.

For each timed iteration this runs the library's own ``TriggerSearch.step`` (and the
checkpoint write that follows it in a real run), timing its parts: the gradient pass, the
candidate evaluation and the dev evaluation (only after an accepted flip). It then replays the
same model work as plain batched calls on pre-built tensors, in the same process and chunks:

* gradient: forward + backward of ``MaskedLM.mask_logits`` from ``inputs_embeds`` (a leaf);
* candidates: one forward of ``mask_logits`` over the same candidate rows;
* dev: one forward over the same dev chunks (where the iteration evaluated dev).

Everything else (sampling, HotFlip, the scatter of ids, losses, bookkeeping, the checkpoint) is
overhead, and ``ratio = iteration time / floor``.

    python scripts/bench_search.py --model ../shared/models/bert-tiny-splade \\
        --data ../shared/data/sst2 --iters 10 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprompt_py.model import load_model  # noqa: E402
from autoprompt_py.search import SearchConfig, TriggerSearch, load_task, save_checkpoint  # noqa: E402
from autoprompt_py.search.scorer import write_triggers  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=str(ROOT.parent / "shared/models/bert-tiny-splade"))
    p.add_argument(
        "--data",
        default=str(ROOT.parent / "shared/data/sst2"),
        help="folder with train.tsv and dev.tsv (classification)",
    )
    p.add_argument("--template", default="{sentence} [T] [T] [T] [T] [T] [P] .")
    p.add_argument("--verbalizer", default="sst2")
    p.add_argument("--train-limit", type=int, default=2000)
    p.add_argument("--dev-limit", type=int, default=200)
    p.add_argument("--iters", type=int, default=8, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--accumulation-steps", type=int, default=1)
    p.add_argument("--num-cand", type=int, default=10)
    p.add_argument("--position", default="random")
    p.add_argument("--max-batch-tokens", type=int, default=65536)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--original-style",
        action="store_true",
        help="also time the original AutoPrompt's way on the last iteration's batches: the\n"
        "full MLM head at every position, weight gradients, one forward per candidate",
    )
    p.add_argument(
        "--startup",
        action="store_true",
        help="report where a search's start-up goes instead (imports, reading, model load,\n"
        "encoding and the initial evaluation, and `autoprompt search --iters 0` as a process)\n"
        "on all of --data's rows (the limits are ignored)",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.startup:
        startup_report(args)
        return

    data = Path(args.data)
    lm = load_model(args.model, args.device)
    task = load_task(
        args.template,
        data / "train.tsv",
        data / "dev.tsv",
        args.verbalizer,
        train_limit=args.train_limit,
        dev_limit=args.dev_limit,
        seed=args.seed,
    )
    config = SearchConfig(
        method="autoprompt",
        initial="mask",
        iters=10**9,
        num_cand=args.num_cand,
        batch_size=args.batch_size,
        accumulation_steps=args.accumulation_steps,
        position=args.position,
        seed=args.seed,
        max_batch_tokens=args.max_batch_tokens,
    )
    search = TriggerSearch(lm, task, config)
    state = search.start()
    scorer = search.scorer
    calls: dict[str, list] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            sync()
            t = time.perf_counter()
            out = fn(*a, **k)
            sync()
            calls.setdefault(name, []).append((time.perf_counter() - t, a))
            return out

        return wrapper

    def sync() -> None:
        if lm.device.type == "cuda":
            torch.cuda.synchronize()

    scorer.gradient = timed("grad", scorer.gradient)
    scorer.candidate_losses = timed("cand", scorer.candidate_losses)
    scorer.evaluate = timed("dev", scorer.evaluate)
    ckpt = Path(tempfile.mkdtemp()) / "bench.ckpt"
    from autoprompt_py.search.record import identity as search_identity

    identity = search_identity(search)

    rows = []
    for it in range(args.warmup + args.iters):
        calls.clear()
        sync()
        t = time.perf_counter()
        search.step(state)
        save_checkpoint(ckpt, identity, state)
        sync()
        total = time.perf_counter() - t
        part = {k: sum(c[0] for c in v) for k, v in calls.items()}
        floor = floor_of(search, calls)
        if it >= args.warmup:
            rows.append((total, part, floor))
    last_calls = dict(calls)

    print(f"model {args.model}  threads {torch.get_num_threads()}  device {lm.device}")
    print(
        f"template {args.template!r}  batch {args.batch_size} x {args.accumulation_steps} "
        f"accumulation, {args.num_cand} candidates, position {args.position}, "
        f"train {len(search.train)} dev {len(search.dev)}"
    )
    print(
        f"{'iter':>4} {'grad':>7} {'cand':>7} {'dev':>7} {'other':>7} {'total':>7} | "
        f"{'f.grad':>7} {'f.cand':>7} {'f.dev':>7} {'floor':>7} | ratio"
    )
    for i, (total, part, floor) in enumerate(rows):
        g, c, d = part.get("grad", 0), part.get("cand", 0), part.get("dev", 0)
        fg, fc, fd = floor["grad"], floor["cand"], floor["dev"]
        fl = fg + fc + fd
        print(
            f"{i:>4} {g:7.3f} {c:7.3f} {d:7.3f} {total - g - c - d:7.3f} {total:7.3f} | "
            f"{fg:7.3f} {fc:7.3f} {fd:7.3f} {fl:7.3f} | {total / fl:5.2f}"
        )
    tot = [r[0] for r in rows]
    fl = [sum(r[2].values()) for r in rows]
    med = statistics.median
    search_only = [r[0] - r[1].get("dev", 0) for r in rows]
    search_floor = [r[2]["grad"] + r[2]["cand"] for r in rows]
    print(
        f"median per iteration: gradient {med([r[1].get('grad', 0) for r in rows]):.3f}s, "
        f"candidates {med([r[1].get('cand', 0) for r in rows]):.3f}s, "
        f"total {med(tot):.3f}s; floor {med(fl):.3f}s"
    )
    print(
        f"ratio (sum over iterations) {sum(tot) / sum(fl):.3f}   "
        f"without dev evaluation {sum(search_only) / sum(search_floor):.3f}"
    )
    padded, chunked = one_padded_call(search, last_calls), rows[-1][2]["cand"]
    print(
        f"candidate rows of the last iteration as one padded call: {padded:.3f}s "
        f"(as length-sorted chunks: {chunked:.3f}s)"
    )
    if args.original_style:
        t = original_style(search, last_calls)
        mine = rows[-1][1].get("grad", 0) + rows[-1][1].get("cand", 0)
        print(
            f"original-style gradient + candidates on the same batches: {t:.3f}s "
            f"(this library: {mine:.3f}s, {t / mine:.1f}x faster)"
        )


def floor_of(search: TriggerSearch, calls: dict[str, list]) -> dict[str, float]:
    """The same model work as the iteration's passes, as plain calls on pre-built tensors."""
    lm, scorer = search.lm, search.scorer
    out = {"grad": 0.0, "cand": 0.0, "dev": 0.0}

    def sync() -> None:
        if lm.device.type == "cuda":
            torch.cuda.synchronize()

    for _, (split, batches, trigger) in calls.get("grad", []):
        inputs = []
        for index in batches:
            for rows in scorer._chunks(split, index, 1):
                views = split.batch(rows)
                embeds = {
                    k: lm.word_embeddings(write_triggers(b, trigger)).detach()
                    for k, b in views.items()
                }
                inputs.append((views, embeds))
        sync()
        t = time.perf_counter()
        for views, embeds in inputs:
            for k, b in views.items():
                e = embeds[k].requires_grad_(True)
                lm.mask_logits(
                    b.mask_positions,
                    b.attention_mask,
                    inputs_embeds=e,
                    token_type_ids=b.token_type_ids,
                ).sum().backward()
        sync()
        out["grad"] += time.perf_counter() - t

    for _, (split, index, _trigger, _positions, tokens) in calls.get("cand", []):
        per = len(tokens) + 1
        inputs = []
        for examples in scorer._chunks(split, index, per):
            views = split.batch(np.repeat(examples, per))
            inputs.append(views)
        sync()
        t = time.perf_counter()
        with torch.inference_mode():
            for views in inputs:
                for b in views.values():
                    lm.mask_logits(
                        b.mask_positions,
                        b.attention_mask,
                        input_ids=b.input_ids,
                        token_type_ids=b.token_type_ids,
                    )
        sync()
        out["cand"] += time.perf_counter() - t

    for _, (split, trigger, plan) in calls.get("dev", []):
        plan = plan if plan is not None else scorer.plan(split)
        ids = [{k: write_triggers(b, trigger) for k, b in views.items()} for _, views in plan]
        sync()
        t = time.perf_counter()
        with torch.inference_mode():
            for (_, views), view_ids in zip(plan, ids):
                for k, b in views.items():
                    lm.mask_logits(
                        b.mask_positions,
                        b.attention_mask,
                        input_ids=view_ids[k],
                        token_type_ids=b.token_type_ids,
                    )
        sync()
        out["dev"] += time.perf_counter() - t
    return out


def one_padded_call(search: TriggerSearch, calls: dict[str, list]) -> float:
    """The candidate rows as a single forward padded to the longest row (no chunking)."""
    lm = search.lm
    _, (split, index, _, _, tokens) = calls["cand"][0]
    views = split.batch(np.repeat(index, len(tokens) + 1))
    with torch.inference_mode():
        t = time.perf_counter()
        for b in views.values():
            lm.mask_logits(
                b.mask_positions,
                b.attention_mask,
                input_ids=b.input_ids,
                token_type_ids=b.token_type_ids,
            )
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t


def original_style(search: TriggerSearch, calls: dict[str, list]) -> float:
    """The model work of one iteration done as the original code does it (an emulation on the
    same batches): logits over the whole vocabulary at every position, parameters that still
    take gradients, and for each candidate batch one forward per candidate."""
    lm, split, objective = search.lm, search.train, search.objective
    model = lm.model
    _, (_, grad_batches, trigger) = calls["grad"][0]
    _, (_, cand_index, _, positions, tokens) = calls["cand"][0]
    batch = len(grad_batches[0])

    def forward(b, ids):
        logits = model(
            input_ids=ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids
        ).logits
        rows = torch.arange(len(ids), device=ids.device)[:, None]
        return {k: logits[rows, b.mask_positions]}

    model.requires_grad_(True)
    try:
        t = time.perf_counter()
        for index in grad_batches:
            [(k, b)] = split.batch(index).items()
            loss = objective.loss(forward(b, write_triggers(b, trigger)), split.gold[b.index])
            loss.mean().backward()
        with torch.no_grad():
            for start in range(0, len(cand_index), batch):
                [(k, b)] = split.batch(cand_index[start : start + batch]).items()
                gold = split.gold[b.index]
                objective.loss(forward(b, write_triggers(b, trigger)), gold)
                for p, tok in zip(positions, tokens):
                    variant = trigger.clone()
                    variant[p] = tok
                    objective.loss(forward(b, write_triggers(b, variant)), gold)
        return time.perf_counter() - t
    finally:
        model.requires_grad_(False)
        model.zero_grad(set_to_none=True)


def startup_report(args: argparse.Namespace) -> None:
    """Where the seconds before the first iteration go, each phase timed on its own, against
    the floor: a fresh process that only imports transformers and loads the model."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)

    def process(code: str) -> float:
        """A fresh process's wall-clock seconds, start to exit (as the user waits)."""
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
        return time.perf_counter() - t

    imports = process("import autoprompt_py.cli.search, autoprompt_py.search, autoprompt_py.model")
    floor = process(
        f"from autoprompt_py.model import load_model; load_model({args.model!r}, {args.device!r})"
    )
    data = Path(args.data)
    t = time.perf_counter()
    lm = load_model(args.model, args.device)
    loading = time.perf_counter() - t
    t = time.perf_counter()
    task = load_task(args.template, data / "train.tsv", data / "dev.tsv", args.verbalizer)
    reading = time.perf_counter() - t
    t = time.perf_counter()
    search = TriggerSearch(lm, task, SearchConfig(iters=0, seed=args.seed))
    setup = time.perf_counter() - t
    encoded = search.train.encoded
    t = time.perf_counter()
    state = search.start()
    initial = time.perf_counter() - t
    t = time.perf_counter()
    search.train_metrics(state.best_trigger)
    train_eval = time.perf_counter() - t
    out = Path(tempfile.mkdtemp()) / "startup.json"
    command = [sys.executable, "-m", "autoprompt_py", "search", "--model", args.model,
               "--train", str(data / "train.tsv"), "--dev", str(data / "dev.tsv"),
               "--template", args.template, "--verbalizer", args.verbalizer, "--iters", "0",
               "--seed", str(args.seed), "--output", str(out), "--quiet"]  # fmt: skip
    t = time.perf_counter()
    subprocess.run(command, env=env, capture_output=True, check=True)
    whole = time.perf_counter() - t
    with open("/proc/loadavg") if Path("/proc/loadavg").exists() else open(os.devnull) as f:
        load = f.read().split()[:1] or ["?"]
    print(f"start-up of a search on {data} ({len(search.train):,} train, {len(search.dev):,} dev "
          f"rows), load average {load[0]}:")  # fmt: skip
    for name, secs in [
        ("floor: a process that only loads the model (transformers)", floor),
        ("a process that only imports autoprompt_py's search (torch, ...)", imports),
        ("model load (in this warm process)", loading),
        ("reading train + dev and their checks (load_task)", reading),
        (f"set-up: encoding dev and {encoded:,} train rows, token filters", setup),
        ("initial evaluation on dev", initial),
        (f"train metrics for the result ({search.train.encoded - encoded:,} rows)", train_eval),
        ("`autoprompt search --iters 0`, whole process", whole),
    ]:
        print(f"  {name:<62} {secs:6.2f} s")


if __name__ == "__main__":
    main()
