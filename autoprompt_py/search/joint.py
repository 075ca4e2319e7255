"""A trigger search over several models at once (Zou et al. 2023's transfer attack, summed over
models): the engine and the methods see one split, one scorer and one fluency, each joining
the models' own (``member.py``).

* the loss is the mean over models: the candidate losses (and hits) of every candidate on
  every model, averaged;
* the token gradient is summed over the shared vocabulary: each model's gradient with respect
  to the trigger embeddings (its own embedding space, its own width) is concatenated, and so
  are the embedding matrices, so that HotFlip's ``-(E · g)`` over the joint space is the sum
  over models of each model's ``-(E_m · g_m)`` (divided by the number of models: the
  gradient of the mean loss);
* the dev metric a search keeps is the models' metrics combined by ``--across`` (the mean, or
  the worst model's); the dev record holds every model's full metrics.

A search over one model uses that model's objects themselves (``joined``), so its figures are
exactly those of a search that never heard of several models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from autoprompt_py.search.fluency import TriggerFluency, pseudo_perplexity
from autoprompt_py.search.scored import Scored
from autoprompt_py.search.scorer import Cost, TriggerScorer
from autoprompt_py.search.tensors import SplitTensors
from autoprompt_py.several import ACROSS


def joined(parts: Sequence, joint: type):
    """The one part itself, or ``joint`` of several."""
    return parts[0] if len(parts) == 1 else joint(parts)


class JointSplit:
    """One split of every model (each encoded by its member), in model order."""

    def __init__(self, parts: Sequence[SplitTensors]) -> None:
        self.parts = tuple(parts)

    def __len__(self) -> int:
        return len(self.parts[0])


class JointScorer:
    """The model passes of a search over several models: each pass runs on every model (its
    own split of ``JointSplit``), in model order. The work of all is counted in one ``cost``,
    and the budget's check (``on_chunk``) runs after every model's every chunk."""

    def __init__(self, scorers: Sequence[TriggerScorer]) -> None:
        self.scorers = list(scorers)
        self.cost = Cost()
        self.on_chunk = None

    @property
    def cost(self) -> Cost:
        return self._cost

    @cost.setter
    def cost(self, value: Cost) -> None:
        self._cost = value
        for s in self.scorers:
            s.cost = value

    @property
    def on_chunk(self):
        return self._on_chunk

    @on_chunk.setter
    def on_chunk(self, value) -> None:
        self._on_chunk = value
        for s in self.scorers:
            s.on_chunk = value

    @property
    def lm(self):
        return self.scorers[0].lm

    @property
    def objective(self):
        return self.scorers[0].objective

    def gradient(
        self, split: JointSplit, batches: Sequence[np.ndarray], trigger: torch.Tensor
    ) -> torch.Tensor:
        """[triggers, Σ dims]: every model's gradient of its mean loss with respect to the
        trigger embeddings, over the same batches, divided by the number of models and
        concatenated (``joint_embeddings`` is the matching matrix)."""
        n = len(self.scorers)
        grads = [
            s.gradient(part, batches, trigger.to(s.lm.device)).float().to(trigger.device) / n
            for s, part in zip(self.scorers, split.parts)
        ]
        return torch.cat(grads, dim=1)

    def trigger_losses(
        self, split: JointSplit, index: np.ndarray, triggers: torch.Tensor, count_hits: bool = False
    ) -> torch.Tensor:
        """``TriggerScorer.trigger_losses`` of every model on the same rows, averaged."""
        outs = [
            s.trigger_losses(part, index, triggers.to(s.lm.device), count_hits).to(triggers.device)
            for s, part in zip(self.scorers, split.parts)
        ]
        return torch.stack(outs).mean(0)

    def candidate_losses(
        self,
        split: JointSplit,
        index: np.ndarray,
        trigger: torch.Tensor,
        positions: torch.Tensor,
        tokens: torch.Tensor,
        count_hits: bool = False,
    ) -> torch.Tensor:
        """``TriggerScorer.candidate_losses`` of every model on the same rows, averaged."""
        variants = trigger[None, :].repeat(len(tokens) + 1, 1)
        variants[torch.arange(1, len(tokens) + 1, device=variants.device), positions] = tokens
        return self.trigger_losses(split, index, variants, count_hits)


def joint_embeddings(lms: Sequence, rows: int) -> torch.Tensor:
    """[rows, Σ dims] float32: the models' input embeddings side by side (the first ``rows``,
    the shared vocabulary), on the first model's device. One model: its matrix itself."""
    mats = [lm.embeddings.detach()[:rows] for lm in lms]
    if len(mats) == 1:
        e = lms[0].embeddings.detach()
        return e if e.dtype == torch.float32 else e.float()
    return torch.cat([m.float().to(lms[0].device) for m in mats], dim=1)


@dataclass
class JointScored:
    """A trigger's outcomes on every model: ``metric`` combined ``across`` models, the mean
    of their mean losses, and each model's full metrics."""

    parts: list[Scored]
    names: list[str]
    across: str

    @property
    def metric(self) -> float:
        return ACROSS[self.across]([p.metric for p in self.parts])

    @property
    def mean_loss(self) -> float:
        return sum(p.mean_loss for p in self.parts) / len(self.parts)

    def full(self) -> dict:
        models = [{"model": n, **p.full()} for n, p in zip(self.names, self.parts)]
        name = self.parts[0].objective.metric
        return {name: self.metric, "loss": self.mean_loss, "across": self.across, "models": models}


class JointFluency:
    """The trigger's pseudo-log-likelihood averaged over the models (``--fluency``, and the
    result's pseudo-perplexity); the passes of all counted."""

    def __init__(self, parts: Sequence[TriggerFluency]) -> None:
        self.parts = list(parts)

    @property
    def forward_passes(self) -> int:
        return sum(p.forward_passes for p in self.parts)

    @property
    def forward_calls(self) -> int:
        return sum(p.forward_calls for p in self.parts)

    def pll(self, triggers: torch.Tensor | Sequence) -> torch.Tensor:
        return torch.stack([p.pll(triggers).float().cpu() for p in self.parts]).mean(0)

    def perplexity(self, trigger: torch.Tensor | Sequence[int]) -> float:
        pll = float(self.pll([[int(t) for t in trigger]])[0])
        return float(pseudo_perplexity(pll, self.parts[0].n_triggers))
