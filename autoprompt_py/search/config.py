"""The settings of a trigger search, in one typed object (as nanoGCG's ``GCGConfig``).

The CLI builds a ``SearchConfig``, the API takes it, a checkpoint is tied to its ``identity()``
and the result file records it whole. Checks that need only the config run when it is made;
``check_slots`` runs once the template is known, still before any model loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from autoprompt_py.errors import AutopromptError
from autoprompt_py.search.method import METHODS
from autoprompt_py.search.move import Method
from autoprompt_py.several import ACROSS

POSITIONS = ("random", "sweep", "all")
SELECT = ("loss", "metric")
INITIAL = ("random", "mask")
OBJECTIVES = ("labels", "vocab")


def _at_least(option: str, value: float | None, low: float, what: str = "") -> None:
    if value is not None and value < low:
        raise AutopromptError(f"--{option} {value}: must be {what or f'at least {low}'}")


@dataclass(frozen=True)
class SearchConfig:
    """The knobs of the search. ``identity()`` names those that decide its course.

    Both methods take the token gradient of the mean loss over ``accumulation_steps`` batches
    of ``batch_size`` training examples, then score candidates on as many fresh examples.

    * ``autoprompt`` (Shin et al., 2020): the top ``num_cand`` HotFlip tokens of one slot
      (``position``); the best flip is taken only if it beats the current trigger on the
      candidate batches (``select``: lower summed loss, or more hits).
    * ``gcg`` (Zou et al., 2023): the top ``topk`` tokens of every slot; ``search_width``
      candidate triggers, each changing ``n_replace`` random slots to one of their top-k; the
      search moves to the best candidate even when it is worse than the current trigger.
      ``buffer_size`` > 0 keeps the best triggers seen and starts each step from the best.

    ``restarts`` independent searches share the budget (``iters`` each, and an even share of
    ``time_budget`` seconds and ``max_forward_passes``); the best on dev is the result.
    ``initial`` is how restart 0 starts without ``--initial-trigger``: random allowed tokens,
    or the mask token in every slot (the original AutoPrompt); later restarts start random.
    ``objective`` (classification): ``vocab`` minimizes the gold label's negative
    log-probability over the whole vocabulary (AutoPrompt); ``labels`` the cross-entropy over
    the labels' scores only, which is what accuracy reads (relation mode: always the former).
    ``fluency`` W adds W × the trigger's pseudo-log-likelihood (``fluency.py``) to the score
    that selects among candidates (minus the mean loss, or the hit rate); the best on dev is
    still the best dev metric. ``keep`` N > 1: the result also lists the N best distinct
    triggers on dev (``best.py``). ``across``: with several models (``joint.py``), how their
    dev metrics combine into the one the search keeps (``several.ACROSS``: mean or min).
    """

    method: str = "gcg"
    iters: int = 100
    num_cand: int = 10
    batch_size: int = 32
    accumulation_steps: int | None = None  # None: by method and mode, see ``for_mode``
    position: str = "random"
    select: str = "loss"
    objective: str = "labels"
    search_width: int = 32
    n_replace: int = 1
    topk: int = 32
    buffer_size: int = 0
    restarts: int = 1
    initial: str = "random"
    time_budget: float | None = None
    max_forward_passes: int | None = None
    fluency: float = 0.0
    calibrate: bool = False  # the dev metric on calibrated probabilities (Zhao et al. 2021)
    patience: int | None = None
    seed: int = 0
    max_batch_tokens: int | str = 65536  # "auto": from the free GPU memory (run_search)
    max_rows: int | None = None
    dtype: str = "float32"
    train_eval_limit: int | None = 2000
    keep: int = 1  # the result lists the N best distinct triggers on dev (1: the best only)
    across: str = "mean"  # several models: their dev metrics combined (several.ACROSS)

    def __post_init__(self) -> None:
        for name, allowed in (
            ("method", tuple(METHODS)),
            ("position", POSITIONS),
            ("select", SELECT),
            ("initial", INITIAL),
            ("objective", OBJECTIVES),
            ("across", tuple(ACROSS)),
        ):
            if getattr(self, name) not in allowed:
                raise AutopromptError(
                    f"--{name} {getattr(self, name)!r}: use one of {', '.join(allowed)}"
                )
        for name in (
            "num_cand",
            "batch_size",
            "accumulation_steps",
            "search_width",
            "n_replace",
            "topk",
            "restarts",
            "max_rows",
            "patience",
            "max_forward_passes",
            "keep",
        ):
            _at_least(name.replace("_", "-"), getattr(self, name), 1, "a whole number ≥ 1")
        if self.max_batch_tokens != "auto":
            _at_least("max-batch-tokens", self.max_batch_tokens, 1, "a whole number ≥ 1")
        _at_least("iters", self.iters, 0, "a whole number ≥ 0")
        _at_least("buffer-size", self.buffer_size, 0, "a whole number ≥ 0 (0: no buffer)")
        if self.time_budget is not None and not self.time_budget > 0:
            raise AutopromptError(
                f"--time-budget {self.time_budget}: must be a number of seconds > 0"
            )
        if not self.fluency >= 0:
            raise AutopromptError(f"--fluency {self.fluency}: must be a weight ≥ 0 (0: off)")

    def for_mode(self, mode: str) -> SearchConfig:
        """This config with the defaults that depend on the task's mode (``classification``
        or ``relation``) filled in; the engine runs, checkpoints and records this one."""
        if self.accumulation_steps is not None:
            return self
        steps = self.search_method.accumulation[mode]
        return dataclasses.replace(self, accumulation_steps=steps)

    @property
    def search_method(self) -> Method:
        """The registered method ``method`` names (``method.METHODS``)."""
        return METHODS[self.method]

    def check_slots(self, slots: int) -> None:
        """Checks that need the template's number of trigger slots (the method's own)."""
        self.search_method.check(self, slots)

    def identity(self) -> dict:
        """Settings a resumed run must share (iters, patience and the budgets may change: a run
        can be extended; memory budgets only split the same work differently)."""
        keys = ["method", "batch_size", "accumulation_steps", "restarts", "initial", "seed"]
        keys += ["dtype", "fluency", "select", "objective"]
        keys += self.search_method.options
        keys += ["calibrate"] if self.calibrate else []  # older checkpoints still resume
        keys += ["keep"] if self.keep != 1 else []  # the state keeps that many
        keys += ["across"] if self.across != "mean" else []
        return {k: getattr(self, k) for k in keys}
