"""What trains: one protocol, one registry; a new method is one module and one line here.

Every part turns batches (one per number of masks, ``objective.Encoded.batch``) into logits:
mask logits {k: [batch, k, vocab]} for the cloze methods, {0: [batch, labels]} for ``head``;
``objective.Objective`` reads them into the scores ``score`` computes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from autoprompt_py.encoding import Batch
from autoprompt_py.template import Template


class TrainablePart(Protocol):
    method: str
    template: Template  # what the examples are encoded with (soft: slots → vector ids)

    def trainable(self) -> list[nn.Parameter]: ...

    def modules(self) -> list[nn.Module]: ...

    def logits(self, batches: dict[int, Batch]) -> dict[int, torch.Tensor]: ...

    def train_mode(self, on: bool) -> None: ...

    def state(self) -> dict[str, torch.Tensor]: ...

    def load_state(self, state: dict[str, torch.Tensor]) -> None: ...

    def save(self, folder: Path) -> dict[str, str]: ...


def _soft(*args):
    from autoprompt_py.tune.methods.soft import build

    return build(*args)


def _full(*args):
    from autoprompt_py.tune.methods.full import build

    return build(*args)


def _head(*args):
    from autoprompt_py.tune.methods.head import build

    return build(*args)


def _peft(*args):
    from autoprompt_py.tune.methods.peft_methods import build

    return build(*args)


# method → builder(lm, task, config, objective) → TrainablePart
REGISTRY: dict[str, Callable[..., TrainablePart]] = {
    "soft": _soft,
    "full": _full,
    "head": _head,
    "prompt": _peft,
    "ptuning": _peft,
    "prefix": _peft,
    "lora": _peft,
}


def build_part(lm, task, config, objective) -> TrainablePart:
    return REGISTRY[config.method](lm, task, config, objective)


def count_parameters(part: TrainablePart) -> tuple[int, int]:
    """(trainable, total) parameters, tied weights counted once."""
    trainable = sum(p.numel() for p in part.trainable())
    seen: dict[int, int] = {}
    for m in part.modules():
        for p in m.parameters():
            seen[id(p)] = p.numel()
    for p in part.trainable():
        seen[id(p)] = p.numel()
    return trainable, sum(seen.values())
