"""Which kind of language model a checkpoint holds, read from its config before any weight
loads: a masked LM (``AutoModelForMaskedLM``) or a decoder (``AutoModelForCausalLM``).

The config's ``architectures`` (the class ``save_pretrained`` was called on) decide; a config
without them falls back on its ``model_type`` in transformers' two auto mappings. An
encoder-decoder (T5, BART) and a class of neither kind (``BertModel``, a classifier) are
refused by name: their prediction head is not there to score with.
"""

from __future__ import annotations

from autoprompt_py.errors import AutopromptError

MASKED = "masked"
CAUSAL = "causal"
KINDS = (MASKED, CAUSAL)
SUPPORTED = (
    "masked LMs (an ...ForMaskedLM checkpoint such as BERT or RoBERTa) and decoders "
    "(an ...ForCausalLM / ...LMHeadModel checkpoint such as GPT-2, Llama or Qwen2)"
)


def _mappings() -> tuple[dict[str, str], dict[str, str]]:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return dict(MODEL_FOR_MASKED_LM_MAPPING_NAMES), dict(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def kind_of_config(config: object, name: str) -> str:
    """``"masked"`` or ``"causal"`` for a transformers config; a user error for any other."""
    masked, causal = _mappings()
    archs = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
    model_type = str(getattr(config, "model_type", "") or "")
    shown = ", ".join(archs) or f"model_type {model_type or '?'}"
    if getattr(config, "is_encoder_decoder", False):
        raise AutopromptError(
            f"--model {name}: {shown} is an encoder-decoder model, which is not supported; "
            f"use one of the supported kinds: {SUPPORTED}"
        )
    causal_classes, masked_classes = set(causal.values()), set(masked.values())
    for arch in archs:
        if arch in causal_classes:
            return CAUSAL
        # BertForPreTraining and its kin hold the MLM head under the masked LM's weight names
        if arch in masked_classes or arch.endswith("ForPreTraining"):
            return MASKED
    # a model with code of its own (loaded with --trust-remote-code) names its Auto classes
    auto_map = getattr(config, "auto_map", None) or {}
    if isinstance(auto_map, dict):
        if "AutoModelForCausalLM" in auto_map:
            return CAUSAL
        if "AutoModelForMaskedLM" in auto_map:
            return MASKED
    if not archs:
        if model_type in masked:
            return MASKED
        if model_type in causal:
            return CAUSAL
    raise AutopromptError(
        f"--model {name}: {shown} has no head to predict tokens with (neither an MLM head nor a "
        f"decoder's LM head); use one of the supported kinds: {SUPPORTED}"
    )


def check_kind(recorded: object, kind: str, what: str, model: str) -> None:
    """A result or tuned folder made on one kind of model is refused on the other: its
    token ids and scores mean nothing there. ``recorded`` None (older files): not checked."""
    if recorded is None or recorded == kind:
        return
    raise AutopromptError(
        f"{what}: made with a {recorded} model, but --model {model} is a {kind} model; "
        f"use it with a {recorded} model (the one it records) or redo it on this one"
    )
