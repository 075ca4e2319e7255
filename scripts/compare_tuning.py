"""Compare what `autoprompt tune` trains: every method × init × selection rule, few-shot (K per
class) and full data, over data seeds, at equal steps; mean ± std of the dev, held-out and
test metric, seconds and trainable parameters.

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

Selection rules (``--rules``, ``tune --select``): one training run serves ``best-dev``,
``last`` and ``average`` (it keeps the last ``--average-last`` checkpoints, and the held-out
and test splits are scored at every evaluation, so the best-on-dev and the last checkpoint are
read off it); ``cv`` is a run of its own. ``--held-out N`` scores N rows of the dev pool (apart
from the dev sample) at the same checkpoints: a split to choose settings on, so that the test
split stays one no choice was made on. ``--steps`` and ``--lr`` may list several values (a
grid); ``default`` is TuneConfig's per-method default.
"""

from __future__ import annotations

import argparse
import dataclasses
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


def hold_out(dev: list, n: int) -> tuple[list, list]:
    """(the dev pool less ``n`` rows, those ``n`` rows), drawn with seed 0."""
    if not n:
        return dev, []
    perm = np.random.default_rng(0).permutation(len(dev))
    held = set(perm[:n].tolist())
    return [e for i, e in enumerate(dev) if i not in held], [dev[i] for i in sorted(held)]


# the TuneConfig fields a run sets from the method, the seed and this script's own options
PER_RUN = ("method", "init", "init_text", "encoder", "lr", "steps", "batch_size", "eval_every",
           "seed", "shots", "dev_shots", "data_seed", "average_last", "cv_folds", "select")  # fmt: skip


def settings(spec: str | None) -> dict:
    """``--set weight_decay=0.01,warmup=0,dropout=false``: TuneConfig fields, each value read as
    JSON (a number, true, false) or else as a string."""
    from autoprompt_py.tune import TuneConfig

    names = {f.name for f in dataclasses.fields(TuneConfig)}
    out = {}
    for pair in filter(None, (spec or "").split(",")):
        name, _, value = pair.partition("=")
        if name not in names:
            raise SystemExit(f"--set {pair}: {name!r} is not a TuneConfig field")
        if name in PER_RUN:
            raise SystemExit(f"--set {pair}: {name} is set per run; use the script's own option")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def load_data(name: str, quick: bool, held: int = 0):
    """(train, dev, test, verbalizer, template, soft template, per_class, held-out) for a
    task."""
    *data, per_class = _load_data(name, quick)
    dev, held_rows = hold_out(data[1], held)
    return (data[0], dev, *data[2:], per_class, held_rows)


def _load_data(name: str, quick: bool):
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
        train, dev, _, verb, _, soft_template, *_ = data
        task = SearchTask(parse_template(soft_template), train, dev)
        config = SearchConfig(time_budget=args.search_seconds, iters=100_000, seed=seed)
        result = run_search(lm, task, config, progress=False).result
        _SEARCHED[key] = template_from_result(result, "search")
    return _SEARCHED[key]


