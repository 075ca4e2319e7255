"""Decoders: seconds per GCG iteration against nanoGCG, and `score` throughput against a plain
transformers loop and a bare batched forward.

    python scripts/bench_causal.py                      # a tiny GPT-2 built here (seconds)
    python scripts/bench_causal.py --model gpt2 --device cuda --dtype bfloat16

GCG: one example (``a fine film`` + trigger + `` It was`` → `` great``), the same model,
search width, top-k, trigger length (``x`` × n, nanoGCG's start), one slot replaced per
candidate, no buffer, every candidate in one forward; nanoGCG's other settings are its
defaults. Its loss and ours are the same number (cross-entropy of the target token over the
vocabulary: ``--objective vocab``). nanoGCG 0.3 reads and passes the key/value cache the
transformers-4 way; under transformers 5 a small adapter (``legacy_cache_shim``) converts it, so
nanoGCG runs with its prefix cache as designed (the losses match a run without it).
Per-iteration time: (time of N steps − time of 1 step) / (N − 1) for nanoGCG (its set-up is
inside ``run``), the mean of N timed ``TriggerSearch.step`` calls after a warm-up for ours.

Score: the examples of ``examples/sentiment/dev.tsv`` (repeated ``--copies`` times) under a
slot-last template and a template with text after the slot (continuation scoring), against
(a) a plain loop: each example (and each label, for continuations) tokenized whole and run
alone; (b) a bare batched forward of the same padded token ids with every position's logits
(the floor a batched implementation must pay), no label extraction.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from autoprompt_py.data import read_examples  # noqa: E402
from autoprompt_py.model import load_model  # noqa: E402
from autoprompt_py.scoring import classify  # noqa: E402
from autoprompt_py.search import SearchConfig, TriggerSearch, load_task  # noqa: E402
from autoprompt_py.template import parse_template  # noqa: E402
from autoprompt_py.verbalizer import Verbalizer  # noqa: E402

WORDS = {"0": ["terrible"], "1": ["great"]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def legacy_cache_shim(model):
    """nanoGCG 0.3 passes and reads the key/value cache as transformers 4 did (per layer
    [keys, values]); transformers 5 takes and returns a ``DynamicCache``. Converted at the
    model's boundary, a fresh cache per call, as the transformers-4 tuples behaved."""
    from transformers import DynamicCache

    forward = model.forward

    def adapted(*args, past_key_values=None, **kw):
        if past_key_values is not None:
            cache = DynamicCache()
            for i, (k, v) in enumerate(past_key_values):
                cache.update(k, v, i)
            kw["cache"] = cache
        out = forward(*args, **kw)
        if kw.get("use_cache") and past_key_values is None:
            legacy = [[layer.keys, layer.values] for layer in out.cache.layers]
            out = type(out)(logits=out.logits)
            out.past_key_values = legacy
        return out

    model.forward = adapted
    return model


def nanogcg_seconds(args, folder: str, dtype: torch.dtype, device: torch.device) -> dict:
    import nanogcg
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if tok.chat_template is None:  # a base model: the message as it is
        tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    legacy_cache_shim(model)
    times, losses = {}, None
    for steps in (1, args.iters + 1):
        config = nanogcg.GCGConfig(
            num_steps=steps, search_width=args.search_width, topk=args.topk,
            optim_str_init=" ".join(["x"] * args.trigger_length), n_replace=1, buffer_size=0,
            seed=0, verbosity="WARNING",
        )  # fmt: skip
        sync(device)
        start = time.perf_counter()
        result = nanogcg.run(model, tok, "a fine film{optim_str} It was", " great", config)
        sync(device)
        times[steps], losses = time.perf_counter() - start, result.losses
    torch.use_deterministic_algorithms(False)  # nanoGCG's seed turns it on for the process
    per_iter = (times[args.iters + 1] - times[1]) / args.iters
    return {"seconds_per_iteration": per_iter, "final_loss": losses[-1]}


def ours_seconds(args, lm, root: Path) -> dict:
    (root / "one.tsv").write_text("sentence\tlabel\na fine film\t1\n")
    n = args.trigger_length
    task = load_task(
        "{sentence}" + " [T]" * n + " It was [P]",
        root / "one.tsv",
        root / "one.tsv",
        Verbalizer.from_dict(WORDS),
    )
    config = SearchConfig(
        method="gcg", iters=10**9, search_width=args.search_width, topk=args.topk,
        n_replace=1, buffer_size=0, batch_size=1, accumulation_steps=1, objective="vocab",
        initial="mask", max_rows=args.search_width + 1, dtype=args.dtype_name,
        train_eval_limit=1,
    )  # fmt: skip
    search = TriggerSearch(lm, task, config)
    state = search.start()
    search.step(state)  # warm-up
    times = []
    for _ in range(args.iters):
        sync(lm.device)
        start = time.perf_counter()
        search.step(state)
        sync(lm.device)
        times.append(time.perf_counter() - start)
    loss = float(search.evaluate(search.train, state.trigger).loss)
    return {"seconds_per_iteration": float(np.mean(times)), "final_loss": loss}


