"""Contextual calibration (Zhao et al. 2021, "Calibrate Before Use").

A prompt's bias towards some label words is measured on content-free inputs: the template with
every field filled by a text that says nothing ("N/A", the empty string, the mask token). Their
label distributions, averaged, give ``p_cf``; every prediction is then divided by it and
renormalised: ``p̂(y|x) = p(y|x) / p_cf(y) / Σ_y' p(y'|x) / p_cf(y')`` (their W = diag(p_cf)⁻¹,
b = 0). For relations the "labels" are the candidate vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from autoprompt_py.data import Example
from autoprompt_py.ensemble import log_normalise
from autoprompt_py.errors import AutopromptError
from autoprompt_py.model import MaskedLM
from autoprompt_py.scoring import classify
from autoprompt_py.template import Template
from autoprompt_py.verbalizer import ResolvedVerbalizer

MASK_TEXT = "[MASK]"  # stands for the model's own mask token (<mask> for RoBERTa)
DEFAULT_CONTENT_FREE = ("N/A", "", MASK_TEXT)
_PLACEHOLDER = re.compile(r"\{[^{}]*\}|\[X\]|\[T\]")


def check_content_free(texts: Sequence[str] | None) -> tuple[str, ...]:
    """The content-free texts to use (the default set when none are given); a text holding a
    field placeholder would be filled again, so it is refused."""
    if not texts:
        return DEFAULT_CONTENT_FREE
    for t in texts:
        m = _PLACEHOLDER.search(t)
        if m:
            raise AutopromptError(
                f"--content-free {t!r}: it holds the placeholder {m.group(0)!r}; a content-free "
                "text fills every field and must be plain text such as 'N/A'"
            )
    return tuple(dict.fromkeys(texts))


def content_free_examples(
    template: Template, texts: Sequence[str], mask_token: str
) -> list[Example]:
    """One example per content-free text, with every field of the template set to it."""
    out = []
    for t in texts:
        text = mask_token if t == MASK_TEXT else t
        out.append(Example({f: text for f in template.fields}, None, f"content-free {t!r}"))
    return out


def mean_distribution(log_probs: np.ndarray) -> np.ndarray:
    """p_cf: the mean over content-free rows of each row's normalised distribution."""
    return np.exp(log_normalise(log_probs)).mean(0)


def calibrate(log_probs: np.ndarray, p_cf: np.ndarray) -> np.ndarray:
    """log p̂ = log-normalise(log p − log p_cf) over the last axis."""
    with np.errstate(divide="ignore"):
        return log_normalise(np.asarray(log_probs, np.float64) - np.log(p_cf))


def label_p_cf(
    lm: MaskedLM,
    template: Template,
    verbalizer: ResolvedVerbalizer,
    texts: Sequence[str],
    batch_size: int = 32,
) -> np.ndarray:
    """p_cf [labels] of one classification member (template × verbalizer)."""
    examples = content_free_examples(template, texts, lm.tokenizer.mask_token)
    return mean_distribution(classify(lm, template, examples, verbalizer, batch_size).scores)


# -- trigger search: the dev metric on calibrated probabilities ------------------------------------


class CalibratedObjective:
    """A search objective whose losses and outcomes come from calibrated probabilities.

    It wraps the search's own objective (classification: label scores; relations: the logits
    over the evaluation vocabulary), so the training loss of the search is untouched; only the
    dev evaluation that chooses the best trigger uses it.
    """

    def __init__(self, base, p_cf: torch.Tensor) -> None:
        self.base = base
        self.log_p_cf = p_cf.log()
        self.mask_counts = base.mask_counts
        self.metric = base.metric

    def _log_probs(self, logits: dict[int, torch.Tensor]) -> torch.Tensor:
        """Log-probabilities over the labels (or candidates) before calibration."""
        if hasattr(self.base, "label_scores"):
            return self.base.label_scores(logits).float().log_softmax(-1)
        scores = logits[1][:, 0].float()
        ids = self.base.eval_ids
        return (scores if ids is None else scores[:, ids]).log_softmax(-1)

    def loss_and_outcome(
        self, logits: dict[int, torch.Tensor], gold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cal = (self._log_probs(logits) - self.log_p_cf).log_softmax(-1)
        if hasattr(self.base, "label_scores"):
            return -cal.gather(1, gold[:, None]).squeeze(1), cal.argmax(1)
        ids = self.base.eval_ids
        column = gold if ids is None else torch.searchsorted(ids, gold)
        target = cal.gather(1, column[:, None])
        return -target.squeeze(1), (cal > target).sum(1) + 1

    def hits(self, outcome: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        return self.base.hits(outcome, gold)

    def metrics(self, outcome: np.ndarray, gold: np.ndarray, loss: np.ndarray) -> dict:
        return self.base.metrics(outcome, gold, loss)


def search_p_cf(search, trigger: Sequence[int], texts: Sequence[str] = DEFAULT_CONTENT_FREE):
    """p_cf of a trigger search's template with ``trigger`` written in: one content-free row
    per text through the search's own scorer (a trivial cost next to the dev set)."""
    from autoprompt_py.search.objective import write_triggers  # search imports this module
    from autoprompt_py.search.tensors import SplitTensors

    lm, template = search.lm, search.task.template
    rows = content_free_examples(template, texts, lm.tokenizer.mask_token)
    split = SplitTensors(
        template,
        lm.tokenizer,
        lm.max_length,
        rows,
        [0] * len(rows),
        search.objective.mask_counts,
        lm.device,
    )
    views = split.batch(np.arange(len(rows)))
    ids = torch.as_tensor(list(trigger), dtype=torch.long, device=lm.device)
    with torch.inference_mode():
        logits = search.scorer.logits(
            views, ids={k: write_triggers(b, ids) for k, b in views.items()}
        )
        log_probs = CalibratedObjective(search.objective, torch.ones(1))._log_probs(logits)
    return log_probs.exp().mean(0)
