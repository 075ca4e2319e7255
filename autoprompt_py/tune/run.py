"""A whole ``tune`` run: build the part, train (``select.py``'s rule decides the weights it
ends with), score dev/test, project soft vectors back to tokens, write the folder (also on
Ctrl-C: what the rule keeps so far)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from autoprompt_py.errors import AutopromptError
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.prompt import model_record
from autoprompt_py.results import from_main, provenance
from autoprompt_py.template import chat_settings
from autoprompt_py.tune.config import SMALL_DEV, TuneConfig
from autoprompt_py.tune.folder import (
    TUNE_KIND,
    check_output_folder,
    checkpoint_path,
    write_folder,
)
from autoprompt_py.tune.loop import Trainer, evaluate, evaluate_with_loss
from autoprompt_py.tune.methods import build_part, count_parameters
from autoprompt_py.tune.objective import Objective
from autoprompt_py.tune.task import TuneTask


def best_point(state) -> dict:
    """The curve's entry of the kept checkpoint."""
    return next(p for p in reversed(state.curve) if p["step"] == state.best_step)


@dataclass
class TuneOutcome:
    result: dict
    part: object
    interrupted: bool = False
    interruption: KeyboardInterrupt | None = None  # to re-raise once the folder is written


def make_objective(lm: LanguageModel, task: TuneTask, config: TuneConfig) -> Objective:
    verbalizer = (
        task.verbalizer.resolve(lm.tokenizer, task.aggregation, task.template.answer_space)
        if task.verbalizer is not None
        else None
    )
    return Objective(task.template, lm, verbalizer, task.vocab, head=config.method == "head")


def nearest_tokens(lm: LanguageModel, vectors: torch.Tensor, k: int = 5) -> list[list[int]]:
    """Per vector, the ids of the k vocabulary tokens nearest by cosine."""
    emb = torch.nn.functional.normalize(lm.embeddings.detach().float(), dim=1)
    v = torch.nn.functional.normalize(vectors.detach().float().to(emb.device), dim=1)
    return (v @ emb.T).topk(k, dim=1).indices.tolist()


