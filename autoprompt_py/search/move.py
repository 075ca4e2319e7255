"""What a search method and the engine exchange: the ``Move`` a step returns, and the
``SearchView``, the engine's public names a method may read (``method.py`` holds the
``Method`` protocol and the registry).

A method never writes the search state: it reads the state and the view, draws only from the
generator it is given, and returns a ``Move``; the engine commits it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch


@dataclass
class Move:
    """Where a method takes the trigger in one iteration."""

    trigger: list[int]
    moved: bool  # the trigger changed (then it is evaluated on dev)
    train_loss: float  # mean loss on the candidate rows of the trigger now current
    detail: dict = field(default_factory=dict)  # method-specific history fields
    state: dict | None = None  # the method's own JSON-able state after the step (None: unchanged)


class SearchView(Protocol):
    """The engine as a method sees it (``TriggerSearch`` implements it)."""

    config: Any  # the SearchConfig: its fields are every method's options
    train: Any  # the training split, encoded (``SplitTensors``)
    scorer: Any  # the model passes (``TriggerScorer``): gradient, candidate losses
    embeddings: torch.Tensor  # [vocab, dim] float32 input embeddings
    allowed: torch.Tensor  # [vocab] bool: tokens the filters allow in a trigger
    counts: dict  # rows per split (read by nothing in a step; for warnings)

    def ids(self, ids: Sequence[int]) -> torch.Tensor:
        """Token ids as a tensor on the model's device."""

    def special_slots(self, ids: Sequence[int]) -> list[int]:
        """Slots of ``ids`` holding a special token ([MASK], [UNK], …)."""

    def sample(self, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
        """Gradient batches and the candidate rows of one step."""

    def fluency_bonus(self, triggers: torch.Tensor) -> torch.Tensor:
        """W × pseudo-log-likelihood of each trigger [C, L] → [C]."""