def run_one(lm_factory, data, method: str, shots, seed: int, args, steps=None) -> list[dict]:
    """One method on one data seed: a result per selection rule of ``args.rules``."""
    from autoprompt_py.tune import TuneConfig, load_tune_task, tune
    from autoprompt_py.tune.loop import evaluate
    from autoprompt_py.tune.methods import build_part
    from autoprompt_py.tune.run import make_objective

    train, dev, test, verb, template, soft_template, per_class, held = data
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

    def scores(part, objective) -> dict:
        out = {}
        for split, rows in (("held", held), ("test", task.test)):
            if rows:
                out[split] = evaluate(part, objective, objective.encode(rows, part.template),
                                      64, lm.device)[0]  # fmt: skip
        return out

    if name in ("untrained", "searched"):
        config = TuneConfig(method="full", eval_batch_size=64)
        objective = make_objective(lm, task, config)
        part = build_part(lm, task, config, objective)
        d, _ = evaluate(part, objective, objective.encode(task.dev), 64, lm.device)
        got = scores(part, objective)
        return [{"rule": None, "dev": d, **got, "seconds": time.perf_counter() - started,
                 "trainable": 0}]  # fmt: skip
    config = TuneConfig(
        method=name, init=init or ("vocab" if name == "soft" else "found"), init_text=init_text,
        encoder=encoder or "mlp", lr=float(lr) if lr else None, steps=steps,
        batch_size=args.batch_size, eval_every=args.eval_every, seed=seed, shots=k,
        dev_shots=dev_k, data_seed=seed, average_last=args.average_last,
        cv_folds=args.cv_folds, **args.settings,
    )  # fmt: skip
    rules = args.rules.split(",")
    runs = []
    one = [r for r in rules if r in ("best-dev", "last", "average")]
    if one:  # one trajectory: it keeps the average and a copy of every evaluated checkpoint
        objective = make_objective(lm, task, config)
        at: dict = {}
        outcome = tune(
            lm,
            task,
            dataclasses.replace(config, select="average"),
            progress=False,
            watch=lambda step, part: at.update({step: part.state()}),
        )
        out = outcome.result
        m = out["metric"]
        curve = out["curve"]
        best = max(curve, key=lambda p: (p["dev"], p["step"]))  # a tie keeps the later one
        picks = {"average": (out["best_step"], out["dev"][m], scores(outcome.part, objective))}
        done: dict = {}  # held-out and test at the kept checkpoint, once a checkpoint
        for rule, p in (("last", curve[-1]), ("best-dev", best)):
            if p["step"] not in done:
                outcome.part.load_state(at[p["step"]])
                done[p["step"]] = scores(outcome.part, objective)
            picks[rule] = (p["step"], p["dev"], done[p["step"]])
        seconds = time.perf_counter() - started
        for rule in one:
            step, d, got = picks[rule]
            runs.append({"rule": rule, "dev": d, **got, "kept_step": step, "seconds": seconds,
                         "start_dev": out["start"][m], "steps": out["total_steps"],
                         "lr": out["config"]["lr"],
                         "trainable": out["trainable_parameters"]})  # fmt: skip
    if "cv" in rules:
        started = time.perf_counter()
        lm = lm_factory()
        outcome = tune(lm, task, dataclasses.replace(config, select="cv"), progress=False)
        out = outcome.result
        m = out["metric"]
        objective = make_objective(lm, task, config)
        runs.append({"rule": "cv", "dev": out["dev"][m],
                     **scores(outcome.part, objective), "kept_step": out["best_step"],
                     "seconds": time.perf_counter() - started, "start_dev": out["start"][m],
                     "steps": out["total_steps"], "lr": out["config"]["lr"],
                     "trainable": out["trainable_parameters"],
                     "cv": out["select"]["cv"]})  # fmt: skip
    return runs


CHANGES = ("batch", "template", "verbalizer", "set", "variant")


def label(run: dict) -> str:
    """The method, with what the run changed from the task's setting (recorded keys)."""
    changed = [f"{k}={run[k]}" for k in CHANGES if run.get(k) is not None]
    return f"{run['method']} ({'; '.join(changed)})" if changed else run["method"]


