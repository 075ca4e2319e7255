"""Which weights a run ends with: the selection rule (``--select``).

``best-dev`` keeps the checkpoint best on dev (a tie keeps the later one); ``last`` the
final step's weights (a fixed schedule, as PET trains); ``average`` the element-wise mean of
the trainable weights of the last ``average_last`` evaluated checkpoints; ``cv`` chooses the
number of steps by k-fold cross-validation on the training examples (each fold trains on the
others for the run's steps and is scored on its own rows at every evaluation; the step count
with the best mean held-out metric wins, ties to the lower held-out loss, then to more steps),
then trains on all of them for that many steps and keeps the last. Dev is not consulted by
``last``, ``average`` and ``cv``: it is still scored, for the curve and the record.

``auto`` resolves by the dev set: with ``SMALL_DEV`` examples or more, ``best-dev``; below,
``SMALL_DEV_RULE``, the rule that won on held-out data (docs/tuning.md). Vectors that start
from a found prompt keep ``best-dev``: the run then never ends below the found prompt on dev.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from autoprompt_py.errors import AutopromptError
from autoprompt_py.tune.config import SMALL_DEV, SMALL_DEV_RULE, VECTOR_METHODS, TuneConfig


def resolve_rule(config: TuneConfig, n_dev: int, init: str) -> tuple[str, str]:
    """The rule a run uses, and why (``init``: the resolved ``--init``)."""
    if config.select != "auto":
        return config.select, "asked (--select)"
    if n_dev >= SMALL_DEV:
        return "best-dev", f"auto: dev has {n_dev} ≥ {SMALL_DEV} examples"
    if config.method in VECTOR_METHODS and init == "found":
        return "best-dev", "auto: the vectors start from a found prompt, kept unless beaten on dev"
    rule = SMALL_DEV_RULE
    if rule == "cv" and config.time_budget is not None:
        rule = "last"  # cv needs a number of steps to choose among
    return rule, f"auto: dev has {n_dev} < {SMALL_DEV} examples"


def folds(labels: list, k: int, seed: int) -> list[list[int]]:
    """``k`` folds of the row indices: each label's rows (``None``: one group) shuffled with
    ``seed`` and dealt round-robin, continuing from label to label, so the folds are as equal
    in size and in classes as the rows allow."""
    groups: dict = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    out: list[list[int]] = [[] for _ in range(k)]
    j = 0
    for label in sorted(groups, key=str):
        for i in np.random.default_rng([seed, k, j]).permutation(groups[label]):
            out[j % k].append(int(i))
            j += 1
    return [sorted(f) for f in out]


def choose_steps(curves: list[list[dict]]) -> dict:
    """The step count of the best mean held-out metric over the folds' curves (step 0 left
    out: training is what was asked for); ties to the lower mean held-out loss, then to more
    steps."""
    steps = [p["step"] for p in curves[0] if p["step"] > 0]
    at = [{p["step"]: p for p in c} for c in curves]
    metric = [float(np.mean([c[s]["dev"] for c in at])) for s in steps]
    loss = [float(np.mean([c[s]["dev_loss"] for c in at])) for s in steps]
    best = max(range(len(steps)), key=lambda i: (round(metric[i], 12), -loss[i], steps[i]))
    return {"steps": steps, "metric": metric, "loss": loss, "chosen": steps[best]}


def _look(where: Path | None, identity: dict) -> tuple[bool, list | None]:
    """Whether a fold's checkpoint is there, and its curve when it is this run's, finished."""
    from autoprompt_py.results import read_json

    if where is None or not (where / "state.json").is_file():
        return False, None
    record = read_json(where / "state.json", "checkpoint")
    state = record.get("state", {}) if isinstance(record, dict) else {}
    same = record.get("identity") == json.loads(json.dumps(identity))
    return True, state.get("curve") if same and state.get("finished") else None


def cross_validate(
    part, objective, task, config: TuneConfig, device, identity: dict,
    checkpoint: Path | None, resume: bool, progress: bool, parallel,
) -> dict:  # fmt: skip
    """Train each fold from the part's present weights, which it leaves as it found them;
    the record of the folds and the chosen number of steps. Fold ``i`` checkpoints to
    ``<checkpoint>/fold-i``: a resumed run skips finished folds and continues a cut one.
    A stop inside a fold is raised (nothing is trained on all examples yet)."""
    from autoprompt_py.results import from_main
    from autoprompt_py.tune.loop import Trainer

    if len(task.train) < config.cv_folds:
        raise AutopromptError(
            f"--select cv: {len(task.train)} training examples cannot make "
            f"{config.cv_folds} folds; use fewer --cv-folds, or another --select"
        )

    start = parallel.state()
    labels = [e.label if task.verbalizer is not None else None for e in task.train]
    parts = folds(labels, config.cv_folds, config.seed)
    # every fold runs the steps of the whole training set, so they share their evaluations
    fixed = dataclasses.replace(config, steps=config.total_steps(len(task.train)), epochs=None)
    curves = []
    for i, held in enumerate(parts):
        mine = set(held)
        rest = [e for j, e in enumerate(task.train) if j not in mine]
        train = objective.encode(rest, part.template)
        scored = objective.encode([task.train[j] for j in held], part.template)
        where = checkpoint / f"fold-{i}" if checkpoint is not None else None
        if len(train) == 0 or len(scored) == 0:
            raise AutopromptError(
                f"--select cv: fold {i + 1} of {config.cv_folds} has no usable row to "
                f"{'train on' if len(train) == 0 else 'score'}; use fewer --cv-folds or more "
                "training examples"
            )
        fold_identity = {**identity, "fold": i}
        saved, done = from_main(lambda w=where, f=fold_identity: _look(w, f))
        if resume and done is not None:  # a finished fold: its curve is all that is needed
            curves.append(done)
            continue
        again = resume and (i == 0 or saved)
        parallel.load_state(start)
        trainer = Trainer(part, objective, train, scored, fixed, device, fold_identity,
                          where, rule="last", parallel=parallel)  # fmt: skip
        state = trainer.run(resume=again, progress=progress)
        if trainer.interrupted:
            raise trainer.interruption or KeyboardInterrupt
        curves.append(state.curve)
    parallel.load_state(start)
    return {"folds": config.cv_folds, "fold_sizes": [len(f) for f in parts],
            **choose_steps(curves)}  # fmt: skip
