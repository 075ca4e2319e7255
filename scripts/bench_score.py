"""Benchmark: examples per second of `autoprompt score` against the transformers fill-mask
pipeline doing the same job, and against bare batched forward passes, in one process.

    python scripts/bench_score.py --model ../shared/models/bert-tiny-splade \
        --data ../shared/data/sst2/dev.tsv --template '{sentence} It was [MASK] .' \
        --verbalizer sst2

Each contender classifies the same examples with the same template and label words; the
predictions are compared so that the race is over the same answer. Times are the best of
``--repeat`` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from transformers import pipeline

from autoprompt_py.data import read_examples
from autoprompt_py.model import load_model
from autoprompt_py.resources import load_verbalizer
from autoprompt_py.scoring import classify
from autoprompt_py.template import parse_template

SHARED = Path(__file__).resolve().parents[2] / "shared"


def best_time(fn, repeat: int) -> tuple[float, object]:
    fn()  # warm-up: first calls allocate and pick kernels
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(SHARED / "models" / "bert-tiny-splade"))
    p.add_argument("--data", default=str(SHARED / "data" / "sst2" / "dev.tsv"))
    p.add_argument("--template", default="{sentence} It was [MASK] .")
    p.add_argument("--verbalizer", default="sst2")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    lm = load_model(args.model, args.device)
    tok = lm.tokenizer
    examples = read_examples(args.data, limit=args.limit)
    template = parse_template(args.template)
    verbalizer = load_verbalizer(args.verbalizer).resolve(tok, "sum", template.predict.space_before)
    if verbalizer.piece_counts != [1]:
        raise SystemExit("the pipeline comparison needs single-token label words")
    label_ids = [p[0] for p in verbalizer.pieces]
    n = len(examples)
    print(
        f"{n} examples, batch size {args.batch_size}, model {args.model}, "
        f"torch threads {torch.get_num_threads()}, device {lm.device}"
    )

    # 1. autoprompt_py: encode + batched forward (head at the mask only) + aggregation
    t_ours, ours = best_time(
        lambda: classify(lm, template, examples, verbalizer, args.batch_size).predictions,
        args.repeat,
    )

    # 2. transformers fill-mask pipeline with the label words as targets
    texts = [
        args.template.replace("{sentence}", e.fields["sentence"].strip()).replace(
            "[MASK]", tok.mask_token
        )
        for e in examples
    ]
    fill = pipeline("fill-mask", model=lm.model, tokenizer=tok, device=lm.device)
    targets = [tok.convert_ids_to_tokens(i) for i in label_ids]

    def run_pipeline() -> list[str]:
        preds = []
        for out in fill(texts, targets=targets, batch_size=args.batch_size, top_k=len(targets)):
            best = max(out, key=lambda d: d["score"])
            preds.append(verbalizer.labels[verbalizer.word_label[label_ids.index(best["token"])]])
        return preds

    with torch.inference_mode():
        t_pipe, pipe_preds = best_time(run_pipeline, args.repeat)

    # 3. bare batched forward passes over the same, already tokenized, length-sorted batches
    order = sorted(range(n), key=lambda i: len(tok(texts[i])["input_ids"]))
    batches = [
        tok([texts[i] for i in order[s : s + args.batch_size]], padding=True, return_tensors="pt")
        for s in range(0, n, args.batch_size)
    ]
    batches = [{k: v.to(lm.device) for k, v in b.items()} for b in batches]

    def bare_full() -> None:
        with torch.inference_mode():
            for b in batches:
                lm.model(**b)

    def bare_encoder() -> None:
        with torch.inference_mode():
            for b in batches:
                lm.model.base_model(**b)

    mask_id = tok.mask_token_id
    mask_pos = [(b["input_ids"] == mask_id).nonzero()[:, 1:] for b in batches]

    def bare_at_mask() -> None:
        # the same job's model compute: encoder everywhere, MLM head at the mask only
        with torch.inference_mode():
            for b, pos in zip(batches, mask_pos):
                lm.mask_logits(
                    pos,
                    b["attention_mask"],
                    input_ids=b["input_ids"],
                    token_type_ids=b.get("token_type_ids"),
                )

    t_bare, _ = best_time(bare_full, args.repeat)
    t_mask, _ = best_time(bare_at_mask, args.repeat)
    t_enc, _ = best_time(bare_encoder, args.repeat)

    agree = float(np.mean([a == b for a, b in zip(ours, pipe_preds)]))
    print(f"{'contender':<44}{'seconds':>9}{'examples/s':>12}")
    for name, t in [
        ("autoprompt_py classify (tokenize+forward)", t_ours),
        ("transformers pipeline('fill-mask')", t_pipe),
        ("bare forward, MLM head at every position", t_bare),
        ("bare forward, MLM head at the mask only", t_mask),
        ("bare forward, encoder only (no MLM head)", t_enc),
    ]:
        print(f"{name:<44}{t:>9.3f}{n / t:>12.0f}")
    print(f"speed-up over the pipeline: {t_pipe / t_ours:.2f}x (target >= 5x)")
    print(f"time vs bare full forward: {t_ours / t_bare:.2f}x (target <= 1.2x)")
    print(f"time vs bare forward with the head at the mask only: {t_ours / t_mask:.2f}x")
    print(f"time vs bare encoder-only forward: {t_ours / t_enc:.2f}x")
    print(f"predictions agreeing with the pipeline: {agree:.4f}")


if __name__ == "__main__":
    main()
