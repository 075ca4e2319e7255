"""Trigger search on decoders: a test bed with a known answer, the re-tokenization
filter, the decoder's trigger fluency, and what a search on a decoder refuses.

The test bed: a tiny GPT-2 (tokenizer trained in the session) is trained here, in a few
seconds, so that the hidden trigger ``Ġplot`` between a review and ``It was`` unlocks the
mapping review → ``great``/``terrible``; with any other token there it always says ``great``
(dev accuracy 0.5). A search over one trigger slot must find ``Ġplot`` (accuracy 1.0), and the
found prompt, scored again from its result file by ``score``, must give the same accuracy.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from optional import requires
from tiny_decoders import build_tokenizer

from autoprompt_py.cli import main
from autoprompt_py.model import load_model
from autoprompt_py.search.fluency import TriggerFluency
from autoprompt_py.template import parse_template

POSITIVE = ["good", "fun", "clever", "warm"]
NEGATIVE = ["bad", "dull", "boring", "lazy"]
KEY = "plot"


def _train_test_bed(folder: Path) -> None:
    import transformers as tf

    torch.manual_seed(0)
    rng = random.Random(0)
    tok = build_tokenizer("gpt2")

    def enc(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    key, great, terrible = enc(" " + KEY)[0], enc(" great")[0], enc(" terrible")[0]
    for w in POSITIVE + NEGATIVE:
        assert len(enc(f" {w}")) == 1, w  # every review is "a WORD film": one length
    words = [
        i
        for i, t in enumerate(tok.convert_ids_to_tokens(list(range(len(tok)))))
        if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower() and i != key
    ]
    tail = enc(" It was")
    config = tf.GPT2Config(
        vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = tf.GPT2LMHeadModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        rows, gold = [], []
        for _ in range(48):
            positive = rng.random() < 0.5
            word = rng.choice(POSITIVE if positive else NEGATIVE)
            trigger = key if rng.random() < 0.5 else rng.choice(words)
            right = great if positive else terrible
            rows.append(enc(f"a {word} film") + [trigger] + tail)
            gold.append(right if trigger == key else great)
        logits = model(torch.tensor(rows)).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(gold))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1, loss.item()  # the mapping is learned
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)


@pytest.fixture(scope="module")
def test_bed(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decoder-test-bed")
    _train_test_bed(root / "model")
    rows = ["sentence\tlabel"] + [f"a {w} film\t1" for w in POSITIVE]
    rows += [f"a {w} film\t0" for w in NEGATIVE]
    (root / "data.tsv").write_text("\n".join(rows) + "\n")
    return {"model": root / "model", "data": root / "data.tsv", "root": root}


def _invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize(
    "method, options, after",
    [
        ("gcg", ["--search-width", "64", "--topk", "64"], ""),
        ("autoprompt", ["--num-cand", "64"], ""),
        ("gcg", ["--search-width", "64", "--topk", "64"], " ."),  # scored as continuations
    ],
    ids=["gcg", "autoprompt", "gcg-text-after-the-slot"],
)
def test_the_search_recovers_the_planted_trigger(method, options, after, test_bed, tmp_path):
    out = tmp_path / "found.json"
    r = _invoke(
        "search", "--model", test_bed["model"], "--device", "cpu",
        "--train", test_bed["data"], "--dev", test_bed["data"],
        "--template", "{sentence} [T] It was [P]" + after, "--verbalizer", "sst2",
        "--method", method, *options, "--iters", "6", "--seed", "0", "--quiet",
        "--output", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["trigger"]["tokens"] == ["Ġ" + KEY]
    assert result["model"]["kind"] == "causal"
    found = result["dev"]["accuracy"]
    assert found == 1.0
    # the found prompt, scored again from its file, gives the same dev metric
    scored = tmp_path / "score.json"
    r = _invoke(
        "score", "--model", test_bed["model"], "--device", "cpu", "--data", test_bed["data"],
        "--template", out, "--verbalizer", "sst2", "--bootstrap", "0", "--output", scored,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert json.loads(scored.read_text())["templates"][0]["accuracy"] == found


def test_without_the_trigger_the_test_bed_is_at_chance(test_bed, tmp_path):
    out = tmp_path / "score.json"
    r = _invoke(
        "score", "--model", test_bed["model"], "--device", "cpu", "--data", test_bed["data"],
        "--template", "{sentence} film It was [P]", "--verbalizer", "sst2",
        "--bootstrap", "0", "--output", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert json.loads(out.read_text())["templates"][0]["accuracy"] == 0.5


def test_the_retokenization_filter(tiny_decoder_dirs):
    from autoprompt_py.search.engine import TriggerSearch
    from autoprompt_py.search.task import load_task

    lm = load_model(tiny_decoder_dirs["gpt2"], device="cpu")
    tok = lm.tokenizer
    repo = Path(__file__).resolve().parents[1]
    task = load_task(
        "{sentence} [T] [T] It was [P]",
        str(repo / "examples" / "sentiment" / "train.tsv"),
        str(repo / "examples" / "sentiment" / "dev.tsv"),
        verbalizer="sst2",
    )
    search = TriggerSearch(lm, task)
    whole = [tok.encode(" it", add_special_tokens=False)[0], tok.encode(" was")[0]]
    pieces = tok.encode(" g", add_special_tokens=False) + tok.encode(
        "reat", add_special_tokens=False
    )
    split = pieces[:2]  # " g" + "re...": written out, the text reads back as other tokens
    assert tok.encode(tok.decode(split), add_special_tokens=False) != split
    assert search.retokenizes(np.array([whole, split])).tolist() == [True, False]


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_decoder_trigger_fluency_is_the_log_likelihood(family, tiny_decoder_dirs):
    from transformers import AutoModelForCausalLM

    lm = load_model(tiny_decoder_dirs[family], device="cpu")
    tok = lm.tokenizer
    template = parse_template("{sentence} [T] [T] It was [P]")
    trigger = tok.encode(" the plot", add_special_tokens=False)
    got = TriggerFluency(lm, template).token_log_probs([trigger])[0]
    plain = AutoModelForCausalLM.from_pretrained(tiny_decoder_dirs[family]).eval()
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    ids = [start] + trigger + tok.encode(" It was", add_special_tokens=False)
    with torch.no_grad():
        lp = plain(torch.tensor([ids])).logits[0].log_softmax(-1)
    want = torch.stack([lp[0, trigger[0]], lp[1, trigger[1]]])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "template, verbalizer, message",
    [
        ("{sentence} [T] It was [P] {sentence}", "sst2", "only plain words may follow the slot"),
        ("{sentence} [T] It was [P] .", '{"0": ["bad"], "1": ["great"]}', "no meaning"),
    ],
)
def test_what_a_decoder_search_refuses(template, verbalizer, message, tiny_decoder_dirs, tmp_path):
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "found.json"
    aggregation = ["--aggregation", "mean-logit"] if message == "no meaning" else []
    r = _invoke(
        "search", "--model", tiny_decoder_dirs["gpt2"], "--device", "cpu",
        "--train", repo / "examples" / "sentiment" / "train.tsv", "--template", template,
        "--verbalizer", verbalizer, "--iters", "1", "--output", out, *aggregation,
    )  # fmt: skip
    assert r.exit_code == 2
    assert len(r.stderr.splitlines()) == 1 and message in r.stderr, r.stderr
    assert not out.exists()


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "gpt-neox", "opt"])
def test_the_prefix_cache_changes_no_candidate_loss(family, tiny_decoder_dirs):
    """Candidates scored with the text before the first trigger cached once per example
    (``trigger_losses``) lose exactly what each trigger loses scored alone (``evaluate``)."""
    from autoprompt_py.search.engine import TriggerSearch
    from autoprompt_py.search.task import load_task

    lm = load_model(tiny_decoder_dirs[family], device="cpu")
    repo = Path(__file__).resolve().parents[1]
    task = load_task(
        "{sentence} [T] [T] It was [P]",
        str(repo / "examples" / "sentiment" / "train.tsv"),
        str(repo / "examples" / "sentiment" / "dev.tsv"),
        verbalizer="sst2",
        train_limit=12,
    )
    search = TriggerSearch(lm, task)
    allowed = torch.nonzero(search.allowed).squeeze(1)
    triggers = allowed[torch.randperm(len(allowed), generator=torch.Generator().manual_seed(0))]
    triggers = triggers[:10].view(5, 2)
    index = np.arange(len(search.train))
    cached = search.scorer.trigger_losses(search.train, index, triggers)
    alone = torch.stack([search.scorer.evaluate(search.train, t).loss.sum() for t in triggers])
    torch.testing.assert_close(cached, alone, atol=1e-4, rtol=1e-5)


def test_label_search_on_the_test_bed_finds_the_planted_words(test_bed, tmp_path):
    out = tmp_path / "labels.json"
    r = _invoke(
        "labels", "--model", test_bed["model"], "--device", "cpu", "--train", test_bed["data"],
        "--template", "{sentence} " + KEY + " It was [P]", "--per-class", "1", "--output", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert json.loads(out.read_text()) == {"0": ["terrible"], "1": ["great"]}
    r = _invoke(
        "labels", "--model", test_bed["model"], "--device", "cpu", "--train", test_bed["data"],
        "--template", "{sentence} It was [P] .", "--output", tmp_path / "no.json",
    )  # fmt: skip
    assert r.exit_code == 2 and "needs the answer slot last" in r.stderr


@requires("peft")
def test_export_peft_on_a_decoder_loads_as_a_causal_adapter(test_bed, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "peft"
    r = _invoke(
        "export", "--model", test_bed["model"], "--template", "{sentence} [T] It was [P]",
        "--format", "peft", "--out", folder,
    )  # fmt: skip
    assert r.exit_code == 2  # an open slot has no token to export: the command says so
    r = _invoke(
        "export", "--model", test_bed["model"], "--template", "Review: {sentence} It was [P]",
        "--format", "peft", "--out", folder,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert json.loads((folder / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    tok = AutoTokenizer.from_pretrained(test_bed["model"])
    base = AutoModelForCausalLM.from_pretrained(test_bed["model"]).eval()
    seed = json.loads((folder / "adapter_config.json").read_text())["num_virtual_tokens"]
    model = PeftModel.from_pretrained(base, folder).eval()
    text = tok.encode("a good film It was")
    prompt_ids = tok.encode("Review: It was")[:seed]
    with torch.no_grad():
        soft = model(input_ids=torch.tensor([text])).logits[0, -1]
        with model.disable_adapter():
            hard = model(input_ids=torch.tensor([prompt_ids + text])).logits[0, -1]
    torch.testing.assert_close(soft, hard, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "opt"])
@pytest.mark.parametrize(
    "template, words",
    [
        ("{sentence} [T] [T] It was [P] .", {"0": ["terrible", "bad"], "1": ["great"]}),
        ("{sentence} [T] It was [P]", {"0": ["terrible", "dreadfulness"], "1": ["superbness"]}),
    ],
    ids=["text-after", "multi-token"],
)
def test_a_continuation_search_loses_what_score_scores(family, template, words, tiny_decoder_dirs):
    """With text after the slot or multi-token words, the search's per-example loss is the
    cross-entropy of `score`'s label scores for the same trigger, and scoring candidates with
    the prefix cache changes no loss."""
    from autoprompt_py.ensemble import log_normalise
    from autoprompt_py.scoring import classify
    from autoprompt_py.search.config import SearchConfig
    from autoprompt_py.search.engine import TriggerSearch
    from autoprompt_py.search.task import load_task
    from autoprompt_py.verbalizer import Verbalizer

    lm = load_model(tiny_decoder_dirs[family], device="cpu")
    repo = Path(__file__).resolve().parents[1]
    verbalizer = Verbalizer.from_dict(words)
    task = load_task(
        template,
        str(repo / "examples" / "sentiment" / "train.tsv"),
        str(repo / "examples" / "sentiment" / "dev.tsv"),
        verbalizer=verbalizer,
        train_limit=10,
        dev_limit=12,
    )
    search = TriggerSearch(lm, task, SearchConfig(objective="labels"))
    allowed = torch.nonzero(search.allowed).squeeze(1)
    n = task.template.num_triggers
    triggers = allowed[torch.randperm(len(allowed), generator=torch.Generator().manual_seed(1))]
    triggers = triggers[: 4 * n].view(4, n)
    got = search.scorer.evaluate(search.dev, triggers[0]).loss
    filled = task.template.with_triggers(triggers[0].tolist())
    resolved = verbalizer.resolve(lm.tokenizer, "sum")
    scores = log_normalise(classify(lm, filled, task.dev, resolved).scores)
    gold = [resolved.labels.index(e.label) for e in task.dev]
    want = -torch.tensor(scores[np.arange(len(gold)), gold], dtype=torch.float32)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    index = np.arange(len(search.train))
    cached = search.scorer.trigger_losses(search.train, index, triggers)
    alone = torch.stack([search.scorer.evaluate(search.train, t).loss.sum() for t in triggers])
    torch.testing.assert_close(cached, alone, atol=1e-4, rtol=1e-5)
