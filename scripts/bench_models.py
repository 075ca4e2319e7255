"""A two-model search iteration against the two single-model iterations it joins.

From the same search state each timed round runs one ``TriggerSearch.step`` of the search over
both models and one of each model's own search (same seed, so the same batches and as many
candidates), and prints the joint step's time against the sum of the two single ones
(``ratio``; the joint search should cost no more than its parts: target ≤ 1.1). Each step
starts from a copy of the joint search's state with an empty visited set, so every step
evaluates its trigger on dev.

Without a second ``--model`` the second model is the first with its weights perturbed
(seeded noise, the same vocabulary), saved to a temporary folder: offline, on the bundled
model by default.

    python scripts/bench_models.py --iters 5 --threads 1
    python scripts/bench_models.py --model bert-base-uncased --model bert-large-uncased \\
        --data ../shared/data/sst2 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprompt_py.model import load_model  # noqa: E402
from autoprompt_py.search import SearchConfig, TriggerSearch, load_task  # noqa: E402


def perturbed_copy(lm, folder: Path, scale: float = 0.05, seed: int = 0) -> str:
    """The model with seeded noise on every weight but the embeddings, saved to ``folder``."""
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(lm.model).cpu()
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        for p in model.parameters():
            if p is not embeddings and p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=gen) * scale * p.std().nan_to_num(1.0))
    model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return str(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", action="append", default=None, help="repeat for two models")
    p.add_argument("--data", default=str(ROOT / "examples" / "sentiment"))
    p.add_argument("--template", default="{sentence} [T] [T] [T] [T] [T] [P] .")
    p.add_argument("--verbalizer", default="sst2")
    p.add_argument("--method", default="gcg")
    p.add_argument("--train-limit", type=int, default=400)
    p.add_argument("--dev-limit", type=int, default=100)
    p.add_argument("--iters", type=int, default=5, help="timed rounds")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.model or ["bert-tiny-splade"]
    lms = [load_model(n, args.device) for n in names]
    if len(lms) == 1:
        folder = Path(tempfile.mkdtemp()) / "perturbed"
        lms.append(load_model(perturbed_copy(lms[0], folder), args.device))
    data = Path(args.data)
    task = load_task(
        args.template,
        data / "train.tsv",
        data / "dev.tsv",
        args.verbalizer,
        train_limit=args.train_limit,
        dev_limit=args.dev_limit,
        seed=args.seed,
    )
    config = SearchConfig(method=args.method, iters=10**9, seed=args.seed)
    joint = TriggerSearch(lms, task, config)
    singles = [TriggerSearch(lm, task, config) for lm in lms]
    state = joint.start()

    def sync() -> None:
        if lms[0].device.type == "cuda":
            torch.cuda.synchronize()

    def step(search: TriggerSearch, start) -> tuple[float, object]:
        s = copy.deepcopy(start)
        s.visited = []
        sync()
        t = time.perf_counter()
        search.step(s)
        sync()
        return time.perf_counter() - t, s

    rows = []
    for it in range(args.warmup + args.iters):
        alone = [step(s, state)[0] for s in singles]
        joined, state = step(joint, state)
        if it >= args.warmup:
            rows.append((alone, joined))
    print(f"models {', '.join(lm.name for lm in lms)}  device {lms[0].device}  threads "
          f"{torch.get_num_threads()}  method {args.method}  train {len(joint.train)} dev "
          f"{len(joint.dev)}")  # fmt: skip
    print(f"{'round':>5} {'model 1':>8} {'model 2':>8} {'sum':>8} {'joint':>8} | ratio")
    for i, (alone, joined) in enumerate(rows):
        total = sum(alone)
        print(
            f"{i:>5} {alone[0]:8.3f} {alone[1]:8.3f} {total:8.3f} {joined:8.3f} | "
            f"{joined / total:5.2f}"
        )
    sums = [sum(a) for a, _ in rows]
    joints = [j for _, j in rows]
    print(
        f"median: sum of the single-model iterations {statistics.median(sums):.3f}s, two-model "
        f"iteration {statistics.median(joints):.3f}s; ratio (sum over rounds) "
        f"{sum(joints) / sum(sums):.3f} (target <= 1.1)"
    )


if __name__ == "__main__":
    main()
