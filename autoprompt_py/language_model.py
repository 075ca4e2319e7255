"""The one interface of a language model, whatever its kind.

``MaskedLM`` (``model.py``) and ``CausalLM`` (``causal_model.py``) implement it; a third kind
(an encoder-decoder, say) would be a third subclass and one line in ``model_kind.py``. What
both kinds do alike is written here once; every question whose answer depends on the kind is
a member with one answer per subclass, so that no module outside the model modules asks which
kind it holds (the provenance checks that compare a recorded kind with the model's aside).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from autoprompt_py.encoding import TemplateEncoder
from autoprompt_py.template import Template


class LanguageModel(ABC):
    """A frozen language model with its tokenizer, on one device."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str
    # float32 weights with the forward under autocast to this dtype (bf16 on GPUs), or None
    autocast_dtype: torch.dtype | None
    # loaded with --trust-remote-code: a reload of the same model (tune --method head) may too
    trust_remote_code: bool
    uses_token_type_ids: bool

    kind: ClassVar[str]  # what results record (model_kind.MASKED, model_kind.CAUSAL)
    # the answer slot is the next token after the text before it (a decoder), not a mask
    # read with the text on both sides; text after the slot is then scored as a continuation
    reads_next_token: ClassVar[bool]
    # a candidate trigger must read back as the same ids from its text (BPE and SentencePiece
    # merges): results are written as text, and a decoder's found prompt must reproduce
    triggers_round_trip: ClassVar[bool]

    _gather_at: torch.Tensor | None

    # -- what every kind shares ----------------------------------------------------------------

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

    def word_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of ids, as the model's embedding layer looks them up."""
        return self.model.get_input_embeddings()(input_ids)

    @contextlib.contextmanager
    def head_at(self, positions: torch.Tensor) -> Iterator[None]:
        """Within it, a forward of ``self.model`` (or of a wrapper of it, such as a PEFT
        model) runs the LM head at ``positions`` ([batch, k]) only: logits [batch, k, vocab]."""
        self._gather_at = positions
        try:
            yield
        finally:
            self._gather_at = None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's autocast (``autocast_dtype``), or nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def encoder(
        self,
        template: Template,
        *,
        n_masks: int = 1,
        trigger_fill_id: int | None = None,
        answer_ids: Sequence[int] | None = None,
        max_length: int | None = None,
    ) -> TemplateEncoder:
        """The encoder of ``template`` for this model: its tokenizer, its ``max_length`` (a
        wrapper that reads virtual tokens before the input answers a shorter one; a caller
        may ask for less) and how it reads the slot."""
        return TemplateEncoder(
            template,
            self.tokenizer,
            self.max_length if max_length is None else max_length,
            n_masks=n_masks,
            trigger_fill_id=trigger_fill_id,
            answer_ids=answer_ids,
            next_token=self.reads_next_token,
        )

    # -- what each kind answers ----------------------------------------------------------------

    @property
    @abstractmethod
    def trigger_fill_id(self) -> int:
        """What open trigger slots hold when a search starts (``--initial mask``)."""

    @property
    @abstractmethod
    def mask_token(self) -> str | None:
        """The mask token's text the model fills (a content-free ``[MASK]`` row writes it);
        None for a decoder, whose tokenizer may still name one (Gemma's) it never fills."""

    @property
    @abstractmethod
    def mask_token_id(self) -> int | None:
        """``mask_token``'s id; None for a decoder."""

    @property
    @abstractmethod
    def special_ids(self) -> frozenset[int]:
        """The ids of the tokenizer's special tokens (no random start of a tuned prompt is one);
        a decoder's leave out a mask token its tokenizer names, which it never reads."""

    @property
    @abstractmethod
    def max_length(self) -> int:
        """The longest input, special tokens included, that both tokenizer and model accept."""

    @abstractmethod
    def mask_logits(
        self,
        mask_positions: torch.Tensor,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [batch, k, vocab] of the answer at each of ``mask_positions`` ([batch, k])."""

    def shared_prefix_logits(
        self,
        mask_positions: torch.Tensor,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor,
        split_at: torch.Tensor,
        group: int,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``mask_logits`` of rows in groups of ``group`` that share their first ``split_at``
        tokens. Here nothing is shared: every token of a masked LM sees the triggers, and a
        wrapper's trained part changes what every row reads; a decoder (``CausalLM``) runs
        the prefix once."""
        return self.mask_logits(
            mask_positions, attention_mask, input_ids=input_ids, token_type_ids=token_type_ids
        )

    @abstractmethod
    def peft_task_type(self, peft: Any, method: str) -> Any:
        """The PEFT task type its ``method`` adapter (``lora``, ``prompt``, ...) is saved with
        and loads back as; None: PEFT's own model for the method, no task type."""

    @abstractmethod
    def sequence_head_options(self) -> dict[str, Any]:
        """More ``AutoModelForSequenceClassification.from_pretrained`` options a
        classification head on this model needs (a decoder's: the pad id it reads up to)."""

    @abstractmethod
    def head_input_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int | None
    ) -> torch.Tensor:
        """The ids a classification head on this model is given for a right-padded batch."""

    @abstractmethod
    def prefix_key_values(self, ids: list[int], layers: int) -> torch.Tensor:
        """[n, layers × 2 × hidden]: per token, the key and then the value of each layer when
        the model reads ``ids`` alone (positions 0..n-1), laid out as PEFT's prefix-tuning
        embedding (layer l's key at 2l, its value at 2l + 1)."""


