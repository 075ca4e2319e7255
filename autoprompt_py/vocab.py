"""Restricting predictions to a vocabulary file (LAMA's common vocabulary), per tokenizer."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from autoprompt_py.encoding import tokenize_piece
from autoprompt_py.errors import AutopromptError
from autoprompt_py.textfile import read_text


def read_vocab(path: str | Path) -> list[str]:
    """Words of a vocabulary file, one per line."""
    path = Path(path)
    words = [w.strip() for w in read_text(path, "vocabulary file").split("\n") if w.strip()]
    if not words:
        raise AutopromptError(f"{path}: the vocabulary file is empty")
    return words


def single_token_id(
    tokenizer: PreTrainedTokenizerBase, word: str, space_before: bool = True
) -> int | None:
    """The id of ``word`` if this tokenizer makes it exactly one known token, else None."""
    ids = tokenize_piece(tokenizer, word, space_before)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        return None
    return ids[0]


def vocab_token_ids(
    tokenizer: PreTrainedTokenizerBase, words: list[str], space_before: bool = True
) -> list[int]:
    """Distinct ids of the words that are single tokens (cased words fold on uncased models)."""
    ids = (single_token_id(tokenizer, w, space_before) for w in words)
    return sorted({i for i in ids if i is not None})
