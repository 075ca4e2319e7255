"""The AutoPrompt trigger search loop, its state, checkpoints and result file.

One iteration (Shin et al., 2020), as ``TriggerSearch.step`` runs it:

1. the gradient of the mean loss with respect to the trigger embeddings, over
   ``accumulation_steps`` random batches;
2. for the slot(s) chosen (``random``: one at random, as AutoPrompt; ``sweep``: each slot in
   turn; ``all``: every slot), the top ``num_cand`` HotFlip candidates after the filters;
3. the current trigger and every candidate flip scored together on fresh batches (as many as
   the gradient's, as the original code does), the same examples for all, in one chunked
   forward; the best flip replaces the current trigger only if its summed loss is strictly
   lower (or, with ``select="metric"``, its number of hits strictly higher);
4. after an accepted flip, the dev metric; the best trigger on dev is what the search returns.

After every iteration the state is checkpointed (``state.py``), so ``resume`` continues exactly
where a run stopped; Ctrl-C writes the result for the best trigger so far.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from autoprompt_py.encoding import tokenize_piece
from autoprompt_py.errors import AutopromptError, shown, warn
from autoprompt_py.model import MaskedLM
from autoprompt_py.resources import RESULT_KIND
from autoprompt_py.results import provenance, write_json
from autoprompt_py.search.calibrated import CalibratedObjective, search_p_cf
from autoprompt_py.search.candidates import (
    TokenFilters,
    VocabStrings,
    allowed_tokens,
    hotflip_candidates,
)
from autoprompt_py.search.objective import (
    ClassificationObjective,
    Objective,
    RelationObjective,
    TriggerScorer,
)
from autoprompt_py.search.state import SearchState, load_checkpoint, save_checkpoint
from autoprompt_py.search.task import SearchTask
from autoprompt_py.search.tensors import SplitTensors
from autoprompt_py.template import Template, Trigger
from autoprompt_py.vocab import single_token_id, vocab_token_ids

POSITIONS = ("random", "sweep", "all")
SELECT = ("loss", "metric")


@dataclass(frozen=True)
class SearchConfig:
    """The knobs of the search. ``identity()`` names those that decide its course.

    ``select``: ``loss`` accepts the candidate flip with the lowest summed loss on the
    candidate batches if it is strictly below the current trigger's; ``metric`` the one with
    the most hits (accuracy, P@1; ties to the lower loss) if it has strictly more, which is
    what the original AutoPrompt code does for classification.
    """

    iters: int = 100
    num_cand: int = 10
    batch_size: int = 32
    accumulation_steps: int = 10
    position: str = "random"
    patience: int | None = None
    seed: int = 0
    max_batch_tokens: int = 65536
    max_rows: int | None = None
    dtype: str = "float32"
    train_eval_limit: int | None = 2000
    select: str = "loss"
    calibrate: bool = False  # the dev metric on calibrated probabilities (Zhao et al. 2021)

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise AutopromptError(
                f"--position {self.position!r}: use one of {', '.join(POSITIONS)}"
            )
        if self.select not in SELECT:
            raise AutopromptError(f"--select {self.select!r}: use one of {', '.join(SELECT)}")
        for name in (
            "iters",
            "num_cand",
            "batch_size",
            "accumulation_steps",
            "max_batch_tokens",
            "max_rows",
        ):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "iters" else 1):
                raise AutopromptError(f"--{name.replace('_', '-')} must be positive")

    def identity(self) -> dict:
        """Settings a resumed run must share (iters and patience may change: a run can be
        extended; memory budgets only split the same work differently)."""
        return {
            k: getattr(self, k)
            for k in (
                "num_cand",
                "batch_size",
                "accumulation_steps",
                "position",
                "select",
                "seed",
                "dtype",
            )
        } | ({"calibrate": True} if self.calibrate else {})


@dataclass
class Scored:
    """A trigger's outcomes on a split; ``metric`` is the main metric (accuracy or P@1)."""

    metric: float
    objective: Objective
    outcome: torch.Tensor
    gold: torch.Tensor
    loss: torch.Tensor

    @property
    def mean_loss(self) -> float:
        return float(self.loss.double().mean())

    def full(self) -> dict:
        return self.objective.metrics(
            self.outcome.cpu().numpy(), self.gold.cpu().numpy(), self.loss.cpu().numpy()
        )


@dataclass
class SearchOutcome:
    result: dict
    state: SearchState
    interrupted: bool = False


