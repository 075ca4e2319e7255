"""One model's part of a trigger search: the task encoded for it, its scorer and its dev plan,
and a trigger's outcomes on one of its splits (``evaluate``). A search over one model has one
member; over several (``joint.py``), one per model, each encoding the task with the shared
tokenizer for its own length limit and device."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from autoprompt_py.language_model import LanguageModel
from autoprompt_py.search.calibrated import (
    CalibratedObjective,
    content_free_split,
    search_p_cf,
)
from autoprompt_py.search.config import SearchConfig
from autoprompt_py.search.encoded import EncodedTask
from autoprompt_py.search.scored import Scored
from autoprompt_py.search.scorer import ClassificationObjective, TriggerScorer
from autoprompt_py.search.task import SearchTask
from autoprompt_py.search.tensors import SplitTensors


class Member:
    """A model of a search: ``encoded`` (its objective, train and dev splits), ``scorer``
    (its model passes) and ``dev_plan`` (dev's evaluation chunks, cut once)."""

    def __init__(self, lm: LanguageModel, task: SearchTask, config: SearchConfig) -> None:
        self.lm, self.task = lm, task
        self.encoded = EncodedTask.build(lm, task, config)
        self.objective = self.encoded.objective
        self.train, self.dev = self.encoded.train, self.encoded.dev
        self.scorer = TriggerScorer(
            lm, self.objective, config.max_batch_tokens, config.max_rows, config.dtype
        )
        self.dev_plan = self.scorer.plan(self.dev)
        self._content_free: SplitTensors | None = None  # --calibrate's rows

    def reconfigure(self, config: SearchConfig) -> Member:
        """This member under other settings: a new objective and scorer, the same tensors."""
        other = copy.copy(self)
        if isinstance(self.objective, ClassificationObjective):
            other.objective = ClassificationObjective(
                self.objective.verbalizer, config.objective == "labels"
            )
        other.scorer = TriggerScorer(
            self.lm, other.objective, config.max_batch_tokens, config.max_rows, config.dtype
        )
        return other

    def ids(self, ids: Sequence[int]) -> torch.Tensor:
        """Token ids as a tensor on this model's device."""
        return torch.tensor(list(ids), dtype=torch.long, device=self.lm.device)

    def evaluate(
        self,
        split: SplitTensors,
        trigger: Sequence[int],
        index: np.ndarray | None = None,
        calibrate: bool = False,
    ) -> Scored:
        """A trigger on one of this model's splits (or on its rows ``index``); ``calibrate``:
        on calibrated probabilities (the dev metric of ``--calibrate``)."""
        plan = (
            self.dev_plan if split is self.dev and index is None else self.scorer.plan(split, index)
        )
        scorer, objective = self.scorer, self.objective
        if calibrate:
            if self._content_free is None:  # encoded once, at the first calibrated evaluation
                self._content_free = content_free_split(self)
            p_cf = search_p_cf(self, trigger, self._content_free)
            objective = CalibratedObjective(objective, p_cf)
            scorer = copy.copy(scorer)
            scorer.objective = objective
        ev = scorer.evaluate(split, self.ids(trigger), plan)
        rows = torch.cat([idx for idx, _ in plan])
        gold = split.gold[rows]
        outcome, loss = ev.outcome[rows], ev.loss[rows]
        # a count divided in Python: the loop's comparisons and the full metrics agree exactly
        hits = int(objective.hits(outcome, gold).sum())
        return Scored(hits / len(rows), objective, outcome, gold, loss)
