"""What trains: one protocol, one registry; a new method is one module and one line here.

Every part turns batches (one per number of masks, ``objective.Encoded.batch``) into logits:
mask logits {k: [batch, k, vocab]} for the cloze methods, {0: [batch, labels]} for ``head``;
``objective.Objective`` reads them into the scores ``score`` computes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the registry itself loads without torch (``TuneConfig`` reads it)
    from pathlib import Path

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


class MethodModule(Protocol):
    """What a method's module provides (``soft.py``, ``full.py``, ...)."""

    # True: a folder of the method holds a prompt for the --model it was tuned on (soft,
    # PEFT); False: the folder is itself the model (full, head)
    ON_BASE_MODEL: bool
    # True: ``--model FOLDER`` loads the folder as a masked LM (full); otherwise
    # ``not_a_model`` says where the folder goes instead
    MODEL_FOLDER: bool

    def build(self, lm, task, config, objective) -> TrainablePart: ...

    def tuned_template(self, template: Template, result: dict, folder: str) -> Template:
        """The template a tuned folder is scored with (read from its ``result.json``)."""

    def attach(self, lm, folder: str, result: dict):
        """The model that reads the folder's prompt (``lm`` itself, or one wrapping it)."""

    def not_a_model(self, folder: str, result: dict) -> Exception:
        """The error for ``--model FOLDER`` where ``MODEL_FOLDER`` is False."""


# method → its module under ``tune/methods``, imported when the method is used
REGISTRY: dict[str, str] = {
    "soft": "soft",
    "full": "full",
    "head": "head",
    "prompt": "peft_methods",
    "ptuning": "peft_methods",
    "prefix": "peft_methods",
    "lora": "peft_methods",
}


def method_module(method: str) -> MethodModule:
    return importlib.import_module(f"{__name__}.{REGISTRY[method]}")  # type: ignore[return-value]


def build_part(lm, task, config, objective) -> TrainablePart:
    return method_module(config.method).build(lm, task, config, objective)


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
