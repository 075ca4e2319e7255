"""The tiny in-code models used throughout the suite behave like real checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import (
    CASED_FAMILIES,
    FAMILIES,
    MAX_LENGTH,
    MULTI_PIECE_WORDS,
    PUNCTUATION,
    REQUIRED_WORDS,
    SPACE_PREFIX,
    build_tiny_model,
    word_token,
)
from transformers import AutoModelForMaskedLM, AutoTokenizer


@pytest.fixture(scope="module")
def loaded(tiny_model_dirs):
    return {
        family: (
            AutoModelForMaskedLM.from_pretrained(path).eval(),
            AutoTokenizer.from_pretrained(path),
        )
        for family, path in tiny_model_dirs.items()
    }


def test_families_cover_the_design():
    for family in ("bert", "roberta", "albert", "distilbert", "electra", "deberta-v2"):
        assert family in FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_model_class_and_config(family, loaded):
    model, tokenizer = loaded[family]
    assert type(model).__name__.endswith("ForMaskedLM")
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.model_max_length == MAX_LENGTH
    assert model.config.num_hidden_layers == 2
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    assert vocab_rows == len(tokenizer)
    assert vocab_rows > max(tokenizer.get_vocab().values())


@pytest.mark.parametrize("family", FAMILIES)
def test_required_words_are_single_tokens(family, loaded):
    _, tokenizer = loaded[family]
    vocab = tokenizer.get_vocab()
    for word in REQUIRED_WORDS:
        assert word_token(family, word) in vocab, word
        assert len(tokenizer.tokenize(" " + word)) == 1, (word, tokenizer.tokenize(" " + word))
        assert len(tokenizer.tokenize(f"it was {word} .")) == 4, word
    for mark in PUNCTUATION:
        assert len(tokenizer.tokenize(" " + mark)) == 1, mark


@pytest.mark.parametrize("family", sorted(CASED_FAMILIES))
def test_cased_families_keep_case(family, loaded):
    _, tokenizer = loaded[family]
    assert tokenizer.tokenize(" Paris") == [SPACE_PREFIX[family] + "Paris"]
    assert tokenizer.tokenize(" paris") == [SPACE_PREFIX[family] + "paris"]


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - CASED_FAMILIES))
def test_uncased_families_lower_case(family, loaded):
    _, tokenizer = loaded[family]
    assert tokenizer.tokenize(" Paris") == tokenizer.tokenize(" paris")
    assert len(tokenizer.tokenize(" GREAT")) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_some_words_split_into_pieces(family, loaded):
    _, tokenizer = loaded[family]
    for word in MULTI_PIECE_WORDS:
        pieces = tokenizer.tokenize(" " + word)
        assert len(pieces) >= 2, (word, pieces)
        assert tokenizer.unk_token not in pieces
    wordpiece = tokenizer.tokenize(" unwatchable")
    if family in ("bert", "distilbert", "electra"):
        assert wordpiece == ["un", "##watch", "##able"]
    if family in ("albert", "deberta-v2"):
        assert wordpiece == ["▁un", "watch", "able"]


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_pass_at_the_mask(family, loaded):
    model, tokenizer = loaded[family]
    text = "it was [MASK] .".replace("[MASK]", tokenizer.mask_token)
    enc = tokenizer(text, return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    assert ids.count(tokenizer.mask_token_id) == 1
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, len(ids), model.get_input_embeddings().weight.shape[0])
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_sentence_pairs_get_special_tokens(family, loaded):
    _, tokenizer = loaded[family]
    single = tokenizer("great")["input_ids"]
    pair = tokenizer("great", "bad")["input_ids"]
    assert len(single) == 1 + tokenizer.num_special_tokens_to_add(pair=False)
    assert len(pair) == 2 + tokenizer.num_special_tokens_to_add(pair=True)
    assert pair[0] == tokenizer.cls_token_id and pair[-1] == tokenizer.sep_token_id


@pytest.mark.parametrize("family", FAMILIES)
def test_truncation_to_model_max_length(family, loaded):
    model, tokenizer = loaded[family]
    enc = tokenizer(" great" * 200, truncation=True, return_tensors="pt")
    assert enc["input_ids"].shape == (1, MAX_LENGTH)
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape[1] == MAX_LENGTH


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_batch(family, loaded):
    model, tokenizer = loaded[family]
    enc = tokenizer(
        ["it was great .", "it was a very bad movie ."], padding=True, return_tensors="pt"
    )
    assert enc["input_ids"].shape[0] == 2
    assert (enc["input_ids"][0] == tokenizer.pad_token_id).any()
    with torch.no_grad():
        model(**enc)


def test_fixture_helper_runs_per_family(tiny_model_dir, family):
    assert tiny_model_dir.name == family
    assert (tiny_model_dir / "config.json").is_file()


def test_tiny_mlm_fixture(tiny_mlm, family):
    model, tokenizer = tiny_mlm
    assert type(model).__name__.endswith("ForMaskedLM")
    assert tokenizer.mask_token_id is not None


def test_build_is_deterministic(tmp_path, tiny_model_dirs):
    path = build_tiny_model("bert", tmp_path / "again")
    again = AutoModelForMaskedLM.from_pretrained(path)
    first = AutoModelForMaskedLM.from_pretrained(tiny_model_dirs["bert"])
    again_state, first_state = again.state_dict(), first.state_dict()
    assert again_state.keys() == first_state.keys()
    for name, tensor in again_state.items():
        assert torch.equal(tensor, first_state[name]), name
    vocab_a = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    vocab_b = json.loads((tiny_model_dirs["bert"] / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocab_a == vocab_b


def test_unknown_family(tmp_path):
    with pytest.raises(ValueError, match="unknown family"):
        build_tiny_model("gpt2", tmp_path)


def test_shared_root_follows_the_environment(monkeypatch, tmp_path):
    from conftest import REPO_ROOT, shared_root

    monkeypatch.setenv("AUTOPROMPT_SHARED", str(tmp_path))
    assert shared_root() == tmp_path
    monkeypatch.delenv("AUTOPROMPT_SHARED")
    assert shared_root() == REPO_ROOT.parent / "shared"