def trigger_ids_from_words(
    tokenizer: Any, template: Template, words: str | Sequence[str], what: str = "--initial-trigger"
) -> list[int]:
    """Token ids for the template's trigger slots from words (``atmosphere alot dialogue``) or
    raw tokens (``Ġgreat``): each must be one token of this model's vocabulary."""
    words = words.split() if isinstance(words, str) else list(words)
    slots = [p for p in template.parts if isinstance(p, Trigger)]
    if len(words) != len(slots):
        raise AutopromptError(
            f"{what}: {len(words)} token{'s' * (len(words) != 1)} for the {len(slots)} "
            f"trigger slot{'s' * (len(slots) != 1)} [T] of "
            f"{shown(template.source)}; give exactly {len(slots)}"
        )
    vocab = tokenizer.get_vocab()
    ids = []
    for w, slot in zip(words, slots):
        token_id = single_token_id(tokenizer, w, slot.space_before)
        if token_id is None:
            token_id = vocab.get(w)
        if token_id is None:
            pieces = tokenizer.convert_ids_to_tokens(
                tokenize_piece(tokenizer, w, slot.space_before)
            )
            raise AutopromptError(
                f"{what}: {w!r} is not one token of this model's vocabulary (it becomes "
                f"{' '.join(pieces) or 'nothing'}); use single-token words"
            )
        ids.append(int(token_id))
    return ids


