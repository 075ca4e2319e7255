"""``full``: every weight trains, the prompt fixed: PET / LM-BFF prompt-based fine-tuning."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoprompt_py.encoding import Batch
from autoprompt_py.language_model import LanguageModel


class FullPart:
    method = "full"

    def __init__(self, lm: LanguageModel, template) -> None:
        self.lm = lm
        self.template = template
        lm.model.requires_grad_(True)
        self._params = [p for p in lm.model.parameters() if p.requires_grad]

    def trainable(self) -> list[nn.Parameter]:
        return self._params

    def modules(self) -> list[nn.Module]:
        return [self.lm.model]

    def logits(self, batches: dict[int, Batch]) -> dict[int, torch.Tensor]:
        return {
            k: self.lm.mask_logits(
                b.mask_positions, b.attention_mask, b.input_ids, token_type_ids=b.token_type_ids
            )
            for k, b in batches.items()
        }

    def train_mode(self, on: bool) -> None:
        self.lm.model.train(on)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.lm.model.state_dict().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.lm.model.load_state_dict(state)

    def save(self, folder: Path) -> dict[str, str]:
        self.lm.model.save_pretrained(str(folder))
        self.lm.tokenizer.save_pretrained(str(folder))
        return {"model": "save_pretrained masked LM: --model this folder (score, probe, search)"}


def build(lm: LanguageModel, task, config, objective) -> FullPart:
    return FullPart(lm, task.template)


MODEL_FOLDER = True  # does --model FOLDER load it as a masked LM?
ON_BASE_MODEL = False


def tuned_template(template, result: dict, folder: str):
    from autoprompt_py.tune.methods.attach import fixed_triggers

    return fixed_triggers(template, result)


def attach(lm: LanguageModel, folder: str, result: dict) -> LanguageModel:
    if Path(lm.name).resolve() != Path(folder).resolve():
        from autoprompt_py.errors import AutopromptError

        raise AutopromptError(
            f"--template {folder}: the prompt was trained with the whole model, which the "
            f"folder holds; pass --model {folder}"
        )
    return lm
