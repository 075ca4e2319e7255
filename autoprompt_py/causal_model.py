"""Decoders (any ``AutoModelForCausalLM``) behind the model interface of ``model.py``.

A decoder predicts the answer slot as the next token: ``mask_logits`` at a position returns the
distribution of the token *after* it, so the encoder (``encoding.py``) gives the position of
the last real token before the slot, and every caller that reads slot logits (label scores,
relation ranks, calibration, search losses) works unchanged. The LM head runs at those
positions only, as for masked LMs; continuations (text after the slot, multi-token labels) are
read the same way (``continuation.py``).

Batches are right-padded: under causal attention a real token never sees the padding after it,
and the default position ids (0, 1, ...) are right for every real token, so batch size and
padding never change a figure. A decoder without a pad token needs none (any id fills the
padding, which the attention mask hides); the user's files are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from autoprompt_py.errors import AutopromptError
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.model_kind import CAUSAL


@dataclass
class CausalLM(LanguageModel):
    """A frozen decoder with its tokenizer, on one device (``language_model.LanguageModel``, as ``MaskedLM``)."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str
    autocast_dtype: torch.dtype | None = None
    # loaded with --trust-remote-code: a reload of the same model (tune --method head) may too
    trust_remote_code: bool = False
    kind: ClassVar[str] = CAUSAL
    reads_next_token: ClassVar[bool] = True  # the slot is the token after the text before it
    triggers_round_trip: ClassVar[bool] = True  # BPE/SentencePiece merges: nanoGCG's filter

    def __post_init__(self) -> None:
        self.model.eval()
        self.model.requires_grad_(False)
        self._gather_at: torch.Tensor | None = None
        # Every HF decoder ends in its LM head (the output embeddings) applied position-wise to
        # the final hidden states; gathering the wanted positions at the head's input is exact
        # for all families (OPT's forward bypasses its base model, so no hook can sit there).
        head = self.model.get_output_embeddings()
        if head is None:
            raise AutopromptError(f"--model {self.name}: this decoder has no LM head to score with")
        head.register_forward_pre_hook(self._gather_hook)
        self.uses_token_type_ids = False  # GPT-2's token types are not segments: never sent

    @property
    def trigger_fill_id(self) -> int:
        """What open trigger slots hold when a search starts: a decoder has no mask token, so
        ``x`` as nanoGCG starts (``x x x ...``), or the eos token if ``x`` is not one token."""
        ids = self.tokenizer.encode(" x", add_special_tokens=False)
        if len(ids) == 1:
            return ids[0]
        return self.tokenizer.eos_token_id or 0

    # A decoder fills no mask token, whatever its tokenizer names (Gemma's names one it was
    # never trained to fill): the slot is the next token, and no [MASK] row is written.
    @property
    def mask_token(self) -> str | None:
        return None

    @property
    def mask_token_id(self) -> int | None:
        return None

    @property
    def special_ids(self) -> frozenset[int]:
        """The tokenizer's special ids as if it named no mask token (one that another special
        name holds too stays): a decoder's mask token is none of its tokens."""
        tok = self.tokenizer
        named = [v for k, v in tok.special_tokens_map.items() if k != "mask_token"]
        others = {*named, *map(str, getattr(tok, "extra_special_tokens", None) or ())}
        mask = tok.mask_token
        kept = [t for t in tok.all_special_tokens if t != mask or t in others]
        return frozenset(tok.convert_tokens_to_ids(kept))

    @property
    def max_length(self) -> int:
        """The longest input that both tokenizer and model accept."""
        limit = self.tokenizer.model_max_length
        config = self.model.config
        positions = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        if not limit or limit > 100_000:  # tokenizers without a limit say 1e30
            limit = positions or 2048
        return min(limit, positions) if positions else limit

    def _gather_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        if self._gather_at is None:
            return None
        hidden = args[0]
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        return (hidden[rows, self._gather_at], *args[1:])

    def mask_logits(
        self,
        mask_positions: torch.Tensor,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits at ``mask_positions`` ([batch, k]): [batch, k, vocab].
        ``token_type_ids`` is accepted for the interface and ignored."""
        kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": False}
        if inputs_embeds is not None:
            kwargs["inputs_embeds"] = inputs_embeds
        else:
            kwargs["input_ids"] = input_ids
        with self.head_at(mask_positions), self.autocast():
            out = self.model(**kwargs, return_dict=True)
        return out.logits

    def shared_prefix_logits(
        self,
        mask_positions: torch.Tensor,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor,
        split_at: torch.Tensor,
        group: int,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``mask_logits`` for rows that come in groups of ``group`` consecutive rows sharing
        their first ``split_at[r]`` tokens (one example under many candidate triggers, the
        first trigger at ``split_at``): the shared text runs once per group and its key/value
        cache serves every row of the group (nanoGCG's prefix cache). The same logits.

        The prefixes of a batch differ in length: they are right-padded, the padding hidden by
        the attention mask, and the rest of each row gets explicit position ids after its own
        prefix, so padding moves no position."""
        rows, width = input_ids.shape
        if group <= 1 or rows % group:
            return self.mask_logits(mask_positions, attention_mask, input_ids=input_ids)
        lead = split_at[::group]  # [examples]: tokens before the first trigger
        p_max = int(lead.max())
        if p_max < 1:
            return self.mask_logits(mask_positions, attention_mask, input_ids=input_ids)
        prefix_mask = (torch.arange(p_max, device=lead.device)[None, :] < lead[:, None]).long()
        with self.autocast():
            cache = self.model(
                input_ids=input_ids[::group, :p_max],
                attention_mask=prefix_mask,
                use_cache=True,
                logits_to_keep=1,  # the prefix's logits are never read
            ).cache
        cache.batch_repeat_interleave(group)
        starts = split_at  # [rows]
        lengths = attention_mask.sum(1)
        rest = int((lengths - starts).max())
        steps = torch.arange(rest, device=input_ids.device)
        take = (starts[:, None] + steps[None, :]).clamp(max=width - 1)
        rest_mask = (steps[None, :] < (lengths - starts)[:, None]).long()
        rest_ids = input_ids.gather(1, take) * rest_mask
        full_mask = torch.cat([prefix_mask.repeat_interleave(group, 0), rest_mask], 1)
        with self.head_at(mask_positions - starts[:, None]), self.autocast():
            out = self.model(
                input_ids=rest_ids,
                attention_mask=full_mask,
                position_ids=starts[:, None] + steps[None, :],
                cache=cache,
                use_cache=True,
                return_dict=True,
            )
        return out.logits

    def peft_task_type(self, peft: Any, method: str) -> Any:
        return peft.TaskType.CAUSAL_LM  # loads back as PeftModelForCausalLM

    def sequence_head_options(self) -> dict[str, Any]:
        """The head reads the last token that is not pad: a pad id must be set (eos where the
        tokenizer has none)."""
        tok = self.tokenizer
        return {
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        }

    def head_input_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int | None
    ) -> torch.Tensor:
        """Right padding filled with the pad id: the head reads the last token that is not."""
        return input_ids.masked_fill(attention_mask == 0, pad_id)

    def prefix_key_values(self, ids: list[int], layers: int) -> torch.Tensor:
        return _cached_key_values(self, ids)  # a decoder's cache holds its keys after RoPE


