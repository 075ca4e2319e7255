"""Ensembles and contextual calibration against an independent computation on tiny models.

The reference writes each input out by string substitution, runs a plain
``AutoModelForMaskedLM`` one text at a time, and does the label arithmetic in numpy: label
log-probabilities, p_cf over the content-free texts, calibration, the ensemble rules, ranks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForMaskedLM, AutoTokenizer

from autoprompt_py.calibration import DEFAULT_CONTENT_FREE, calibrate, label_p_cf
from autoprompt_py.cli import main
from autoprompt_py.data import Example
from autoprompt_py.ensemble import combine
from autoprompt_py.evaluation import score_prompts
from autoprompt_py.model import load_model
from autoprompt_py.resources import NamedTemplate, load_templates
from autoprompt_py.template import parse_template
from autoprompt_py.verbalizer import Verbalizer

TOL = 1e-5
SENTENCES = [
    ("the movie was great , really", "1"),
    ("a waste of time", "0"),
    ("boring and slow", "0"),
    ("i loved it", "1"),
    ("the plot is a mess", "0"),
    ("a beautiful , charming film", "1"),
    ("not so bad", "1"),
    ("what a dull story", "0"),
]
WORDS = {"0": ["terrible", "bad"], "1": ["great", "good"]}
TEMPLATES = ["{sentence} It was [MASK] .", "Just [MASK] ! {sentence}", "[MASK] : {sentence}"]
BYTE_LEVEL = ("roberta",)


@pytest.fixture(scope="module", params=["bert", "roberta"])
def setup(request, tiny_model_dirs):
    family = request.param
    path = tiny_model_dirs[family]
    plain = AutoModelForMaskedLM.from_pretrained(path).eval()
    return family, load_model(path, device="cpu"), plain, AutoTokenizer.from_pretrained(path)


def _examples() -> list[Example]:
    return [Example({"sentence": s}, lab, f"mem:{i + 2}") for i, (s, lab) in enumerate(SENTENCES)]


def _mask_log_probs(plain, tok, template: str, text: str) -> np.ndarray:
    """log-softmax over the vocabulary at the prediction slot (the template's own mask)."""
    before, after = template.split("[MASK]")
    full = before.format(sentence=text, sub_label=text) + tok.mask_token
    full = (full + after.format(sentence=text, sub_label=text)).rstrip()
    inputs = tok(full, return_tensors="pt")
    with torch.no_grad():
        logits = plain(**inputs).logits[0].double()
    masks = (inputs["input_ids"][0] == tok.mask_token_id).nonzero()[:, 0]
    # a content-free text that is the mask token adds a mask: the slot is the template's one
    slot = masks[-1] if template.index("[MASK]") > template.find("{") >= 0 else masks[0]
    return torch.log_softmax(logits[slot], -1).numpy()


def _word_id(tok, family: str, word: str, first: bool = False) -> int:
    """The word's token; byte-level BPE words carry their space unless they open the input."""
    space = " " if family in BYTE_LEVEL and not first else ""
    ids = tok(space + word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1
    return ids[0]


def _label_log_probs(family, plain, tok, template, texts) -> np.ndarray:
    """[texts, labels]: log-softmax over labels of log Σ_words p(word) (the 'sum' rule)."""
    rows = []
    first = template.startswith("[MASK]")
    for t in texts:
        lp = _mask_log_probs(plain, tok, template, t)
        scores = [
            np.logaddexp.reduce([lp[_word_id(tok, family, w, first)] for w in ws])
            for ws in WORDS.values()
        ]
        scores = np.array(scores)
        rows.append(scores - np.logaddexp.reduce(scores))
    return np.array(rows)


def _reference_p_cf(family, plain, tok, template) -> np.ndarray:
    texts = ["N/A", "", tok.mask_token]
    return np.exp(_label_log_probs(family, plain, tok, template, texts)).mean(0)


def _accuracy(log_probs: np.ndarray) -> float:
    gold = np.array([int(lab) for _, lab in SENTENCES])
    return float((log_probs.argmax(1) == gold).mean())


def test_p_cf_and_calibrated_accuracy_equal_the_reference(setup):
    family, lm, plain, tok = setup
    texts = [s for s, _ in SENTENCES]
    verb = Verbalizer.from_dict(WORDS)
    named = [NamedTemplate(f"t{i}", parse_template(t)) for i, t in enumerate(TEMPLATES)]
    report = score_prompts(
        lm, named, _examples(), [("w", verb)], bootstrap=0, progress=False,
        calibrate_with=DEFAULT_CONTENT_FREE,
    )  # fmt: skip
    changed = 0
    for template, member in zip(TEMPLATES, report.members):
        p_cf = _reference_p_cf(family, plain, tok, template)
        assert list(member.p_cf) == ["0", "1"]
        np.testing.assert_allclose(list(member.p_cf.values()), p_cf, atol=TOL, rtol=0)
        raw = _label_log_probs(family, plain, tok, template, texts)
        np.testing.assert_allclose(member.scores, raw, atol=TOL, rtol=0)
        cal = np.log(np.exp(raw) / p_cf)
        cal -= np.logaddexp.reduce(cal, axis=1, keepdims=True)
        np.testing.assert_allclose(member.calibrated.scores, cal, atol=TOL, rtol=0)
        assert member.metrics["accuracy"] == pytest.approx(_accuracy(raw))
        assert member.calibrated.metrics["accuracy"] == pytest.approx(_accuracy(cal))
        changed += int((raw.argmax(1) != cal.argmax(1)).any())
    # the tiny random models lean to one label: calibration moves some prediction
    assert changed >= 1


def test_label_p_cf_of_one_content_free_text(setup):
    family, lm, plain, tok = setup
    verb = Verbalizer.from_dict(WORDS).resolve(lm.tokenizer)
    template = TEMPLATES[0]
    got = label_p_cf(lm, parse_template(template), verb, [""])
    expected = np.exp(_label_log_probs(family, plain, tok, template, [""]))[0]
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    assert got.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("rule", ["mean-logprob", "mean-prob", "vote"])
def test_ensemble_of_templates_equals_the_reference(setup, rule):
    family, lm, plain, tok = setup
    texts = [s for s, _ in SENTENCES]
    named = [NamedTemplate(f"t{i}", parse_template(t)) for i, t in enumerate(TEMPLATES)]
    members = [_label_log_probs(family, plain, tok, t, texts) for t in TEMPLATES]
    for weights in (None, [2.0, 1.0, 0.5]):
        report = score_prompts(
            lm, named, _examples(), [("w", Verbalizer.from_dict(WORDS))], bootstrap=0,
            progress=False, ensemble_rule=rule, weights=weights,
        )  # fmt: skip
        w = np.ones(3) if weights is None else np.array(weights)
        if rule == "mean-logprob":
            ens = sum(wi * m for wi, m in zip(w, members)) / w.sum()
            pred = ens.argmax(1)
        elif rule == "mean-prob":
            pred = (sum(wi * np.exp(m) for wi, m in zip(w, members)) / w.sum()).argmax(1)
        else:
            votes = np.zeros((len(texts), 2))
            for wi, m in zip(w, members):
                votes[np.arange(len(texts)), m.argmax(1)] += wi
            tiebreak = sum(wi * m for wi, m in zip(w, members))
            pred = np.array(
                [
                    (tiebreak[i].argmax() if votes[i, 0] == votes[i, 1] else votes[i].argmax())
                    for i in range(len(texts))
                ]
            )
        got = [int(p) for p in report.ensemble.predictions]
        assert got == pred.tolist(), (rule, weights)
        assert report.ensemble.metrics["accuracy"] == pytest.approx(
            _accuracy(np.eye(2)[pred]), abs=1e-12
        )


def test_two_template_vote_with_weights_follows_the_heavier():
    a = np.log(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
    b = np.log(np.array([[0.3, 0.7], [0.45, 0.55], [0.1, 0.9]]))
    assert combine([a, b], "vote", [2, 1]).argmax().tolist() == [0, 1, 0]
    assert combine([a, b], "vote", [1, 2]).argmax().tolist() == [1, 1, 1]
    # equal weights: a tie wherever they disagree, broken by the mean log-probability
    mean = (a + b) / 2
    assert combine([a, b], "vote").argmax().tolist() == mean.argmax(1).tolist()
    # zero weight: that member is left out
    assert combine([a, b], "mean-prob", [0, 1]).argmax().tolist() == [1, 1, 1]


def test_calibrate_divides_and_renormalises():
    p = np.array([[0.6, 0.3, 0.1]])
    p_cf = np.array([0.5, 0.25, 0.25])
    expected = np.array([0.6 / 0.5, 0.3 / 0.25, 0.1 / 0.25])
    expected /= expected.sum()
    np.testing.assert_allclose(np.exp(calibrate(np.log(p), p_cf)), [expected], rtol=1e-12)


# --------------------------------------------------------------------------------------------
# the CLI: score
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dirs):
    root = tmp_path_factory.mktemp("ens")
    data = root / "sst.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{s}\t{lab}\n" for s, lab in SENTENCES))
    verb = root / "words.json"
    verb.write_text(json.dumps(WORDS))
    return {"root": root, "data": data, "verb": verb, "bert": tiny_model_dirs["bert"]}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _score(files, *extra, model=None):
    return [
        "score", "--model", model or files["bert"], "--device", "cpu", "--data", files["data"],
        "--bootstrap", "0", *extra,
    ]  # fmt: skip


