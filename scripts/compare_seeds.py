"""What a found prompt buys as the start of a trained one: for ``soft``, ``prompt`` and
``prefix``, the starts ``found`` (a ``--search-seconds`` GCG search's trigger), ``text`` (the
label words; relations: the words of the relation's manual template), ``vocab`` and
``random``; dev and test curves of the kept checkpoint (best on dev so far, a tie keeping the
later) at 0, 25, 50, 100, 200, 400 steps, over data seeds; and at equal total seconds,
search + tune against tune alone.

    nice python scripts/compare_seeds.py --tasks sst2,P1376,P36,P463,P1303 \
        --data-seeds 0-4 --steps 400 --search-seconds 60 --threads 1 --plot seeds.png

Every run of one task and seed trains the same template, the search result's (its trigger
fixed in the input for ``prompt`` and ``prefix``, its slots trained for ``soft``), so the
starts differ in where the trained vectors begin and in nothing else. Tasks: ``sst2`` (K=16
per class from 80% of ../shared's train.tsv, dev 16 per class from the other 20%, test the
872 GLUE dev sentences), ``sentiment`` (the bundled examples/, no ../shared needed) and
LAMA relations (``P1376``, ...: the facts split 60/20/20 with seed 0). Equal seconds:
``search+tune`` is the found ``soft`` run (search seconds + its training seconds);
``tune alone`` trains ``soft`` from the open template (``--init auto``: vocab) for as many
steps as those seconds allow at its own measured speed. ``--quick`` is the reduced setting
CI runs (the bundled model and data, seconds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("AUTOPROMPT_SHARED") or ROOT.parent / "shared")  # as conftest
SENTIMENT_SOFT = "{sentence} [T] [T] [T] It was [MASK] ."
SST2_VERB = '{"0": ["terrible"], "1": ["great"]}'


def _compare_tuning():
    """scripts/compare_tuning.py: its data loading and seed parsing, shared."""
    spec = importlib.util.spec_from_file_location(
        "compare_tuning", ROOT / "scripts/compare_tuning.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.SHARED = SHARED
    return module


def load_task_data(name: str, shots: int, seed: int):
    """(train, dev, test, verbalizer, soft template, text start) for one task and data seed."""
    from autoprompt_py.data import read_examples
    from autoprompt_py.template import Literal, parse_template
    from autoprompt_py.tune.task import sample_shots

    if name == "sentiment":  # bundled: K per class of train.tsv, dev.tsv as dev and test
        train = read_examples(ROOT / "examples/sentiment/train.tsv")
        dev = read_examples(ROOT / "examples/sentiment/dev.tsv")
        train = sample_shots(train, shots, seed, "--shots", "train.tsv")
        return train, dev, dev, "sst2", SENTIMENT_SOFT, "terrible great"
    ct = _compare_tuning()
    train, dev, test, verb, manual, soft, per_class = ct.load_data(name, False)
    if per_class:  # LM-BFF: K per class, dev as large, apart from it
        train = sample_shots(train, shots, seed, "--shots", name)
        dev = sample_shots(dev, shots, seed, "--dev-shots", name)
        from autoprompt_py.resources import load_verbalizer

        text = " ".join(w for ws in load_verbalizer(verb).words.values() for w in ws)
        return train, dev, test, verb, ct.SST2_SOFT if name == "sst2" else soft, text
    words = [p.text for p in parse_template(manual).parts if isinstance(p, Literal)]
    text = " ".join(w for w in words if w.strip(" .")) or "is"
    return train, dev, test, None, soft, text


def search(lm, data, seed: int, seconds: float, iters: int | None, options: dict | None = None):
    """The found template (a GCG search on train, best on dev), its result and seconds."""
    from autoprompt_py.resources import template_from_result
    from autoprompt_py.search import SearchConfig, run_search
    from autoprompt_py.search.task import SearchTask
    from autoprompt_py.template import parse_template
    from autoprompt_py.tune.task import load_tune_task

    train, dev, _, verb, soft, _ = data
    task = load_tune_task(soft, train, dev, verbalizer=verb)
    stask = SearchTask(task.template, task.train, task.dev, task.verbalizer, task.aggregation,
                       task.relation, task.vocab)  # fmt: skip
    config = SearchConfig(
        time_budget=seconds, iters=iters or 1_000_000, seed=seed, **(options or {})
    )
    started = time.perf_counter()
    result = run_search(lm, stask, config, progress=False).result
    elapsed = time.perf_counter() - started
    assert parse_template(soft).num_triggers == len(result["trigger"]["ids"])
    return template_from_result(result, "search"), result, elapsed


def train_curve(lm, data, template, method, start, seed, args, points_at, steps=None,
                budget=None):  # fmt: skip
    """One training run; per evaluation (every ``--eval-every`` steps) the dev metric, and the
    test metric of the checkpoints kept at ``points_at`` steps (scored after the run, so the
    run's seconds are its own); and the run's result."""
    import autoprompt_py.tune.loop as loop
    from autoprompt_py.tune import TuneConfig, load_tune_task, tune

    train, dev, test, verb, _, text = data
    task = load_tune_task(template, train, dev, test, verbalizer=verb)
    config = TuneConfig(
        method=method, init=start, init_text=text if start == "text" else None,
        steps=steps or args.steps, eval_every=args.eval_every, batch_size=args.batch_size,
        seed=seed, time_budget=budget, num_virtual_tokens=task.template.num_triggers or None,
        select="best-dev",  # the rule docs/seeding.md's figures were measured with
    )  # fmt: skip
    points: list[dict] = []
    saved: dict[int, dict] = {}
    trainers: list = []
    original = loop.Trainer._eval

    def _eval(self, started, base):  # keep each evaluated state, to score on test after
        original(self, started, base)
        p = self.state.curve[-1]
        points.append({"step": p["step"], "seconds": p["seconds"], "dev": p["dev"]})
        saved[p["step"]] = self.part.state()
        trainers[:] = [self]

    loop.Trainer._eval = _eval
    try:
        out = tune(lm, task, config, progress=False).result
    finally:
        loop.Trainer._eval = original
    trainer = trainers[0]
    encoded = trainer.objective.encode(task.test, trainer.part.template)
    wanted = {kept_at(points, s)["step"] for s in points_at} | {kept_at(points, 10**9)["step"]}
    for p in points:
        if p["step"] in wanted:
            trainer.part.load_state(saved[p["step"]])
            p["test"], _ = loop.evaluate(trainer.part, trainer.objective, encoded, 64, lm.device)
    return points, out


def kept_at(points: list[dict], step: int) -> dict:
    """The checkpoint kept after ``step`` steps: best dev so far, a tie keeping the later."""
    best = None
    for p in points:
        if p["step"] > step:
            break
        if best is None or p["dev"] >= best["dev"]:
            best = p
    return best


def main(argv: list[str] | None = None) -> None:
    ct = _compare_tuning()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the bundled model")
    ap.add_argument("--tasks", default="sst2,P1376,P36,P463,P1303")
    ap.add_argument("--methods", default="soft,prompt,prefix")
    ap.add_argument("--starts", default="found,text,vocab,random")
    ap.add_argument("--data-seeds", default="0-4")
    ap.add_argument("--shots", type=int, default=16, help="classification: K per class")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--points", default="0,25,50,100,200,400")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--search-seconds", type=float, default=60.0)
    ap.add_argument("--search-iters", type=int, default=None, help="cap (CI: a few)")
    ap.add_argument(
        "--search-option", action="append", default=[],
        help="a search setting KEY=VALUE, as tune's --search-option (accumulation_steps=1)",
    )  # fmt: skip
    ap.add_argument("--no-equal-seconds", action="store_true", help="skip search+tune vs tune")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a reduced setting on examples/ (CI)")
    ap.add_argument("--output", default=None, help="write every run as JSON")
    ap.add_argument("--plot", default=None, help="mean test curves (autoprompt plot's drawing)")
    ap.add_argument("--report", default=None, help="print the tables of a run's stderr log")
    args = ap.parse_args(argv)
    points_at = [int(s) for s in args.points.split(",")]
    if args.report:  # the JSON lines a run printed (a run cut short still reports)
        lines = Path(args.report).read_text(encoding="utf-8").splitlines()
        rows = [json.loads(x) for x in lines if x.startswith("{")]
        runs = [r for r in rows if "points" in r]
        report(runs, [r for r in rows if "equal_seconds" in r], points_at)
        if args.plot:
            plot(runs, points_at, args.plot)
        return
    if args.quick:
        args.tasks, args.data_seeds, args.steps, args.eval_every = "sentiment", "0", 4, 2
        args.points, args.shots, args.search_seconds, args.search_iters = "0,2,4", 8, 30, 1
        args.methods, args.starts = "soft,prefix", "found,text"
        points_at = [0, 2, 4]

    import torch

    from autoprompt_py.cli.models import quiet_transformers
    from autoprompt_py.model import load_model

    torch.set_num_threads(args.threads)
    quiet_transformers()
    fresh = lambda: load_model(args.model, device="cpu")  # noqa: E731 (PEFT wraps the model)
    from autoprompt_py.tune.pipeline import parse_search_options

    options = parse_search_options(args.search_option)
    runs, equal = [], []
    for seed in ct.seeds(args.data_seeds):  # every task of a seed first: a cut run stays even
        for task_name in args.tasks.split(","):
            data = load_task_data(task_name, args.shots, seed)
            found, result, search_s = search(fresh(), data, seed, args.search_seconds,
                                             args.search_iters, options)  # fmt: skip
            m = result["metric"]
            print(json.dumps({"task": task_name, "seed": seed, "searched": result["prompt"],
                              "search_dev": result["dev"][m], "seconds": round(search_s, 1),
                              "iterations": result["iterations"]}),
                  file=sys.stderr, flush=True)  # fmt: skip
            for method in args.methods.split(","):
                for start in args.starts.split(","):
                    started = time.perf_counter()
                    points, out = train_curve(fresh(), data, found, method, start, seed, args,
                                              points_at)  # fmt: skip
                    run = {"task": task_name, "seed": seed, "method": method, "start": start,
                           "metric": m, "search_dev": result["dev"][m], "points": points,
                           "seconds": round(time.perf_counter() - started, 2),
                           "train_seconds": out["train_seconds"]}  # fmt: skip
                    runs.append(run)
                    print(json.dumps(run), file=sys.stderr, flush=True)
            if args.no_equal_seconds:
                continue
            soft = next(r for r in runs[::-1] if (r["task"], r["seed"], r["method"],
                        r["start"]) == (task_name, seed, "soft", "found"))  # fmt: skip
            total = search_s + soft["train_seconds"]
            per_step = soft["train_seconds"] / args.steps
            steps_alone = max(args.steps, round(total / per_step))
            points, out = train_curve(fresh(), data, data[4], "soft", "auto", seed, args,
                                      points_at, steps=steps_alone, budget=total)  # fmt: skip
            last = kept_at(soft["points"], args.steps)
            alone = kept_at(points, 10**9)
            equal.append({"task": task_name, "seed": seed, "seconds": round(total, 1),
                          "search_tune": last["test"], "alone": alone["test"],
                          "alone_steps": out["steps"], "equal_seconds": True})  # fmt: skip
            print(json.dumps(equal[-1]), file=sys.stderr, flush=True)
    report(runs, equal, points_at)
    if args.output:
        Path(args.output).write_text(json.dumps({"runs": runs, "equal_seconds": equal},
                                                indent=1) + "\n", encoding="utf-8")  # fmt: skip
    if args.plot:
        plot(runs, points_at, args.plot)


def report(runs: list[dict], equal: list[dict], points_at: list[int]) -> None:
    """Mean over seeds of the kept checkpoint's test metric at each point (dev at 0 and end)."""
    head = " | ".join(f"test@{s}" for s in points_at)
    print(f"| task | method | start | dev@0 | {head} | dev@{points_at[-1]} | search dev |")
    print("|---|---|---|---|" + "---|" * len(points_at) + "---|---|")
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["task"], r["method"], r["start"]), []).append(r)
    for (task, method, start), rs in groups.items():
        at = {s: [kept_at(r["points"], s) for r in rs] for s in points_at}
        tests = " | ".join(f"{np.mean([p['test'] for p in at[s]]):.3f}" for s in points_at)
        dev0 = np.mean([p["dev"] for p in at[points_at[0]]])
        dev_end = np.mean([p["dev"] for p in at[points_at[-1]]])
        search_dev = np.mean([r["search_dev"] for r in rs])
        print(f"| {task} | {method} | {start} | {dev0:.3f} | {tests} | {dev_end:.3f} | "
              f"{search_dev:.3f} |")  # fmt: skip
    if equal:
        print("\n| task | seconds | search + tune (soft, found) test | tune alone (soft) test | "
              "steps alone |")  # fmt: skip
        print("|---|---|---|---|---|")
        by_task: dict = {}
        for e in equal:
            by_task.setdefault(e["task"], []).append(e)
        for task, es in by_task.items():
            print(f"| {task} | {np.mean([e['seconds'] for e in es]):.1f} | "
                  f"{np.mean([e['search_tune'] for e in es]):.3f} | "
                  f"{np.mean([e['alone'] for e in es]):.3f} | "
                  f"{np.mean([e['alone_steps'] for e in es]):.0f} |")  # fmt: skip


