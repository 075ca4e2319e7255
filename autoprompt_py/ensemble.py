"""Ensembles of prompts: several members' label (or candidate) distributions → one prediction.

A member is one template with one verbalizer (classification) or one template of a relation
(probing). Every member gives per-example log-probabilities over the same labels. The rules:

* ``mean-logprob`` (default; PET's weighted mean of scores, Jiang et al.'s rank ensemble on
  log-probabilities): ``log p_ens(y) = Σ_m w_m log p_m(y) / Σ_m w_m``, renormalised over y;
* ``mean-prob``: ``p_ens(y) = Σ_m w_m p_m(y) / Σ_m w_m``;
* ``vote``: each member's top label gets its weight; the label with the most weight wins,
  ties broken by ``mean-logprob``.

Members can be added one at a time (``EnsembleAccumulator``), so that relation probes over a
large candidate vocabulary never hold every member's matrix at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoprompt_py.errors import AutopromptError

RULES = ("mean-logprob", "mean-prob", "vote")


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise AutopromptError(f"--ensemble-rule {rule!r}: use one of {', '.join(RULES)}")
    return rule


def parse_weights(text: str | None, members: int) -> list[float] | None:
    """``--weights 1,0.5,2`` → one non-negative weight per member, not all zero."""
    if text is None:
        return None
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise AutopromptError(
            f"--weights {text!r}: give numbers separated by commas, e.g. 1,0.5,2"
        ) from None
    if len(weights) != members:
        raise AutopromptError(
            f"--weights gives {len(weights)} weights for {members} members (every --template × "
            "every --verbalizer, in that order); give one weight per member"
        )
    if any(not np.isfinite(w) or w < 0 for w in weights):
        raise AutopromptError(f"--weights {text!r}: weights must be finite and not negative")
    if not any(w > 0 for w in weights):
        raise AutopromptError(f"--weights {text!r}: at least one weight must be above zero")
    return weights


def log_normalise(x: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis (float32 stays float32, else float64; -inf stays -inf)."""
    x = _floats(x)
    top = np.max(x, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return x - (np.log(np.exp(x - top).sum(-1, keepdims=True)) + top)


def _floats(x: np.ndarray) -> np.ndarray:
    """float32 arrays as they are (relation probes over a large vocabulary), else float64."""
    x = np.asarray(x)
    return x if x.dtype == np.float32 else x.astype(np.float64)


@dataclass
class Combined:
    """Ensemble scores [examples, labels]: ``scores`` orders the labels, ``tiebreak`` (vote
    only) orders the labels that ``scores`` ties."""

    scores: np.ndarray
    tiebreak: np.ndarray | None = None

    def argmax(self) -> np.ndarray:
        if self.tiebreak is None:
            return self.scores.argmax(-1)
        top = self.scores == self.scores.max(-1, keepdims=True)
        return np.where(top, self.tiebreak, -np.inf).argmax(-1)

    def ranks(self, gold: np.ndarray) -> np.ndarray:
        """1-based rank of column ``gold[i]`` in row i (strictly better ones + 1)."""
        rows = np.arange(len(gold))
        s = self.scores[rows, gold][:, None]
        better = self.scores > s
        if self.tiebreak is not None:
            t = self.tiebreak[rows, gold][:, None]
            better |= (self.scores == s) & (self.tiebreak > t)
        return better.sum(-1) + 1


class EnsembleAccumulator:
    """Adds members one at a time; ``result()`` is the ensemble of those added."""

    def __init__(self, rule: str = "mean-logprob") -> None:
        self.rule = check_rule(rule)
        self.total_weight = 0.0
        self.members = 0
        self._logp: np.ndarray | None = None  # Σ w log p (also the vote tie-break)
        self._other: np.ndarray | None = None  # Σ w p (mean-prob) or the vote counts

    def add(self, log_probs: np.ndarray, weight: float = 1.0) -> None:
        log_probs = _floats(log_probs)
        self.members += 1
        if weight == 0:
            return
        self.total_weight += weight
        # -inf × weight stays -inf; a zero-probability label keeps zero
        term = log_probs * weight
        self._logp = term if self._logp is None else self._logp + term
        if self.rule == "mean-prob":
            p = np.exp(log_probs) * weight
            self._other = p if self._other is None else self._other + p
        elif self.rule == "vote":
            votes = np.zeros_like(log_probs)
            votes[np.arange(len(votes)), log_probs.argmax(-1)] = weight
            self._other = votes if self._other is None else self._other + votes

    def result(self) -> Combined:
        if self._logp is None:
            raise AutopromptError("an ensemble needs at least one member with a weight above 0")
        mean_logp = log_normalise(self._logp / self.total_weight)
        if self.rule == "mean-logprob":
            return Combined(mean_logp)
        share = self._other / self.total_weight
        if self.rule == "mean-prob":
            with np.errstate(divide="ignore"):
                return Combined(np.log(share))
        return Combined(share, mean_logp)


def combine(
    log_probs: Sequence[np.ndarray],
    rule: str = "mean-logprob",
    weights: Sequence[float] | None = None,
) -> Combined:
    """The ensemble of members' log-probabilities [examples, labels], all in one label order."""
    if weights is not None and len(weights) != len(log_probs):
        raise AutopromptError(f"{len(weights)} weights for {len(log_probs)} ensemble members")
    acc = EnsembleAccumulator(rule)
    for i, lp in enumerate(log_probs):
        acc.add(lp, 1.0 if weights is None else weights[i])
    return acc.result()