def load_causal(
    source: str,
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    dtype: torch.dtype,
    autocast_dtype: torch.dtype | None,
    **kwargs: Any,
) -> CausalLM:
    """Load a decoder whose kind ``model_kind`` established; ``kwargs`` go to from_pretrained."""
    from transformers import AutoModelForCausalLM

    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, output_loading_info=True, **kwargs
        )
    except Exception as e:  # transformers raises many types for a bad folder or offline hub
        from autoprompt_py.remote_code import local_load_failure
        from autoprompt_py.textfile import damaged_file

        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        folder = Path(source)
        missing = (
            (local_load_failure(reason, name) or damaged_file(folder)) if folder.is_dir() else None
        )
        raise AutopromptError(
            f"--model {name}: {missing or f'could not load a decoder ({reason[:200]})'}"
        ) from None
    missing = [k for k in info.get("missing_keys") or () if "lm_head" in k or "embed_out" in k]
    if missing and not getattr(model.config, "tie_word_embeddings", False):
        raise AutopromptError(
            f"--model {name}: the weights lack the decoder's LM head ({missing[0]}); save the "
            "model with its head (an ...ForCausalLM class)"
        )
    trusted = bool(kwargs.get("trust_remote_code", False))
    return CausalLM(model.to(device), tokenizer, name, autocast_dtype, trusted)


def _cached_key_values(lm: CausalLM, ids: list[int]) -> torch.Tensor:
    """``CausalLM.prefix_key_values``: the keys and values its cache holds after reading
    ``ids`` (positions 0..n-1), as PEFT's prefix embedding lays them out."""
    input_ids = torch.tensor([ids], device=lm.device)
    with torch.no_grad():
        out = lm.model(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=True
        )
    cache = getattr(out, "cache", None) or out.past_key_values
    rows = []
    for layer in cache.layers:  # [1, kv heads, n, head size] each
        k, v = (t[0].transpose(0, 1).reshape(len(ids), -1) for t in (layer.keys, layer.values))
        rows.append(torch.cat([k, v], dim=-1))
    return torch.cat(rows, dim=-1).float().cpu()
