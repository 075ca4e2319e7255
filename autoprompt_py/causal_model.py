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

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from autoprompt_py.errors import AutopromptError
from autoprompt_py.model_kind import CAUSAL


@dataclass
class CausalLM:
    """A frozen decoder with its tokenizer, on one device (the interface of ``MaskedLM``)."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str
    autocast_dtype: torch.dtype | None = None
    # loaded with --trust-remote-code: a reload of the same model (tune --method head) may too
    trust_remote_code: bool = False
    kind: ClassVar[str] = CAUSAL

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
    def device(self) -> torch.device:
        return self.embeddings.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.dtype

    @property
    def embeddings(self) -> torch.Tensor:
        """The input embedding matrix, [vocab, embedding dim]."""
        return self.model.get_input_embeddings().weight

    @property
    def vocab_size(self) -> int:
        return self.embeddings.shape[0]

    @property
    def trigger_fill_id(self) -> int:
        """What open trigger slots hold when a search starts: a decoder has no mask token, so
        ``x`` as nanoGCG starts (``x x x ...``), or the eos token if ``x`` is not one token."""
        ids = self.tokenizer.encode(" x", add_special_tokens=False)
        if len(ids) == 1:
            return ids[0]
        return self.tokenizer.eos_token_id or 0

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

    @contextlib.contextmanager
    def head_at(self, positions: torch.Tensor) -> Iterator[None]:
        """Within it, a forward of ``self.model`` (or a wrapper of it) runs the LM head at
        ``positions`` ([batch, k]) only: logits [batch, k, vocab] of the token after each."""
        self._gather_at = positions
        try:
            yield
        finally:
            self._gather_at = None

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
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with self.head_at(mask_positions), autocast:
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
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
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
        with self.head_at(mask_positions - starts[:, None]), autocast:
            out = self.model(
                input_ids=rest_ids,
                attention_mask=full_mask,
                position_ids=starts[:, None] + steps[None, :],
                cache=cache,
                use_cache=True,
                return_dict=True,
            )
        return out.logits

    def word_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of ids, as the model's embedding layer looks them up."""
        return self.model.get_input_embeddings()(input_ids)


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
    if tokenizer.mask_token is not None:
        # Some decoders' tokenizers (Gemma) name a mask token they were never trained to fill;
        # the encoder reads "no mask token" as "predict the next token". In memory only.
        tokenizer.mask_token = None
    trusted = bool(kwargs.get("trust_remote_code", False))
    return CausalLM(model.to(device), tokenizer, name, autocast_dtype, trusted)
