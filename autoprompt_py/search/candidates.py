"""Candidate trigger tokens: HotFlip's first-order top-k, restricted by composable token filters.

HotFlip (Ebrahimi et al., 2018), as AutoPrompt uses it: replacing the token at a trigger slot
by token ``w`` changes the loss by about ``(e_w - e_cur) · g``, where ``g`` is the gradient of
the loss with respect to the slot's input embedding. The candidates are the tokens with the
largest ``-(e_w · g)``, among the tokens the filters allow.

Each filter below is a small function returning a boolean *exclusion* mask over the embedding
rows; ``allowed_tokens`` ORs the ones asked for, so a caller can compose its own set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from autoprompt_py.errors import AutopromptError, warn
from autoprompt_py.textfile import read_text


@dataclass(frozen=True)
class VocabStrings:
    """Each embedding row's raw token and its readable word (``Ġgreat`` → ``great``).

    Rows past the tokenizer's vocabulary (models pad their embedding matrix to a multiple of
    8 or 64) have empty strings and count as special: no text maps to them.
    """

    tokens: tuple[str, ...]
    words: tuple[str, ...]
    known: int  # rows [0, known) are tokenizer ids

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase, rows: int) -> VocabStrings:
        known = min(rows, len(tokenizer))
        tokens = tokenizer.convert_ids_to_tokens(list(range(known)))
        tokens = [t if isinstance(t, str) else "" for t in tokens]
        words = [tokenizer.convert_tokens_to_string([t]).strip() if t else "" for t in tokens]
        pad = [""] * (rows - known)
        return cls(tuple(tokens + pad), tuple(words + pad), known)

    def __len__(self) -> int:
        return len(self.tokens)


def _mask(rows: int, ids: Iterable[int]) -> torch.Tensor:
    out = torch.zeros(rows, dtype=torch.bool)
    ids = [i for i in ids if 0 <= i < rows]
    if ids:
        out[torch.tensor(ids, dtype=torch.long)] = True
    return out


def special_tokens(tokenizer: PreTrainedTokenizerBase, vocab: VocabStrings) -> torch.Tensor:
    """[CLS], [MASK], padding and every other special or added-special token, and rows that
    no tokenizer id reaches."""
    specials = set(tokenizer.all_special_ids)
    for i, tok in tokenizer.added_tokens_decoder.items():
        if tok.special:
            specials.add(i)
    out = _mask(len(vocab), specials)
    out[vocab.known :] = True
    return out


def token_ids(rows: int, ids: Iterable[int]) -> torch.Tensor:
    """Exactly these ids (the label words' tokens: a trigger must not simply say the answer)."""
    return _mask(rows, ids)


def word_start_marker(vocab: VocabStrings) -> str:
    """How this vocabulary marks word boundaries: ``##`` (WordPiece marks continuations),
    ``Ġ`` (byte-level BPE) or ``▁`` (SentencePiece) mark word starts."""
    counts = {m: sum(t.startswith(m) for t in vocab.tokens) for m in ("##", "Ġ", "▁")}
    return max(counts, key=lambda m: counts[m])


def continuation_pieces(vocab: VocabStrings) -> torch.Tensor:
    """Sub-word pieces that continue a word: ``##ing`` (WordPiece), and for BPE and
    SentencePiece every token without the word-start marker."""
    marker = word_start_marker(vocab)
    if marker == "##":
        flags = [t.startswith("##") for t in vocab.tokens]
    else:
        flags = [bool(t) and not t.startswith(marker) for t in vocab.tokens]
    return torch.tensor(flags, dtype=torch.bool)


def non_alphabetic(vocab: VocabStrings) -> torch.Tensor:
    """Tokens whose readable word is not all ASCII letters: punctuation, digits, ``[unused0]``,
    and other scripts' characters, which English vocabularies hold as rare single pieces
    that the gradient loves and that transfer to nothing."""
    return torch.tensor([not (w.isascii() and w.isalpha()) for w in vocab.words], dtype=torch.bool)


def capitalized(vocab: VocabStrings) -> torch.Tensor:
    """Words starting with a capital letter (AutoPrompt's cheap proper-noun filter)."""
    return torch.tensor([w[:1].isupper() for w in vocab.words], dtype=torch.bool)


def read_stop_list(path: str | Path) -> frozenset[str]:
    """Words of a stop-list file, one per line (``#`` starts a comment), lower-cased."""
    lines = read_text(path, "file", "--stop-list").split("\n")
    return frozenset(
        w.strip().lower() for w in lines if w.strip() and not w.lstrip().startswith("#")
    )


def stop_words(vocab: VocabStrings, words: Iterable[str]) -> torch.Tensor:
    """Tokens whose readable word or raw token is in ``words`` (case-insensitive)."""
    stop = {w.lower() for w in words}
    return torch.tensor(
        [w.lower() in stop or t.lower() in stop for t, w in zip(vocab.tokens, vocab.words)],
        dtype=torch.bool,
    )


@dataclass(frozen=True)
class TokenFilters:
    """Which tokens may become trigger (or label) tokens. Special tokens are always excluded."""

    label_words: bool = True
    subwords: bool = True
    non_alphabetic: bool = True
    capitalized: bool = True
    stop_words: frozenset[str] = field(default_factory=frozenset)

    def describe(self) -> dict:
        """A JSON-able record of the settings, for results and checkpoints."""
        return {
            "special": True,
            "label_words": self.label_words,
            "subwords": self.subwords,
            "non_alphabetic": self.non_alphabetic,
            "capitalized": self.capitalized,
            "stop_words": sorted(self.stop_words),
        }


def allowed_tokens(
    tokenizer: PreTrainedTokenizerBase,
    rows: int,
    filters: TokenFilters = TokenFilters(),
    label_ids: Sequence[int] = (),
    vocab: VocabStrings | None = None,
) -> torch.Tensor:
    """Boolean mask [rows]: True where a token passes every filter that is on."""
    vocab = vocab or VocabStrings.of(tokenizer, rows)
    excluded = special_tokens(tokenizer, vocab)
    if filters.label_words:
        excluded |= token_ids(rows, label_ids)
    if filters.subwords:
        excluded |= continuation_pieces(vocab)
    if filters.non_alphabetic:
        excluded |= non_alphabetic(vocab)
    if filters.capitalized:
        excluded |= capitalized(vocab)
    if filters.stop_words:
        excluded |= stop_words(vocab, filters.stop_words)
    allowed = ~excluded
    if not allowed.any():
        raise AutopromptError(
            "the token filters leave no candidate tokens in this model's vocabulary; turn some "
            "off (e.g. --no-filter-subwords, --no-filter-capitalized) or shorten --stop-list"
        )
    return allowed


def hotflip_candidates(
    grad: torch.Tensor,
    embeddings: torch.Tensor,
    allowed: torch.Tensor,
    num_candidates: int,
    current: torch.Tensor | None = None,
) -> torch.Tensor:
    """Top ``num_candidates`` tokens of ``-(E · g)`` per slot: grad [slots, dim] → ids [slots, k].

    ``embeddings`` is the input embedding matrix [vocab, dim]; ``allowed`` [vocab] masks out
    filtered tokens; ``current`` [slots] are the tokens now in the slots, never proposed again
    (the same token cannot lower the loss, and would waste a candidate).
    """
    scores = -(grad.to(embeddings.dtype) @ embeddings.T).float()  # [slots, vocab]
    scores.masked_fill_(~allowed.to(scores.device)[None, :], float("-inf"))
    if current is not None:
        scores[torch.arange(len(scores), device=scores.device), current.to(scores.device)] = float(
            "-inf"
        )
    # never propose a filtered token, even when fewer than num_candidates remain
    available = int(torch.isfinite(scores).sum(1).min())
    k = max(1, min(num_candidates, available))
    return scores.topk(k, dim=1).indices


def warn_candidates(allowed: torch.Tensor, option: str, wanted: int) -> None:
    """Warn when a method asks for more candidates per slot than the filters leave
    (``allowed``): ``hotflip_candidates`` proposes at most those, less the current token."""
    left = int(allowed.sum())
    if wanted > left - 1:
        warn(
            f"{option} {wanted} is more than the {left - 1} other tokens the filters leave "
            f"in this model's vocabulary; using {max(1, left - 1)}"
        )