def tune(
    lm: LanguageModel,
    task: TuneTask,
    config: TuneConfig | None = None,
    output: str | Path | None = None,
    *,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    record: dict | None = None,
    stages: dict | None = None,
    watch=None,
) -> TuneOutcome:
    """Train ``config.method`` on ``task``; the weights ``config.select`` keeps (``select.py``)
    are scored on dev and test, and written.

    The model is trained in place (``full``, ``head`` aside; PEFT methods add their adapter
    to ``lm.model``): load a fresh one for another run.
    ``output`` is a folder (``folder.py``); its checkpoint is ``<output>.ckpt``, which
    ``resume`` continues. Ctrl-C (KeyboardInterrupt) stops the run with the best so far.
    ``stages``: the search that found the template (``pipeline.py``), recorded beside.
    ``watch(step, part)``: called after each dev evaluation of the (final) training run.
    """
    started = time.perf_counter()
    config = config or TuneConfig()
    config.check_task(task.template.num_triggers, task.open_triggers, task.template.is_relational)
    from autoprompt_py import distributed
    from autoprompt_py.tune.found import check_found_model, check_init, resolve_init
    from autoprompt_py.tune.parallel import Parallel, layout
    from autoprompt_py.tune.select import cross_validate, resolve_rule

    check_init(config, task)
    check_found_model(task.found, lm)
    if config.method == "head" and task.template.chat is not None:
        raise AutopromptError(
            "--chat: --method head classifies the input fields without the template, so "
            "there is no chat turn to read; drop --chat, or use another --method"
        )

    layout(config, distributed.world_size())  # the global batch splits over the processes
    target = None
    if output is not None:  # rank 0 alone looks at the files, and tells the others
        target = check_output_folder(output, force=force, resume=resume)
    objective = make_objective(lm, task, config)
    part = build_part(lm, task, config, objective)
    train = objective.encode(task.train, part.template)
    dev = objective.encode(task.dev, part.template)
    identity = {**task.identity, "model": lm.name, "config": config.identity()}
    checkpoint = checkpoint_path(target) if target is not None else None
    rule, why = resolve_rule(config, len(dev), resolve_init(config, task))
    try:
        parallel = Parallel(part, config, lm.device)  # before any optimizer (FSDP)
        final, cv = config, None
        if rule == "cv":
            cv = cross_validate(part, objective, task, config, lm.device, identity, checkpoint,
                                resume, progress, parallel)  # fmt: skip
            final = dataclasses.replace(config, steps=cv["chosen"], epochs=None)
        again = resume and (cv is None or from_main(lambda: (checkpoint / "state.json").is_file()))
        trainer = Trainer(part, objective, train, dev, final, lm.device, identity, checkpoint,
                          rule="last" if rule == "cv" else rule, keep=config.average_last,
                          watch=watch, parallel=parallel)  # fmt: skip
        state = trainer.run(resume=again, progress=progress)
    except Exception:  # a full disk at the first checkpoint: no empty folder left behind
        if checkpoint is not None and checkpoint.is_dir() and not any(checkpoint.iterdir()):
            checkpoint.rmdir()
        raise
    metric = objective.metric
    kept = {metric: state.best_dev, "dev_loss": best_point(state).get("dev_loss")}
    if rule != "best-dev":  # the kept weights' own dev figures (average: scored here)
        at = best_point(state)
        kept = {metric: at["dev"], "dev_loss": at.get("dev_loss")}
        if rule == "average" and len(state.kept_steps) > 1:
            value, _, loss = evaluate_with_loss(part, objective, dev, config.eval_batch_size,
                                                lm.device)  # fmt: skip
            kept = {metric: value, "dev_loss": loss}
    test = None
    if task.test is not None and not trainer.interrupted:
        test_data = objective.encode(task.test, part.template)
        value, _ = evaluate(part, objective, test_data, config.eval_batch_size, lm.device)
        test = {metric: value, "n": len(test_data), "skipped": len(task.test) - len(test_data)}
    trainable, total = count_parameters(part)
    result = {
        "kind": TUNE_KIND,
        **provenance(
            "tune",
            {
                **dataclasses.asdict(config),
                "lr": config.learning_rate,
                **chat_settings(task.template.chat),
                **(record or {}),
            },
        ),
        "method": config.method,
        "mode": task.mode,
        "relation": task.relation,
        "model": model_record(lm),
        "template": task.template.render(),
        "chat": None if task.template.chat is None else task.template.chat.record(),
        "trigger_ids": task.template.trigger_ids,
        "trigger_tokens": [p.token for p in task.template.parts if hasattr(p, "token_id")],
        "verbalizer": task.verbalizer.words if task.verbalizer is not None else None,
        "aggregation": task.aggregation if task.verbalizer is not None else None,
        "data": {
            **task.sources,
            "shots": config.shots,
            "dev_shots": task.identity.get("dev_shots", config.dev_shots),
            "data_seed": config.data_seed,
            "train_rows": [e.source for e in task.train],
            "n_train": len(train),
            "n_dev": len(dev),
            "skipped_train": len(task.train) - len(train),
            "skipped_dev": len(task.dev) - len(dev),
        },
        "metric": metric,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "steps": state.step,
        "total_steps": trainer.total,
        "best_step": state.best_step,
        "select": {
            "rule": rule,
            "asked": config.select,
            "why": why,
            "kept_steps": state.kept_steps if rule != "best-dev" else [state.best_step],
            "cv": cv,
        },  # fmt: skip
        "init": resolve_init(config, task),
        # "seed": the key result.json has always had for the found start
        "seed": task.found.record() if task.found is not None else None,
        "start": {metric: state.start_dev, "dev_loss": state.curve[0].get("dev_loss")},
        "dev": {
            metric: kept[metric],
            "n": len(dev),
            "dev_loss": kept["dev_loss"],
            # the metric moves in steps of 1/n: on a small dev set a checkpoint is chosen
            # among few distinct values, and ties are common
            "step_size": 1 / len(dev),
            "small": len(dev) < SMALL_DEV,
        },
        "test": test,
        "curve": state.curve,
        "seconds": round(time.perf_counter() - started, 3),
        "train_seconds": round(state.seconds, 3),
        "interrupted": trainer.interrupted,
    }
    if stages is not None:  # search then tune (pipeline.py): both stages and their seconds
        result["stages"] = {**stages, "tune": {"seconds": result["seconds"]}}
        result["seconds"] = round(result["seconds"] + stages["search"]["seconds"], 3)
    if config.method in ("soft", "prompt"):
        result["projection"] = project(lm, task, part, objective, dev, config)
    if target is not None:
        with trainer.parallel.whole():  # FSDP: full weights for rank 0 to write
            write_folder(target, True, part, result)
    return TuneOutcome(result, part, trainer.interrupted, trainer.interruption)


def project(lm, task, part, objective, dev, config) -> dict:
    """Back to discrete: each trained vector's nearest tokens (cosine) and the dev metric with
    the nearest token's embedding in its place (soft: in each slot; prompt: each virtual
    token)."""
    if config.method == "soft":
        weight = part.vectors
    else:  # PEFT prompt tuning: the virtual tokens are the rows of its embedding
        weight = part.peft_model.prompt_encoder["default"].embedding.weight
    near = nearest_tokens(lm, weight)
    ids = [n[0] for n in near]
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.copy_(lm.embeddings.detach()[torch.tensor(ids, device=lm.device)].float())
    value, _ = evaluate(part, objective, dev, config.eval_batch_size, lm.device)
    with torch.no_grad():
        weight.copy_(saved)
    tokens = lm.tokenizer.convert_ids_to_tokens(ids)
    if config.method == "soft":
        prompt = task.template.with_triggers(ids, tokens).render(triggers="token")
    else:
        prompt = " ".join(tokens) + " | " + task.template.render()
    return {
        "nearest": [lm.tokenizer.convert_ids_to_tokens(n) for n in near],
        "prompt": prompt,
        "trigger_ids": ids,
        "dev": {objective.metric: value},
    }
