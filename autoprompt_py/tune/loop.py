"""The training loop: AdamW with warmup and linear decay, gradient clipping, dev every
``eval_every`` steps, the weights the selection rule keeps (the best on dev, the last, or the
mean of the last few evaluated checkpoints: ``select.py``), a time budget, a tqdm bar,
Ctrl-C / SIGTERM keep what the rule kept so far, and a checkpoint (plain JSON beside the
tensors) that a resumed run continues exactly: the batches are a function of (seed, step),
and the optimizer, schedule and torch random state (dropout) are saved with the weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from autoprompt_py import distributed
from autoprompt_py.errors import AutopromptError, raise_pending_stop
from autoprompt_py.results import atomic_write, from_main, read_json, write_json
from autoprompt_py.textfile import load_with
from autoprompt_py.tune.config import TuneConfig
from autoprompt_py.tune.methods import TrainablePart
from autoprompt_py.tune.objective import Encoded, Objective
from autoprompt_py.tune.parallel import Parallel, eval_share, gather_objects, inference

CHECKPOINT_KIND = "autoprompt-tune-checkpoint"
TENSORS_LAYOUT = "full-fqn"  # parallel.py's state dicts: read at any world size, sharded or not


@dataclass
class TrainState:
    """Where a run stands; plain JSON (the tensors live beside it)."""

    step: int = 0
    seconds: float = 0.0
    curve: list[dict] = field(default_factory=list)  # {step, seconds, train_loss, dev, dev_loss}
    best_step: int = 0  # the kept checkpoint's step (average: the last of those averaged)
    best_dev: float | None = None  # best-dev: the best dev metric so far
    kept_steps: list[int] = field(default_factory=list)  # last, average: the steps kept
    start_dev: float | None = None
    loss_sum: float = 0.0
    loss_count: int = 0
    finished: bool = False


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The rows of a step: epoch after epoch of seeded permutations, cut into batches."""
    out: list[int] = []
    start = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out += perm[offset : offset + batch_size - len(out)].tolist()
    return out


def evaluate(
    part: TrainablePart, objective: Objective, data: Encoded, batch_size: int, device
) -> tuple[float, np.ndarray]:
    """The metric on ``data`` (accuracy, or P@1), and per row 1 for a hit."""
    metric, hits, _ = evaluate_with_loss(part, objective, data, batch_size, device)
    return metric, hits


def evaluate_with_loss(
    part: TrainablePart, objective: Objective, data: Encoded, batch_size: int, device
) -> tuple[float, np.ndarray, float]:
    """``evaluate``, and the mean loss on ``data`` (the training loss, without dropout)."""
    hits = torch.zeros(len(data), dtype=torch.float64)
    loss = torch.zeros(1, dtype=torch.float64)
    part.train_mode(False)
    with inference(part):
        # under torchrun each rank scores every world-th batch
        for rows, keep in eval_share(data.eval_orders(batch_size), part):
            scores = objective.scores(part.logits(data.batch(rows, device)))
            if keep:
                gold = data.gold[rows].to(device)
                hits[rows] = torch.from_numpy(objective.hits(scores, gold))
                loss += float(objective.loss(scores, gold)) * len(rows)
    distributed.all_reduce_(hits)
    distributed.all_reduce_(loss)
    return float(hits.mean()), hits.numpy(), float(loss) / max(1, len(data))


