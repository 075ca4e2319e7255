"""Template × tokenizer × examples → token ids with the positions of triggers and masks.

Each part of a template is tokenized on its own (literals once, fields per example) and the
pieces are concatenated, so the positions of trigger slots and masks are known exactly for
WordPiece, byte-level BPE and SentencePiece alike, and a long input is cut from its
shortenable fields only. Special tokens are added in the model's own layout; a template read
as a chat (``template.chat``) is framed by the decoder's chat template (``chat.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from autoprompt_py.chat import chat_frame
from autoprompt_py.data import Example, check_fields
from autoprompt_py.errors import AutopromptError
from autoprompt_py.template import Field, Literal, Predict, Template, Trigger


@functools.lru_cache(maxsize=32)
def spaces_are_tokens(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True for tokenizers (byte-level BPE) that encode a leading space into the next token."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    spaced = tokenizer.encode(" a", add_special_tokens=False)
    return len(spaced) == len(plain) == 1 and spaced != plain


def tokenize_piece(tokenizer: PreTrainedTokenizerBase, text: str, space_before: bool) -> list[int]:
    """Token ids of a piece of text that follows a space (or not) in the full input."""
    return tokenize_pieces(tokenizer, [text], space_before)[0]


def tokenize_pieces(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], space_before: bool
) -> list[list[int]]:
    """``tokenize_piece`` for many texts in one call (the fast tokenizers batch in Rust)."""
    prefix = " " if space_before and spaces_are_tokens(tokenizer) else ""
    stripped = [t.strip() for t in texts]
    todo = [i for i, t in enumerate(stripped) if t]
    out: list[list[int]] = [[] for _ in texts]
    if todo:
        for i, ids in zip(todo, _batch_ids(tokenizer, [prefix + stripped[i] for i in todo])):
            out[i] = ids
    return out


def _batch_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=False)["input_ids"]``. For a fast tokenizer whose
    Rust backend is set as that call would set it (no truncation, no padding, the same
    special-token splitting), the backend is called directly: the same ids, without
    transformers' per-row conversion (most of the encoding time of 67k SST-2 rows)."""
    backend = tokenizer.backend_tokenizer if getattr(tokenizer, "is_fast", False) else None
    if (
        backend is None
        or backend.truncation is not None
        or backend.padding is not None
        or backend.encode_special_tokens != bool(getattr(tokenizer, "split_special_tokens", False))
    ):
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]