class WrappedLM(LanguageModel):
    """A model read through a trained part on top of it (soft vectors, a PEFT prompt or
    prefix: ``tune/methods``). Every member answers as the base ``lm`` does; a subclass
    overrides what its part changes (``mask_logits``, ``word_embeddings``, ``max_length``).
    An explicit interface, not attribute forwarding: a member only one kind has cannot be
    reached through a wrapper by accident."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.model = lm.model
        self.tokenizer = lm.tokenizer
        self.name = lm.name
        self.autocast_dtype = lm.autocast_dtype
        self.trust_remote_code = lm.trust_remote_code
        self.uses_token_type_ids = lm.uses_token_type_ids

    # the kind's class constants, read from the base per instance
    @property
    def kind(self) -> str:
        return self.lm.kind

    @property
    def reads_next_token(self) -> bool:
        return self.lm.reads_next_token

    @property
    def triggers_round_trip(self) -> bool:
        return self.lm.triggers_round_trip

    def word_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.word_embeddings(input_ids)

    def head_at(self, positions: torch.Tensor) -> contextlib.AbstractContextManager:
        return self.lm.head_at(positions)  # the base's hook reads the positions

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.lm.autocast()

    @property
    def trigger_fill_id(self) -> int:
        return self.lm.trigger_fill_id

    @property
    def mask_token(self) -> str | None:
        return self.lm.mask_token

    @property
    def mask_token_id(self) -> int | None:
        return self.lm.mask_token_id

    @property
    def special_ids(self) -> frozenset[int]:
        return self.lm.special_ids

    @property
    def max_length(self) -> int:
        return self.lm.max_length

    def mask_logits(
        self,
        mask_positions: torch.Tensor,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.lm.mask_logits(
            mask_positions, attention_mask, input_ids, inputs_embeds, token_type_ids
        )

    def peft_task_type(self, peft: Any, method: str) -> Any:
        return self.lm.peft_task_type(peft, method)

    def sequence_head_options(self) -> dict[str, Any]:
        return self.lm.sequence_head_options()

    def head_input_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int | None
    ) -> torch.Tensor:
        return self.lm.head_input_ids(input_ids, attention_mask, pad_id)

    def prefix_key_values(self, ids: list[int], layers: int) -> torch.Tensor:
        return self.lm.prefix_key_values(ids, layers)
