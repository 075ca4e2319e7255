"""The clock, the cost and the stopping rules of a search.

Search seconds and model work (``scorer.Cost``) accumulate in the state over iterations and
resumes; under torch.distributed the sharded counters are summed over the ranks at each commit.
A restart ends when it has used its iterations, its patience, or its share of the budgets
(``restarts`` searches share ``time_budget`` and ``max_forward_passes`` evenly; a restart that
ends early leaves its share to the next).

Budgets hold inside an iteration too: the scorer calls ``check`` after every model chunk
(gradient, candidates, dev evaluation), which raises ``BudgetSpent`` once the share is spent;
the engine then drops the unfinished iteration (its work still counts in the cost) and the
restart ends. A search therefore stops at most one model chunk past a budget (``max_rows`` or
``max_batch_tokens`` rows; with ``--fluency``, one fluency batch), plus the evaluation that
starts a restart. Under torch.distributed, where each rank runs its own chunks, budgets are
checked only between iterations (every rank must stop at the same point).
"""

from __future__ import annotations

import time

import torch

from autoprompt_py import distributed
from autoprompt_py.search.config import SearchConfig
from autoprompt_py.search.scorer import Cost, TriggerScorer
from autoprompt_py.search.state import SearchState


class BudgetSpent(Exception):
    """Raised inside an iteration once the current restart's budget share is spent."""


class Budget:
    """The clock and the cost of one search, and when it stops."""

    def __init__(self, config: SearchConfig, scorer: TriggerScorer) -> None:
        self.config, self.scorer = config, scorer
        self._clock: tuple[float, float] | None = None  # (perf_counter, state.seconds) at start
        self._cost_base: dict = {}
        self._state: SearchState | None = None  # the state an iteration runs from (for check)

    # -- clock and cost --------------------------------------------------------------------------

    def seconds(self, state: SearchState) -> float:
        """Search seconds so far: the state's, plus the running iteration's."""
        if self._clock is None:
            return state.seconds
        t0, base = self._clock
        return base + time.perf_counter() - t0

    @property
    def running(self) -> bool:
        return self._clock is not None

    def begin(self, state: SearchState) -> None:
        self._clock = (time.perf_counter(), state.seconds)
        self.scorer.cost = Cost(**state.cost)
        self._cost_base = dict(state.cost)

    def global_cost(self) -> dict:
        """The cost so far over all ranks: under torch.distributed each rank counts the rows it
        ran (its shard), so the sharded counters are summed since the last commit; candidate
        counts are the same on every rank. Called at the same points on every rank."""
        cost = self.scorer.cost.record()
        if distributed.world_size() == 1:
            return cost
        keys = ("forward_passes", "forward_calls", "backward_passes")
        base = self._cost_base
        delta = torch.tensor([cost[k] - base.get(k, 0) for k in keys], dtype=torch.long)
        distributed.all_reduce_(delta)
        return {**cost, **{k: base.get(k, 0) + int(d) for k, d in zip(keys, delta)}}

    def commit(self, state: SearchState) -> None:
        """Write the clock and the cost into the state; the clock stops."""
        state.seconds = self.seconds(state)
        state.cost = self.global_cost()
        self.scorer.cost = Cost(**state.cost)
        self._cost_base = dict(state.cost)
        self._clock = None

    def abandon(self, state: SearchState) -> None:
        """Give up the running iteration (``BudgetSpent``): only its clock and cost are kept."""
        self.commit(state)
        self.leave()

    # -- stopping rules --------------------------------------------------------------------------

    def share(self, total: float | None, state: SearchState) -> float | None:
        """The cumulative budget up to the end of the current restart."""
        if total is None:
            return None
        return total * (state.restart + 1) / self.config.restarts

    def restart_over(self, state: SearchState) -> str | None:
        """Why the current restart ends, or None; the same on every rank under
        torch.distributed (a time budget is measured on each rank's clock)."""
        reason = self._restart_reason(state)
        if distributed.world_size() > 1 and distributed.agree_any(reason == "budget"):
            return "budget"
        return reason

    def _restart_reason(self, state: SearchState) -> str | None:
        c = self.config
        if state.restart_iteration >= c.iters:
            return "completed"
        if c.patience is not None and state.since_best >= c.patience:
            return "patience"
        if self._spent(state, state.cost.get("forward_passes", 0)):
            return "budget"
        return None

    def _spent(self, state: SearchState, passes: int, past: bool = False) -> bool:
        """The share is used up (``past``: exceeded, inside an iteration, so that one which
        ends exactly on the budget is kept)."""
        time_share = self.share(self.config.time_budget, state)
        pass_share = self.share(self.config.max_forward_passes, state)
        seconds = self.seconds(state)
        if past:
            return (time_share is not None and seconds > time_share) or (
                pass_share is not None and passes > pass_share
            )
        return (time_share is not None and seconds >= time_share) or (
            pass_share is not None and passes >= pass_share
        )

    def enter(self, state: SearchState) -> None:
        """An iteration from ``state`` starts: ``check`` watches its budget share."""
        budgeted = self.config.time_budget is not None or self.config.max_forward_passes
        single = distributed.world_size() == 1
        self._state = state if budgeted and single else None
        self.scorer.on_chunk = self.check if self._state is not None else None

    def leave(self) -> None:
        self._state = None
        self.scorer.on_chunk = None

    def check(self) -> None:
        """Inside an iteration (after each model chunk): raise ``BudgetSpent`` once the
        restart's share is spent (passes: committed plus this iteration's)."""
        state = self._state
        if state is not None and self._spent(state, self.scorer.cost.forward_passes, past=True):
            raise BudgetSpent

    def overshoot(self, state: SearchState) -> dict | None:
        """How far the search went past its budgets (None without a budget): seconds and
        forward passes beyond the whole budget (0 when it stopped inside it)."""
        c = self.config
        if c.time_budget is None and c.max_forward_passes is None:
            return None
        passes = state.cost.get("forward_passes", 0)
        return {
            "seconds": None
            if c.time_budget is None
            else round(max(0.0, state.seconds - c.time_budget), 3),
            "forward_passes": None
            if c.max_forward_passes is None
            else max(0, passes - c.max_forward_passes),
        }