@dataclass(frozen=True)
class _SpecialLayout:
    """Where the model's special tokens go around one or two segments, with token types."""

    prefix: tuple[tuple[int, int], ...]
    middle: tuple[tuple[int, int], ...]
    suffix: tuple[tuple[int, int], ...]
    types: tuple[int, int]  # token type of segment a and segment b

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase, pair: bool) -> _SpecialLayout:
        # Read the layout off a real encoding, which works for every tokenizer backend.
        texts = ("a", "b") if pair else ("a",)
        enc = tokenizer(
            *texts,
            add_special_tokens=True,
            return_special_tokens_mask=True,
            return_token_type_ids=True,
        )
        ids, special = enc["input_ids"], enc["special_tokens_mask"]
        types = enc.get("token_type_ids") or [0] * len(ids)
        n_a = len(tokenizer.encode("a", add_special_tokens=False))
        content = [i for i, s in enumerate(special) if not s]
        a_end = content[n_a - 1] + 1
        b_start = content[n_a] if pair else len(ids)
        b_end = content[-1] + 1 if pair else len(ids)
        region = lambda lo, hi: tuple((ids[i], types[i]) for i in range(lo, hi))  # noqa: E731
        return cls(
            prefix=region(0, content[0]),
            middle=region(a_end, b_start) if pair else (),
            suffix=region(b_end, len(ids)) if pair else region(a_end, len(ids)),
            types=(types[content[0]], types[b_start] if pair else 0),
        )

    @property
    def count(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


def _bos_before_slot(
    tokenizer: PreTrainedTokenizerBase, template: Template
) -> tuple[list[int], list[int]]:
    """A decoder predicts a slot from the text before it: a template that starts with the slot
    needs the model's bos token there, which this tokenizer does not add itself."""
    bos = tokenizer.bos_token_id
    if bos is None:
        raise AutopromptError(
            f"template {template.source!r} starts with the answer slot, and this decoder has no "
            "bos token to predict it from; write some text before the slot"
        )
    return [bos], [0]


@dataclass
class EncodedExample:
    input_ids: list[int]
    token_type_ids: list[int]
    trigger_positions: list[int]
    mask_positions: list[int]
    truncated: int  # tokens cut from shortenable fields


class TemplateEncoder:
    """Encodes examples for one template and tokenizer (``LanguageModel.encoder`` makes the
    encoder of a model).

    ``n_masks`` masks fill the prediction slot (one per piece of a multi-token label word).
    Open trigger slots get ``trigger_fill_id`` (the mask token by default, as AutoPrompt starts).
    ``next_token``: the model is a decoder (``LanguageModel.reads_next_token``): the slot holds
    no token, and its "mask position" is the last token before it, whose logits predict it.
    Told, never guessed from the tokenizer: a decoder's tokenizer may name a mask token too.
    """

    def __init__(
        self,
        template: Template,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        n_masks: int = 1,
        trigger_fill_id: int | None = None,
        answer_ids: Sequence[int] | None = None,
        *,
        next_token: bool,
    ) -> None:
        self.template = template
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.n_masks = n_masks
        self.layout = _SpecialLayout.of(tokenizer, pair=len(template.segments) == 2)
        self.next_token = next_token
        # read once: a tokenizer attribute costs microseconds, which 67k rows make seconds; a
        # decoder's slot holds no token, so a mask token its tokenizer names is never written
        self._mask_id = None if next_token else tokenizer.mask_token_id
        if trigger_fill_id is None and self.next_token:
            trigger_fill_id = tokenizer.eos_token_id or 0  # replaced by search before any use
        fill = self._mask_id if trigger_fill_id is None else trigger_fill_id
        self._trigger_ids = [fill if t is None else t for t in template.trigger_ids]
        self._literal_ids = {
            id(p): tokenize_piece(tokenizer, p.text, p.space_before)
            for p in template.parts
            if isinstance(p, Literal)
        }
        self._masks = [self._mask_id] * n_masks
        layout = self.layout
        self._prefix = ([i for i, _ in layout.prefix], [t for _, t in layout.prefix])
        self._middle = ([i for i, _ in layout.middle], [t for _, t in layout.middle])
        self._suffix = ([i for i, _ in layout.suffix], [t for _, t in layout.suffix])
        # a chat: the header before the user's message (the first part), the footer before
        # the slot; the message's first word takes a space the header ended in
        self._footer: list[int] = []
        self._spaced_first: object = None
        if template.chat is not None:
            frame = chat_frame(tokenizer, template.chat, tuple(self._prefix[0]), next_token)
            self._prefix = (list(frame.header), [layout.types[0]] * len(frame.header))
            self._footer = list(frame.footer)
            if frame.user_space:
                self._spaced_first = template.parts[0]
                if isinstance(self._spaced_first, Literal):
                    text = self._spaced_first.text
                    self._literal_ids[id(self._spaced_first)] = tokenize_piece(
                        tokenizer, text, True
                    )
        elif self.next_token and not self._prefix[0] and isinstance(template.parts[0], Predict):
            self._prefix = _bos_before_slot(tokenizer, template)
        # every token the encoder adds around the template's own (truncation leaves them)
        self.n_special = layout.count - len(layout.prefix) + len(self._prefix[0])
        self.n_special += len(self._footer)
        # A decoder's answer written into the slot (a search over continuations): the rows
        # read the positions before each answer token and each token of the text after it.
        self._answer = None if answer_ids is None else list(answer_ids)
        self.after_slot_ids = self._after_slot() if self._answer is not None else []

    def _after_slot(self) -> list[int]:
        if not self.next_token:
            raise ValueError("answer_ids: only a decoder reads an answer written into the slot")
        parts = self.template.parts
        after = parts[parts.index(self.template.predict) + 1 :]
        in_last_segment = self.template.predict in self.template.segments[-1]
        if any(not isinstance(p, Literal) for p in after) or not in_last_segment:
            raise AutopromptError(
                f"template {self.template.source!r}: on a decoder the text after the slot is "
                "scored as part of each answer, so only plain words may follow the slot (no "
                "field, [T] or [SEP])"
            )
        return [i for p in after for i in self._literal_ids[id(p)]]

    @property
    def n_read(self) -> int:
        """Positions read per row: the masks; a decoder's one position before the slot; or,
        with an answer written in, one per answer token and per token after the slot."""
        if self._answer is not None:
            return len(self._answer) + len(self.after_slot_ids)
        return 1 if self.next_token else self.n_masks

    def encode(
        self, example: Example, field_ids: dict[int, list[int]] | None = None
    ) -> EncodedExample:
        """Encode one example; ``field_ids`` (part id → ids) skips tokenizing its fields."""
        # chunks: per segment, a list of [part, ids] that truncation may shorten in place
        triggers = iter(self._trigger_ids)
        segments: list[list[list]] = []
        total = 0
        for seg in self.template.segments:
            chunks = []
            for p in seg:
                if isinstance(p, Literal):
                    ids = self._literal_ids[id(p)]
                elif isinstance(p, Field):
                    ids = (
                        field_ids[id(p)]
                        if field_ids is not None
                        else tokenize_piece(self.tokenizer, example.fields[p.name], self._space(p))
                    )
                elif isinstance(p, Trigger):
                    ids = [next(triggers)]
                else:
                    ids = self._masks if self._answer is None else self._answer
                chunks.append([p, ids])
                total += len(ids)
            segments.append(chunks)
        truncated = self._truncate(segments, example, total)

        types = self.layout.types
        input_ids, type_ids = list(self._prefix[0]), list(self._prefix[1])
        trigger_pos: list[int] = []
        mask_pos: list[int] = []
        for s, chunks in enumerate(segments):
            if s:
                input_ids += self._middle[0]
                type_ids += self._middle[1]
            for p, ids in chunks:
                if isinstance(p, Predict) and self._footer:  # a chat: the assistant's turn
                    input_ids += self._footer
                    type_ids += [types[s]] * len(self._footer)
                if isinstance(p, Trigger):
                    trigger_pos.append(len(input_ids))
                elif isinstance(p, Predict) and self.next_token:
                    if input_ids and self._answer is not None:
                        read_from = len(input_ids) - 1  # its logits predict the answer
                        input_ids += ids
                        type_ids += [types[s]] * len(ids)
                        continue
                    if not input_ids:
                        raise AutopromptError(
                            f"{example.source or 'an example'}: no text before the answer slot "
                            f"of {self.template.source!r} (an empty field); a decoder predicts "
                            "the slot from the text before it"
                        )
                    mask_pos.append(len(input_ids) - 1)
                    continue  # the slot holds no token: its length was reserved above
                elif isinstance(p, Predict):
                    mask_pos.extend(range(len(input_ids), len(input_ids) + len(ids)))
                input_ids += ids
                type_ids += [types[s]] * len(ids)
        if self._answer is not None:
            mask_pos = list(range(read_from, len(input_ids) - 1))
        input_ids += self._suffix[0]
        type_ids += self._suffix[1]
        return EncodedExample(input_ids, type_ids, trigger_pos, mask_pos, truncated)

    def _space(self, p: Field) -> bool:
        """Whether a field is tokenized after a space (a chat's header may give the first)."""
        return p.space_before or p is self._spaced_first

    def _truncate(self, segments: list[list[list]], example: Example, total: int) -> int:
        budget = self.max_length - self.n_special
        excess = total - budget  # total: the tokens of every chunk
        if excess <= 0:
            return 0
        shortenable = [
            c for chunks in segments for c in chunks if isinstance(c[0], Field) and c[0].shortenable
        ]
        room = sum(len(c[1]) for c in shortenable)
        if room < excess:
            raise AutopromptError(
                f"{example.source or 'an example'}: template {self.template.source!r} needs "
                f"{excess + budget + self.n_special} tokens, more than the model's "
                f"{self.max_length}, even with its shortenable fields emptied; use fewer "
                "trigger tokens or a shorter template"
            )
        for _ in range(excess):  # cut from the end of the currently longest field, as PET
            longest = max(shortenable, key=lambda c: len(c[1]))
            longest[1] = longest[1][:-1]
        return excess

    def encode_all(self, examples: Sequence[Example]) -> EncodedDataset:
        check_fields(examples, self.template.fields, self.template.source)
        fields = [p for p in self.template.parts if isinstance(p, Field)]
        tokenized = {
            id(p): tokenize_pieces(
                self.tokenizer, [e.fields[p.name] for e in examples], self._space(p)
            )
            for p in fields
        }
        encoded = [
            self.encode(e, {key: ids[i] for key, ids in tokenized.items()})
            for i, e in enumerate(examples)
        ]
        return EncodedDataset(encoded, self.tokenizer.pad_token_id)


@dataclass
class Batch:
    """Padded tensors for a batch; ``index`` maps rows back to the dataset's order."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    trigger_positions: torch.Tensor  # [batch, n_triggers]
    mask_positions: torch.Tensor  # [batch, n_masks]
    index: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(
            *(
                t.to(device)
                for t in (
                    self.input_ids,
                    self.attention_mask,
                    self.token_type_ids,
                    self.trigger_positions,
                    self.mask_positions,
                    self.index,
                )
            )
        )

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()


class EncodedDataset:
    """Encoded examples; batches are padded to their own longest row."""

    def __init__(self, examples: list[EncodedExample], pad_id: int | None) -> None:
        self.examples = examples
        self.pad_id = 0 if pad_id is None else pad_id

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def num_truncated(self) -> int:
        return sum(e.truncated > 0 for e in self.examples)

    def collate(self, indices: Sequence[int]) -> Batch:
        rows = [self.examples[i] for i in indices]
        width = max(len(r.input_ids) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        for j, r in enumerate(rows):
            n = len(r.input_ids)
            ids[j, :n] = r.input_ids
            types[j, :n] = r.token_type_ids
            attention[j, :n] = 1
        return Batch(
            torch.from_numpy(ids),
            torch.from_numpy(attention),
            torch.from_numpy(types),
            torch.tensor([r.trigger_positions for r in rows], dtype=torch.long),
            torch.tensor([r.mask_positions for r in rows], dtype=torch.long),
            torch.tensor(list(indices), dtype=torch.long),
        )

    def batches(self, batch_size: int, sort_by_length: bool = True) -> Iterator[Batch]:
        """Batches in length order (little padding), or in dataset order."""
        order = list(range(len(self)))
        if sort_by_length:
            order.sort(key=lambda i: len(self.examples[i].input_ids))
        for start in range(0, len(order), batch_size):
            yield self.collate(order[start : start + batch_size])