def plot(runs: list[dict], points_at: list[int], output: str) -> None:
    """Mean test metric of the kept checkpoint against steps (the relations' P@1 where there
    are relations), one line per method:start (drawn by ``plotting.plot_curves``, what ``autoprompt plot`` draws with)."""
    from autoprompt_py.plotting import RunCurve, plot_curves

    metric = "p@1" if any(r["metric"] == "p@1" for r in runs) else runs[0]["metric"]
    groups: dict = {}
    for r in runs:  # one metric: the relations' P@1 where there are relations
        if r["metric"] == metric:
            groups.setdefault((r["method"], r["start"]), []).append(r)
    curves = []
    for (method, start), rs in groups.items():
        pts = [(0.0, float(s), float(np.mean([kept_at(r["points"], s)["test"] for r in rs])))
               for s in points_at]  # fmt: skip
        tasks = ",".join(dict.fromkeys(r["task"] for r in rs))
        curves.append(RunCurve(source=f"{method}:{start}", points=pts,
                               metric=f"test {rs[0]['metric']} (mean over {tasks})",
                               method=f"{method}:{start}", settings=method))  # fmt: skip
    # a colour per method, a line style per start; the axes say what these points are
    figure = plot_curves(curves, None, x="passes", title="the kept checkpoint's test metric")
    ax = figure.axes[0]
    ax.set_xlabel("training steps")
    ax.set_ylabel(curves[0].metric)
    figure.savefig(output, dpi=150)


if __name__ == "__main__":
    main()
