"""What a search method's step returns: where it takes the trigger (read by the engine)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Move:
    """Where a method takes the trigger in one iteration."""

    trigger: list[int]
    moved: bool  # the trigger changed (then it is evaluated on dev)
    train_loss: float  # mean loss on the candidate rows of the trigger now current
    detail: dict = field(default_factory=dict)  # method-specific history fields
    buffer: list[list] | None = None  # gcg's buffer after the step (None: unchanged)
