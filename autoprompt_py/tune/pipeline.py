"""From data to a trained prompt in one run: search the template's ``[T]`` slots
(``search.run_search``, unchanged), write the search result beside the tuned folder, and tune
from it (``tune.run.tune``, started from the found trigger).

The search reads the same training and dev examples as the training run, so the training
curve's step 0 (``soft``: the found trigger's own embeddings) is the search result's dev
metric, and (``--select auto`` keeps the best on dev for vectors started from a found
prompt: ``select.py``) the kept checkpoint is never below it on dev.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from autoprompt_py.errors import AutopromptError, shown
from autoprompt_py.tune.config import TuneConfig
from autoprompt_py.tune.folder import (
    check_output_folder,
    checkpoint_path,
    search_checkpoint_path,
    search_result_path,
)
from autoprompt_py.tune.task import TuneTask

# search's options that the training run's own options decide (or that mean nothing here)
NOT_SEARCH_OPTIONS = ("time_budget", "iters", "method", "seed", "dtype")


def check_searchable(task: TuneTask) -> None:
    """``--search-budget`` needs open trigger slots to search: refused before the model loads."""
    if task.template.num_triggers == 0 or task.open_triggers == 0:
        what = "no trigger slot [T]" if task.template.num_triggers == 0 else "no open [T] slot"
        raise AutopromptError(
            f"--search-budget: the template {shown(task.template.source)} has {what} to search; "
            "add [T] markers (e.g. '{sentence} [T] [T] [T] [P] .'), or leave out "
            "--search-budget to tune the template as it is"
        )


def parse_search_options(pairs: list[str] | tuple[str, ...]) -> dict:
    """``--search-option KEY=VALUE`` pairs → SearchConfig fields, typed as the field's default
    (``topk=64``, ``objective=vocab``, ``calibrate=true``)."""
    from autoprompt_py.search.config import SearchConfig

    fields = {f.name: f for f in dataclasses.fields(SearchConfig)}
    out: dict = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in fields or key in NOT_SEARCH_OPTIONS:
            allowed = ", ".join(k for k in fields if k not in NOT_SEARCH_OPTIONS)
            raise AutopromptError(
                f"--search-option {shown(pair)}: give KEY=VALUE with KEY one of {allowed} "
                "(the budget, iterations, method and seed have their own --search-* options)"
            )
        default = fields[key].default
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                out[key] = value.lower() in ("true", "1", "yes")
            elif isinstance(default, int) or key in ("accumulation_steps", "max_rows",
                                                     "patience", "max_forward_passes"):  # fmt: skip
                out[key] = value if value == "auto" else int(value)
            elif isinstance(default, float):
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError:
            raise AutopromptError(
                f"--search-option {shown(pair)}: {value!r} is not a value of {key}"
            ) from None
    return out


def make_search_config(
    config: TuneConfig,
    budget: float,
    iters: int | None = None,
    method: str = "gcg",
    options: dict | None = None,
):
    """The search's settings: ``budget`` seconds (``iters`` per restart at most, default no
    limit but the budget), the training run's seed; the rest as ``search`` defaults them."""
    from autoprompt_py.search.config import SearchConfig

    if not budget > 0:
        raise AutopromptError(f"--search-budget {budget}: must be seconds > 0")
    return SearchConfig(
        method=method,
        iters=iters if iters is not None else 1_000_000,
        time_budget=budget,
        seed=config.seed,
        **(options or {}),
    )


def search_then_tune(
    lm,
    task: TuneTask,
    config: TuneConfig,
    search_config,
    output: str | Path | None = None,
    *,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    record: dict | None = None,
    filters=None,
):
    """Search ``task.template``'s slots on the task's own train and dev examples, write the
    result to ``<output>.search.json``, then ``tune`` from it. Returns the ``TuneOutcome``;
    its result records both stages and their seconds under ``stages``.

    Each stage keeps its work on a stop: the search checkpoints every iteration
    (``<output>.search.json.ckpt``) and writes its best trigger so far, marked interrupted,
    before the stop is raised again. ``resume`` continues the stage the run was in: an
    interrupted search from its checkpoint, a finished one is reused and training resumes from
    ``<output>.ckpt`` (or starts, if the stop came before its first checkpoint)."""
    from autoprompt_py.resources import template_from_result
    from autoprompt_py.results import read_json, refuse_overwrite
    from autoprompt_py.search import SearchTask, run_search
    from autoprompt_py.tune.found import FoundStart
    from autoprompt_py.tune.run import tune

    check_searchable(task)
    search_config.check_slots(task.template.num_triggers)
    target = None
    if output is not None:  # checked before any work; rank 0 decides under torchrun
        check_output_folder(output, force=force, resume=resume, searching=True)
        target = search_result_path(output)
        refuse_overwrite(target, "--output", force or resume, resumable=True)
    started = time.perf_counter()
    done = None
    if target is not None and resume and target.is_file():
        done = read_json(target, "search result")
        done = None if done.get("stopped") == "interrupted" else done
    if done is not None:
        result, searched = done, False
    else:
        stask = SearchTask(
            task.template, task.train, task.dev, task.verbalizer, task.aggregation,
            task.relation, task.vocab, identity=dict(task.identity), sources=dict(task.sources),
        )  # fmt: skip
        checkpoint = search_checkpoint_path(output) if target is not None else None
        outcome = run_search(
            lm, stask, search_config, filters=filters, output=target, checkpoint=checkpoint,
            resume=resume and checkpoint is not None and checkpoint.exists(),
            progress=progress, record={"stage": "search", **(record or {})},
        )  # fmt: skip
        if outcome.stop is not None:
            raise outcome.stop
        result, searched = outcome.result, True
    search_seconds = time.perf_counter() - started
    source = str(target) if target is not None else "search result"
    template = template_from_result(result, source)
    ids = tuple(int(i) for i in template.trigger_ids)
    start = FoundStart(source, "search", ids, result.get("model"))
    identity = {**task.identity, "template": template.render(), "trigger_ids": list(ids)}
    from_found = dataclasses.replace(task, template=template, found=start, identity=identity)
    metric = result["metric"]
    stages = {
        "search": {
            "file": str(target) if target is not None else None,
            "seconds": round(search_seconds, 3),
            "search_seconds": result.get("cost", {}).get("seconds"),
            "reused": not searched,
            "prompt": result["prompt"],
            "iterations": result.get("iterations"),
            "dev": {metric: result["dev"][metric]},
        }
    }
    # training resumes only from its own checkpoint; a stop during the search left none
    resume = resume and output is not None and checkpoint_path(output).exists()
    return tune(
        lm, from_found, config, output, force=force, resume=resume, progress=progress, record=record,
        stages=stages,
    )  # fmt: skip
