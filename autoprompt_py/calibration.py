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

from autoprompt_py.data import Example
from autoprompt_py.ensemble import log_normalise
from autoprompt_py.errors import AutopromptError
from autoprompt_py.language_model import LanguageModel
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
    template: Template, texts: Sequence[str], mask_token: str | None
) -> list[Example]:
    """One example per content-free text, with every field of the template set to it;
    ``mask_token``: what ``[MASK]`` writes, the model's ``LanguageModel.mask_token`` (a
    decoder fills none: no row for it)."""
    out = []
    for t in texts:
        text = mask_token if t == MASK_TEXT else t
        if text is None:
            continue
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
    lm: LanguageModel,
    template: Template,
    verbalizer: ResolvedVerbalizer,
    texts: Sequence[str],
    batch_size: int = 32,
) -> np.ndarray:
    """p_cf [labels] of one classification member (template × verbalizer)."""
    examples = content_free_examples(template, texts, lm.mask_token)
    return mean_distribution(classify(lm, template, examples, verbalizer, batch_size).scores)