def plain_loop(model, tok, examples, template_after: str, words: list[str]) -> np.ndarray:
    """Each example (× each word) tokenized whole and run alone, as a user would write it."""
    out = np.zeros((len(examples), len(words)))
    device = next(model.parameters()).device
    with torch.inference_mode():
        for i, e in enumerate(examples):
            context = f"{e.fields['sentence']} It was"
            ctx = tok(context)["input_ids"]
            if not template_after:  # slot last: one forward, every word at the last token
                lp = model(torch.tensor([ctx], device=device)).logits[0, -1].float()
                lp = lp.log_softmax(-1)
                out[i] = [
                    float(lp[tok.encode(" " + w, add_special_tokens=False)[0]]) for w in words
                ]
                continue
            for j, w in enumerate(words):
                full = tok(context + f" {w}{template_after}")["input_ids"]
                lp = model(torch.tensor([full], device=device)).logits[0].float().log_softmax(-1)
                out[i, j] = float(sum(lp[t - 1, full[t]] for t in range(len(ctx), len(full))))
    return out


def bare_forward(model, tok, examples, batch_size: int, after: str, words: list[str]) -> None:
    """Padded batches of the same token ids, every position's logits: nothing extracted."""
    texts = [f"{e.fields['sentence']} It was" for e in examples]
    if after:
        texts = [f"{t} {w}{after}" for t in texts for w in words]
    ids = [tok(t)["input_ids"] for t in texts]
    order = np.argsort([len(i) for i in ids])
    device = next(model.parameters()).device
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            rows = [ids[i] for i in order[s : s + batch_size]]
            width = max(map(len, rows))
            x = torch.zeros(len(rows), width, dtype=torch.long)
            m = torch.zeros(len(rows), width, dtype=torch.long)
            for r, seq in enumerate(rows):
                x[r, : len(seq)], m[r, : len(seq)] = torch.tensor(seq), 1
            model(input_ids=x.to(device), attention_mask=m.to(device)).logits.float().sum()


def best_of(fn, repeat: int, device: torch.device) -> tuple[float, object]:
    out, times = fn(), []  # warm-up
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times), out


def score_figures(args, lm, examples) -> list[dict]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lm.name, dtype=lm.dtype).to(lm.device).eval()
    tok = lm.tokenizer
    verb = Verbalizer.from_dict(WORDS).resolve(tok, "sum")
    words = [w for ws in WORDS.values() for w in ws]
    rows = []
    for after in ("", " ."):
        template = parse_template("{sentence} It was [P]" + after)
        ours_t, ours = best_of(
            lambda t=template: classify(lm, t, examples, verb, args.batch_size).scores,
            args.repeat, lm.device,
        )  # fmt: skip
        loop_t, loop = best_of(
            lambda a=after: plain_loop(model, tok, examples, a, words), 1, lm.device
        )
        bare_t, _ = best_of(
            lambda a=after: bare_forward(model, tok, examples, args.batch_size, a, words),
            args.repeat, lm.device,
        )  # fmt: skip
        rows.append(
            {
                "template": template.source,
                "examples": len(examples),
                "ours_ex_per_s": len(examples) / ours_t,
                "loop_ex_per_s": len(examples) / loop_t,
                "bare_ex_per_s": len(examples) / bare_t,
                "speedup_vs_loop": loop_t / ours_t,
                "ours_over_bare": ours_t / bare_t,
                "max_abs_diff_vs_loop": float(np.abs(ours - loop).max()),
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a decoder folder or hub id (default: tiny GPT-2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--search-width", type=int, default=128)
    p.add_argument("--topk", type=int, default=64)
    p.add_argument("--trigger-length", type=int, default=10)
    p.add_argument("--copies", type=int, default=4, help="score: dev.tsv repeated")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-nanogcg", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    root = Path(tempfile.mkdtemp())
    folder = args.model
    if folder is None:
        from tiny_decoders import build_tiny_decoder

        folder = str(build_tiny_decoder("gpt2", root / "tiny-gpt2"))
    lm = load_model(folder, args.device, dtype=args.dtype, autocast=False)
    args.dtype_name = "float32"  # the weights are cast already: no autocast on top
    print(f"model {folder} ({lm.model.config.model_type}), device {lm.device}, dtype {lm.dtype}")
    setting = (
        f"search width {args.search_width}, top-k {args.topk}, trigger {args.trigger_length} "
        f"tokens, {args.iters} timed iterations"
    )
    ours = ours_seconds(args, lm, root)
    print(f"GCG ({setting})")
    print(f"  ours     {ours['seconds_per_iteration']:.4f} s/iter  (loss {ours['final_loss']:.3f})")
    if not args.skip_nanogcg:
        theirs = nanogcg_seconds(args, folder, lm.dtype, lm.device)
        ratio = ours["seconds_per_iteration"] / theirs["seconds_per_iteration"]
        print(
            f"  nanoGCG  {theirs['seconds_per_iteration']:.4f} s/iter  (loss "
            f"{theirs['final_loss']:.3f}); ours / nanoGCG = {ratio:.2f}"
        )
    examples = read_examples(str(ROOT / "examples" / "sentiment" / "dev.tsv")) * args.copies
    print(f"score ({len(examples)} examples, batch {args.batch_size}, best of {args.repeat})")
    for r in score_figures(args, lm, examples):
        print(
            f"  {r['template']!r}: ours {r['ours_ex_per_s']:.0f} ex/s, plain loop "
            f"{r['loop_ex_per_s']:.0f} ex/s ({r['speedup_vs_loop']:.1f}x), bare batched forward "
            f"{r['bare_ex_per_s']:.0f} ex/s (ours takes {r['ours_over_bare']:.2f}x its time); "
            f"max |ours - loop| {r['max_abs_diff_vs_loop']:.1e}"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = (
        f", GPU peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
        if lm.device.type == "cuda"
        else ""
    )
    print(f"memory: process peak RSS {peak:.0f} MiB{gpu}")


if __name__ == "__main__":
    main()