def make_optimizer(part: TrainablePart, config: TuneConfig, total: int):
    params = part.trainable()
    decay = [p for p in params if p.ndim >= 2]  # no decay on biases and norms (as HF trains)
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=config.learning_rate)
    warm = int(config.warmup * total)

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return max(0.0, (total - s) / max(1, total - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of trainable state dicts (summed in float64, cast back)."""
    if not states or not states[0]:
        return {}  # under torchrun the ranks but 0 hold no copies
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            total = sum(s[k].to(torch.float64) for s in states)
            out[k] = (total / len(states)).to(v.dtype)
        else:
            out[k] = states[-1][k].clone()
    return out


class Trainer:
    """One run: ``run()`` trains from the start or a checkpoint. ``rule`` decides the weights
    it ends with: ``best-dev`` keeps the best trainable tensors on dev in ``best``; ``last``
    and ``average`` keep the last ``keep`` evaluated checkpoints in ``kept`` (their mean is
    loaded: for ``last``, the one checkpoint). ``watch(step, part)`` is called after each
    evaluation (scripts score other splits there); ``parallel`` is shared between runs on one
    part (``select.py``'s folds)."""

    def __init__(
        self,
        part: TrainablePart,
        objective: Objective,
        train: Encoded,
        dev: Encoded,
        config: TuneConfig,
        device: torch.device,
        identity: dict,
        checkpoint: Path | None = None,
        reduction: str | None = None,  # parallel.MODES; None: by the launch and config.shard
        rule: str = "best-dev",
        keep: int = 1,
        watch: Callable | None = None,
        parallel: Parallel | None = None,
    ) -> None:
        self.part, self.objective, self.train, self.dev = part, objective, train, dev
        self.config, self.device = config, device
        self.total = config.total_steps(len(train))
        self.identity = identity
        self.checkpoint = checkpoint
        self.rule, self.keep, self.watch = rule, keep if rule == "average" else 1, watch
        # before the optimizer (FSDP)
        self.parallel = parallel or Parallel(part, config, device, reduction)
        self.optimizer, self.schedule = make_optimizer(part, config, self.total)
        # no gradient left by an earlier run on the part (select.py's folds): the checkpoint
        # writer initializes the optimizer's state only where no parameter holds one, so a
        # run goes as it would in a fresh process (and as its resume does)
        self.optimizer.zero_grad(set_to_none=True)
        self.state = TrainState()
        self.best: dict[str, torch.Tensor] | None = None
        self.kept: list[dict[str, torch.Tensor]] = []
        self.interrupted = False
        self.interruption: KeyboardInterrupt | None = None

    # -- checkpoint ------------------------------------------------------------------------

    def save(self) -> None:
        if self.checkpoint is None:
            return
        if distributed.is_main():
            self.checkpoint.mkdir(parents=True, exist_ok=True)
        cuda = torch.cuda.get_rng_state() if self.device.type == "cuda" else None
        tensors = {
            "layout": TENSORS_LAYOUT,
            "step": self.state.step,
            "current": self.parallel.state(),  # every rank takes part: rank 0 gets them
            "best": self.best,
            "kept": self.kept,
            "optimizer": self.parallel.optimizer_state(self.optimizer),
            "schedule": self.schedule.state_dict(),
            "rng": gather_objects((torch.get_rng_state(), cuda)),  # per rank
        }
        record = {
            "kind": CHECKPOINT_KIND,
            "identity": self.identity,
            "state": dataclasses.asdict(self.state),
        }
        # the record rides in tensors.pt too: a stop between the two writes leaves a whole
        # checkpoint (tensors.pt's), state.json one step behind
        tensors["record"] = record
        atomic_write(self.checkpoint / "tensors.pt", lambda tmp: torch.save(tensors, tmp))
        write_json(self.checkpoint / "state.json", record)

    def load(self) -> None:
        """Rank 0 reads and checks the checkpoint, and broadcasts what it found (an error
        too): the other ranks need not see the files."""
        held: dict = {}

        def read() -> tuple[dict, dict]:
            record, tensors = self._read()
            held.update(tensors)
            return record, {k: tensors[k] for k in ("schedule", "rng")}

        record, small = from_main(read)
        self.state = TrainState(**record["state"])
        self.parallel.load_state(held.get("current", {}))
        self.best = held.get("best", {}) if self.state.best_dev is not None else None
        self.kept = list(held.get("kept") or [{} for _ in self.state.kept_steps])
        self.parallel.load_optimizer_state(self.optimizer, held.get("optimizer", {}))
        self.schedule.load_state_dict(small["schedule"])
        rng, cuda = small["rng"][distributed.rank() if len(small["rng"]) > 1 else 0]
        torch.set_rng_state(rng)  # at another world size each rank continues from rank 0's
        if cuda is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda)

    def _read(self) -> tuple[dict, dict]:
        where = self.checkpoint
        if where is None or not (where / "state.json").exists():
            raise AutopromptError(
                f"--resume: no checkpoint at {where}; run without --resume to start"
            )
        record = read_json(where / "state.json", "checkpoint")
        if not isinstance(record, dict) or record.get("kind") != CHECKPOINT_KIND:
            raise AutopromptError(f"{where}/state.json: not a tune checkpoint")
        saved = json.loads(json.dumps(record.get("identity")))
        if saved != json.loads(json.dumps(self.identity)):
            diff = sorted(
                k for k in set(saved) | set(self.identity) if saved.get(k) != self.identity.get(k)
            )
            raise AutopromptError(
                f"--resume: the checkpoint {where} is of another run (differs in "
                f"{', '.join(map(str, diff[:5]))}); give the same options, or --force to start over"
            )
        tensors = load_with(
            where / "tensors.pt",
            lambda path: torch.load(path, weights_only=True),  # never a pickle's code
            "checkpoint file",
            "start over with --force",
        )
        if not isinstance(tensors, dict) or tensors.get("layout") != TENSORS_LAYOUT:
            raise AutopromptError(
                f"--resume: {where} was written by an earlier version of autoprompt; start "
                "over with --force"
            )
        return tensors["record"], tensors

    # -- the run ---------------------------------------------------------------------------

    def _eval(self, started: float, base: float) -> None:
        s = self.state
        dev, _, dev_loss = evaluate_with_loss(
            self.part, self.objective, self.dev, self.config.eval_batch_size, self.device
        )
        loss = s.loss_sum / s.loss_count if s.loss_count else None
        s.seconds = base + time.perf_counter() - started
        s.curve.append(
            {"step": s.step, "seconds": round(s.seconds, 3), "train_loss": loss, "dev": dev,
             "dev_loss": dev_loss}
        )  # fmt: skip
        s.loss_sum, s.loss_count = 0.0, 0
        if s.start_dev is None:
            s.start_dev = dev
        if self.rule == "best-dev":
            # a tie keeps the later checkpoint: training is what was asked for, and the start
            # stays only when it is strictly better on dev
            if s.best_dev is None or dev >= s.best_dev:
                s.best_dev, s.best_step = dev, s.step
                self.best = self.parallel.state()  # rank 0's copy ({} on the others)
        else:  # last, average: the last ``keep`` checkpoints, whatever dev says; the start
            # only until a trained one comes
            pairs = [(k, w) for k, w in zip(s.kept_steps, self.kept) if k > 0 or s.step == 0]
            pairs = [*pairs, (s.step, self.parallel.state())][-self.keep :]
            s.kept_steps, self.kept = [k for k, _ in pairs], [w for _, w in pairs]
            s.best_step = s.step
        if self.watch is not None:
            self.watch(s.step, self.part)

    def run(self, resume: bool = False, progress: bool = True) -> TrainState:
        torch.manual_seed(self.config.seed)
        if resume:
            self.load()
        s = self.state
        started, base = time.perf_counter(), s.seconds
        budget = self.config.time_budget
        bar = tqdm(
            total=self.total,
            initial=s.step,
            desc=f"tune {self.config.method}",
            unit="step",
            disable=not progress,
            leave=False,
        )
        try:
            if not s.curve:
                self._eval(started, base)
                self.save()
            while s.step < self.total:
                raise_pending_stop()  # a signal CPython dropped (errors.py)
                over = budget is not None and base + time.perf_counter() - started >= budget
                if distributed.agree_any(over):  # every rank stops at the same step
                    break
                loss = self.step()
                s.step += 1
                if math.isfinite(loss):
                    s.loss_sum += loss
                    s.loss_count += 1
                bar.update(1)
                if s.step % self.config.eval_every == 0 or s.step == self.total:
                    self._eval(started, base)
                    self.save()
                    bar.set_postfix(
                        loss=f"{s.curve[-1]['train_loss'] or 0:.3f}",
                        dev=f"{s.curve[-1]['dev']:.3f}",
                    )
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (errors.Terminated)
            self.interrupted, self.interruption = True, e
            # under torchrun the ranks stop at different places: no exchange is safe any
            # more; the last checkpoint is what a --resume continues
            if (self.best is None and not self.kept) or distributed.active():
                raise
        finally:
            bar.close()
        if not self.interrupted and s.curve[-1]["step"] != s.step:
            self._eval(started, base)  # stopped by the budget between two evaluations
        s.seconds = base + time.perf_counter() - started
        s.finished = not self.interrupted
        if not self.interrupted:  # an interrupt may fall mid-step: keep the last whole one
            self.save()
        if self.rule == "best-dev" and self.best is not None:
            self.parallel.load_state(self.best)
        elif self.rule != "best-dev" and self.kept:
            self.parallel.load_state(average_states(self.kept))
        return s

    def step(self) -> float:
        # the global batch's rows, whatever the processes and micro-batches (parallel.py)
        rows = batch_indices(
            len(self.train), self.config.step_batch, self.config.seed, self.state.step
        )
        self.part.train_mode(self.config.dropout)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.parallel.accumulate(rows, self._loss)
        if self.config.max_grad_norm is not None:
            self.parallel.clip(self.config.max_grad_norm)
        self.optimizer.step()
        self.schedule.step()
        return loss

    def _loss(self, rows: list[int]) -> torch.Tensor:
        """The mean loss of a micro-batch."""
        batches = self.train.batch(rows, self.device)
        gold = self.train.gold[rows].to(self.device)
        return self.objective.loss(self.objective.scores(self.parallel.logits(batches)), gold)
