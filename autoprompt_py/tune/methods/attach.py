"""Reading a tuned folder back onto a model, for ``score``, ``probe`` and ``predict``: what
every method's ``attach`` and ``tuned_template`` share."""

from __future__ import annotations

from pathlib import Path

import torch

from autoprompt_py.errors import AutopromptError
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.model_kind import check_kind
from autoprompt_py.prompt import model_record
from autoprompt_py.template import Template
from autoprompt_py.tune.vectors import EMBEDDINGS_FILE, read_embeddings


def check_same_base(lm: LanguageModel, folder: str | Path, result: dict) -> None:
    """A prompt tuned on one model is read by that model only (same name and sizes)."""
    want, have = result["model"], model_record(lm)
    check_kind(want.get("kind"), lm.kind, f"--template {folder}", lm.name)
    keys = ("vocab_size", "embedding_size", "name")
    if tuple(want[k] for k in keys) != tuple(have[k] for k in keys):
        raise AutopromptError(
            f"--template {folder}: tuned for --model {want['name']} (vocabulary "
            f"{want['vocab_size']}, embeddings {want['embedding_size']}), not {lm.name}; "
            f"pass --model {want['name']}"
        )


def load_vectors(lm: LanguageModel, folder: str | Path) -> torch.Tensor:
    """The trained vectors [n, E] of a folder (the layout ``export --format embeddings``
    writes), on the model's device."""
    return read_embeddings(Path(folder) / EMBEDDINGS_FILE).to(lm.device)


def fixed_triggers(template: Template, result: dict) -> Template:
    """The template a method trained with its prompt fixed: a search result's triggers kept."""
    if not template.num_triggers:
        return template
    return template.with_triggers(result["trigger_ids"], result.get("trigger_tokens"))


def prompt_not_a_model(folder: str, result: dict) -> AutopromptError:
    """A prompt folder given as --model: it goes in --template, with the model it was tuned on."""
    return AutopromptError(
        f"--model {folder}: a tuned prompt (--method {result['method']}), not a model; pass "
        f"it as --template {folder} with --model {result['model']['name']}"
    )
