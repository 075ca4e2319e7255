"""``prompt``, ``ptuning``, ``prefix``, ``lora``: PEFT adapters (prompt tuning, Lester et al.
2021; P-tuning, Liu et al. 2021; prefix tuning / P-tuning v2, key/value prefixes in every
layer; LoRA, Hu et al. 2021), saved so ``PeftModel.from_pretrained`` loads them.

Prompt tuning and P-tuning take their virtual tokens from PEFT's prompt encoder
(``get_prompt``) and prepend them to the input embeddings, as PEFT's own forward does, but
here with the token types and mask positions shifted too (PEFT's feature-extraction forward
leaves BERT's ``token_type_ids`` one prompt short) and the MLM head at the masks only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoprompt_py.encoding import Batch
from autoprompt_py.errors import AutopromptError
from autoprompt_py.export import PEFT_INSTALL
from autoprompt_py.language_model import LanguageModel, WrappedLM
from autoprompt_py.model import config_value
from autoprompt_py.tune.init import init_vectors


def require_peft(method: str):
    try:
        import peft
    except ImportError:
        raise AutopromptError(
            f"--method {method} needs the PEFT library, which is not installed: {PEFT_INSTALL}"
        ) from None
    return peft


def prepend_logits(lm: LanguageModel, prompts: torch.Tensor, b: Batch) -> torch.Tensor:
    """Mask logits with ``prompts`` [batch or 1, n, E] before every input."""
    embeds = lm.word_embeddings(b.input_ids)
    n = prompts.shape[1]
    prompts = prompts.to(embeds.dtype).expand(len(embeds), -1, -1)
    ones = b.attention_mask.new_ones(len(embeds), n)
    zeros = b.token_type_ids.new_zeros(len(embeds), n)
    return lm.mask_logits(
        b.mask_positions + n,
        torch.cat([ones, b.attention_mask], 1),
        inputs_embeds=torch.cat([prompts, embeds], 1),
        token_type_ids=torch.cat([zeros, b.token_type_ids], 1),
    )


class PrependLM(WrappedLM):
    """A ``LanguageModel`` that reads fixed virtual-token vectors [n, E] before every input, for
    ``score`` / ``probe`` of a tuned ``prompt`` or ``ptuning`` folder."""

    def __init__(self, lm: LanguageModel, vectors: torch.Tensor) -> None:
        super().__init__(lm)
        self.vectors = vectors

    @property
    def max_length(self) -> int:
        return self.lm.max_length - len(self.vectors)

    def mask_logits(self, mask_positions, attention_mask, input_ids=None, inputs_embeds=None,
                    token_type_ids=None) -> torch.Tensor:  # fmt: skip
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(attention_mask)
        b = Batch(input_ids, attention_mask, token_type_ids, mask_positions, mask_positions, None)
        return prepend_logits(self.lm, self.vectors[None], b)


def prefix_logits(lm: LanguageModel, peft_model, b: Batch) -> torch.Tensor:
    """Mask logits through PEFT's prefix-tuning forward (the prefixes are past keys and
    values of every layer, so positions do not move); the MLM head at the masks only."""
    # PEFT's prompt-learning forward drops token types (one-segment templates: all zero)
    with lm.head_at(b.mask_positions):
        return peft_model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits


class PrefixLM(WrappedLM):
    """A ``LanguageModel`` read through a prefix-tuning PEFT model (``score`` / ``probe``)."""

    def __init__(self, lm: LanguageModel, peft_model) -> None:
        super().__init__(lm)
        self.peft_model = peft_model.eval()

    @property
    def max_length(self) -> int:  # the prefix's past keys shift every position
        return self.lm.max_length - self.peft_model.peft_config["default"].num_virtual_tokens

    def mask_logits(self, mask_positions, attention_mask, input_ids=None, inputs_embeds=None,
                    token_type_ids=None) -> torch.Tensor:  # fmt: skip
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(attention_mask)
        b = Batch(input_ids, attention_mask, token_type_ids, mask_positions, mask_positions, None)
        return prefix_logits(self.lm, self.peft_model, b)


class _PeftPart:
    def __init__(self, lm: LanguageModel, template, peft_model, peft) -> None:
        self.lm, self.template, self.peft_model, self.peft = lm, template, peft_model, peft

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.peft_model.parameters() if p.requires_grad]

    def modules(self) -> list[nn.Module]:
        return [self.peft_model]

    def train_mode(self, on: bool) -> None:
        self.peft_model.train(on)

    def state(self) -> dict[str, torch.Tensor]:
        sd = self.peft.get_peft_model_state_dict(self.peft_model)
        return {k: v.detach().cpu().clone() for k, v in sd.items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.peft.set_peft_model_state_dict(self.peft_model, state)

    def save(self, folder: Path) -> dict[str, str]:
        self.peft_model.save_pretrained(str(folder))
        return {
            "adapter_config.json": "PEFT config: PeftModel.from_pretrained(base, folder)",
            "adapter_model.safetensors": "PEFT adapter weights",
        }


class LoraPart(_PeftPart):
    method = "lora"

    def logits(self, batches: dict[int, Batch]) -> dict[int, torch.Tensor]:
        return {  # the LoRA layers sit inside lm.model: its own forward, masks only
            k: self.lm.mask_logits(
                b.mask_positions, b.attention_mask, b.input_ids, token_type_ids=b.token_type_ids
            )
            for k, b in batches.items()
        }


class PrefixPart(_PeftPart):
    method = "prefix"

    def logits(self, batches: dict[int, Batch]) -> dict[int, torch.Tensor]:
        return {k: prefix_logits(self.lm, self.peft_model, b) for k, b in batches.items()}


class PromptPart(_PeftPart):
    method = "prompt"

    def prompts(self, batch: int = 1) -> torch.Tensor:
        return self.peft_model.get_prompt(batch_size=batch)

    def logits(self, batches: dict[int, Batch]) -> dict[int, torch.Tensor]:
        prompts = self.prompts(1)
        return {k: prepend_logits(self.lm, prompts, b) for k, b in batches.items()}

    def save(self, folder: Path) -> dict[str, str]:
        from autoprompt_py.tune.vectors import write_embeddings

        files = super().save(folder)
        self.peft_model.eval()
        with torch.no_grad():
            vectors = self.prompts(1)[0]
        return {**files, **write_embeddings(folder, self.lm, self.template, vectors)}


def _task_type(peft, lm: LanguageModel, method: str = "prompt"):
    """PEFT's task type as saved in the adapter (``LanguageModel.peft_task_type``)."""
    return lm.peft_task_type(peft, method)


