"""HotFlip candidates and the token filters: each filter excludes what it says, no more."""

from __future__ import annotations

import pytest
import torch
from tiny_models import CASED_FAMILIES, FAMILIES, SPACE_PREFIX, word_token
from transformers import AutoTokenizer

from autoprompt_py.errors import AutopromptError
from autoprompt_py.search.candidates import (
    TokenFilters,
    VocabStrings,
    allowed_tokens,
    capitalized,
    continuation_pieces,
    hotflip_candidates,
    non_alphabetic,
    read_stop_list,
    special_tokens,
    stop_words,
    token_ids,
    word_start_marker,
)


@pytest.fixture(scope="module")
def tokenizers(tiny_model_dirs):
    return {f: AutoTokenizer.from_pretrained(p) for f, p in tiny_model_dirs.items()}


def _rows(tok) -> int:
    return len(tok) + 3  # like real models, an embedding matrix padded past the vocabulary


@pytest.mark.parametrize("family", FAMILIES)
def test_special_tokens_and_padding_rows(family, tokenizers):
    tok = tokenizers[family]
    vocab = VocabStrings.of(tok, _rows(tok))
    mask = special_tokens(tok, vocab)
    for i in tok.all_special_ids:
        assert mask[i]
    assert mask[len(tok) :].all()  # rows no tokenizer id reaches
    assert not mask[tok.convert_tokens_to_ids(word_token(family, "great"))]
    assert vocab.words[len(tok)] == "" and len(vocab) == _rows(tok)


@pytest.mark.parametrize("family", FAMILIES)
def test_continuation_pieces_per_scheme(family, tokenizers):
    tok = tokenizers[family]
    vocab = VocabStrings.of(tok, len(tok))
    marker = word_start_marker(vocab)
    assert marker == SPACE_PREFIX.get(family, "##")
    mask = continuation_pieces(vocab)
    word = tok.convert_tokens_to_ids(word_token(family, "great"))
    assert not mask[word]
    pieces = tok.convert_ids_to_tokens(tok.encode("fantastic", add_special_tokens=False))
    later = tok.convert_tokens_to_ids(pieces[-1])
    assert len(pieces) > 1 and mask[later]  # the last piece of a split word continues it
    for t, flagged in zip(vocab.tokens, mask.tolist()):
        if marker == "##":
            assert flagged == t.startswith("##")
        else:
            assert flagged == (bool(t) and not t.startswith(marker))


def test_non_alphabetic_and_capitalized(tokenizers):
    tok = tokenizers["roberta"]  # cased byte-level BPE
    vocab = VocabStrings.of(tok, len(tok))
    non_alpha, caps = non_alphabetic(vocab), capitalized(vocab)
    ids = tok.convert_tokens_to_ids
    assert non_alpha[ids(".")] and non_alpha[ids("Ġ,")] and non_alpha[ids("<s>")]
    assert not non_alpha[ids("Ġgreat")]
    assert caps[ids("ĠParis")] and not caps[ids("Ġparis")]
    for w, n, c in zip(vocab.words, non_alpha.tolist(), caps.tolist()):
        assert n == (not (w.isascii() and w.isalpha()))
        assert c == w[:1].isupper()


def test_stop_list_is_case_insensitive(tokenizers, tmp_path):
    path = tmp_path / "stop.txt"
    path.write_text("# common words\nThe\n\n  movie \n")
    words = read_stop_list(path)
    assert words == frozenset({"the", "movie"})
    tok = tokenizers["roberta"]
    vocab = VocabStrings.of(tok, len(tok))
    mask = stop_words(vocab, words)
    ids = tok.convert_tokens_to_ids
    assert mask[ids("Ġthe")] and mask[ids("ĠThe")] and mask[ids("Ġmovie")]
    assert mask.sum() == sum(
        w.lower() in words or t.lower() in words for t, w in zip(vocab.tokens, vocab.words)
    )
    with pytest.raises(AutopromptError, match="no such file"):
        read_stop_list(tmp_path / "missing.txt")


@pytest.mark.parametrize("family", ["bert", "roberta", "albert", "deberta-v2"])
def test_allowed_tokens_composes_the_filters(family, tokenizers):
    tok = tokenizers[family]
    rows = _rows(tok)
    vocab = VocabStrings.of(tok, rows)
    great = tok.convert_tokens_to_ids(word_token(family, "great"))
    film = tok.convert_tokens_to_ids(word_token(family, "film"))
    allowed = allowed_tokens(
        tok, rows, TokenFilters(stop_words=frozenset({"film"})), [great], vocab
    )
    expected = ~(
        special_tokens(tok, vocab)
        | token_ids(rows, [great])
        | continuation_pieces(vocab)
        | non_alphabetic(vocab)
        | capitalized(vocab)
        | stop_words(vocab, ["film"])
    )
    assert torch.equal(allowed, expected)
    assert not allowed[great] and not allowed[film]
    assert allowed[tok.convert_tokens_to_ids(word_token(family, "movie"))]
    # every filter off but the special tokens
    loose = allowed_tokens(tok, rows, TokenFilters(False, False, False, False), [great], vocab)
    assert torch.equal(loose, ~special_tokens(tok, vocab))
    if family in CASED_FAMILIES:
        paris = tok.convert_tokens_to_ids(word_token(family, "Paris"))
        assert not allowed[paris] and loose[paris]


def test_filters_leaving_nothing_is_an_error(tokenizers):
    tok = tokenizers["bert"]
    vocab = VocabStrings.of(tok, len(tok))
    everything = frozenset(w.lower() for w in vocab.words if w) | frozenset(vocab.tokens)
    with pytest.raises(AutopromptError, match="leave no candidate tokens"):
        allowed_tokens(tok, len(tok), TokenFilters(stop_words=everything), (), vocab)


def test_hotflip_is_the_top_k_of_minus_e_dot_g():
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(50, 8, generator=gen)
    grad = torch.randn(3, 8, generator=gen)
    allowed = torch.rand(50, generator=gen) > 0.3
    current = torch.tensor([4, 7, 9])
    allowed[current[0]] = True
    got = hotflip_candidates(grad, emb, allowed, 5, current)
    assert got.shape == (3, 5)
    for slot in range(3):
        score = -(emb @ grad[slot])
        ranked = [
            i for i in score.argsort(descending=True).tolist() if allowed[i] and i != current[slot]
        ]
        assert got[slot].tolist() == ranked[:5]
    # fewer allowed tokens than asked for: only allowed ones come back
    few = torch.zeros(50, dtype=torch.bool)
    few[[1, 2, 4]] = True
    got = hotflip_candidates(grad, emb, few, 10, current)
    assert got.shape[1] == 2
    for slot in range(3):
        assert set(got[slot].tolist()) <= {1, 2, 4} - {int(current[slot])}
