# ruff: noqa: B023  (the closures run inside their loop iteration)
"""Speed of `autoprompt tune`: seconds per training step and per dev evaluation, against a
plain PyTorch loop doing the same computation in the same process (the floor: the same
batches, already collated; the same forward, MLM head at the masks only, label scores,
cross-entropy, backward, AdamW step; no framework around it), and peak memory.

    python scripts/bench_tune.py --methods full,soft,head,prompt,lora --steps 20 --threads 1

The floor is written for BERT-family models (the bundled one); ``prompt`` and ``lora`` are
timed without a floor.

``--scaling`` instead times one optimizer step of the same global batch on 1 and 2 processes
(gloo on CPU, NCCL with ``--device cuda`` and a GPU per process): one process; two with the
hand-rolled reduction (one all_reduce per parameter after the backward) and with
DistributedDataParallel; and, for ``full`` and ``lora``, two with FSDP (``--shard``). Beside
the seconds, each process's peak memory and the bytes of model state it holds (its weights,
gradients and AdamW moments: what sharding splits):

    python scripts/bench_tune.py --scaling --methods soft,full --steps 20 --global-batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def floor_step(lm, method, part, batches, gold, word_ids, opt):
    """One plain step: forward at the masks, label scores over single-piece words, CE."""
    b = batches
    if method == "head":
        logits = part.model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                            token_type_ids=b.token_type_ids).logits  # fmt: skip
        loss = F.cross_entropy(logits, gold)
    else:
        bert, cls = lm.model.bert, lm.model.cls
        emb = bert.embeddings.word_embeddings(b.input_ids.clamp(max=lm.vocab_size - 1))
        if method == "soft":
            soft = b.input_ids >= lm.vocab_size
            rows = (b.input_ids - lm.vocab_size).clamp(0, len(part.vectors) - 1)
            emb = torch.where(soft[..., None], part.vectors[rows], emb)
        h = bert(inputs_embeds=emb, attention_mask=b.attention_mask,
                 token_type_ids=b.token_type_ids)[0]  # fmt: skip
        h = h[torch.arange(len(h))[:, None], b.mask_positions][:, 0]
        logits = cls(h)
        logp = logits[:, word_ids] - logits.logsumexp(-1, keepdim=True)
        loss = F.cross_entropy(logp, gold)
    if opt is not None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(part.trainable(), 1.0)
        opt.step()
    return loss


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="full,soft,head,prompt,lora")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--evals", type=int, default=10, help="dev evaluations timed")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scaling", action="store_true", help="1 and 2 processes, DDP, FSDP")
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # a rank of --scaling
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        return scaling_worker(args)
    if args.scaling:
        return scaling(args)
    from autoprompt_py.cli.models import quiet_transformers
    from autoprompt_py.model import load_model
    from autoprompt_py.tune import TuneConfig, load_tune_task
    from autoprompt_py.tune.loop import Trainer, batch_indices, evaluate
    from autoprompt_py.tune.methods import build_part
    from autoprompt_py.tune.run import make_objective

    quiet_transformers()
    ex = ROOT / "examples/sentiment"
    print(
        "| method | s/step | floor s/step | ratio | s/dev eval | floor s/dev eval | ratio | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        lm = load_model(device=args.device)
        tpl = (
            "{sentence} [T] [T] [T] It was [MASK] ."
            if method == "soft"
            else "{sentence} It was [MASK] ."
        )
        task = load_tune_task(
            tpl, ex / "train.tsv", ex / "dev.tsv", verbalizer='{"0": ["terrible"], "1": ["great"]}'
        )
        config = TuneConfig(method=method, init="vocab", steps=10_000, batch_size=args.batch_size)
        objective = make_objective(lm, task, config)
        part = build_part(lm, task, config, objective)
        train, dev = (
            objective.encode(task.train, part.template),
            objective.encode(task.dev, part.template),
        )
        trainer = Trainer(part, objective, train, dev, config, lm.device, {}, None)

        def timed(fn, n):
            fn()  # warm up
            t = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t) / n

        ours = timed(trainer.step, args.steps)
        ours_eval = timed(lambda: evaluate(part, objective, dev, 64, lm.device), args.evals)
        floor = floor_eval = None
        if method in ("full", "soft", "head"):
            word_ids = torch.tensor([p[0] for p in objective.verbalizer.pieces], device=lm.device)
            opt = torch.optim.AdamW(part.trainable(), lr=1e-5)
            pre = [
                (train.batch(batch_indices(len(train), args.batch_size, 0, s), lm.device),
                 train.gold[batch_indices(len(train), args.batch_size, 0, s)].to(lm.device))
                for s in range(args.steps + 1)
            ]  # fmt: skip
            it = iter(pre)

            def plain():
                bs, gold = next(it)
                part.train_mode(True)
                floor_step(lm, method, part, next(iter(bs.values())), gold, word_ids, opt)

            floor = timed(plain, args.steps)
            dev_pre = [(dev.batch(r, lm.device), dev.gold[r]) for r in dev.eval_orders(64)]

            def plain_eval():
                part.train_mode(False)
                with torch.inference_mode():
                    for bs, gold in dev_pre:
                        floor_step(lm, method, part, next(iter(bs.values())), gold, word_ids, None)

            floor_eval = timed(plain_eval, args.evals)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        fmt = lambda x: "—" if x is None else f"{x:.4f}"  # noqa: E731
        ratio = lambda a, b: "—" if b is None else f"{a / b:.2f}×"  # noqa: E731
        print(f"| {method} | {ours:.4f} | {fmt(floor)} | {ratio(ours, floor)} | {ours_eval:.4f} | "
              f"{fmt(floor_eval)} | {ratio(ours_eval, floor_eval)} | {rss:.0f} |", flush=True)  # fmt: skip


# -- --scaling: processes, reductions, sharding ------------------------------------------------

LAYOUTS = [(1, "single"), (2, "allreduce"), (2, "ddp"), (2, "fsdp")]


def scaling(args) -> None:
    print(f"global batch {args.global_batch}, {args.steps} steps timed after 2, device "
          f"{args.device}, {args.threads} thread(s) per process")  # fmt: skip
    print(
        "| method | processes | reduction | s/step | peak RSS MB | peak GPU MB | model state MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        for world, mode in LAYOUTS:
            if mode == "fsdp" and method not in ("full", "lora"):
                continue
            rows = run_ranks(args, method, world, mode)
            r0 = rows[0]
            gpu = "—" if r0["gpu_mb"] is None else f"{r0['gpu_mb']:.0f}"
            print(f"| {method} | {world} | {mode} | {max(r['step_s'] for r in rows):.4f} | "
                  f"{r0['rss_mb']:.0f} | {gpu} | {r0['state_mb']:.2f} |", flush=True)  # fmt: skip


def run_ranks(args, method: str, world: int, mode: str) -> list[dict]:
    """``world`` processes of this script with the variables torchrun sets; their figures."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    argv = [sys.executable, __file__, "--worker", mode, "--methods", method, "--steps",
            str(args.steps), "--global-batch", str(args.global_batch), "--threads",
            str(args.threads), "--device", args.device]  # fmt: skip
    procs = []
    for rank in range(world):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
        if world > 1:
            env.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port)  # fmt: skip
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"{method} {world} × {mode}: a process failed")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def scaling_worker(args) -> None:
    """One rank: build the run as ``tune`` does, time its steps, report one JSON line."""
    from autoprompt_py import distributed
    from autoprompt_py.cli.models import quiet_transformers
    from autoprompt_py.model import load_model
    from autoprompt_py.tune import TuneConfig, load_tune_task
    from autoprompt_py.tune.loop import Trainer
    from autoprompt_py.tune.methods import build_part
    from autoprompt_py.tune.run import make_objective

    distributed.init("auto", args.device)
    quiet_transformers()
    method, mode = args.methods, args.worker
    lm = load_model(device=args.device)
    if lm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ex = ROOT / "examples/sentiment"
    tpl = (
        "{sentence} [T] [T] [T] It was [MASK] ."
        if method == "soft"
        else "{sentence} It was [MASK] ."
    )
    task = load_tune_task(
        tpl, ex / "train.tsv", ex / "dev.tsv", verbalizer='{"0": ["terrible"], "1": ["great"]}'
    )
    config = TuneConfig(method=method, init="vocab", steps=10_000, global_batch=args.global_batch,
                        batch_size=args.global_batch, shard=mode == "fsdp")  # fmt: skip
    objective = make_objective(lm, task, config)
    part = build_part(lm, task, config, objective)
    train = objective.encode(task.train, part.template)
    dev = objective.encode(task.dev, part.template)
    trainer = Trainer(part, objective, train, dev, config, lm.device, {}, None, reduction=mode)
    for _ in range(2):  # warm up (DDP builds its buckets, FSDP its buffers)
        trainer.step()
        trainer.state.step += 1
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        trainer.step()
        trainer.state.step += 1
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - started) / args.steps
    print(json.dumps({
        "step_s": step_s,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if lm.device.type == "cuda" else None,
        "state_mb": model_state_bytes(part, trainer.optimizer) / 2**20,
    }), flush=True)  # fmt: skip
    distributed.shutdown()


def model_state_bytes(part, optimizer) -> int:
    """Bytes this process holds of the model's weights, the gradients and the optimizer's
    moments (a sharded tensor counts its local shard)."""

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    seen: dict[int, torch.Tensor] = {}
    for m in part.modules():
        for p in m.parameters():
            seen[id(p)] = local(p)
    for p in part.trainable():
        seen[id(p)] = local(p)
        if p.grad is not None:
            seen[id(p.grad)] = local(p.grad)
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v) and v.ndim:
                seen[id(v)] = local(v)
    return sum(t.numel() * t.element_size() for t in seen.values())


if __name__ == "__main__":
    main()
