"""``soft``: the template's ``[T]`` slots become trainable vectors; model and head frozen
(OptiPrompt; P-tuning without its encoder).

The slots are given token ids past the vocabulary (``vocab_size + i``), and ``SoftPromptLM``
looks those ids up in its vectors and every other id in the model's embedding matrix. So the
encoder, ``classify`` and ``probe_facts`` run a tuned prompt exactly as any template, and
training and scoring share one forward.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoprompt_py.encoding import Batch
from autoprompt_py.language_model import LanguageModel, WrappedLM
from autoprompt_py.template import Template
from autoprompt_py.tune.init import init_vectors


def vector_template(template: Template, first_id: int, n: int | None = None) -> Template:
    """The template with its slots fixed to the ids ``first_id``, ``first_id + 1``, …"""
    n = template.num_triggers if n is None else n
    return template.with_triggers(
        list(range(first_id, first_id + n)), [f"[V{i + 1}]" for i in range(n)]
    )


class SoftPromptLM(WrappedLM):
    """A ``LanguageModel`` whose ids ≥ ``first_id`` are the rows of ``vectors`` [n, E]."""

    def __init__(
        self, lm: LanguageModel, vectors: torch.Tensor, first_id: int | None = None
    ) -> None:
        super().__init__(lm)
        self.vectors = vectors
        self.first_id = lm.vocab_size if first_id is None else first_id

    def word_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        soft = input_ids >= self.first_id
        base = self.lm.word_embeddings(input_ids.clamp(max=self.first_id - 1))
        if not bool(soft.any()):
            return base
        rows = (input_ids - self.first_id).clamp(0, len(self.vectors) - 1)
        return torch.where(soft[..., None], self.vectors.to(base.dtype)[rows], base)

    def mask_logits(
        self,
        mask_positions: torch.Tensor,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        return self.lm.mask_logits(
            mask_positions,
            attention_mask,
            inputs_embeds=inputs_embeds,
            token_type_ids=token_type_ids,
        )


class SoftPart:
    method = "soft"

    def __init__(
        self, lm: LanguageModel, template: Template, vectors: torch.Tensor, start_ids
    ) -> None:
        self.lm = lm
        self.source_template = template
        self.vectors = nn.Parameter(vectors.to(lm.device, torch.float32))
        self.start_ids = start_ids
        self.soft_lm = SoftPromptLM(lm, self.vectors)
        self.template = vector_template(template, lm.vocab_size)

    def trainable(self) -> list[nn.Parameter]:
        return [self.vectors]

    def modules(self) -> list[nn.Module]:
        return [self.lm.model]

    def logits(self, batches: dict[int, Batch]) -> dict[int, torch.Tensor]:
        return {
            k: self.soft_lm.mask_logits(
                b.mask_positions, b.attention_mask, b.input_ids, token_type_ids=b.token_type_ids
            )
            for k, b in batches.items()
        }

    def train_mode(self, on: bool) -> None:
        self.lm.model.train(on)

    def state(self) -> dict[str, torch.Tensor]:
        return {"vectors": self.vectors.detach().cpu().clone()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.vectors.copy_(state["vectors"])

    def save(self, folder: Path) -> dict[str, str]:
        from autoprompt_py.tune.vectors import write_embeddings

        return write_embeddings(folder, self.lm, self.source_template, self.vectors.detach())


def build(lm: LanguageModel, task, config, objective) -> SoftPart:
    """The slots start where ``--init`` says (``auto``: what the template found): a search
    result's trigger embeddings make step 0 the discrete prompt itself, a tuned ``soft``
    folder's trained vectors continue its run."""
    from autoprompt_py.tune.found import found_ids, resolve_init

    n = task.template.num_triggers
    init = resolve_init(config, task)
    found = task.found
    if init == "found" and found is not None and found.vectors and found.method == "soft":
        from autoprompt_py.tune.vectors import read_embeddings

        vectors = read_embeddings(found.vectors).float()
        if len(vectors) == n:
            return SoftPart(lm, task.template, vectors, found_ids(task) or None)
    vectors, ids = init_vectors(lm, n, init, config.seed, found_ids(task), config.init_text)
    return SoftPart(lm, task.template, vectors, ids)


MODEL_FOLDER = False  # does --model FOLDER load it as a masked LM?
ON_BASE_MODEL = True


def tuned_template(template: Template, result: dict, folder: str) -> Template:
    return vector_template(template, int(result["model"]["vocab_size"]))


def attach(lm: LanguageModel, folder: str, result: dict) -> SoftPromptLM:
    from autoprompt_py.tune.methods.attach import check_same_base, load_vectors

    check_same_base(lm, folder, result)
    return SoftPromptLM(lm, load_vectors(lm, folder))


def not_a_model(folder: str, result: dict):
    from autoprompt_py.tune.methods.attach import prompt_not_a_model

    return prompt_not_a_model(folder, result)