def build(lm: LanguageModel, task, config, objective):
    peft = require_peft(config.method)
    torch.manual_seed(config.seed)
    if config.method == "lora":
        kwargs = dict(r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout)  # fmt: skip
        if (task_type := _task_type(peft, lm, "lora")) is not None:
            kwargs["task_type"] = task_type
        try:
            cfg = peft.LoraConfig(**kwargs)
            model = peft.get_peft_model(lm.model, cfg)
        except ValueError:  # a family PEFT has no default target modules for
            model = peft.get_peft_model(
                lm.model, peft.LoraConfig(target_modules="all-linear", **kwargs)
            )
        part = LoraPart(lm, task.template, model, peft)
        return part
    from autoprompt_py.tune.found import found_ids, resolve_init

    layers = config_value(lm.model.config, "num_hidden_layers", "n_layers")
    heads = config_value(lm.model.config, "num_attention_heads", "n_heads")
    init = resolve_init(config, task)
    found = found_ids(task) if init == "found" else None
    n = config.num_virtual_tokens or (len(found) if found else 8)
    # every family counts positions past the virtual tokens (a prefix's past keys shift them
    # too), so inputs are truncated to leave them room
    if n >= lm.max_length:
        raise AutopromptError(
            f"--method {config.method}: {n} virtual tokens leave no room for the input in this "
            f"model's {lm.max_length} positions; use a prompt of fewer tokens"
        )
    objective.max_length = lm.max_length - n
    if config.method == "prefix":
        return build_prefix(lm, task, config, peft, n, init, found, layers, heads)
    vectors, _ = init_vectors(lm, n, init, config.seed, found, config.init_text)
    found = task.found
    if init == "found" and found is not None and found.vectors and found.method == "prompt":
        from autoprompt_py.tune.vectors import read_embeddings  # a tuned prompt folder's

        trained = read_embeddings(found.vectors).float()
        if len(trained) == n:
            vectors = trained
    common = dict(
        task_type=_task_type(peft, lm), num_virtual_tokens=n,
        token_dim=int(vectors.shape[1]), num_transformer_submodules=1,
        num_layers=config_value(lm.model.config, "num_hidden_layers", "n_layers"),
        num_attention_heads=config_value(lm.model.config, "num_attention_heads", "n_heads"),
    )  # fmt: skip
    if config.method == "prompt":
        cfg = peft.PromptTuningConfig(**common)
    else:
        cfg = peft.PromptEncoderConfig(
            **common, encoder_hidden_size=config.encoder_hidden,
            encoder_reparameterization_type=config.encoder.upper(),
        )  # fmt: skip
    model = peft.get_peft_model(lm.model, cfg)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.copy_(vectors)
    part = PromptPart(lm, task.template, model, peft)
    part.method = config.method
    return part


