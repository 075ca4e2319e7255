"""The boundary between the engine and a search method: the ``Method`` protocol, the ``Move``
a step returns, and the ``SearchView``, the engine's public names a method may read
(``method.py`` holds the registry).

A method never writes the search state: it reads the state and the view, draws only from the
generator it is given, and returns a ``Move``; the engine commits it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only: the registry reads methods without loading torch
    import numpy as np
    import torch

    from autoprompt_py.search.state import SearchState


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
    train: Any  # the training split, encoded (``SplitTensors``; several models: ``JointSplit``)
    scorer: Any  # the model passes (``TriggerScorer``, ``JointScorer``): gradient, candidates
    embeddings: torch.Tensor  # [vocab, dim] float32 input embeddings (several: side by side)
    allowed: torch.Tensor  # [vocab] bool: tokens the filters allow in a trigger
    counts: dict  # rows per split (read by nothing in a step; for warnings)

    def ids(self, ids: Sequence[int]) -> torch.Tensor:
        """Token ids as a tensor on the model's device."""

    def retokenizes(self, triggers: np.ndarray) -> np.ndarray:
        """bool [C]: candidate triggers [C, L] whose text encodes back to the same ids."""

    def special_slots(self, ids: Sequence[int]) -> list[int]:
        """Slots of ``ids`` holding a special token ([MASK], [UNK], …)."""

    def sample(self, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
        """Gradient batches and the candidate rows of one step."""

    def fluency_bonus(self, triggers: torch.Tensor) -> torch.Tensor:
        """W × pseudo-log-likelihood of each trigger [C, L] → [C]."""


class Method(Protocol):
    """One search method: its name, its options, and its step."""

    name: str  # the --method value
    help: str  # one sentence for --method's help
    options: tuple[str, ...]  # SearchConfig fields only this method reads: its identity keys
    accumulation: dict[str, int]  # default accumulation_steps by mode (classification, relation)

    def check(self, config: Any, slots: int) -> None:
        """Refuse settings this method cannot run with ``slots`` trigger slots
        (``AutopromptError``); runs before any model loads."""

    def prepare(self, search: SearchView) -> None:
        """Once the task is encoded: warn about settings the data makes moot."""

    def propose(self, search: SearchView, state: SearchState, rng: np.random.Generator) -> Move:
        """One step from ``state``; ``state.method_state`` holds what the method keeps."""
