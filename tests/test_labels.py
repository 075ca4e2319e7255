"""Label-token search: the head features, the regression, the ranking, the verbalizer file."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, word_token

import autoprompt_py.labels as labels_module
from autoprompt_py.data import Example
from autoprompt_py.labels import (
    fit_logistic_regression,
    head_transform_output,
    mask_features,
    search_labels,
)
from autoprompt_py.model import load_model
from autoprompt_py.search import TokenFilters
from autoprompt_py.template import parse_template
from autoprompt_py.verbalizer import Verbalizer

SST = [
    ("the movie was great , really", "1"),
    ("a waste of time", "0"),
    ("boring and slow", "0"),
    ("i loved it", "1"),
    ("the plot is a mess", "0"),
    ("a beautiful , charming film", "1"),
    ("the acting is weak", "0"),
    ("fun and lovely music", "1"),
    ("the worst script ever", "0"),
    ("a brilliant ending", "1"),
]
EXAMPLES = [Example({"sentence": s}, y, f"t:{i}") for i, (s, y) in enumerate(SST)]
TEMPLATE = parse_template("{sentence} [T] [T] [P] .")


@pytest.fixture(scope="module")
def lms(tiny_model_dirs):
    return {f: load_model(str(p), "cpu") for f, p in tiny_model_dirs.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_features_times_output_embeddings_are_the_logits(family, lms):
    """What is captured is the vector the head multiplies with the output embeddings: the
    logits minus ``h @ E.T`` are one bias per word, the same for every example."""
    lm = lms[family]
    dataset = lm.encoder(TEMPLATE).encode_all(EXAMPLES)
    batch = dataset.collate(range(len(EXAMPLES)))
    with torch.inference_mode(), head_transform_output(lm) as (captured, weight):
        logits = lm.mask_logits(
            batch.mask_positions,
            batch.attention_mask,
            input_ids=batch.input_ids,
            token_type_ids=batch.token_type_ids,
        )
        h = captured[0]
    assert h.shape == (len(EXAMPLES), 1, weight.shape[1])
    bias = logits[:, 0] - h[:, 0] @ weight[: logits.shape[-1]].T
    torch.testing.assert_close(bias, bias[:1].expand_as(bias), rtol=1e-4, atol=1e-4)
    features = mask_features(lm, TEMPLATE, EXAMPLES)
    torch.testing.assert_close(features, h[:, 0], rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # the hook is gone once the block is left
        lm.mask_logits(batch.mask_positions, batch.attention_mask, input_ids=batch.input_ids)
    assert len(captured) == 1


def test_logistic_regression_fits_and_maps_back():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=gen) * torch.tensor([1.0, 5, 0.1, 2, 1, 3]) + 4
    y = (x[:, 0] - x[:, 3] / 2 + 0.2 * x[:, 5] > 4 - 2 + 0.8).long()
    for standardize in (False, True):
        w, b = fit_logistic_regression(x, y, 2, l2=1e-4, standardize=standardize)
        assert w.shape == (2, 6) and b.shape == (2,)
        accuracy = ((x @ w.T + b).argmax(1) == y).float().mean()
        assert accuracy > 0.97
    again = fit_logistic_regression(x, y, 2, l2=1e-4)
    torch.testing.assert_close(again[0], fit_logistic_regression(x, y, 2, l2=1e-4)[0])


def test_planted_label_words_are_found(lms, monkeypatch):
    """Features that point at a word's output embedding make that word the label word."""
    lm = lms["bert"]
    tok = lm.tokenizer
    planted = {"0": tok.convert_tokens_to_ids("awful"), "1": tok.convert_tokens_to_ids("lovely")}
    with head_transform_output(lm) as (_, weight):
        emb = weight.detach().float()
    gen = torch.Generator().manual_seed(0)

    def fake_features(lm_, template, examples, batch_size=32):
        unit = {lab: emb[i] / emb[i].norm() for lab, i in planted.items()}
        return torch.stack(
            [5 * unit[e.label] + 0.2 * torch.randn(emb.shape[1], generator=gen) for e in examples]
        )

    monkeypatch.setattr(labels_module, "mask_features", fake_features)
    found = search_labels(lm, TEMPLATE, EXAMPLES * 3, per_class=3)
    assert found.train_accuracy == 1.0
    assert found.verbalizer["0"][0] == "awful" and found.verbalizer["1"][0] == "lovely"
    scores = [s for _, s in found.scores["0"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("family", ["bert", "roberta", "albert", "deberta-v2", "electra"])
def test_label_search_writes_a_verbalizer_that_loads(family, lms):
    lm = lms[family]
    found = search_labels(lm, TEMPLATE, EXAMPLES, per_class=3)
    assert list(found.verbalizer) == ["1", "0"]  # labels in order of first appearance
    words = [w for ws in found.verbalizer.values() for w in ws]
    assert all(len(ws) == 3 for ws in found.verbalizer.values())
    assert len({w.lower() for w in words}) == len(words)
    for w in words:
        assert w.isalpha() and not w[0].isupper()
    resolved = Verbalizer.from_dict(found.verbalizer).resolve(lm.tokenizer)
    assert all(len(p) == 1 for p in resolved.pieces)
    # each word round-trips to the token it was chosen as
    vocab = lm.tokenizer.get_vocab()
    for w, (token_id,) in zip(resolved.words, resolved.pieces):
        assert token_id in (vocab.get(word_token(family, w)), vocab.get(w))


def test_label_search_respects_filters_and_needs_two_classes(lms):
    lm = lms["roberta"]
    found = search_labels(
        lm,
        TEMPLATE,
        EXAMPLES,
        per_class=4,
        filters=TokenFilters(
            capitalized=False, non_alphabetic=False, stop_words=frozenset({"the", "a"})
        ),
    )
    assert not {"the", "a"} & {w.lower() for ws in found.verbalizer.values() for w in ws}
    from autoprompt_py.errors import AutopromptError

    with pytest.raises(AutopromptError, match="at least two classes"):
        search_labels(lm, TEMPLATE, [e for e in EXAMPLES if e.label == "1"])