def test_score_cli_members_ensemble_and_calibration(files, tmp_path, tiny_model_dirs):
    out = tmp_path / "r.json"
    r = invoke(
        *_score(
            files, "--template", TEMPLATES[0], "--template", TEMPLATES[1],
            "--verbalizer", files["verb"], "--verbalizer", "sst2",
            "--ensemble", "--calibrate", "--output", out, "--predictions",
        )
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["config"]["calibrate"] and result["config"]["ensemble_rule"] == "mean-logprob"
    assert result["config"]["content_free"] == ["N/A", "", "[MASK]"]
    members = result["templates"]
    assert len(members) == 4
    assert {(m["template"], m["verbalizer"]) for m in members} == {
        (t, v) for t in TEMPLATES[:2] for v in (str(files["verb"]), "sst2")
    }
    plain = AutoModelForMaskedLM.from_pretrained(tiny_model_dirs["bert"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dirs["bert"])
    for m in members:
        if m["verbalizer"] == str(files["verb"]):
            p_cf = _reference_p_cf("bert", plain, tok, m["template"])
            np.testing.assert_allclose(list(m["p_cf"].values()), p_cf, atol=TOL, rtol=0)
        assert sum(m["p_cf"].values()) == pytest.approx(1.0)
        assert set(m["calibrated"]) >= {"accuracy", "macro_f1", "recall", "n", "predictions"}
    # the ensemble in the JSON is the mean log-probability of the members' scores
    scores = np.array([[p["scores"] for p in m["predictions"]] for m in members])
    ens = scores.mean(0)
    preds = [["0", "1"][i] for i in ens.argmax(1)]
    assert [p["predicted"] for p in result["ensemble"]["predictions"]] == preds
    assert result["ensemble"]["calibrated"]["n"] == len(SENTENCES)
    # one table: every member and the ensemble, raw and calibrated columns
    assert "cal acc" in r.stdout and "ensemble (mean-logprob)" in r.stdout
    assert r.stdout.count(TEMPLATES[0]) == 2  # once per verbalizer


def test_score_cli_empty_content_free_text_is_allowed(files, tmp_path):
    out = tmp_path / "r.json"
    r = invoke(
        *_score(
            files, "--template", TEMPLATES[0], "--verbalizer", files["verb"], "--calibrate",
            "--content-free", "", "--output", out,
        )
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["config"]["content_free"] == [""]
    assert result["ensemble"] is None


def test_score_cli_ensemble_of_one_member_warns_and_reports_it(files, tmp_path):
    out = tmp_path / "r.json"
    r = invoke(
        *_score(
            files, "--template", TEMPLATES[0], "--verbalizer", files["verb"], "--ensemble",
            "--output", out,
        )
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert "warning: --ensemble with one member" in r.stderr
    result = json.loads(out.read_text())
    assert result["ensemble"] is None and len(result["templates"]) == 1


BAD = [
    (["--calibrate", "--content-free", "{sentence}"], "--content-free '{sentence}'"),
    (["--calibrate", "--content-free", "N/A", "--content-free", "[X] x"], "placeholder '[X]'"),
    (["--content-free", "N/A"], "add --calibrate"),
    (["--ensemble", "--weights", "1,2,3"], "3 weights for 4 members"),
    (["--ensemble", "--weights", "1,-1,1,1"], "not negative"),
    (["--ensemble", "--weights", "0,0,0,0"], "at least one weight"),
    (["--ensemble", "--weights", "1,x,1,1"], "numbers separated by commas"),
    (["--weights", "1,1,1,1"], "add --ensemble"),
    (["--ensemble", "--ensemble-rule", "median"], "mean-logprob, mean-prob, vote"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[m for _, m in BAD])
def test_score_cli_bad_options_fail_before_the_model_loads(files, tmp_path, extra, message):
    out = tmp_path / "r.json"
    args = _score(
        files, "--template", TEMPLATES[0], "--template", TEMPLATES[1], "--verbalizer",
        files["verb"], "--verbalizer", "sst2", "--output", out, *extra,
        model=tmp_path / "no-such-model",
    )  # fmt: skip
    r = invoke(*args)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert message in lines[0]
    assert "no-such-model" not in lines[0]
    assert not out.exists()


def test_score_cli_verbalizers_with_other_labels_are_refused(files, tmp_path):
    r = invoke(
        *_score(
            files, "--template", TEMPLATES[0], "--verbalizer", files["verb"], "--verbalizer",
            '{"0": "bad", "1": "good", "2": "fine"}', model=tmp_path / "no-such-model",
        )
    )  # fmt: skip
    assert r.exit_code == 2 and "never occur" in r.stderr


# --------------------------------------------------------------------------------------------
# probe: several templates per relation
# --------------------------------------------------------------------------------------------

FACTS = [
    ("Dante", "Florence"),
    ("Paris", "France"),
    ("Rome", "Italy"),
    ("Berlin", "Germany"),
    ("Mozart", "Vienna"),
    ("Einstein", "Ulm"),
    ("Galileo", "Pisa"),
    ("Goethe", "Frankfurt"),
    ("London", "England"),
    ("Madrid", "Spain"),
]
REL_TEMPLATES = ["[X] was born in [Y] .", "[X] is from [Y] .", "The home of [X] is [Y] ."]
VOCAB = sorted({o.lower() for _, o in FACTS} | {"city", "the", "world", "movie", "great"})


def _rel_files(root):
    facts = root / "facts"
    facts.mkdir(exist_ok=True)
    (facts / "P19.jsonl").write_text(
        "".join(json.dumps({"sub_label": s, "obj_label": o}) + "\n" for s, o in FACTS)
    )
    # two lines for P19 (a list, then one more), one template for P20 with no facts
    rel = root / "rel.jsonl"
    rel.write_text(
        json.dumps({"relation": "P19", "template": REL_TEMPLATES[:2]})
        + "\n"
        + json.dumps({"relation": "P19", "name": "home", "template": REL_TEMPLATES[2]})
        + "\n"
        + json.dumps({"relation": "P20", "template": "[X] died in [Y] ."})
        + "\n"
    )
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return facts, rel, vocab


def test_relations_file_with_several_templates_per_relation(tmp_path):
    _, rel, _ = _rel_files(tmp_path)
    named = load_templates(str(rel))
    assert [(t.name, t.relation) for t in named] == [
        ("P19:1", "P19"),
        ("P19:2", "P19"),
        ("home", "P19"),
        ("P20", "P20"),
    ]


def _ranks(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    return (scores > scores[np.arange(len(gold)), gold][:, None]).sum(1) + 1


def _p1_mrr(ranks):
    return float((ranks == 1).mean()), float((1 / ranks).mean())


def test_probe_multi_template_select_on_dev_ensemble_and_calibration(tmp_path, tiny_model_dirs):
    facts, rel, vocab = _rel_files(tmp_path)
    out = tmp_path / "p.json"
    r = invoke(
        "probe", "--model", tiny_model_dirs["bert"], "--device", "cpu", "--facts", facts,
        "--relations", rel, "--vocab", vocab, "--ensemble", "--calibrate",
        "--dev-fraction", "0.3", "--seed", "3", "--output", out, "--predictions",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    result = json.loads(out.read_text())
    (p19,) = result["relations"]
    assert [t["template"] for t in p19["templates"]] == REL_TEMPLATES
    plain = AutoModelForMaskedLM.from_pretrained(tiny_model_dirs["bert"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dirs["bert"])
    single = [w for w in VOCAB if len(tok.tokenize(w)) == 1]
    cand = sorted({tok.convert_tokens_to_ids(w) for w in single})
    col = {c: i for i, c in enumerate(cand)}
    kept = [(s, o) for s, o in FACTS if o.lower() in single]
    assert 6 <= len(kept) < len(FACTS)  # some object is split: skipped, as LAMA does
    gold = np.array([col[tok.convert_tokens_to_ids(o.lower())] for _, o in kept])
    assert p19["facts"] == len(FACTS) and p19["skipped"] == len(FACTS) - len(kept)
    split = np.array([p["split"] for p in p19["predictions"] if p["split"] is not None])
    test, dev = split == "test", split == "dev"
    assert dev.sum() == p19["dev"] == round(0.3 * len(kept)) and test.sum() == p19["n"]

    def cand_log_probs(template, text):
        lp = _mask_log_probs(
            plain, tok, template.replace("[X]", "{sub_label}").replace("[Y]", "[MASK]"), text
        )[cand]
        return lp - np.logaddexp.reduce(lp)

    raw, cal = [], []
    for template, got in zip(REL_TEMPLATES, p19["templates"]):
        lp = np.array([cand_log_probs(template, s) for s, _ in kept])
        p_cf = np.mean(
            [np.exp(cand_log_probs(template, t)) for t in ("N/A", "", tok.mask_token)], 0
        )
        c = np.log(np.exp(lp) / p_cf)
        raw.append(lp)
        cal.append(c)
        ranks, cranks = _ranks(lp, gold), _ranks(c, gold)
        p1, mrr = _p1_mrr(ranks[test])
        assert got["p@1"] == pytest.approx(p1) and got["mrr"] == pytest.approx(mrr)
        assert got["n"] == test.sum() and got["dev"]["n"] == dev.sum()
        assert got["dev"]["mrr"] == pytest.approx(_p1_mrr(ranks[dev])[1])
        assert got["calibrated"]["mrr"] == pytest.approx(_p1_mrr(cranks[test])[1])
    # the best template: the highest dev P@1, then dev MRR
    dev_keys = [_p1_mrr(_ranks(lp, gold)[dev]) for lp in raw]
    best = max(range(3), key=lambda i: (dev_keys[i][0], dev_keys[i][1], -i))
    assert p19["best"] == p19["templates"][best]["name"]
    cdev = [_p1_mrr(_ranks(c, gold)[dev]) for c in cal]
    assert (
        p19["best_calibrated"]
        == p19["templates"][max(range(3), key=lambda i: (cdev[i][0], cdev[i][1], -i))]["name"]
    )
    # the ensemble: the mean log-probability over the candidates, raw and calibrated
    ens_ranks = _ranks(np.mean(raw, 0), gold)
    assert p19["ensemble"]["mrr"] == pytest.approx(_p1_mrr(ens_ranks[test])[1])
    cal_norm = [c - np.logaddexp.reduce(c, axis=1, keepdims=True) for c in cal]
    assert p19["ensemble"]["calibrated"]["mrr"] == pytest.approx(
        _p1_mrr(_ranks(np.mean(cal_norm, 0), gold)[test])[1]
    )
    # reported (--ensemble): the ensemble; its ranks are the per-fact predictions
    assert result["reported"] == "ensemble" and p19["reported"] == "ensemble (mean-logprob)"
    ranks = [p["rank"] for p in p19["predictions"] if p["rank"] is not None]
    assert ranks == ens_ranks.tolist()
    assert result["micro"]["n"] == test.sum()
    assert set(result["averages"]) == {
        "first", "best-dev", "ensemble",
        "first:calibrated", "best-dev:calibrated", "ensemble:calibrated",
    }  # fmt: skip
    assert "best on dev" in r.stdout and "ensemble (mean-logprob)" in r.stdout


def test_probe_split_is_seeded_and_templates_per_relation_limits(tmp_path, tiny_model_dirs):
    facts, rel, vocab = _rel_files(tmp_path)

    def run(*extra):
        out = tmp_path / f"p{len(list(tmp_path.iterdir()))}.json"
        r = invoke(
            "probe", "--model", tiny_model_dirs["bert"], "--device", "cpu", "--facts", facts,
            "--relations", rel, "--vocab", vocab, "--output", out, "--predictions", *extra,
        )  # fmt: skip
        assert r.exit_code == 0, r.stderr
        return json.loads(out.read_text())["relations"][0]

    a, b, c = run("--seed", "1"), run("--seed", "1"), run("--seed", "2")
    split = lambda x: [p["split"] for p in x["predictions"]]  # noqa: E731
    assert split(a) == split(b) and split(a) != split(c)
    one = run("--templates-per-relation", "1")
    assert len(one["templates"]) == 1 and one["dev"] == 0
    assert one["n"] == len(FACTS) - one["skipped"]
    none = run("--select-on", "none")
    assert none["dev"] == 0 and "best" not in none and len(none["templates"]) == 3


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--templates-per-relation", "0"], "--templates-per-relation '0'"),
        (["--templates-per-relation", "two"], "'all' or a whole number"),
        (["--calibrate", "--content-free", "[X]"], "placeholder"),
        (["--ensemble", "--ensemble-rule", "max"], "mean-logprob, mean-prob, vote"),
    ],
)
def test_probe_bad_options_fail_before_the_model_loads(tmp_path, extra, message):
    facts, rel, _ = _rel_files(tmp_path)
    out = tmp_path / "p.json"
    r = invoke(
        "probe", "--model", tmp_path / "no-such-model", "--facts", facts, "--relations", rel,
        "--output", out, *extra,
    )  # fmt: skip
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# search --calibrate: the dev metric on calibrated probabilities
# --------------------------------------------------------------------------------------------


def test_search_dev_metric_is_calibrated(files, tmp_path, tiny_model_dirs):
    from autoprompt_py.search import SearchConfig, TriggerSearch, load_task

    lm = load_model(tiny_model_dirs["bert"], device="cpu")
    task = load_task("{sentence} [T] [T] It was [MASK] .", files["data"], files["data"], "sst2")
    trigger = [lm.tokenizer.convert_tokens_to_ids(w) for w in ("very", "movie")]
    fixed = NamedTemplate("t", task.template.with_triggers(trigger))
    report = score_prompts(
        lm, [fixed], _examples(), [("sst2", Verbalizer.from_dict(task.verbalizer.words))],
        bootstrap=0, progress=False, calibrate_with=DEFAULT_CONTENT_FREE,
    )  # fmt: skip
    (member,) = report.members
    raw = TriggerSearch(lm, task, SearchConfig(iters=0)).evaluate
    cal = TriggerSearch(lm, task, SearchConfig(iters=0, calibrate=True))
    assert raw(cal.dev, trigger).metric == pytest.approx(member.metrics["accuracy"])
    scored = cal.evaluate(cal.dev, trigger)
    assert scored.metric == pytest.approx(member.calibrated.metrics["accuracy"])
    # the loss too: the calibrated negative log-likelihood of the gold label
    gold = np.array([int(lab) for _, lab in SENTENCES])
    nll = -member.calibrated.scores[np.arange(len(gold)), gold]
    # (the search's rows are in length order)
    np.testing.assert_allclose(np.sort(scored.loss.cpu().numpy()), np.sort(nll), atol=TOL, rtol=0)
    # the train split stays raw
    assert cal.evaluate(cal.train, trigger).metric == pytest.approx(member.metrics["accuracy"])


def test_search_relation_dev_metric_is_calibrated_over_the_vocabulary(tmp_path, tiny_model_dirs):
    from autoprompt_py.search import SearchConfig, TriggerSearch, load_task

    facts, _, vocab = _rel_files(tmp_path)
    lm = load_model(tiny_model_dirs["bert"], device="cpu")
    task = load_task(
        "[X] [T] [Y] .", facts / "P19.jsonl", facts / "P19.jsonl", vocab=vocab, relation="P19"
    )
    trigger = [lm.tokenizer.convert_tokens_to_ids("city")]
    search = TriggerSearch(lm, task, SearchConfig(iters=0, calibrate=True))
    scored = search.evaluate(search.dev, trigger)
    # the probe path: the same template, calibrated over the candidates
    from autoprompt_py.probing import probe_templates

    (p,) = probe_templates(
        lm, [NamedTemplate("t", task.template.with_triggers(trigger), "P19")],
        {"P19": list(task.dev)}, vocab=read_vocab_list(vocab), progress=False,
        calibrate_with=DEFAULT_CONTENT_FREE,
    )  # fmt: skip
    expected = p.metrics(p.members[0].cal_ranks)
    assert scored.full()["p@1"] == pytest.approx(expected["p@1"])
    assert scored.full()["mrr"] == pytest.approx(expected["mrr"])
    assert scored.full()["mrr"] != pytest.approx(p.metrics(p.members[0].ranks)["mrr"])


def read_vocab_list(path):
    return [w for w in path.read_text().split() if w]


def test_search_cli_calibrate_flag(files, tmp_path):
    out = tmp_path / "t.json"
    r = invoke(
        "search", "--model", files["bert"], "--device", "cpu", "--train", files["data"],
        "--dev", files["data"], "--template", "{sentence} [T] It was [MASK] .", "--verbalizer",
        "sst2", "--iters", "2", "--batch-size", "4", "--accumulation-steps", "1",
        "--num-cand", "3", "--output", out, "--quiet", "--calibrate",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["config"]["calibrate"] is True
    report = score_prompts(
        load_model(files["bert"], device="cpu"), load_templates(str(out)), _examples(),
        [("sst2", Verbalizer.from_dict(result["verbalizer"]))], bootstrap=0, progress=False,
        calibrate_with=DEFAULT_CONTENT_FREE,
    )  # fmt: skip
    assert result["dev"]["accuracy"] == pytest.approx(
        report.members[0].calibrated.metrics["accuracy"]
    )
