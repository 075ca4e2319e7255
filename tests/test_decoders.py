"""Decoders: the kind read from the checkpoint, and every label score and relation
rank equal to an independent computation done one example at a time with plain transformers
(the whole text tokenized at once, split at the slot, as lm-evaluation-harness does).

The tiny decoders of five families (``tiny_decoders.py``) have tokenizers trained in the
session, so leading-space behaviour (``Ġgreat``, ``▁great``) is real.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny_decoders import FAMILIES
from transformers import AutoModelForCausalLM, AutoTokenizer

from autoprompt_py.causal_model import CausalLM
from autoprompt_py.cli import main
from autoprompt_py.data import Example
from autoprompt_py.errors import AutopromptError
from autoprompt_py.model import MaskedLM, load_model
from autoprompt_py.probing import candidate_log_probs
from autoprompt_py.scoring import classify
from autoprompt_py.template import parse_template
from autoprompt_py.verbalizer import Verbalizer

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "i have to say the plot is a real treat .",
    "the photography is clumsy and loud .",
    "a fine film",
    "to be fair , this picture is boring and lazy .",
    "the direction is clever , warm and funny .",
]
FACTS = [("Dante", "Florence"), ("Mozart", "Salzburg"), ("France", "Paris"), ("Italy", "Rome")]


@pytest.fixture(scope="module")
def decoders(tiny_decoder_dirs) -> dict[str, CausalLM]:
    return {f: load_model(d, device="cpu") for f, d in tiny_decoder_dirs.items()}


@pytest.fixture(scope="module")
def reference(tiny_decoder_dirs):
    """family -> log p(continuation | context) by plain transformers, one text at a time."""
    cache = {}

    def get(family: str):
        if family not in cache:
            folder = tiny_decoder_dirs[family]
            model = AutoModelForCausalLM.from_pretrained(folder).eval()
            cache[family] = (model, AutoTokenizer.from_pretrained(folder))
        return cache[family]

    def log_prob(family: str, context: str, continuation: str) -> float:
        model, tok = get(family)
        ctx = tok(context)["input_ids"]
        full = tok(context + continuation)["input_ids"]
        assert full[: len(ctx)] == ctx, (context, continuation)  # the split at the boundary
        with torch.no_grad():
            lp = model(torch.tensor([full])).logits[0].log_softmax(-1)
        return float(sum(lp[i - 1, full[i]] for i in range(len(ctx), len(full))))

    def next_token(family: str, context: str) -> torch.Tensor:
        model, tok = get(family)
        with torch.no_grad():
            return model(torch.tensor([tok(context)["input_ids"]])).logits[0, -1].log_softmax(-1)

    return log_prob, next_token


def test_the_kind_comes_from_the_checkpoint(decoders, tiny_model_dirs):
    for family, lm in decoders.items():
        assert isinstance(lm, CausalLM) and lm.kind == "causal", family
    masked = load_model(tiny_model_dirs["bert"], device="cpu")
    assert isinstance(masked, MaskedLM) and masked.kind == "masked"


def _examples() -> list[Example]:
    return [Example({"sentence": s}, str(i % 2), f"row {i}") for i, s in enumerate(SENTENCES)]


WORDS = {"0": ["terrible"], "1": ["great"]}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "template, after",
    [("{sentence} It was [P]", ""), ("{sentence} It was [P] .", " .")],
    ids=["slot-last", "text-after"],
)
def test_label_scores_equal_a_plain_loop(family, template, after, decoders, reference):
    log_prob, _ = reference
    lm = decoders[family]
    verb = Verbalizer.from_dict(WORDS).resolve(lm.tokenizer, "sum")
    got = classify(lm, parse_template(template), _examples(), verb, batch_size=3).scores
    for i, s in enumerate(SENTENCES):
        for j, (_, (word,)) in enumerate(WORDS.items()):
            want = log_prob(family, f"{s} It was", f" {word}{after}")
            assert got[i, j] == pytest.approx(want, abs=1e-4), (family, s, word)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_multi_token_words_are_scored_as_continuations(family, decoders, reference):
    log_prob, _ = reference
    lm = decoders[family]
    words = {"0": ["terrible", "dreadfulness"], "1": ["superbness"]}
    verb = Verbalizer.from_dict(words).resolve(lm.tokenizer, "mean-logprob")
    assert verb.multi_piece_words  # the case under test
    got = classify(lm, parse_template("{sentence} It was [P]"), _examples(), verb, 2).scores
    for i, s in enumerate(SENTENCES):
        lp = {w: log_prob(family, f"{s} It was", f" {w}") for ws in words.values() for w in ws}
        assert got[i, 0] == pytest.approx((lp["terrible"] + lp["dreadfulness"]) / 2, abs=1e-4)
        assert got[i, 1] == pytest.approx(lp["superbness"], abs=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("template", ["{sentence} It was [P]", "{sentence} It was [P] ."])
def test_batch_size_never_changes_a_figure(family, template, decoders):
    lm = decoders[family]
    verb = Verbalizer.from_dict({"0": ["terrible", "bad"], "1": ["great"]}).resolve(lm.tokenizer)
    runs = [
        classify(lm, parse_template(template), _examples(), verb, batch_size=b).scores
        for b in (1, 4, 64)
    ]
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], atol=1e-5)


def test_mean_logit_is_refused_for_a_continuation(decoders):
    lm = decoders["gpt2"]
    verb = Verbalizer.from_dict(WORDS).resolve(lm.tokenizer, "mean-logit")
    with pytest.raises(AutopromptError, match="mean-logit has no meaning on a decoder"):
        classify(lm, parse_template("{sentence} It was [P] ."), _examples(), verb)
    # read at the slot, a logit has its meaning: accepted
    classify(lm, parse_template("{sentence} It was [P]"), _examples(), verb)


def _facts() -> list[Example]:
    return [Example({"sub_label": s}, o, f"fact {i}") for i, (s, o) in enumerate(FACTS)]


@pytest.mark.parametrize("family", FAMILIES)
def test_relation_ranks_over_the_vocabulary_read_the_next_token(family, decoders, reference):
    _, next_token = reference
    lm = decoders[family]
    lp, _ = candidate_log_probs(lm, parse_template("[X] was born in [Y]"), _facts(), None, 3)
    for i, (subject, _) in enumerate(FACTS):
        want = next_token(family, f"{subject} was born in").numpy()
        np.testing.assert_allclose(lp[i], want, atol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama", "opt"])
def test_relation_text_after_y_needs_vocab_then_scores_continuations(family, decoders, reference):
    log_prob, _ = reference
    lm = decoders[family]
    template = parse_template("[X] was born in [Y] .")
    with pytest.raises(AutopromptError, match=r"needs \[Y\] last.*--vocab"):
        candidate_log_probs(lm, template, _facts(), None)
    words = ["Paris", "Rome", "Berlin"]
    ids = [lm.tokenizer.encode(" " + w, add_special_tokens=False) for w in words]
    assert all(len(i) == 1 for i in ids)
    lp, _ = candidate_log_probs(lm, template, _facts(), [i[0] for i in ids], 2)
    for i, (subject, _) in enumerate(FACTS):
        raw = np.array([log_prob(family, f"{subject} was born in", f" {w} .") for w in words])
        want = raw - np.logaddexp.reduce(raw)
        np.testing.assert_allclose(lp[i], want, atol=1e-4)


def test_a_template_starting_with_the_slot_uses_bos(decoders, reference):
    log_prob, _ = reference
    lm = decoders["gpt2"]  # GPT-2 adds no bos itself, but has one
    verb = Verbalizer.from_dict(WORDS).resolve(lm.tokenizer, "sum", space_before=False)
    got = classify(lm, parse_template("[P] ! {sentence}"), _examples()[:2], verb).scores
    bos = lm.tokenizer.bos_token
    want = log_prob("gpt2", bos, "great ! " + SENTENCES[0])
    assert got[0, 1] == pytest.approx(want, abs=1e-4)
    qwen = decoders["qwen2"]  # no bos token at all: refused
    verb = Verbalizer.from_dict(WORDS).resolve(qwen.tokenizer, "sum", space_before=False)
    with pytest.raises(AutopromptError, match="no bos token"):
        classify(qwen, parse_template("[P] ! {sentence}"), _examples(), verb)


def test_score_command_on_a_decoder_records_the_kind(tiny_decoder_dirs, tmp_path):
    out = tmp_path / "score.json"
    args = [
        "score", "--model", tiny_decoder_dirs["llama"], "--device", "cpu",
        "--data", REPO / "examples" / "sentiment" / "dev.tsv", "--limit", "8",
        "--template", "{sentence} It was [MASK] .", "--verbalizer", "sst2",
        "--bootstrap", "0", "--calibrate", "--output", out,
    ]  # fmt: skip
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["config"]["model_kind"] == "causal"
    assert "calibrated" in result["templates"][0]


@pytest.mark.parametrize("made_on, used_on", [("masked", "gpt2"), ("causal", "bert")])
def test_a_result_of_the_other_kind_is_refused(
    made_on, used_on, tiny_decoder_dirs, tiny_model_dirs, tmp_path
):
    from autoprompt_py.resources import RESULT_KIND

    result = tmp_path / "found.json"
    result.write_text(
        json.dumps(
            {
                "kind": RESULT_KIND,
                "template": "{sentence} [T] It was [P] .",
                "trigger": {"ids": [5]},
                "model": {"name": "elsewhere", "kind": made_on},
            }
        )
    )
    model = {**tiny_decoder_dirs, **tiny_model_dirs}[used_on]
    out = tmp_path / "score.json"
    args = [
        "score", "--model", model, "--device", "cpu", "--template", result,
        "--data", REPO / "examples" / "sentiment" / "dev.tsv", "--limit", "4",
        "--verbalizer", "sst2", "--output", out,
    ]  # fmt: skip
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and f"made with a {made_on} model" in lines[0], r.stderr
    assert not out.exists()


@pytest.mark.parametrize("template", ["{sentence} It was [P]", "{sentence} It was [P] ."])
def test_predict_gives_the_label_scores_of_score(template, decoders, tiny_decoder_dirs, tmp_path):
    from autoprompt_py.ensemble import log_normalise

    data = REPO / "examples" / "sentiment" / "dev.tsv"
    out = tmp_path / "rows.jsonl"
    args = [
        "predict", "--model", tiny_decoder_dirs["qwen2"], "--device", "cpu", "--data", data,
        "--template", template, "--verbalizer", "sst2", "--output", out, "--batch-size", "3",
    ]  # fmt: skip
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    from autoprompt_py.data import read_examples

    examples = read_examples(str(data), "label")
    lm = decoders["qwen2"]
    verb = Verbalizer.from_file(REPO / "verbalizers" / "sst2.json").resolve(lm.tokenizer)
    want = np.exp(log_normalise(classify(lm, parse_template(template), examples, verb).scores))
    got = np.array([[row["p_0"], row["p_1"]] for row in rows])
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_an_ensemble_of_decoder_prompts(tiny_decoder_dirs, tmp_path):
    out = tmp_path / "score.json"
    args = [
        "score", "--model", tiny_decoder_dirs["gpt-neox"], "--device", "cpu",
        "--data", REPO / "examples" / "sentiment" / "dev.tsv", "--template", "sst2",
        "--verbalizer", "sst2", "--ensemble", "--bootstrap", "0", "--output", out,
    ]  # fmt: skip
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    result = json.loads(out.read_text())
    assert len(result["templates"]) == 3 and result["ensemble"]["accuracy"] >= 0


def test_a_label_whose_tokens_change_when_written_out_is_reported(decoders):
    from autoprompt_py.errors import AutopromptWarning

    lm = decoders["llama"]  # SentencePiece: "." alone is "▁.", after "great" it is "."
    verb = Verbalizer.from_dict(WORDS).resolve(lm.tokenizer)
    with pytest.warns(AutopromptWarning, match="label word 'terrible': written out"):
        classify(lm, parse_template("{sentence} It was [P]."), _examples(), verb)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutopromptWarning)
        classify(lm, parse_template("{sentence} It was [P] ."), _examples(), verb)
        gpt2 = decoders["gpt2"]  # byte-level BPE: "Ġgreat" then "." either way
        verb = Verbalizer.from_dict(WORDS).resolve(gpt2.tokenizer)
        classify(gpt2, parse_template("{sentence} It was [P]."), _examples(), verb)


def _one_line_error(r, *parts: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])


def test_bad_input_on_decoders_is_one_line(tiny_decoder_dirs, tiny_model_dirs, tmp_path):
    from autoprompt_py.resources import RESULT_KIND

    data = REPO / "examples" / "sentiment" / "dev.tsv"
    out = tmp_path / "out.json"

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    # a template that starts with the slot, on a decoder without a bos token
    r = run("score", "--model", tiny_decoder_dirs["qwen2"], "--device", "cpu", "--data", data,
            "--template", "[P] ! {sentence}", "--verbalizer", "sst2", "--output", out)  # fmt: skip
    _one_line_error(r, "starts with the answer slot", "no bos token")
    # mean-logit where the label is scored as a continuation
    r = run("score", "--model", tiny_decoder_dirs["gpt2"], "--device", "cpu", "--data", data,
            "--template", "{sentence} It was [P] .", "--verbalizer", "sst2",
            "--aggregation", "mean-logit", "--output", out)  # fmt: skip
    _one_line_error(r, "mean-logit has no meaning on a decoder", "sum or mean-logprob")
    # relation probing over the whole vocabulary with text after [Y]
    r = run("probe", "--model", tiny_decoder_dirs["gpt2"], "--device", "cpu", "--facts",
            REPO / "examples" / "lama_mini", "--template", "[X] was born in [Y] .",
            "--output", out)  # fmt: skip
    _one_line_error(r, "needs [Y] last", "--vocab")
    # a tuned folder of a masked LM, read by a decoder
    tuned = tmp_path / "tuned"
    r = run("tune", "--model", tiny_model_dirs["bert"], "--device", "cpu", "--train",
            REPO / "examples" / "sentiment" / "train.tsv", "--dev", data, "--template",
            "{sentence} [T] It was [MASK] .", "--verbalizer", "sst2", "--method", "soft",
            "--steps", "1", "--output", tuned, "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    r = run("score", "--model", tiny_decoder_dirs["gpt2"], "--device", "cpu", "--data", data,
            "--template", tuned, "--verbalizer", "sst2", "--output", out)  # fmt: skip
    _one_line_error(r, "made with a masked model", "is a causal model")
    # a search result of a masked LM, exported for a decoder
    found = tmp_path / "found.json"
    found.write_text(json.dumps({
        "kind": RESULT_KIND, "template": "{sentence} [T] It was [P] .",
        "trigger": {"ids": [5]}, "model": {"name": "bert", "kind": "masked"},
    }))  # fmt: skip
    exported = tmp_path / "found.safetensors"
    r = run("export", found, "--model", tiny_decoder_dirs["gpt2"], "--format", "embeddings",
            "--out", exported)  # fmt: skip
    _one_line_error(r, "made with a masked model")
    assert not out.exists() and not exported.exists()


def test_a_checkpoint_with_custom_code_is_refused_and_never_run(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    marker = tmp_path / "executed"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "mycustom", "architectures": ["MyCustomForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_my.MyConfig",
                     "AutoModelForCausalLM": "modeling_my.MyModel"},
    }))  # fmt: skip
    (folder / "configuration_my.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    r = CliRunner().invoke(
        main,
        ["score", "--model", str(folder), "--device", "cpu", "--template", "sst2",
         "--data", str(REPO / "examples" / "sentiment" / "dev.tsv"), "--verbalizer", "sst2"],
        input="y\n",  # were it asked on a terminal, the answer would be yes: it must not ask
        catch_exceptions=False,
    )  # fmt: skip
    _one_line_error(r, f"--model {folder}", "code of its own")
    assert not marker.exists()
