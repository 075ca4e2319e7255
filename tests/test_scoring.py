"""Batched scoring equals a direct plain-transformers computation, for every tiny family.

The reference never touches the library's encoder or forward pass: it writes the example out by
string substitution, encodes it with the tokenizer, runs ``AutoModelForMaskedLM(**inputs)`` one
example at a time, takes the logits at the mask token(s), applies ``log_softmax`` and aggregates
the label words by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import FAMILIES, MULTI_PIECE_WORDS
from transformers import AutoModelForMaskedLM, AutoTokenizer

from autoprompt_py.data import Example
from autoprompt_py.evaluation import score_templates
from autoprompt_py.metrics import bootstrap_interval, classification_metrics, rank_metrics
from autoprompt_py.model import load_model
from autoprompt_py.probing import probe_relations
from autoprompt_py.resources import NamedTemplate
from autoprompt_py.scoring import classify, probe_facts
from autoprompt_py.template import parse_template
from autoprompt_py.verbalizer import AGGREGATIONS, Verbalizer

BYTE_LEVEL = ("roberta", "modernbert")
TOL = 1e-5


@pytest.fixture(scope="module")
def models(tiny_model_dirs):
    """family -> (library MaskedLM, an independently loaded plain model, its tokenizer)."""
    out = {}
    for family, path in tiny_model_dirs.items():
        plain = AutoModelForMaskedLM.from_pretrained(path).eval()
        out[family] = (load_model(path, device="cpu"), plain, AutoTokenizer.from_pretrained(path))
    yield out
    _REFERENCE.clear()


SENTENCES = [
    ("the movie was great, really!", "1"),
    ("it was a waste of time", "0"),
    ("boring", "0"),
    ("Dante was born in Florence and the film is about him", "1"),
    ("not so bad", "1"),
    ("the plot is a mess , the acting is weak and the ending is too long", "0"),
    ("I loved it", "1"),
    ("what a dull , slow story", "0"),
    ("the music", "1"),
]


def _examples(n: int = len(SENTENCES)) -> list[Example]:
    return [
        Example({"sentence": s}, label, f"mem:{i + 2}")
        for i, (s, label) in enumerate(SENTENCES[:n])
    ]


def _segments(template: str, tokenizer, fields: dict, masks: int) -> list[str]:
    text = template.replace("[MASK]", " ".join([tokenizer.mask_token] * masks))
    return [s.format(**fields) for s in text.split(" [SEP] ")]


_REFERENCE: dict[tuple, torch.Tensor] = {}


def _mask_logits(plain, tokenizer, template: str, fields: dict, masks: int) -> torch.Tensor:
    """[masks, vocab] logits of a plain transformers forward pass on the substituted text."""
    key = (id(plain), template, tuple(sorted(fields.items())), masks)
    if key not in _REFERENCE:
        _REFERENCE[key] = _plain_mask_logits(plain, tokenizer, template, fields, masks)
    return _REFERENCE[key]


def _plain_mask_logits(plain, tokenizer, template: str, fields: dict, masks: int) -> torch.Tensor:
    inputs = tokenizer(*_segments(template, tokenizer, fields, masks), return_tensors="pt")
    with torch.no_grad():
        logits = plain(**inputs).logits[0]
    positions = (inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero()[:, 0]
    assert len(positions) == masks
    return logits[positions].double()


def _word_ids(tokenizer, family: str, word: str) -> list[int]:
    prefix = " " if family in BYTE_LEVEL else ""
    return tokenizer(prefix + word, add_special_tokens=False)["input_ids"]


def _reference_scores(family, plain, tokenizer, template, examples, words, aggregation):
    """Label scores [examples, labels] by hand."""
    out = []
    for e in examples:
        cache: dict[int, torch.Tensor] = {}
        row = []
        for label_words in words.values():
            per_word = []
            for w in label_words:
                ids = _word_ids(tokenizer, family, w)
                k = len(ids)
                if k not in cache:
                    cache[k] = _mask_logits(plain, tokenizer, template, e.fields, k)
                logits = cache[k]
                if aggregation == "mean-logit":
                    per_word.append(sum(logits[j, t].item() for j, t in enumerate(ids)) / k)
                else:
                    logp = torch.log_softmax(logits, -1)
                    per_word.append(sum(logp[j, t].item() for j, t in enumerate(ids)))
            if aggregation == "sum":
                row.append(math.log(sum(math.exp(s) for s in per_word)))
            else:
                row.append(sum(per_word) / len(per_word))
        out.append(row)
    return np.array(out)


# --------------------------------------------------------------------------------------------
# classification scores
# --------------------------------------------------------------------------------------------

SINGLE = {"0": ["terrible", "bad"], "1": ["great", "good"]}


@pytest.mark.parametrize("family", FAMILIES)
def test_classify_equals_plain_transformers(family, models):
    lm, plain, tok = models[family]
    template = "{sentence} It was [MASK] ."
    examples = _examples()
    for aggregation in AGGREGATIONS:
        verb = Verbalizer.from_dict(SINGLE).resolve(lm.tokenizer, aggregation)
        out = classify(lm, parse_template(template), examples, verb, batch_size=4)
        expected = _reference_scores(family, plain, tok, template, examples, SINGLE, aggregation)
        assert out.scores.shape == (len(examples), 2)
        np.testing.assert_allclose(out.scores, expected, atol=TOL, rtol=0, err_msg=aggregation)
        assert out.predictions == [["0", "1"][i] for i in expected.argmax(1)]
        assert out.truncated == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_classify_multi_piece_words_equal_plain_transformers(family, models):
    lm, plain, tok = models[family]
    words = {"0": ["terrible", MULTI_PIECE_WORDS[1]], "1": [MULTI_PIECE_WORDS[0], "great"]}
    template = "Just [MASK] ! {sentence}"
    examples = _examples(5)
    for aggregation in ("sum", "mean-logit"):
        verb = Verbalizer.from_dict(words).resolve(lm.tokenizer, aggregation)
        assert len(verb.piece_counts) >= 2
        out = classify(lm, parse_template(template), examples, verb, batch_size=3)
        expected = _reference_scores(family, plain, tok, template, examples, words, aggregation)
        np.testing.assert_allclose(out.scores, expected, atol=TOL, rtol=0, err_msg=aggregation)


@pytest.mark.parametrize("family", FAMILIES)
def test_classify_pair_template_equals_plain_transformers(family, models):
    lm, plain, tok = models[family]
    template = "{premise} ? [SEP] [MASK] , {hypothesis}"
    examples = [
        Example({"premise": s, "hypothesis": h}, lab)
        for (s, lab), (h, _) in zip(SENTENCES[:6], reversed(SENTENCES[:6]))
    ]
    words = {"0": ["no"], "1": ["yes", "maybe"]}
    verb = Verbalizer.from_dict(words).resolve(lm.tokenizer, "sum", space_before=False)
    out = classify(lm, parse_template(template), examples, verb, batch_size=4)
    # the prediction slot starts the second segment: its words carry no leading space
    expected = []
    for e in examples:
        logp = torch.log_softmax(_mask_logits(plain, tok, template, e.fields, 1)[0], -1)
        expected.append(
            [
                torch.logsumexp(
                    logp[[tok(w, add_special_tokens=False)["input_ids"][0] for w in ws]], 0
                ).item()
                for ws in words.values()
            ]
        )
    np.testing.assert_allclose(out.scores, np.array(expected), atol=TOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_size_does_not_change_scores(family, models):
    lm, _, _ = models[family]
    template = parse_template("{sentence} [T] It was [MASK] .")
    template = template.with_triggers(
        [lm.tokenizer.convert_tokens_to_ids(lm.tokenizer.tokenize(" very")[0])]
    )
    verb = Verbalizer.from_dict(SINGLE).resolve(lm.tokenizer, "sum")
    examples = _examples(8)
    one = classify(lm, template, examples, verb, batch_size=1).scores
    seven = classify(lm, template, examples, verb, batch_size=7).scores
    np.testing.assert_allclose(one, seven, atol=TOL, rtol=0)


def test_classify_counts_truncated_rows(models):
    lm, _, _ = models["bert"]
    examples = _examples(3) + [Example({"sentence": " ".join(["very"] * 80)}, "1")]
    verb = Verbalizer.from_dict(SINGLE).resolve(lm.tokenizer)
    out = classify(lm, parse_template("{sentence} It was [MASK] ."), examples, verb)
    assert out.truncated == 1
    assert np.isfinite(out.scores).all()


def test_score_templates_ties_metrics_to_predictions(models):
    lm, _, _ = models["roberta"]
    examples = _examples()
    templates = [
        NamedTemplate("a", parse_template("{sentence} It was [MASK] .")),
        NamedTemplate("b", parse_template("Just [MASK] ! {sentence}")),
    ]
    results = score_templates(
        lm, templates, examples, Verbalizer.from_dict(SINGLE), bootstrap=100, progress=False
    )
    assert [r.name for r in results] == ["a", "b"]
    gold = [e.label for e in examples]
    for r in results:
        assert r.metrics["n"] == len(examples)
        assert r.metrics["accuracy"] == pytest.approx(
            np.mean([p == g for p, g in zip(r.predictions, gold)])
        )
        js = r.to_json(examples)
        assert [p["predicted"] for p in js["predictions"]] == r.predictions
        assert [p["source"] for p in js["predictions"]] == [e.source for e in examples]


# --------------------------------------------------------------------------------------------
# probing
# --------------------------------------------------------------------------------------------

FACTS = [
    ("Dante", "Florence"),
    ("Paris", "France"),
    ("Rome", "Italy"),
    ("Berlin", "Germany"),
    ("the capital", "London"),
    ("Goethe", MULTI_PIECE_WORDS[0]),
    ("Mozart", "Vienna"),
]


def _facts() -> list[Example]:
    return [
        Example({"sub_label": s, "obj_label": o}, o, f"P19.jsonl:{i + 1}")
        for i, (s, o) in enumerate(FACTS)
    ]


def _brute_force(family, plain, tok, facts, candidates=None):
    """(rank, top-10 tokens) per fact, None for facts whose object is not one candidate token."""
    out = []
    for f in facts:
        ids = _word_ids(tok, family, f.label)
        if len(ids) != 1 or (candidates is not None and ids[0] not in candidates):
            out.append(None)
            continue
        logits = _mask_logits(plain, tok, "{sub_label} was born in [MASK] .", f.fields, 1)[0]
        pool = list(range(logits.shape[0])) if candidates is None else sorted(candidates)
        order = sorted(pool, key=lambda t: -logits[t].item())
        out.append((order.index(ids[0]) + 1, tok.convert_ids_to_tokens(order[:10])))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_probe_ranks_equal_brute_force(family, models):
    lm, plain, tok = models[family]
    facts = _facts()
    probe = probe_facts(lm, parse_template("[X] was born in [Y] ."), facts, batch_size=3)
    expected = _brute_force(family, plain, tok, facts)
    assert probe.scored.tolist() == [e is not None for e in expected]
    assert probe.num_skipped == 1  # the multi-piece object
    for i, e in enumerate(expected):
        if e is None:
            assert probe.ranks[i] == 0 and probe.top[i] == []
        else:
            assert probe.ranks[i] == e[0]
            assert probe.top[i] == e[1]


@pytest.mark.parametrize("family", ["bert", "roberta", "deberta-v2"])
def test_probe_restricted_to_a_vocabulary(family, models):
    lm, plain, tok = models[family]
    facts = _facts()
    words = [
        "florence",
        "france",
        "italy",
        "london",
        "vienna",
        "paris",
        "rome",
        "city",
        "the",
        "great",
        "movie",
        "film",
        "world",
    ]
    if family != "bert":
        words = [w.capitalize() for w in words[:7]] + words[7:]
    candidates = {_word_ids(tok, family, w)[0] for w in words}
    probe = probe_facts(lm, parse_template("[X] was born in [Y] ."), facts, sorted(candidates))
    expected = _brute_force(family, plain, tok, facts, candidates)
    assert probe.num_skipped == 2  # Germany is not a candidate; the multi-piece object
    for i, e in enumerate(expected):
        assert probe.ranks[i] == (0 if e is None else e[0])
        if e is not None:
            assert probe.top[i] == e[1]
            assert 1 <= probe.ranks[i] <= len(candidates)


def test_probe_relations_averages(models):
    lm, _, _ = models["bert"]
    facts = {"P19": _facts(), "P20": _facts()[:3]}
    templates = [
        NamedTemplate("P19", parse_template("[X] was born in [Y] ."), "P19"),
        NamedTemplate("any", parse_template("[X] died in [Y] .")),
    ]
    scores, averages = probe_relations(lm, templates, facts, progress=False, keep_predictions=True)
    assert [s.relation for s in scores] == ["P19", "P20"]
    assert scores[0].template == "[X] was born in [Y] ."
    assert scores[1].template == "[X] died in [Y] ."
    assert scores[0].facts == 7 and scores[0].skipped == 1
    assert len(scores[0].examples) == 7 and scores[0].examples[5]["rank"] is None
    ranks = np.array([e["rank"] for s in scores for e in s.examples if e["rank"] is not None])
    assert averages["micro"] == rank_metrics(ranks)
    for key in ("p@1", "p@10", "mrr"):
        assert averages["macro"][key] == pytest.approx(np.mean([s.metrics[key] for s in scores]))
    assert averages["macro"]["relations"] == 2


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def test_classification_metrics_by_hand():
    gold = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "b", "a", "b", "c", "c"]
    m = classification_metrics(gold, pred, ["a", "b", "c", "d"], bootstrap=0)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["recall"] == pytest.approx({"a": 2 / 3, "b": 1 / 2, "c": 1.0, "d": 0.0})
    f1 = {"a": 2 * 1 * (2 / 3) / (1 + 2 / 3), "b": 0.5, "c": 2 * 0.5 * 1 / 1.5, "d": 0.0}
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 4)
    assert m["n"] == 6
    assert m["accuracy_ci95"] is None  # no resamples, no interval


def test_bootstrap_interval_is_seeded_and_sensible():
    rng = np.random.default_rng(123)
    values = (rng.random(1000) < 0.7).astype(float)
    a = bootstrap_interval(values, 1000, seed=5)
    assert a == bootstrap_interval(values, 1000, seed=5)
    assert a != bootstrap_interval(values, 1000, seed=6)
    low, high = a
    assert low < values.mean() < high
    # normal approximation: 2 * 1.96 * sqrt(p (1 - p) / n) ~ 0.057
    assert 0.045 < high - low < 0.07
    assert bootstrap_interval(np.ones(20), 200, 0) == (1.0, 1.0)
    assert bootstrap_interval(np.array([]), 200, 0) == (0.0, 0.0)
    m1 = classification_metrics(["a", "b"] * 20, ["a"] * 40, ["a", "b"], 500, seed=1)
    m2 = classification_metrics(["a", "b"] * 20, ["a"] * 40, ["a", "b"], 500, seed=1)
    assert m1["accuracy_ci95"] == m2["accuracy_ci95"]


def test_rank_metrics_by_hand():
    m = rank_metrics(np.array([1, 2, 11, 1, 10]))
    assert m["p@1"] == pytest.approx(2 / 5)
    assert m["p@10"] == pytest.approx(4 / 5)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 11 + 1 + 1 / 10) / 5)
    assert m["n"] == 5
    assert rank_metrics(np.array([])) == {"p@1": 0.0, "p@10": 0.0, "mrr": 0.0, "n": 0}
