"""Compare what `autoprompt tune` trains: every method × init, few-shot (K per class) and full
data, over data seeds, at equal steps; mean ± std of the dev and test metric, seconds and
trainable parameters.

    python scripts/compare_tuning.py --tasks sst2 --methods untrained,full,head,soft \
        --shots 16 --data-seeds 0-4 --steps 150 --threads 1 --output compare_tuning.json

Tasks: ``sst2`` (K per class drawn from 80% of train.tsv, dev K per class from the other 20%,
test: the 872 GLUE dev sentences), ``agnews`` (test.tsv split 60/20/20 with seed 0: K per
class from the 60%, dev K per class from the 20%, test the last 20%), and LAMA relations
``P19``, ``P36``, ... (each relation's facts split 60/20/20 with seed 0; ``--shots`` K facts, or
all with ``--shots 0``). ``untrained`` is the prompt scored as it is. A method is written
``soft:vocab`` for an init (``soft:text``: the label words), ``head@1e-3`` for a learning
rate, ``ptuning-lstm`` for P-tuning's LSTM encoder. Relations: ``searched`` is the
trigger a ``--search-seconds`` GCG search finds (scored as it is), ``soft:found`` the soft
prompt trained from it (OptiPrompt). ``--quick`` runs a reduced
setting on the files under ``examples/`` (CI runs it, so the script cannot rot).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared"
SST2_TEMPLATE = "{sentence} It was [MASK] ."
SST2_SOFT = "{sentence} [T] [T] [T] It was [MASK] ."
AG_TEMPLATE = "[MASK] : {text}"
AG_SOFT = "[T] [T] [T] [MASK] : {text}"
SST2_VERB = '{"0": ["terrible"], "1": ["great"]}'


def seeds(spec: str) -> list[int]:
    if "-" in spec:
        lo, hi = spec.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in spec.split(",")]


def split3(rows: list, seed: int = 0) -> tuple[list, list, list]:
    perm = np.random.default_rng(seed).permutation(len(rows))
    a, b = int(0.6 * len(rows)), int(0.8 * len(rows))
    pick = lambda idx: [rows[i] for i in sorted(idx)]  # noqa: E731
    return pick(perm[:a]), pick(perm[a:b]), pick(perm[b:])


def load_data(name: str, quick: bool):
    """(train, dev, test, verbalizer, template, soft template, per_class) for a task."""
    from autoprompt_py.data import read_examples, read_facts
    from autoprompt_py.search.task import split_off_dev as split_dev
    from autoprompt_py.textfile import parse_json, read_text

    if quick:
        train = read_examples(ROOT / "examples/sentiment/train.tsv")
        dev = read_examples(ROOT / "examples/sentiment/dev.tsv")
        return train, dev, dev, "sst2", SST2_TEMPLATE, SST2_SOFT, True
    if name == "sst2":
        rows = read_examples(SHARED / "data/sst2/train.tsv")
        train, dev = split_dev(rows, 0.2, 0, "sst2")
        test = read_examples(SHARED / "data/sst2/dev.tsv")
        return train, dev, test, SST2_VERB, SST2_TEMPLATE, SST2_SOFT, True
    if name == "agnews":
        rows = read_examples(SHARED / "data/agnews/test.tsv", columns=["text", "label"])
        train, dev, test = split3(rows)
        return train, dev, test, "agnews", AG_TEMPLATE, AG_SOFT, True
    facts = next(iter(read_facts(SHARED / f"data/lama/facts/{name}.jsonl").values()))
    manual = {}
    for _, line in enumerate(read_text(SHARED / "data/lama/relations.jsonl", "x").splitlines()):
        if line.strip():
            row = parse_json(line, "relations.jsonl")
            manual[row["relation"]] = row["template"]
    template = manual[name]
    soft = "[X] [T] [T] [T] [T] [T] [Y] ."
    train, dev, test = split3(facts)
    return train, dev, test, None, template, soft, False


_SEARCHED: dict = {}


def searched_template(lm, data, seed: int, args):
    """The trigger a ``--search-seconds`` GCG search finds on train (best on dev), once per
    task and seed: ``searched`` scores it as it is, ``soft:found`` starts from it."""
    from autoprompt_py.resources import template_from_result
    from autoprompt_py.search import SearchConfig, run_search
    from autoprompt_py.search.task import SearchTask
    from autoprompt_py.template import parse_template

    key = (id(data), seed)
    if key not in _SEARCHED:
        train, dev, _, verb, _, soft_template, _ = data
        task = SearchTask(parse_template(soft_template), train, dev)
        config = SearchConfig(time_budget=args.search_seconds, iters=100_000, seed=seed)
        result = run_search(lm, task, config, progress=False).result
        _SEARCHED[key] = template_from_result(result, "search")
    return _SEARCHED[key]


def run_one(lm_factory, data, method: str, shots, seed: int, args) -> dict:
    from autoprompt_py.tune import TuneConfig, load_tune_task, tune
    from autoprompt_py.tune.loop import evaluate
    from autoprompt_py.tune.methods import build_part
    from autoprompt_py.tune.run import make_objective

    train, dev, test, verb, template, soft_template, per_class = data
    name, _, lr = method.partition("@")
    name, _, init = name.partition(":")
    name, _, encoder = name.partition("-")  # ptuning-lstm: P-tuning's LSTM encoder
    init_text = None
    if init == "text":  # the label words, as Lester et al. start from the class names
        if verb is None:
            raise SystemExit(f"{method}: --init text takes the label words: classification only")
        from autoprompt_py.resources import load_verbalizer

        words = load_verbalizer(verb).words.values()
        init_text = " ".join(w for ws in words for w in ws)
    tpl = soft_template if name == "soft" else template
    if name in ("searched", "soft") and (init == "found" or name == "searched"):
        tpl = searched_template(lm_factory(), data, seed, args)
    k = shots or None
    # all training rows: dev is --full-dev-shots per class (0: all of it, as for relations)
    dev_k = (k and args.dev_shots) or (per_class and args.full_dev_shots) or None
    task = load_tune_task(
        tpl, train, dev, test, verbalizer=verb, shots=k, dev_shots=dev_k, data_seed=seed,
    )  # fmt: skip
    lm = lm_factory()
    started = time.perf_counter()
    if name in ("untrained", "searched"):
        config = TuneConfig(method="full", eval_batch_size=64)
        objective = make_objective(lm, task, config)
        part = build_part(lm, task, config, objective)
        d, _ = evaluate(part, objective, objective.encode(task.dev), 64, lm.device)
        t, _ = evaluate(part, objective, objective.encode(task.test), 64, lm.device)
        return {"dev": d, "test": t, "seconds": time.perf_counter() - started, "trainable": 0}
    config = TuneConfig(
        method=name, init=init or ("vocab" if name == "soft" else "found"), init_text=init_text,
        encoder=encoder or "mlp", lr=float(lr) if lr else None, steps=args.steps,
        batch_size=args.batch_size,
        eval_every=args.eval_every, seed=seed, shots=k, dev_shots=dev_k,
        data_seed=seed,
    )  # fmt: skip
    out = tune(lm, task, config, progress=False).result
    m = out["metric"]
    return {
        "dev": out["dev"][m],
        "test": out["test"][m],
        "start_dev": out["start"][m],
        "seconds": time.perf_counter() - started,
        "trainable": out["trainable_parameters"],
        "projection_dev": (out.get("projection") or {}).get("dev", {}).get(m),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the bundled model")
    ap.add_argument("--tasks", default="sst2")
    ap.add_argument("--methods", default="untrained,full,head,soft:vocab")
    ap.add_argument("--shots", default="16", help="comma-separated K per class; 0: all rows")
    ap.add_argument("--dev-shots", type=int, default=16)
    ap.add_argument(
        "--full-dev-shots", type=int, default=0,
        help="with --shots 0, dev examples per class (0: the whole dev split)",
    )  # fmt: skip
    ap.add_argument("--data-seeds", default="0-4")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--search-seconds", type=float, default=60.0,
        help="relations: the GCG search that 'searched' and 'soft:found' start from",
    )  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="a reduced setting on examples/ (CI)")
    ap.add_argument("--output", default=None, help="write every run as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.tasks, args.data_seeds, args.steps, args.eval_every = "quick", "0", 2, 2
        args.shots, args.dev_shots = "4", 4
        args.methods = "untrained,full,soft:vocab"

    import torch

    from autoprompt_py.cli.common import quiet_transformers
    from autoprompt_py.model import load_model

    torch.set_num_threads(args.threads)
    quiet_transformers()
    lm_factory = lambda: load_model(args.model, device="cpu")  # noqa: E731 (fresh weights per run)
    runs = []
    for task_name in args.tasks.split(","):
        data = load_data(task_name, args.quick)
        for shots in [int(s) for s in args.shots.split(",")]:
            shots_here = shots if data[6] or shots == 0 else shots
            for method in args.methods.split(","):
                for seed in seeds(args.data_seeds):
                    r = run_one(lm_factory, data, method, shots_here, seed, args)
                    r.update(task=task_name, method=method, shots=shots, seed=seed)
                    runs.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
    print("| task | K | method | dev | test | seconds | trainable |")
    print("|---|---|---|---|---|---|---|")
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["task"], r["shots"], r["method"]), []).append(r)
    for (task_name, shots, method), rs in groups.items():
        dev = np.array([r["dev"] for r in rs])
        test = np.array([r["test"] for r in rs])
        secs = np.mean([r["seconds"] for r in rs])
        print(
            f"| {task_name} | {shots or 'all'} | {method} | {dev.mean():.3f} ± {dev.std():.3f} | "
            f"{test.mean():.3f} ± {test.std():.3f} | {secs:.1f} | {rs[0]['trainable']:,} |"
        )
    if args.output:
        Path(args.output).write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
