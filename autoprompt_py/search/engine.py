"""The engine every search method shares: the task encoded once, dev evaluation, best-so-far
bookkeeping, restarts, the loop and the result record (the clock, cost and stopping rules are
``budget.py``'s; the progress bar and the result file ``run.py``'s).

A method (``autoprompt.py``, ``gcg.py``, any registered in ``method.py``) only proposes where the trigger goes next: its
``propose(search, state, rng)`` returns a ``Move``. The engine then evaluates the new trigger
on dev, updates the best so far and commits the state, so an interrupt inside an iteration
leaves the state as after the previous one and ``resume`` redoes it exactly.

Rules the engine keeps for both methods:

* the best so far is the best dev metric (ties: lower dev loss) among the triggers evaluated
  whose every slot holds a real token: a special token ([MASK], [UNK], …) may start a search
  but is never reported while any fully real trigger has been seen;
* ``restarts`` searches run one after another, each with ``iters`` iterations and an even share
  of the time and forward-pass budgets (a restart that stops early leaves its share to the
  next); restart 0 starts from ``--initial-trigger`` (or ``config.initial``), later ones from
  random allowed tokens;
* budgets are checked after every model chunk (``budget.py``): the iteration running when
  one runs out is dropped, so a search stops at most one chunk past it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch

from autoprompt_py import distributed
from autoprompt_py.errors import AutopromptError, raise_pending_stop
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.search.best import Best, Known
from autoprompt_py.search.budget import Budget, BudgetSpent
from autoprompt_py.search.candidates import (
    TokenFilters,
    VocabStrings,
    allowed_tokens,
    special_tokens,
)
from autoprompt_py.search.config import SearchConfig
from autoprompt_py.search.fluency import TriggerFluency
from autoprompt_py.search.joint import (
    JointFluency,
    JointScored,
    JointScorer,
    JointSplit,
    joined,
    joint_embeddings,
)
from autoprompt_py.search.member import Member
from autoprompt_py.search.move import Method
from autoprompt_py.search.scored import Scored
from autoprompt_py.search.state import SearchState
from autoprompt_py.search.task import SearchTask
from autoprompt_py.search.tensors import SplitTensors
from autoprompt_py.several import check_shared_vocabulary, shared_rows


class TriggerSearch:
    """A trigger search over one task and model (or several models sharing a vocabulary,
    ``joint.py``): encodes the data once, then ``step``s."""

    def __init__(
        self,
        lm: LanguageModel | Sequence[LanguageModel],
        task: SearchTask,
        config: SearchConfig | None = None,
        filters: TokenFilters | None = None,
        method: Method | None = None,
    ) -> None:
        filters = filters or TokenFilters()
        config = (config or SearchConfig()).for_mode(task.mode)
        config.check_slots(task.template.num_triggers)
        lms = list(lm) if isinstance(lm, (list, tuple)) else [lm]
        check_shared_vocabulary(lms)
        self.lms, self.lm, self.task, self.config, self.filters = lms, lms[0], task, config, filters
        self.method = method or config.search_method
        self.members = [Member(m, task, config) for m in lms]
        self._join_members()
        rows, tokenizer = shared_rows(lms), self.lm.tokenizer
        label_ids = sorted({i for m in self.members for i in m.encoded.label_ids})
        self.vocab = VocabStrings.of(tokenizer, rows)
        self.allowed = allowed_tokens(tokenizer, rows, filters, label_ids, self.vocab).to(
            self.lm.device
        )
        self.special = special_tokens(tokenizer, self.vocab)
        # [vocab, dim] (several models: side by side, see joint.py)
        self.embeddings = joint_embeddings(lms, rows)
        # the trigger's pseudo-log-likelihood: --fluency's selection term, and the result's
        # pseudo-perplexity (one row per slot, in the template without its fields)
        self.fluency = joined([TriggerFluency(m, task.template) for m in lms], JointFluency)
        self.budget = Budget(config, self.scorer)
        self.best = Best(self.special_slots, config.keep)
        self.method.prepare(self)

    def _join_members(self) -> None:
        """The members' objective (the first's: one tokenizer), splits and scorers, joined."""
        first = self.members[0]
        self.encoded, self.objective, self.dev_plan = first.encoded, first.objective, first.dev_plan
        self.train = joined([m.train for m in self.members], JointSplit)
        self.dev = joined([m.dev for m in self.members], JointSplit)
        self.scorer = joined([m.scorer for m in self.members], JointScorer)

    def reconfigure(self, config: SearchConfig) -> TriggerSearch:
        """The same encoded task under other search settings (memory budgets must agree):
        comparisons run many settings without encoding the data again."""
        other = copy.copy(self)
        config = config.for_mode(self.task.mode)
        config.check_slots(self.task.template.num_triggers)
        other.config = config
        other.method = config.search_method
        other.members = [m.reconfigure(config) for m in self.members]
        other._join_members()
        other.budget = Budget(config, other.scorer)
        other.best = Best(other.special_slots, config.keep)
        return other

    def encode(self, examples: Sequence) -> SplitTensors | JointSplit:
        """Another split (a test set), encoded and judged as dev is."""
        parts = [m.encoded.encode(examples, m.objective) for m in self.members]
        return joined(parts, JointSplit)

    # -- words ----------------------------------------------------------------------------------

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab.tokens[i] for i in ids]

    def words(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab.words[i] or self.vocab.tokens[i] for i in ids]

    def retokenizes(self, triggers: np.ndarray) -> np.ndarray:
        """bool [C]: which candidate triggers [C, L] read back as the same ids from their
        text. On decoders (BPE, SentencePiece) a trigger failing it (tokens that merge or
        split when written out) would not reproduce as text: nanoGCG's filter drops it.
        Masked LMs keep every candidate (their results are scored from the ids)."""
        triggers = np.asarray(triggers)
        if not self.lm.triggers_round_trip or not len(triggers):
            return np.ones(len(triggers), dtype=bool)
        tok = self.lm.tokenizer
        texts = tok.batch_decode(triggers.tolist())
        again = tok(texts, add_special_tokens=False)["input_ids"]
        return np.array([a == t for a, t in zip(again, triggers.tolist())], dtype=bool)

    def special_slots(self, ids: Sequence[int]) -> list[int]:
        """Slots of ``ids`` holding a special token ([MASK], [UNK], [CLS], …)."""
        return [j for j, i in enumerate(ids) if bool(self.special[i])]

    # -- evaluation -----------------------------------------------------------------------------

    def evaluate(
        self,
        split: SplitTensors | JointSplit,
        trigger: Sequence[int],
        index: np.ndarray | None = None,
    ) -> Scored | JointScored:
        """A trigger on a split (or on its rows ``index``): on every model, their metrics
        combined ``across`` them (``joint.JointScored``). ``--calibrate``: the dev metric
        that picks the best trigger is on calibrated probabilities."""
        calibrate = self.config.calibrate and split is self.dev
        parts = [
            m.evaluate(part, trigger, index, calibrate)
            for m, part in zip(self.members, split.parts)
        ]
        if len(parts) == 1:
            return parts[0]
        return JointScored(parts, [lm.name for lm in self.lms], self.config.across)

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

    def fluency_bonus(self, triggers: torch.Tensor) -> torch.Tensor:
        """W × pseudo-log-likelihood of each trigger [C, L] → [C] (zeros when W = 0)."""
        if self.config.fluency == 0:
            return torch.zeros(len(triggers))
        before = self.fluency.forward_passes, self.fluency.forward_calls
        pll = self.fluency.pll(triggers).float().cpu()
        if distributed.is_main():  # every rank runs it whole: count it once over the ranks
            self.scorer.cost.forward_passes += self.fluency.forward_passes - before[0]
            self.scorer.cost.forward_calls += self.fluency.forward_calls - before[1]
        return self.config.fluency * pll

    def ids(self, ids: Sequence[int]) -> torch.Tensor:
        """Token ids as a tensor on the model's device."""
        return torch.tensor(list(ids), dtype=torch.long, device=self.lm.device)

    def sample(self, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
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

    # -- clock and cost (budget.py) -------------------------------------------------------------

    def seconds(self, state: SearchState) -> float:
        """Search seconds so far: the state's, plus the running iteration's."""
        return self.budget.seconds(state)

    # -- best so far (best.py) ------------------------------------------------------------------

    def _consider(self, state: SearchState, trigger: list[int], scored: Scored) -> bool:
        """Update the best so far with a dev-evaluated trigger (``best.Best``); True if the
        overall best improved. Then a point on the curve."""
        improved = self.best.consider(state, trigger, scored)
        state.curve.append(
            [
                round(self.seconds(state), 3),
                self.budget.global_cost()["forward_passes"],
                state.best_dev,
            ]
        )
        return improved

    def dev_scored(self, state: SearchState, trigger: Sequence[int]) -> Scored | Known:
        """A trigger on dev: read from the visited set, or evaluated."""
        evaluate = lambda: self.evaluate(self.dev, trigger)  # noqa: E731
        return self.best.known(state, trigger, evaluate) or evaluate()

    # -- the loop ---------------------------------------------------------------------------------

    def initial_ids(self, rng: np.random.Generator | None, how: str) -> list[int]:
        """A starting trigger: the template's fixed triggers, and in open slots the mask token
        (``how="mask"``) or random allowed tokens drawn from ``rng``."""
        fixed = self.task.template.trigger_ids
        if how == "mask":
            mask = self.lm.trigger_fill_id  # the mask token; a decoder's "x"
            return [mask if t is None else int(t) for t in fixed]
        assert rng is not None
        pool = torch.nonzero(self.allowed).squeeze(1).cpu().numpy()
        drawn = rng.choice(pool, len(fixed), replace=len(pool) < len(fixed))
        return [int(d) if t is None else int(t) for t, d in zip(fixed, drawn)]

    def start(self, initial: Sequence[int] | None = None) -> SearchState:
        """The state before the first iteration: ``initial`` ids (default: ``config.initial``)
        and their dev metric. The random generator of the whole search is seeded here."""
        rng = np.random.default_rng(self.config.seed)
        if initial is None:
            initial = self.initial_ids(rng, self.config.initial)
        initial = [int(i) for i in initial]
        if any(not 0 <= i < len(self.vocab) for i in initial):
            raise AutopromptError("initial trigger ids are outside this model's vocabulary")
        state = SearchState(
            iteration=0,
            trigger=initial,
            best_trigger=list(initial),
            best_iteration=0,
            best_dev=None,
            best_dev_metrics={},
            current_dev=None,
            since_best=0,
            rng={},
            initial={},
        )
        self.budget.begin(state)
        scored = self.evaluate(self.dev, initial)
        self._consider(state, initial, scored)
        state.current_dev = scored.metric
        state.initial = {"trigger": self.trigger_record(initial), "dev": scored.full()}
        if state.best_dev is None:  # shown, not reported as best: it holds special tokens
            state.best_dev_metrics = state.initial["dev"]
        state.rng = rng.bit_generator.state
        self.budget.commit(state)
        return state

    def step(self, state: SearchState) -> dict | None:
        """One iteration of the configured method; updates ``state`` only once the iteration
        is complete. Returns the history entry, or None when the budget ran out inside the
        iteration (then only the state's clock and cost moved)."""
        if not self.budget.running:
            self.budget.begin(state)
        self.budget.enter(state)
        try:
            entry = self._step(state)
        except BudgetSpent:  # the budget ran out inside the iteration: it is dropped
            self.budget.abandon(state)
            return None
        finally:
            self.budget.leave()
        return entry

    def _step(self, state: SearchState) -> dict:
        rng = np.random.default_rng()
        rng.bit_generator.state = state.rng
        move = self.method.propose(self, state, rng)
        iteration = state.iteration + 1
        self.budget.check()  # the step's own passes (the fluency bonus) may have spent it
        if move.moved:
            scored = self.dev_scored(state, move.trigger)
            dev, dev_loss = scored.metric, scored.mean_loss
        else:
            dev, dev_loss = state.current_dev, None
        self.budget.check()
        # commit: nothing above touched the state; no budget check from here on
        self.budget.leave()
        state.iteration = iteration
        state.restart_iteration += 1
        improved = move.moved and self._consider(state, move.trigger, scored)
        state.since_best = 0 if improved else state.since_best + 1
        entry = {
            "iteration": iteration,
            "restart": state.restart,
            **move.detail,
            "train_loss": move.train_loss,
            "dev": dev,
            "dev_loss": dev_loss,
            "best_dev": state.best_dev,
            "trigger": list(move.trigger),
            "words": self.words(move.trigger),
        }
        state.trigger = list(move.trigger)
        state.current_dev = dev
        if move.state is not None:
            state.method_state = move.state
        state.rng = rng.bit_generator.state
        state.history.append(entry)
        self.budget.commit(state)
        return entry

    def restart_record(self, state: SearchState) -> dict:
        best = state.restart_best
        ids = best["trigger"] if best else state.trigger
        start = state.initial["trigger"] if state.restart == 0 else state.restart_initial
        return {
            "restart": state.restart,
            "initial": start["words"],
            "trigger": self.trigger_record(ids),
            "dev": best["dev"] if best else None,
            "iterations": state.restart_iteration,
        }

    def _next_restart(self, state: SearchState) -> None:
        """Close the current restart and start the next from random allowed tokens."""
        rng = np.random.default_rng()
        rng.bit_generator.state = state.rng
        self.budget.begin(state)
        record = self.restart_record(state)
        initial = self.initial_ids(rng, "random")
        scored = self.dev_scored(state, initial)
        # commit: nothing above touched the state (Ctrl-C in the evaluation redoes it)
        state.restarts.append(record)
        state.restart += 1
        state.restart_iteration = 0
        state.restart_best = None
        state.since_best = 0
        state.method_state = {}
        state.trigger = initial
        state.current_dev = scored.metric
        state.restart_initial = self.trigger_record(initial)
        self._consider(state, initial, scored)
        state.rng = rng.bit_generator.state
        self.budget.commit(state)

    def run(
        self,
        state: SearchState,
        checkpoint: Callable[[SearchState], None] | None = None,
        on_iteration: Callable[[SearchState, dict], None] | None = None,
    ) -> SearchState:
        """Iterate until every restart has used its iterations or budget share (or patience);
        ``checkpoint(state)`` after each iteration (and restart), ``on_iteration(state,
        entry)`` after each completed iteration (``run_search``'s progress bar)."""
        c = self.config
        last_closed = state.stopped is not None and len(state.restarts) == state.restart + 1
        if last_closed and state.stopped != "patience":
            # resumed with more iterations or budget: reopen the last restart
            state.stopped = None
            if self.budget.restart_over(state) is None:
                state.restarts.pop()
            else:
                state.stopped = self.budget.restart_over(state)
        while state.stopped is None:
            raise_pending_stop()  # a signal CPython dropped (errors.py)
            over = self.budget.restart_over(state)
            if over is not None:
                if state.restart + 1 >= c.restarts:
                    state.stopped = over
                    state.restarts.append(self.restart_record(state))
                    if checkpoint is not None:
                        checkpoint(state)
                    break
                self._next_restart(state)
                if checkpoint is not None:
                    checkpoint(state)
                continue
            entry = self.step(state)
            if checkpoint is not None:
                checkpoint(state)
            if entry is not None and on_iteration is not None:  # None: budget spent inside
                on_iteration(state, entry)
        return state

    # -- records --------------------------------------------------------------------------------

    def trigger_record(self, ids: Sequence[int]) -> dict:
        return {"ids": list(ids), "tokens": self.tokens(ids), "words": self.words(ids)}
