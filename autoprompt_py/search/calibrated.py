"""The dev metric of a trigger search on calibrated probabilities (``--calibrate``).

Contextual calibration (Zhao et al. 2021, ``autoprompt_py.calibration``) applied inside the
search: p_cf is measured for the trigger being evaluated, through the search's own scorer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from autoprompt_py.calibration import DEFAULT_CONTENT_FREE, content_free_examples
from autoprompt_py.search.scorer import Objective, write_triggers
from autoprompt_py.search.tensors import SplitTensors


class CalibratedObjective:
    """A search objective whose losses and outcomes come from calibrated probabilities.

    It wraps the search's own objective (classification: label scores; relations: the logits
    over the evaluation vocabulary), so the training loss of the search is untouched; only the
    dev evaluation that chooses the best trigger uses it.
    """

    def __init__(self, base: Objective, p_cf: torch.Tensor) -> None:
        self.base = base
        self.log_p_cf = p_cf.log()
        self.mask_counts = base.mask_counts
        self.metric = base.metric

    def loss_and_outcome(
        self, logits: dict[int, torch.Tensor], gold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cal = (self.base.answer_log_probs(logits) - self.log_p_cf).log_softmax(-1)
        return self.base.judge(cal, gold)

    def hits(self, outcome: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        return self.base.hits(outcome, gold)

    def metrics(self, outcome: np.ndarray, gold: np.ndarray, loss: np.ndarray) -> dict:
        return self.base.metrics(outcome, gold, loss)


def content_free_split(search, texts: Sequence[str] = DEFAULT_CONTENT_FREE) -> SplitTensors:
    """The content-free rows of a search's template (one per text), encoded once."""
    lm, template = search.lm, search.task.template
    rows = content_free_examples(template, texts, lm.mask_token)
    return SplitTensors(template, lm, rows, [0] * len(rows), search.objective.mask_counts)


def search_p_cf(search, trigger: Sequence[int], split: SplitTensors | None = None):
    """p_cf of a trigger search's template with ``trigger`` written in: the content-free rows
    (``split``, default: encoded now) through the search's own scorer (a trivial cost next
    to the dev set)."""
    split = split if split is not None else content_free_split(search)
    views = split.batch(np.arange(len(split)))
    ids = torch.as_tensor(list(trigger), dtype=torch.long, device=search.lm.device)
    with torch.inference_mode():
        logits = search.scorer.logits(
            views, ids={k: write_triggers(b, ids) for k, b in views.items()}
        )
        log_probs = search.objective.answer_log_probs(logits)
    return log_probs.exp().mean(0)
