"""The record of a search: its identity (what a checkpoint must match), the warnings a user
must read, and the result file's content."""

from __future__ import annotations

import hashlib
import logging

from autoprompt_py.prompt import model_record
from autoprompt_py.resources import RESULT_KIND
from autoprompt_py.results import provenance
from autoprompt_py.search.engine import TriggerSearch
from autoprompt_py.search.scorer import Cost
from autoprompt_py.search.state import SearchState
from autoprompt_py.several import models_record

log = logging.getLogger("autoprompt_py.search")
# the result's warnings are logged for a notebook's logging setup, and never printed by
# Python's last-resort handler: the CLI prints each once as "warning: ..."
log.addHandler(logging.NullHandler())


def identity(search: TriggerSearch) -> dict:
    """What a checkpoint must match to be resumed: model, data, task and key settings."""
    models = [model_identity(lm) for lm in search.lms]
    return {
        "model": models[0],
        **({"models": models} if len(models) > 1 else {}),
        **search.task.identity,
        "filters": search.filters.describe(),
        "config": search.config.identity(),
    }


def model_identity(lm) -> dict:
    """A model as a checkpoint tells it apart: its sizes and a hash of a sample of its
    embedding rows."""
    emb = lm.embeddings.detach()
    stride = max(1, len(emb) // 512)  # a sample of rows tells models apart cheaply
    sample = emb[::stride].float().cpu().contiguous().numpy().tobytes()
    return {
        "vocab_size": lm.vocab_size,
        "embedding_size": int(emb.shape[1]),
        "weights_sha256": hashlib.sha256(sample).hexdigest(),
    }


def warnings(search: TriggerSearch, state: SearchState, interrupted: bool = False) -> list[str]:
    """What a user must know about the result (``run_search`` warns each once)."""
    out = []
    unreplaced = search.special_slots(state.best_trigger)
    if unreplaced:
        out.append(
            f"trigger slot(s) {', '.join(map(str, unreplaced))} still hold a special token "
            "(no iteration replaced them: budget or iterations too small, or no allowed "
            "candidate); the result is the last trigger evaluated"
        )
    elif state.iteration == 0 and interrupted:
        out.append(
            "interrupted before the first iteration ended; the result is the initial trigger"
        )
    elif state.iteration == 0 and state.stopped == "budget":
        out.append("the budget allowed no iteration; the result is the initial trigger")
    for w in out:
        log.warning(w)
    return out


def kept(search: TriggerSearch, state: SearchState) -> dict:
    """``kept`` (with ``--keep`` N > 1): the N best distinct triggers on dev, best first, each
    with its filled template and dev metrics; ``score --template RESULT`` scores them all."""
    if search.config.keep <= 1:
        return {}
    template = search.task.template
    out = []
    for ids, _, _, dev in state.kept:
        words = search.words(ids)
        prompt = template.with_triggers(ids, words).render("token")
        out.append({"trigger": search.trigger_record(ids), "prompt": prompt, "dev": dev})
    return {"kept": out}


def result(
    search: TriggerSearch,
    state: SearchState,
    config: dict,
    interrupted: bool = False,
    elapsed: float | None = None,
    train: bool = True,
    extra: dict | None = None,
) -> dict:
    """The result file's content for the best trigger so far."""
    task = search.task
    best = state.best_trigger
    words = search.words(best)
    prompt = task.template.with_triggers(best, words).render("token")
    stopped = "interrupted" if interrupted else (state.stopped or "completed")
    # before the counts: the train metrics encode the rows of their sample
    train_metrics = search.train_metrics(best) if train else None
    counts = search.encoded.split_counts()
    data = {
        split: {"source": task.sources.get(split), **counts[split]} for split in ("train", "dev")
    }
    if "vocab" in task.sources:
        data["vocab"] = task.sources["vocab"]
    restarts = list(state.restarts)
    if len(restarts) <= state.restart:  # interrupted inside a restart
        restarts.append(search.restart_record(state))
    cost = {"seconds": round(state.seconds, 3), **Cost(**state.cost).record()}
    return {
        "kind": RESULT_KIND,
        "template": task.template.source,
        "chat": None if task.template.chat is None else task.template.chat.record(),
        "prompt": prompt,
        "trigger": search.trigger_record(best),
        "mode": task.mode,
        "relation": task.relation,
        "verbalizer": task.verbalizer.words if task.verbalizer else None,
        "aggregation": task.aggregation if task.verbalizer else None,
        "model": model_record(search.lm),
        **models_record(search.lms),
        "method": search.config.method,
        "metric": search.objective.metric,
        "train": train_metrics,
        "dev": state.best_dev_metrics,
        "initial": state.initial,
        "best_iteration": state.best_iteration,
        "iterations": state.iteration,
        "stopped": stopped,
        "elapsed_s": None if elapsed is None else round(elapsed, 3),
        "cost": cost,
        "budget_overshoot": search.budget.overshoot(state),
        "curve": state.curve,
        "restarts": restarts,
        "unreplaced_slots": search.special_slots(best),
        "pseudo_perplexity": search.fluency.perplexity(best),
        "warnings": warnings(search, state, interrupted),
        **kept(search, state),
        **(extra or {}),
        "data": data,
        "filters": search.filters.describe(),
        "history": state.history,
        **provenance("search", config),
    }
