"""Scored: what a trigger did on a split (its metric, per-row outcomes, gold and losses)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autoprompt_py.search.scorer import Objective


@dataclass
class Scored:
    """A trigger's outcomes on a split; ``metric`` is the main metric (accuracy or P@1)."""

    metric: float
    objective: Objective
    outcome: torch.Tensor
    gold: torch.Tensor
    loss: torch.Tensor

    @property
    def mean_loss(self) -> float:
        return float(self.loss.double().mean())

    def full(self) -> dict:
        return self.objective.metrics(
            self.outcome.cpu().numpy(), self.gold.cpu().numpy(), self.loss.cpu().numpy()
        )
