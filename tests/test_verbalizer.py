"""Verbalizers: words resolved per tokenizer, and label scores checked against hand computations."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import FAMILIES, MULTI_PIECE_WORDS, word_token
from transformers import AutoTokenizer

from autoprompt_py.errors import AutopromptError, AutopromptWarning
from autoprompt_py.verbalizer import AGGREGATIONS, ResolvedVerbalizer, Verbalizer

BYTE_LEVEL = ("roberta", "modernbert")  # every string is bytes: nothing maps to the unknown token


@pytest.fixture(scope="module")
def tokenizers(tiny_model_dirs):
    return {f: AutoTokenizer.from_pretrained(d) for f, d in tiny_model_dirs.items()}


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def test_from_dict_accepts_a_word_or_a_list():
    v = Verbalizer.from_dict({"0": "terrible", 1: [" great ", "good"]})
    assert v.words == {"0": ["terrible"], "1": ["great", "good"]}
    assert v.labels == ["0", "1"]


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({}, "JSON object of label"),
        (["great"], "JSON object of label"),
        ({"0": []}, "label '0' must map to a word"),
        ({"0": ["great", ""]}, "label '0' must map to a word"),
        ({"0": ["great", 3]}, "label '0' must map to a word"),
        ({"0": {"w": 1}}, "label '0' must map to a word"),
    ],
)
def test_from_dict_errors(mapping, message):
    with pytest.raises(AutopromptError, match=message):
        Verbalizer.from_dict(mapping, "v.json")


def test_from_file(tmp_path):
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"neg": ["bad"], "pos": ["good", "great"]}))
    v = Verbalizer.from_file(path)
    assert v.words == {"neg": ["bad"], "pos": ["good", "great"]}
    assert v.source == str(path)
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "0": ["bad"],\n  "1": ["good"\n}\n')
    with pytest.raises(AutopromptError, match=r"bad\.json:4: not valid JSON"):
        Verbalizer.from_file(bad)
    with pytest.raises(AutopromptError, match="no such verbalizer file"):
        Verbalizer.from_file(tmp_path / "missing.json")


def test_check_labels_both_directions():
    v = Verbalizer.from_dict({"0": "bad", "1": "good"}, "sst2.json")
    v.check_labels(["1", "0", "1"], "dev.tsv")
    v.check_labels(["0", "1"], "dev.tsv")
    with pytest.raises(AutopromptError) as info:
        v.check_labels(["0", "1", "2"], "dev.tsv")
    msg = str(info.value)
    assert msg.startswith("dev.tsv: labels '2' are not in sst2.json")
    assert "--label-field" in msg
    # a data file that uses only some labels (one row) is fine, with a warning
    with pytest.warns(AutopromptWarning, match="sst2.json: labels '1' never occur in dev.tsv"):
        v.check_labels(["0", "0"], "dev.tsv")


def test_one_word_for_two_labels_is_refused():
    with pytest.raises(AutopromptError) as info:
        Verbalizer.from_dict({"0": ["bad", "fine"], "1": ["good", "fine"]}, "v.json")
    assert str(info.value) == (
        "v.json: word 'fine' is given for labels '0' and '1', which could then never be told "
        "apart; give each label its own words"
    )
    Verbalizer.from_dict({"0": ["bad"], "1": ["good"], "2": ["Good"]}, "v.json")  # differ


# --------------------------------------------------------------------------------------------
# resolution per tokenizer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_resolution_to_word_tokens(family, tokenizers):
    tok = tokenizers[family]
    vocab = tok.get_vocab()
    v = Verbalizer.from_dict({"0": ["terrible", "bad"], "1": ["great"]})
    r = v.resolve(tok)
    assert r.labels == ["0", "1"]
    assert r.words == ["terrible", "bad", "great"]
    assert r.word_label == [0, 0, 1]
    expected = [(vocab[word_token(family, w)],) for w in r.words]
    assert r.pieces == expected
    tokens = tok.convert_ids_to_tokens([p[0] for p in r.pieces])
    if family in ("roberta", "modernbert"):
        assert all(t.startswith("Ġ") for t in tokens)
    elif family in ("albert", "deberta-v2"):
        assert all(t.startswith("▁") for t in tokens)
    else:
        assert tokens == ["terrible", "bad", "great"]
    assert r.piece_counts == [1]
    assert r.multi_piece_words == []
    assert r.token_ids == sorted(p[0] for p in expected)


@pytest.mark.parametrize("family", ["roberta", "modernbert"])
def test_resolution_without_a_space_before(family, tokenizers):
    tok = tokenizers[family]
    r = Verbalizer.from_dict({"0": "bad", "1": "great"}).resolve(tok, space_before=False)
    assert tok.convert_ids_to_tokens([p[0] for p in r.pieces]) == ["bad", "great"]


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_piece_word_gets_k_pieces(family, tokenizers):
    tok = tokenizers[family]
    word = MULTI_PIECE_WORDS[0]
    r = Verbalizer.from_dict({"0": ["bad"], "1": ["great", word]}).resolve(tok)
    prefix = " " if family in BYTE_LEVEL else ""
    pieces = tuple(tok(prefix + word, add_special_tokens=False)["input_ids"])
    k = len(pieces)
    assert k > 1
    assert r.pieces[2] == pieces
    assert r.piece_counts == [1, k]
    assert r.multi_piece_words == [word]
    assert set(pieces) <= set(r.token_ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_unknown_token_word(family, tokenizers):
    tok = tokenizers[family]
    v = Verbalizer.from_dict({"0": ["bad"], "1": ["great", "☃"]}, "mine.json")
    if family in BYTE_LEVEL:
        r = v.resolve(tok)  # byte-level BPE has no unknown token: the word is its bytes
        assert len(r.pieces[2]) > 1
        assert tok.unk_token_id not in r.pieces[2]
        return
    with pytest.raises(AutopromptError) as info:
        v.resolve(tok)
    msg = str(info.value)
    assert msg.startswith("mine.json: word '☃' of label '1' maps to the unknown token")
    assert "choose another word" in msg


def test_unknown_aggregation(tokenizers):
    with pytest.raises(AutopromptError, match="aggregation 'max'"):
        Verbalizer.from_dict({"0": "bad"}).resolve(tokenizers["bert"], "max")


# --------------------------------------------------------------------------------------------
# aggregation against hand computations
# --------------------------------------------------------------------------------------------

VOCAB = 40
LABELS = ["neg", "pos", "neu"]
WORDS = ["w0", "w1", "w2", "w3", "w4", "w5"]
WORD_LABEL = [0, 0, 1, 1, 2, 2]
PIECES = [(3,), (7, 8), (11,), (12,), (20, 21), (5, 30, 31)]


def _resolved(aggregation: str) -> ResolvedVerbalizer:
    return ResolvedVerbalizer(
        list(LABELS), list(WORDS), list(WORD_LABEL), list(PIECES), aggregation
    )


def _logits(batch: int = 5) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(batch, k, VOCAB, generator=g) * 3 for k in (1, 2, 3)}


def _hand_label_scores(logits: dict[int, torch.Tensor], aggregation: str) -> list[list[float]]:
    batch = next(iter(logits.values())).shape[0]
    out = []
    for b in range(batch):
        per_word = []
        for pieces in PIECES:
            rows = logits[len(pieces)][b]
            if aggregation == "mean-logit":
                per_word.append(sum(rows[j, t].item() for j, t in enumerate(pieces)) / len(pieces))
            else:
                logprob = 0.0
                for j, t in enumerate(pieces):
                    norm = math.log(sum(math.exp(x) for x in rows[j].tolist()))
                    logprob += rows[j, t].item() - norm
                per_word.append(logprob)
        row = []
        for li in range(len(LABELS)):
            mine = [s for s, lab in zip(per_word, WORD_LABEL) if lab == li]
            if aggregation == "sum":
                row.append(math.log(sum(math.exp(s) for s in mine)))
            else:
                row.append(sum(mine) / len(mine))
        out.append(row)
    return out


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_label_scores_match_hand_computation(aggregation):
    logits = _logits()
    r = _resolved(aggregation)
    assert r.piece_counts == [1, 2, 3]
    scores = r.label_scores(logits)
    assert scores.shape == (5, 3)
    expected = torch.tensor(_hand_label_scores(logits, aggregation))
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_word_scores_and_aggregate(aggregation):
    logits = _logits()
    r = _resolved(aggregation)
    idx, values = r.word_scores(logits[2])
    assert idx == [1, 4]
    assert values.shape == (5, 2)
    rows = logits[2]
    if aggregation == "mean-logit":
        expected = (rows[:, 0, 7] + rows[:, 1, 8]) / 2
    else:
        lp = torch.log_softmax(rows, -1)
        expected = lp[:, 0, 7] + lp[:, 1, 8]
    torch.testing.assert_close(values[:, 0], expected)
    idx, values = r.word_scores(torch.randn(5, 4, VOCAB))
    assert idx == [] and values.shape == (5, 0)


def test_sum_is_the_log_of_summed_word_probabilities():
    logits = {1: torch.randn(4, 1, VOCAB)}
    r = ResolvedVerbalizer(["a", "b"], ["x", "y", "z"], [0, 0, 1], [(1,), (2,), (3,)], "sum")
    probs = torch.softmax(logits[1][:, 0], -1)
    expected = torch.stack([(probs[:, 1] + probs[:, 2]).log(), probs[:, 3].log()], 1)
    torch.testing.assert_close(r.label_scores(logits), expected)


def test_mean_logprob_has_the_argmax_of_mean_logit_for_single_pieces():
    logits = {1: torch.randn(50, 1, VOCAB)}
    pieces = [(1,), (2,), (3,), (4,)]
    a = ResolvedVerbalizer(["a", "b"], ["w"] * 4, [0, 0, 1, 1], pieces, "mean-logprob")
    b = ResolvedVerbalizer(["a", "b"], ["w"] * 4, [0, 0, 1, 1], pieces, "mean-logit")
    assert a.label_scores(logits).argmax(1).tolist() == b.label_scores(logits).argmax(1).tolist()


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_nll(aggregation):
    logits = _logits()
    r = _resolved(aggregation)
    scores = r.label_scores(logits)
    gold = torch.tensor([0, 1, 2, 1, 0])
    nll = r.nll(scores, gold)
    hand = _hand_label_scores(logits, aggregation)
    expected = []
    for row, g in zip(hand, gold.tolist()):
        if aggregation == "mean-logit":  # cross-entropy over the label logits
            expected.append(math.log(sum(math.exp(x) for x in row)) - row[g])
        else:  # minus the log-probability of the gold label's words
            expected.append(-row[g])
    torch.testing.assert_close(nll, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    assert (nll >= 0).all()