class TriggerSearch:
    """A trigger search over one task and model: encodes the data once, then ``step``s."""

    def __init__(
        self,
        lm: MaskedLM,
        task: SearchTask,
        config: SearchConfig = SearchConfig(),
        filters: TokenFilters | None = None,
    ) -> None:
        filters = filters or TokenFilters()
        self.lm, self.task, self.config, self.filters = lm, task, config, filters
        tokenizer = lm.tokenizer
        template = task.template
        self.counts: dict[str, dict] = {}
        if task.mode == "classification":
            assert task.verbalizer is not None
            resolved = task.verbalizer.resolve(
                tokenizer, task.aggregation, template.predict.space_before
            )
            objective: Objective = ClassificationObjective(resolved)
            index = {lab: i for i, lab in enumerate(resolved.labels)}
            train, dev = task.train, task.dev
            train_gold = [index[e.label] for e in train]
            dev_gold = [index[e.label] for e in dev]
            label_ids = resolved.token_ids
        else:
            space = template.predict.space_before
            eval_ids = (
                vocab_token_ids(tokenizer, task.vocab, space) if task.vocab is not None else None
            )
            objective = RelationObjective(eval_ids, lm.device)
            train, train_gold = self._single_token_facts(task.train, "train", space, None)
            dev, dev_gold = self._single_token_facts(task.dev, "dev", space, eval_ids)
            label_ids = sorted(set(train_gold))  # as AutoPrompt: no trigger may be an answer
        self.objective = objective
        self.scorer = TriggerScorer(
            lm, objective, config.max_batch_tokens, config.max_rows, config.dtype
        )
        mask_counts = objective.mask_counts
        self.train = SplitTensors(
            template, tokenizer, lm.max_length, train, train_gold, mask_counts, lm.device
        )
        self.dev = SplitTensors(
            template, tokenizer, lm.max_length, dev, dev_gold, mask_counts, lm.device
        )
        self.counts.setdefault("train", {}).update(n=len(train), truncated=self.train.truncated)
        self.counts.setdefault("dev", {}).update(n=len(dev), truncated=self.dev.truncated)
        self.dev_plan = self.scorer.plan(self.dev)
        self.vocab = VocabStrings.of(tokenizer, lm.vocab_size)
        self.allowed = allowed_tokens(tokenizer, lm.vocab_size, filters, label_ids, self.vocab).to(
            lm.device
        )
        # hotflip_candidates proposes at most the allowed tokens, less the current one
        left = int(self.allowed.sum())
        if config.num_cand > left - 1:
            warn(
                f"--num-cand {config.num_cand} is more than the {left - 1} other tokens the "
                f"filters leave in this model's vocabulary; using {max(1, left - 1)}"
            )
        self.embeddings = lm.embeddings.detach()
        if self.embeddings.dtype != torch.float32:
            self.embeddings = self.embeddings.float()

    def _single_token_facts(
        self, facts: list, split: str, space: bool, eval_ids: Sequence[int] | None
    ) -> tuple[list, list[int]]:
        """Facts whose object is one token (and in the evaluation vocabulary, for dev)."""
        allowed = set(eval_ids) if eval_ids is not None else None
        kept, gold = [], []
        for f in facts:
            token = single_token_id(self.lm.tokenizer, f.label, space)
            if token is not None and (allowed is None or token in allowed):
                kept.append(f)
                gold.append(token)
        self.counts[split] = {"skipped": len(facts) - len(kept)}
        if not kept:
            raise AutopromptError(
                f"{self.task.sources.get(split, split)}: none of its {len(facts)} facts has an "
                "object that is one token of this model's vocabulary"
                + (" and in --vocab" if allowed is not None else "")
                + "; relation search predicts single-token objects"
            )
        return kept, gold

    # -- words ----------------------------------------------------------------------------------

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab.tokens[i] for i in ids]

    def words(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab.words[i] or self.vocab.tokens[i] for i in ids]

    # -- evaluation -----------------------------------------------------------------------------

    def evaluate(
        self, split: SplitTensors, trigger: Sequence[int], index: np.ndarray | None = None
    ) -> Scored:
        """A trigger on a split (or on its rows ``index``)."""
        plan = (
            self.dev_plan if split is self.dev and index is None else self.scorer.plan(split, index)
        )
        scorer, objective = self.scorer, self.objective
        if self.config.calibrate and split is self.dev:
            # the dev metric that picks the best trigger, on calibrated probabilities
            objective = CalibratedObjective(objective, search_p_cf(self, trigger))
            scorer = copy.copy(scorer)
            scorer.objective = objective
        ev = scorer.evaluate(split, self._tensor(trigger), plan)
        rows = torch.cat([idx for idx, _ in plan])
        gold = split.gold[rows]
        outcome, loss = ev.outcome[rows], ev.loss[rows]
        # a count divided in Python: the loop's comparisons and the full metrics agree exactly
        hits = int(objective.hits(outcome, gold).sum())
        return Scored(hits / len(rows), objective, outcome, gold, loss)

    def metrics(
        self, split: SplitTensors, trigger: Sequence[int], index: np.ndarray | None = None
    ) -> dict:
        """Full metrics of a trigger on a split (or the rows ``index`` of it)."""
        return self.evaluate(split, trigger, index).full()

    def train_metrics(self, trigger: Sequence[int]) -> dict:
        """Metrics on up to ``train_eval_limit`` train examples (a seeded sample)."""
        limit = self.config.train_eval_limit
        index = None
        if limit is not None and limit < len(self.train):
            rng = np.random.default_rng(self.config.seed)
            index = np.sort(rng.choice(len(self.train), limit, replace=False))
        return self.metrics(self.train, trigger, index)

    def _tensor(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(ids), dtype=torch.long, device=self.lm.device)

    # -- the loop ---------------------------------------------------------------------------------

    def start(self, initial: Sequence[int] | None = None) -> SearchState:
        """The state before the first iteration: ``initial`` ids (default: the template's fixed
        triggers, or the mask token in open slots, as AutoPrompt starts) and their dev metric."""
        template = self.task.template
        if initial is None:
            mask = self.lm.tokenizer.mask_token_id
            initial = [mask if t is None else t for t in template.trigger_ids]
        initial = [int(i) for i in initial]
        if any(not 0 <= i < self.lm.vocab_size for i in initial):
            raise AutopromptError("initial trigger ids are outside this model's vocabulary")
        scored = self.evaluate(self.dev, initial)
        best, dev_metrics = scored.metric, scored.full()
        rng = np.random.default_rng(self.config.seed)
        return SearchState(
            iteration=0,
            trigger=initial,
            best_trigger=list(initial),
            best_iteration=0,
            best_dev=best,
            best_dev_metrics=dev_metrics,
            current_dev=best,
            since_best=0,
            rng=rng.bit_generator.state,
            initial={"trigger": self._trigger_record(initial), "dev": dev_metrics},
        )

    def _sample(self, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
        """``accumulation_steps`` gradient batches, and as many fresh batches (joined) for the
        candidates, as AutoPrompt; distinct examples where the train set is large enough."""
        n = len(self.train)
        b = min(self.config.batch_size, n)
        steps = self.config.accumulation_steps
        if 2 * b * steps <= n:
            rows = rng.choice(n, 2 * b * steps, replace=False)
            batches = [rows[i * b : (i + 1) * b] for i in range(2 * steps)]
        else:
            batches = [rng.choice(n, b, replace=False) for _ in range(2 * steps)]
        return batches[:steps], np.concatenate(batches[steps:])

    def step(self, state: SearchState) -> dict:
        """One iteration; updates ``state`` only once the iteration is complete, so an interrupt
        leaves it as after the previous iteration. Returns the history entry."""
        rng = np.random.default_rng()
        rng.bit_generator.state = state.rng
        iteration = state.iteration + 1
        n_slots = len(state.trigger)
        grad_batches, candidate_rows = self._sample(rng)
        if self.config.position == "random":
            slots = [int(rng.integers(n_slots))]
        elif self.config.position == "sweep":
            slots = [(iteration - 1) % n_slots]
        else:
            slots = list(range(n_slots))

        trigger = self._tensor(state.trigger)
        grad = self.scorer.gradient(self.train, grad_batches, trigger)
        slot_tensor = self._tensor(slots)
        candidates = hotflip_candidates(
            grad[slot_tensor],
            self.embeddings,
            self.allowed,
            self.config.num_cand,
            trigger[slot_tensor],
        )
        positions = slot_tensor.repeat_interleave(candidates.shape[1])
        tokens = candidates.reshape(-1)
        by_hits = self.config.select == "metric"
        scores = self.scorer.candidate_losses(
            self.train, candidate_rows, trigger, positions, tokens, count_hits=by_hits
        ).tolist()
        losses, hits = (scores[0], scores[1]) if by_hits else (scores, None)
        flips = range(1, len(losses))
        if hits is None:
            best = min(flips, key=lambda j: losses[j])
            accepted = losses[best] < losses[0]
        else:  # most hits, ties to the lower loss; the current trigger must lose on hits
            best = max(flips, key=lambda j: (hits[j], -losses[j]))
            accepted = hits[best] > hits[0]
        current_loss, best_loss = losses[0], losses[best]
        size = len(candidate_rows)

        new_trigger = list(state.trigger)
        position = slots[0]
        if accepted:
            position = int(positions[best - 1])
            new_trigger[position] = int(tokens[best - 1])
            scored = self.evaluate(self.dev, new_trigger)
            dev, dev_loss = scored.metric, scored.mean_loss
        else:
            dev, dev_loss = state.current_dev, None
        improved = accepted and dev > state.best_dev
        entry = {
            "iteration": iteration,
            "position": position,
            "accepted": accepted,
            "train_loss": (best_loss if accepted else current_loss) / size,
            "dev": dev,
            "dev_loss": dev_loss,
            "best_dev": dev if improved else state.best_dev,
            "trigger": new_trigger,
            "words": self.words(new_trigger),
        }
        # commit: nothing above touched the state
        if improved:
            state.best_trigger = list(new_trigger)
            state.best_iteration = iteration
            state.best_dev = dev
            state.best_dev_metrics = scored.full()
            state.since_best = 0
        else:
            state.since_best += 1
        state.trigger = new_trigger
        state.current_dev = dev
        state.iteration = iteration
        state.rng = rng.bit_generator.state
        state.history.append(entry)
        if self.config.patience is not None and state.since_best >= self.config.patience:
            state.stopped = "patience"
        return entry

    def run(
        self,
        state: SearchState,
        checkpoint: Callable[[SearchState], None] | None = None,
        on_iteration: Callable[[SearchState, dict], None] | None = None,
        progress: bool = True,
    ) -> SearchState:
        """Iterate until ``config.iters`` (or patience); ``checkpoint(state)`` after each."""
        metric = self.objective.metric
        with tqdm(
            total=self.config.iters,
            initial=min(state.iteration, self.config.iters),
            desc="search",
            unit="it",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar:
            while state.iteration < self.config.iters and state.stopped is None:
                entry = self.step(state)
                if checkpoint is not None:
                    checkpoint(state)
                bar.set_postfix_str(
                    f"dev {metric} {entry['dev']:.3f} best {state.best_dev:.3f} | "
                    + " ".join(self.words(state.trigger)),
                    refresh=False,
                )
                bar.update(1)
                if on_iteration is not None:
                    on_iteration(state, entry)
        return state

    # -- records --------------------------------------------------------------------------------

    def _trigger_record(self, ids: Sequence[int]) -> dict:
        return {"ids": list(ids), "tokens": self.tokens(ids), "words": self.words(ids)}

    def identity(self) -> dict:
        """What a checkpoint must match to be resumed: model, data, task and key settings."""
        emb = self.lm.embeddings.detach()
        stride = max(1, len(emb) // 512)  # a sample of rows tells models apart cheaply
        sample = emb[::stride].float().cpu().contiguous().numpy().tobytes()
        return {
            "model": {
                "vocab_size": self.lm.vocab_size,
                "embedding_size": int(emb.shape[1]),
                "weights_sha256": hashlib.sha256(sample).hexdigest(),
            },
            **self.task.identity,
            "filters": self.filters.describe(),
            "config": self.config.identity(),
        }

    def model_record(self) -> dict:
        return {
            "name": self.lm.name,
            "model_type": getattr(self.lm.model.config, "model_type", None),
            "vocab_size": self.lm.vocab_size,
            "embedding_size": int(self.lm.embeddings.shape[1]),
        }

    def result(
        self,
        state: SearchState,
        config: dict,
        interrupted: bool = False,
        elapsed: float | None = None,
        train: bool = True,
    ) -> dict:
        """The result file's content for the best trigger so far."""
        task = self.task
        best = state.best_trigger
        words = self.words(best)
        prompt = task.template.with_triggers(best, words).render("token")
        stopped = "interrupted" if interrupted else (state.stopped or "completed")
        data = {
            split: {"source": task.sources.get(split), **self.counts.get(split, {})}
            for split in ("train", "dev")
        }
        if "vocab" in task.sources:
            data["vocab"] = task.sources["vocab"]
        return {
            "kind": RESULT_KIND,
            "template": task.template.source,
            "prompt": prompt,
            "trigger": self._trigger_record(best),
            "mode": task.mode,
            "relation": task.relation,
            "verbalizer": task.verbalizer.words if task.verbalizer else None,
            "aggregation": task.aggregation if task.verbalizer else None,
            "model": self.model_record(),
            "metric": self.objective.metric,
            "train": self.train_metrics(best) if train else None,
            "dev": state.best_dev_metrics,
            "initial": state.initial,
            "best_iteration": state.best_iteration,
            "iterations": state.iteration,
            "stopped": stopped,
            "elapsed_s": None if elapsed is None else round(elapsed, 3),
            "data": data,
            "filters": self.filters.describe(),
            "history": state.history,
            **provenance("search", config),
        }


# -- the whole run --------------------------------------------------------------------------------


def run_search(
    lm: MaskedLM,
    task: SearchTask,
    config: SearchConfig = SearchConfig(),
    filters: TokenFilters | None = None,
    output: str | Path | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    initial_trigger: str | Sequence[str] | None = None,
    progress: bool = True,
    record: dict | None = None,
    on_iteration: Callable[[SearchState, dict], None] | None = None,
) -> SearchOutcome:
    """Search, checkpointing every iteration; write the result to ``output`` at the end.

    ``checkpoint`` defaults to ``<output>.ckpt``. Ctrl-C (KeyboardInterrupt) stops the search:
    the best trigger so far is written and the outcome says ``interrupted``.
    ``record`` is the configuration written into the result (the CLI passes its options).
    """
    started = time.perf_counter()
    filters = filters or TokenFilters()
    search = TriggerSearch(lm, task, config, filters)
    if checkpoint is None and output is not None:
        checkpoint = Path(str(output) + ".ckpt")
    identity = search.identity()
    if resume:
        if checkpoint is None:
            raise AutopromptError("--resume needs --output or --checkpoint to find the state")
        state = load_checkpoint(checkpoint, identity)
    else:
        initial = (
            trigger_ids_from_words(lm.tokenizer, task.template, initial_trigger)
            if initial_trigger is not None
            else None
        )
        state = search.start(initial)
        if checkpoint is not None:
            save_checkpoint(checkpoint, identity, state)

    def save(s: SearchState) -> None:
        if checkpoint is not None:
            save_checkpoint(checkpoint, identity, s)

    interrupted = False
    try:
        search.run(state, save, on_iteration, progress)
    except KeyboardInterrupt:
        interrupted = True
    config_record = {**dataclasses.asdict(config), "filters": filters.describe(), **(record or {})}
    try:
        result = search.result(
            state, config_record, interrupted, time.perf_counter() - started, train=not interrupted
        )
    except KeyboardInterrupt:  # during the final train evaluation: write without it
        interrupted = True
        result = search.result(
            state, config_record, True, time.perf_counter() - started, train=False
        )
    if output is not None:
        write_json(output, result)
    return SearchOutcome(result, state, interrupted)