def build_prefix(
    lm: LanguageModel, task, config, peft, n, init, found, layers, heads
) -> PrefixPart:
    """Prefix tuning started from real words (Li & Liang 2021): each virtual token's key and
    value in every layer are those the start tokens (found, text or vocab) produce when the
    model reads them; ``--init random`` keeps PEFT's own start."""
    from autoprompt_py.tune.init import prefix_activations, start_ids

    hidden = int(lm.model.config.hidden_size)
    cfg = peft.PrefixTuningConfig(
        task_type=_task_type(peft, lm), num_virtual_tokens=n, token_dim=hidden,
        num_transformer_submodules=1, num_layers=layers, num_attention_heads=heads,
    )  # fmt: skip
    ids = start_ids(lm, n, init, config.seed, found, config.init_text)
    start = prefix_activations(lm, ids, layers) if ids is not None else None
    model = peft.get_peft_model(lm.model, cfg)
    if start is not None:
        weight = model.prompt_encoder["default"].embedding.weight
        if tuple(start.shape) != tuple(weight.shape):  # e.g. grouped-query attention's keys
            raise AutopromptError(
                f"--method prefix: this model's keys and values ({tuple(start.shape)}) do not "
                f"fit PEFT's prefix ({tuple(weight.shape)}); use --init random (PEFT's own start)"
            )
        with torch.no_grad():
            weight.copy_(start)
    part = PrefixPart(lm, task.template, model, peft)
    part.start_ids = ids
    return part


MODEL_FOLDER = False  # does --model FOLDER load it as a masked LM?
ON_BASE_MODEL = True


def tuned_template(template, result: dict, folder: str):
    from autoprompt_py.tune.methods.attach import fixed_triggers

    return fixed_triggers(template, result)


def attach(lm: LanguageModel, folder: str, result: dict):
    from autoprompt_py.tune.methods.attach import check_same_base, load_vectors

    check_same_base(lm, folder, result)
    method = result["method"]
    peft = require_peft(method)
    if method == "lora":
        peft.PeftModel.from_pretrained(lm.model, folder)  # the LoRA layers go into lm.model
        return lm
    if method == "prefix":
        return PrefixLM(lm, peft.PeftModel.from_pretrained(lm.model, folder))
    return PrependLM(lm, load_vectors(lm, folder))  # prompt, ptuning: the encoder's output


def not_a_model(folder: str, result: dict):
    from autoprompt_py.tune.methods.attach import prompt_not_a_model

    return prompt_not_a_model(folder, result)
