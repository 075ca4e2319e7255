"""``head``: a classification head on the encoder, no prompt (``AutoModelForSequenceClassification``
from the same checkpoint): the baseline the prompt methods are compared with."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoprompt_py.default_model import check_default_model, is_default_model
from autoprompt_py.encoding import Batch
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.tune.task import fields_only


class HeadPart:
    method = "head"

    def __init__(self, lm: LanguageModel, model: nn.Module, template) -> None:
        self.lm = lm
        self.model = model
        self.template = template
        self.uses_token_type_ids = lm.uses_token_type_ids

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def logits(self, batches: dict[int, Batch]) -> dict[int, torch.Tensor]:
        b = batches[0]
        ids = self.lm.head_input_ids(b.input_ids, b.attention_mask, self.model.config.pad_token_id)
        kwargs = {"input_ids": ids, "attention_mask": b.attention_mask}
        if self.uses_token_type_ids:
            kwargs["token_type_ids"] = b.token_type_ids
        return {0: self.model(**kwargs).logits}

    def train_mode(self, on: bool) -> None:
        self.model.train(on)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def save(self, folder: Path) -> dict[str, str]:
        self.model.save_pretrained(str(folder))
        self.lm.tokenizer.save_pretrained(str(folder))
        return {"model": "save_pretrained AutoModelForSequenceClassification"}


def model_source(lm: LanguageModel) -> str:
    return str(check_default_model()) if is_default_model(lm.name) else lm.name


def build(lm: LanguageModel, task, config, objective) -> HeadPart:
    from transformers import AutoModelForSequenceClassification

    labels = task.verbalizer.labels
    torch.manual_seed(config.seed)  # the new head's initial weights
    extra = lm.sequence_head_options()  # a decoder's: the pad id its head reads up to
    model = AutoModelForSequenceClassification.from_pretrained(
        model_source(lm),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)},
        trust_remote_code=getattr(lm, "trust_remote_code", False),  # explicit: never asked
        **extra,
    ).to(lm.device)
    return HeadPart(lm, model, fields_only(task.template))


MODEL_FOLDER = False  # does --model FOLDER load it as a masked LM?
ON_BASE_MODEL = False


def _no_prompt(folder: str):
    from autoprompt_py.errors import AutopromptError

    return AutopromptError(
        f"--template {folder}: a classification head (--method head) reads no prompt; its "
        "dev and test metrics are in its result.json"
    )


def tuned_template(template, result: dict, folder: str):
    raise _no_prompt(folder)


def attach(lm: LanguageModel, folder: str, result: dict) -> LanguageModel:
    raise _no_prompt(folder)


def not_a_model(folder: str, result: dict):
    from autoprompt_py.errors import AutopromptError

    return AutopromptError(
        f"--model {folder}: a classification head (--method head) has no masked-LM head, so "
        "no cloze prompt reads it; its dev and test metrics are in its result.json, and "
        "transformers' AutoModelForSequenceClassification.from_pretrained loads it"
    )
