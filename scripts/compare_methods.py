"""Compare trigger search methods at an equal budget, over seeds and tasks.

Each task is encoded once; every (method, seed) run then searches under the same time budget
(``--time-budget`` seconds of search) and/or forward-pass budget (``--max-forward-passes``,
load-independent: use it on a shared machine), selects its trigger on dev and is scored on a
test split never used for selection. Tasks:

* ``sst2``: the shared SST-2 train.tsv; its dev.tsv split in two halves (seeded, fixed):
  dev (selection) and test;
* ``P19``, ``P176``, …: LAMA facts from the shared data, split 60/20/20 (seeded, fixed) into
  train/dev/test, template ``[X] [T] [T] [T] [Y] .``, P@1 over LAMA's common vocabulary.

Methods (``--methods``; ``name=key:value,...`` defines another setting):
``autoprompt-loss`` and ``autoprompt-metric`` (the original algorithm: [MASK] start, the
vocabulary loss), ``autoprompt-labels`` (the same with ``--objective labels``),
``gcg`` (no restarts, no buffer), ``gcg-restarts`` (3 restarts), ``gcg-buffer`` (buffer of 4),
``default`` (the library's defaults).

``--fit-test`` searches and selects on the test split itself: not a result, but a ceiling on
what a trigger of the template can reach on those rows, to size a target against.

    python scripts/compare_methods.py --time-budget 60 --seeds 0 1 2 3 4 \\
        --tasks sst2 P19 P176 --json compare.json

prints mean ± std over seeds of the dev and test metric, search seconds and forward passes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprompt_py.data import read_examples, read_facts  # noqa: E402
from autoprompt_py.model import load_model  # noqa: E402
from autoprompt_py.search import (  # noqa: E402
    SearchConfig,
    TriggerSearch,
    load_task,
    trigger_ids_from_words,
)

PRESETS = {
    "autoprompt-loss": dict(method="autoprompt", select="loss", initial="mask", objective="vocab"),
    "autoprompt-metric": dict(
        method="autoprompt", select="metric", initial="mask", objective="vocab"
    ),
    "autoprompt-labels": dict(method="autoprompt", initial="mask", objective="labels"),
    "gcg": dict(method="gcg", restarts=1, buffer_size=0),
    "gcg-restarts": dict(method="gcg", restarts=3, buffer_size=0),
    "gcg-buffer": dict(method="gcg", restarts=1, buffer_size=4),
    "default": dict(),
}
SST2_TEMPLATE = "{sentence} [T] [T] [T] [P] ."
SST2_VERBALIZER = '{"0": ["terrible"], "1": ["great"]}'
RELATION_TEMPLATE = "[X] [T] [T] [T] [Y] ."


def parse_method(spec: str) -> tuple[str, dict]:
    if "=" not in spec:
        if spec not in PRESETS:
            raise SystemExit(f"--methods {spec!r}: use one of {', '.join(PRESETS)} or name=k:v,...")
        return spec, PRESETS[spec]
    name, body = spec.split("=", 1)
    settings: dict = {}
    for item in filter(None, body.split(",")):
        key, value = item.split(":", 1)
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        settings[key] = None if value == "none" else value
    return name, settings


def write_tsv(path: Path, examples) -> None:
    path.write_text(
        "sentence\tlabel\n" + "".join(f"{e.fields['sentence']}\t{e.label}\n" for e in examples)
    )


def write_facts(path: Path, examples) -> None:
    path.write_text(
        "".join(
            json.dumps({"sub_label": e.fields["sub_label"], "obj_label": e.label}) + "\n"
            for e in examples
        )
    )


def make_task(name: str, args, tmp: Path):
    """(task, test examples) with fixed seeded splits."""
    data = Path(args.data)
    rng = np.random.default_rng(1234)
    if name == "sst2":
        dev = read_examples(data / "sst2" / "dev.tsv", limit=args.dev_limit)
        order = rng.permutation(len(dev))
        half = len(dev) // 2
        write_tsv(tmp / "sst2-dev.tsv", [dev[i] for i in sorted(order[:half])])
        test = [dev[i] for i in sorted(order[half:])]
        if args.fit_test:
            write_tsv(tmp / "sst2-test.tsv", test)
        fitted = tmp / "sst2-test.tsv"
        task = load_task(
            SST2_TEMPLATE,
            fitted if args.fit_test else data / "sst2" / "train.tsv",
            fitted if args.fit_test else tmp / "sst2-dev.tsv",
            SST2_VERBALIZER,
            train_limit=args.train_limit,
        )
        return task, test
    [facts] = read_facts(data / "lama" / "facts" / f"{name}.jsonl").values()
    facts = facts[: args.fact_limit]
    order = rng.permutation(len(facts))
    n_train, n_dev = int(0.6 * len(facts)), int(0.2 * len(facts))
    parts = np.split(order, [n_train, n_train + n_dev])
    if args.fit_test:
        parts[:2] = [parts[2], parts[2]]
    for part, rows in zip(("train", "dev"), parts[:2]):
        write_facts(tmp / f"{name}-{part}.jsonl", [facts[i] for i in sorted(rows)])
    task = load_task(
        RELATION_TEMPLATE,
        tmp / f"{name}-train.jsonl",
        tmp / f"{name}-dev.jsonl",
        vocab=data / "lama" / "common_vocab_cased.txt",
        relation=name,
    )
    return task, [facts[i] for i in sorted(parts[2])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=str(ROOT.parent / "shared/models/bert-tiny-splade"))
    p.add_argument("--data", default=str(ROOT.parent / "shared/data"))
    p.add_argument("--tasks", nargs="+", default=["sst2", "P19", "P176"])
    p.add_argument("--methods", nargs="+", default=list(PRESETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--time-budget", type=float, default=None, help="search seconds per run")
    p.add_argument("--max-forward-passes", type=int, default=None, help="per run")
    p.add_argument("--iters", type=int, default=10**6, help="iterations per restart (cap)")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--dev-limit", type=int, default=None, help="SST-2 dev.tsv rows to split")
    p.add_argument("--fact-limit", type=int, default=None, help="LAMA facts per relation")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--initial-trigger",
        default=None,
        help="words or vocabulary tokens for restart 0's start; with --iters 0 this scores a "
        "given trigger (e.g. one published) on the same splits",
    )
    p.add_argument(
        "--fit-test",
        action="store_true",
        help="search and select on the test split itself: an in-sample ceiling for what any "
        "trigger of this template reaches there, not a result",
    )
    p.add_argument("--json", default=None, help="write every run here")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds: 2 seeds, tiny budgets and data (a smoke test, not a comparison)",
    )
    args = p.parse_args()
    if args.quick:
        args.seeds = args.seeds[:1]
        args.tasks = args.tasks[:2]
        args.iters = min(args.iters, 2)
        args.train_limit = args.train_limit or 100
        args.dev_limit = args.dev_limit or 40
        args.fact_limit = args.fact_limit or 100
        args.max_forward_passes = args.max_forward_passes or 2000
    if args.time_budget is None and args.max_forward_passes is None and args.iters >= 10**6:
        raise SystemExit("give --time-budget, --max-forward-passes or --iters")
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    methods = [parse_method(m) for m in args.methods]
    lm = load_model(args.model, "cpu")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for task_name in args.tasks:
            task, test_examples = make_task(task_name, args, Path(tmp))
            base = TriggerSearch(lm, task, SearchConfig())
            test = base.encode(test_examples)
            initial = None
            if args.initial_trigger:
                initial = trigger_ids_from_words(lm.tokenizer, task.template, args.initial_trigger)
            for method, settings in methods:
                for seed in args.seeds:
                    config = SearchConfig(
                        **{
                            "iters": args.iters,
                            "time_budget": args.time_budget,
                            "max_forward_passes": args.max_forward_passes,
                            "seed": seed,
                            **settings,
                        }
                    )
                    search = base.reconfigure(config)
                    started = time.perf_counter()
                    state = search.run(search.start(initial))
                    wall = time.perf_counter() - started
                    best = state.best_trigger
                    run = {
                        "task": task_name,
                        "method": method,
                        "seed": seed,
                        "config": dataclasses.asdict(search.config),
                        "words": search.words(best),
                        "dev": state.best_dev,
                        "test": search.evaluate(test, best).metric,
                        "seconds": state.seconds,
                        "wall_s": wall,
                        "cost": state.cost,
                        "iterations": state.iteration,
                        "curve": state.curve,
                        "restarts": state.restarts,
                    }
                    runs.append(run)
                    print(
                        f"{task_name} {method} seed {seed}: dev {run['dev']} test "
                        f"{run['test']:.4f} {run['seconds']:.1f}s "
                        f"{state.cost.get('forward_passes', 0)} passes "
                        f"{' '.join(run['words'])}",
                        flush=True,
                    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    print()
    print(table(runs))


def table(runs: list[dict]) -> str:
    def ms(values) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}"

    lines = [
        "| task | method | n | dev | test | seconds | forward passes |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = dict.fromkeys((r["task"], r["method"]) for r in runs)
    for task, method in keys:
        group = [r for r in runs if r["task"] == task and r["method"] == method]
        passes = np.mean([r["cost"].get("forward_passes", 0) for r in group])
        lines.append(
            f"| {task} | {method} | {len(group)} | {ms(r['dev'] for r in group)} | "
            f"{ms(r['test'] for r in group)} | {np.mean([r['seconds'] for r in group]):.1f} | "
            f"{passes:,.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