def report(runs: list[dict]) -> None:
    """The table: mean ± std over data seeds of each task × K × method × steps × rule."""
    print("| task | K | method | steps | rule | dev | held-out | test | seconds | trainable |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    groups: dict = {}
    for r in runs:
        key = (r["task"], r["shots"], label(r), r.get("grid_steps"), r.get("rule"))
        groups.setdefault(key, []).append(r)

    def cell(rs, key):
        if any(key not in r for r in rs):
            return "–"
        v = np.array([r[key] for r in rs])
        return f"{v.mean():.3f} ± {v.std():.3f}"

    for (task_name, shots, method, steps, rule), rs in groups.items():
        secs = np.mean([r["seconds"] for r in rs])
        print(
            f"| {task_name} | {shots or 'all'} | {method} | {steps or '–'} | {rule or '–'} | "
            f"{cell(rs, 'dev')} | {cell(rs, 'held')} | {cell(rs, 'test')} | {secs:.1f} | "
            f"{rs[0]['trainable']:,} |"
        )


def pivot(runs: list[dict], metric: str) -> None:
    """One row per task × K × method × steps, one column per rule: ``metric``'s mean ± std."""
    rules = [r for r in ("best-dev", "last", "average", "cv") if any(x["rule"] == r for x in runs)]
    cells: dict = {}
    for r in runs:
        if metric in r:
            key = (r["task"], r["shots"], label(r), r.get("grid_steps"))
            cells.setdefault(key, {}).setdefault(r.get("rule") or "–", []).append(r[metric])
    print(f"| task | K | method | steps | {' | '.join(['untrained', *rules])} ({metric}) |")
    print("|---|---|---|---|" + "---|" * (len(rules) + 1))
    for (task_name, shots, method, steps), by in cells.items():
        row = [f"{np.mean(v):.3f} ± {np.std(v):.3f}" if (v := by.get(r)) else ""
               for r in ["–", *rules]]  # fmt: skip
        head = f"| {task_name} | {shots or 'all'} | {method} | {steps or '–'} |"
        print(f"{head} {' | '.join(row)} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the bundled model")
    ap.add_argument("--tasks", default="sst2")
    ap.add_argument("--methods", default="untrained,full,head,soft:vocab")
    ap.add_argument("--rules", default="best-dev,last,average",
                    help="selection rules: best-dev, last, average (one run), cv")  # fmt: skip
    ap.add_argument("--shots", default="16", help="comma-separated K per class; 0: all rows")
    ap.add_argument("--dev-shots", type=int, default=16)
    ap.add_argument(
        "--full-dev-shots", type=int, default=0,
        help="with --shots 0, dev examples per class (0: the whole dev split)",
    )  # fmt: skip
    ap.add_argument("--held-out", type=int, default=0, help="rows of the dev pool to score")
    ap.add_argument("--template", default=None, help="instead of the task's (not soft's)")
    ap.add_argument("--verbalizer", default=None, help="instead of the task's: a file or JSON")
    ap.add_argument(
        "--set", default=None, help="TuneConfig fields, e.g. weight_decay=0.01,warmup=0"
    )
    ap.add_argument("--data-seeds", default="0-4")
    ap.add_argument("--steps", default="150", help="comma-separated; default: by method")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--average-last", type=int, default=3)
    ap.add_argument("--cv-folds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--search-seconds", type=float, default=60.0,
        help="relations: the GCG search that 'searched' and 'soft:found' start from",
    )  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="a reduced setting on examples/ (CI)")
    ap.add_argument("--output", default=None, help="write every run as JSON")
    ap.add_argument("--report", default=None, help="the tables of a run's JSON lines (stderr)")
    ap.add_argument("--pivot", default=None, help="with --report: a column per rule of this")
    args = ap.parse_args(argv)
    args.settings = settings(args.set)  # refused before any run, not at the first trained one
    if args.report:
        lines = Path(args.report).read_text(encoding="utf-8").splitlines()
        runs = [r for x in lines if x.startswith("{") and "task" in (r := json.loads(x))]
        pivot(runs, args.pivot) if args.pivot else report(runs)
        return
    if args.quick:
        args.tasks, args.data_seeds, args.steps, args.eval_every = "quick", "0", "2", 1
        args.shots, args.dev_shots, args.held_out = "4", 4, 8
        args.methods, args.rules = "untrained,full,soft:vocab", "best-dev,last,average,cv"
        args.cv_folds = 2

    import torch

    from autoprompt_py.cli.models import quiet_transformers
    from autoprompt_py.model import load_model

    torch.set_num_threads(args.threads)
    quiet_transformers()
    lm_factory = lambda: load_model(args.model, device="cpu")  # noqa: E731 (fresh weights per run)
    runs = []
    # what a run changed from the task's setting, recorded with it
    given = {"template": args.template, "verbalizer": args.verbalizer, "set": args.set}
    changed = {"batch": args.batch_size} | {k: v for k, v in given.items() if v}
    for task_name in args.tasks.split(","):
        data = load_data(task_name, args.quick, args.held_out)
        if args.template or args.verbalizer:  # (train, dev, test, verbalizer, template, ...)
            data = (*data[:3], args.verbalizer or data[3], args.template or data[4], *data[5:])
        for shots in [int(s) for s in args.shots.split(",")]:
            for method in args.methods.split(","):
                for steps in args.steps.split(",")[: 1 if method == "untrained" else None]:
                    n = None if steps == "default" else int(steps)
                    for seed in seeds(args.data_seeds):
                        for r in run_one(lm_factory, data, method, shots, seed, args, n):
                            r.update(task=task_name, method=method, shots=shots, seed=seed,
                                     grid_steps=steps, **changed)  # fmt: skip
                            runs.append(r)
                            print(json.dumps(r), file=sys.stderr, flush=True)
    report(runs)
    if args.output:
        Path(args.output).write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
