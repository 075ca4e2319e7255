"""Tiny random-weight decoders of five families, built in code with real subword tokenizers.

Each tokenizer is *trained* here with the ``tokenizers`` library on the text of the shipped
examples, templates and verbalizers (a fraction of a second), so that leading-space behaviour
is the real one: byte-level BPE as GPT-2 (``Ġgreat``) for gpt2, qwen2, gpt-neox and opt, and a
Metaspace BPE as Llama's SentencePiece (``▁great``, a bos token added) for llama. Special tokens
follow each family: GPT-2 and GPT-NeoX have no pad token, Qwen2 pads with ``<|endoftext|>`` and
adds no bos, OPT starts every input with ``</s>`` and pads with ``<pad>``.

``build_tiny_decoder(family, folder)`` saves model and tokenizer with ``save_pretrained``, so
``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained(folder)`` reload them.
All models: 2 layers, hidden 32, 2 heads, 128 positions, float32, seeded.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

ROOT = Path(__file__).resolve().parents[1]
FAMILIES: tuple[str, ...] = ("gpt2", "llama", "qwen2", "gpt-neox", "opt")
MAX_LENGTH = 128
HIDDEN = 32
SEED = 4321
# words a test needs as single tokens after a space (verbalizer words, LAMA objects)
EXTRA_TEXT = "It was great . It was terrible . fantastic unwatchable good bad Paris Rome Berlin"


def corpus() -> list[str]:
    """Every line of the shipped examples, templates and verbalizers, a few times over."""
    lines: list[str] = []
    for folder in ("examples", "templates", "verbalizers"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in (".tsv", ".jsonl", ".json", ".txt"):
                text = path.read_text(encoding="utf-8")
                # field values and template words, without JSON's punctuation
                lines += [re.sub(r'[{}"\[\]]|\\t', " ", line) for line in text.splitlines()]
    return (lines + [EXTRA_TEXT]) * 3


def _byte_level_bpe(specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def _metaspace_bpe(specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=1500, min_frequency=2, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    return tok


def _wrap(backend: Tokenizer, **specials: str):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=MAX_LENGTH,
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
        **specials,
    )


def build_tokenizer(family: str):
    """The trained tokenizer of ``family`` (in memory)."""
    if family == "llama":
        tok = _metaspace_bpe(["<unk>", "<s>", "</s>"])
        return _wrap(tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if family == "opt":
        tok = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>"])
        eos = tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(
            single="</s> $A", pair="</s> $A $B", special_tokens=[("</s>", eos)]
        )
        return _wrap(tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tok = _byte_level_bpe(["<|endoftext|>"])
    if family == "qwen2":
        return _wrap(tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    # gpt2, gpt-neox: bos = eos = <|endoftext|>, never added, no pad token
    return _wrap(tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def build_model(family: str, tokenizer) -> torch.nn.Module:
    import transformers as tf

    vocab = len(tokenizer)
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if family == "gpt2":
        config = tf.GPT2Config(
            vocab_size=vocab, n_positions=MAX_LENGTH, n_embd=HIDDEN, n_layer=2, n_head=2, **ids
        )
        return tf.GPT2LMHeadModel(config)
    if family in ("llama", "qwen2"):
        cls = tf.LlamaConfig if family == "llama" else tf.Qwen2Config
        config = cls(
            vocab_size=vocab,
            hidden_size=HIDDEN,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=MAX_LENGTH,
            tie_word_embeddings=family == "qwen2",
            **ids,
        )
        model = tf.LlamaForCausalLM if family == "llama" else tf.Qwen2ForCausalLM
        return model(config)
    if family == "gpt-neox":
        config = tf.GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=HIDDEN,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=MAX_LENGTH,
            rotary_pct=0.5,
            **ids,
        )
        return tf.GPTNeoXForCausalLM(config)
    if family == "opt":
        config = tf.OPTConfig(
            vocab_size=vocab,
            hidden_size=HIDDEN,
            ffn_dim=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=MAX_LENGTH,
            word_embed_proj_dim=HIDDEN,
            **ids,
        )
        return tf.OPTForCausalLM(config)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def build_tiny_decoder(family: str, folder: Path | str, tokenizer=None) -> Path:
    """Build, save (``save_pretrained``) and return the folder of the tiny ``family`` decoder
    (with ``tokenizer`` if given: the family's, changed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(family)
    torch.manual_seed(SEED)
    model = build_model(family, tokenizer).to(torch.float32).eval()
    # random weights give near-uniform next tokens; a larger scale makes label scores differ
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# Chat templates as the real models ship them: Qwen2's ChatML (a default system message) and
# Llama 3's headers, which start with {{ bos_token }} (a tokenizer that adds bos too: twice).
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
CHAT_STYLES = {
    "chatml": (CHATML, ["<|im_start|>", "<|im_end|>"]),
    "llama3": (LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
}


def build_chat_decoder(family: str, style: str, folder: Path | str) -> Path:
    """``build_tiny_decoder`` with a chat template (``chatml`` or ``llama3``): its header
    tokens added to the tokenizer as special tokens, the model's embeddings sized for them."""
    template, specials = CHAT_STYLES[style]
    tokenizer = build_tokenizer(family)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = template
    return build_tiny_decoder(family, folder, tokenizer)
