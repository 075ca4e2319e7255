"""The best so far of a search: which dev-evaluated trigger it reports, the N best distinct
triggers it keeps (``--keep``), and the visited set.

* The best is the best dev metric (ties: lower dev loss) among the triggers evaluated whose
  every slot holds a real token; while none has been seen, the trigger with the fewest
  special tokens is shown, unranked.
* ``keep`` N > 1: the N best distinct such triggers over every restart, best first, each with
  its full dev metrics (the first is the best).
* A trigger already evaluated on dev (a search walks back to it, a restart draws it) is not
  evaluated again: its dev metric and loss are read from the visited set, as Faster-GCG keeps
  the triggers it has seen. Dev evaluation is deterministic, so this changes no figure of the
  result, only the work (``cost``). Triggers holding a special token are never stored.

The visited set and the kept triggers live in the search state (``state.visited``,
``state.kept``), so a resumed search skips the same evaluations as one that ran through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoprompt_py.search.state import SearchState


@dataclass
class Known:
    """A trigger's dev figures read back from the visited set (``Scored``'s metric and mean
    loss). Its full metrics are needed only where it becomes the best again, which a tie
    broken by the rounding of the two mean losses allows: then ``evaluate`` gives them."""

    metric: float
    mean_loss: float
    evaluate: Callable[[], Any]

    def full(self) -> dict:
        return self.evaluate().full()


def _key(scored: Any) -> tuple[float, float]:
    return (scored.metric, -scored.mean_loss)


class Best:
    """The best-so-far rules of one search (``special_slots`` tells real triggers apart)."""

    def __init__(self, special_slots: Any, keep: int) -> None:
        self.special_slots = special_slots
        self.keep = keep
        self._state: SearchState | None = None
        self._index: dict[tuple[int, ...], int] = {}

    # -- the visited set ------------------------------------------------------------------------

    def _sync(self, state: SearchState) -> None:
        if state is not self._state or len(self._index) != len(state.visited):
            self._state = state
            self._index = {tuple(v[0]): i for i, v in enumerate(state.visited)}

    def known(
        self, state: SearchState, trigger: Sequence[int], evaluate: Callable[[], Any]
    ) -> Known | None:
        """The dev figures of a trigger evaluated before (``evaluate``: how to evaluate it
        again), or None."""
        self._sync(state)
        i = self._index.get(tuple(trigger))
        return None if i is None else Known(*state.visited[i][1:3], evaluate)

    def _visit(self, state: SearchState, trigger: list[int], scored: Any) -> None:
        self._sync(state)
        if isinstance(scored, Known) or self.special_slots(trigger):
            return
        self._index[tuple(trigger)] = len(state.visited)
        state.visited.append([list(trigger), scored.metric, scored.mean_loss])
        self._keep(state, trigger, scored)

    def _keep(self, state: SearchState, trigger: list[int], scored: Any) -> None:
        """Enter a newly evaluated real trigger among the ``keep`` best (ties: the earlier)."""
        if self.keep <= 1:
            return
        kept = state.kept
        if len(kept) == self.keep and _key(scored) <= (kept[-1][1], -kept[-1][2]):
            return
        at = next((i for i, k in enumerate(kept) if _key(scored) > (k[1], -k[2])), len(kept))
        kept.insert(at, [list(trigger), scored.metric, scored.mean_loss, scored.full()])
        del kept[self.keep :]

    # -- the best -------------------------------------------------------------------------------

    def better(self, scored: Any, trigger: Sequence[int], best: dict | None) -> bool:
        if self.special_slots(trigger):
            return False
        if best is None:
            return True
        return _key(scored) > (best["dev"], -best["dev_loss"])

    def consider(self, state: SearchState, trigger: list[int], scored: Any) -> bool:
        """Update this restart's and the overall best with a dev-evaluated trigger (and the
        visited set and the kept triggers); True if the overall best improved."""
        self._visit(state, trigger, scored)
        record = {
            "trigger": list(trigger),
            "dev": scored.metric,
            "dev_loss": scored.mean_loss,
            "iteration": state.restart_iteration,
        }
        if self.better(scored, trigger, state.restart_best):
            state.restart_best = record
        overall = (
            None
            if state.best_dev is None
            else {"dev": state.best_dev, "dev_loss": state.best_dev_metrics["loss"]}
        )
        improved = self.better(scored, trigger, overall)
        fewer = len(self.special_slots(trigger)) <= len(self.special_slots(state.best_trigger))
        if state.best_dev is None and not improved and fewer:
            # no fully real trigger yet: show the one with the fewest special tokens, unranked
            state.best_trigger = list(trigger)
            state.best_dev_metrics = scored.full()
        if improved:
            state.best_trigger = list(trigger)
            state.best_iteration = state.iteration
            state.best_dev = scored.metric
            state.best_dev_metrics = scored.full()
        return improved
