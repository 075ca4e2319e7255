"""The real pretrained model in ../shared reproduces independent reference figures.

Skips, with the reason, where ../shared (or $AUTOPROMPT_SHARED) is absent, as in a fresh clone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForMaskedLM, AutoTokenizer

from autoprompt_py.cli import main

pytestmark = pytest.mark.slow


def invoke(*args) -> dict:
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r


# Independent plain-transformers scorer, full SST-2 dev (872 rows): see ../shared/README.md.
REFERENCE = [
    ({"0": "terrible", "1": "great"}, 0.542),
    ({"0": "bad", "1": "good"}, 0.611),
    ({"0": "awful", "1": "wonderful"}, 0.518),
]


@pytest.mark.parametrize(
    ("words", "accuracy"), REFERENCE, ids=["terrible-great", "bad-good", "awful-wonderful"]
)
def test_sst2_dev_reproduces_reference_accuracy(
    words, accuracy, shared_model, shared_data, tmp_path
):
    out = tmp_path / "score.json"
    invoke(
        "score",
        "--model",
        shared_model,
        "--device",
        "cpu",
        "--data",
        shared_data / "sst2" / "dev.tsv",
        "--template",
        "{sentence} It was [MASK] .",
        "--verbalizer",
        json.dumps(words),
        "--bootstrap",
        "200",
        "--batch-size",
        "64",
        "--output",
        out,
    )
    result = json.loads(out.read_text())
    assert result["n"] == 872
    (t,) = result["templates"]
    assert round(t["accuracy"], 3) == accuracy
    assert t["truncated"] == 0
    low, high = t["accuracy_ci95"]
    assert low < t["accuracy"] < high


RELATION = "P1001"  # "[X] is a legal term in [Y] .": P@10 is well above zero on this model
TEMPLATE = "[X] is a legal term in [Y] ."
N_FACTS = 50


def _brute_force(shared_model, facts, vocab_words):
    """(P@1, P@10, MRR, scored) from plain transformers, one fact at a time."""
    tok = AutoTokenizer.from_pretrained(shared_model)
    model = AutoModelForMaskedLM.from_pretrained(shared_model).eval()
    candidates = None
    if vocab_words is not None:
        ids = tok(vocab_words, add_special_tokens=False)["input_ids"]
        candidates = sorted({i[0] for i in ids if len(i) == 1 and i[0] != tok.unk_token_id})
    ranks = []
    for fact in facts:
        gold = tok(fact["obj_label"], add_special_tokens=False)["input_ids"]
        if len(gold) != 1 or gold[0] == tok.unk_token_id:
            continue
        if candidates is not None and gold[0] not in candidates:
            continue
        text = TEMPLATE.replace("[X]", fact["sub_label"]).replace("[Y]", tok.mask_token)
        inputs = tok(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0]
        row = logits[(inputs["input_ids"][0] == tok.mask_token_id).nonzero()[0, 0]]
        pool = list(range(len(row))) if candidates is None else candidates
        order = sorted(pool, key=lambda i: -row[i].item())  # every candidate, best first
        ranks.append(order.index(gold[0]) + 1)
    ranks = np.array(ranks)
    return (ranks == 1).mean(), (ranks <= 10).mean(), (1 / ranks).mean(), len(ranks)


@pytest.mark.parametrize("restricted", [True, False], ids=["common-vocab", "full-vocab"])
def test_probe_one_relation_equals_brute_force(restricted, shared_model, shared_data, tmp_path):
    lines = (shared_data / "lama" / "facts" / f"{RELATION}.jsonl").read_text().splitlines()
    facts = [json.loads(line) for line in lines[:N_FACTS]]
    path = tmp_path / f"{RELATION}.jsonl"
    path.write_text("".join(json.dumps(f) + "\n" for f in facts))
    vocab_file = shared_data / "lama" / "common_vocab_cased.txt"
    out = tmp_path / "probe.json"
    args = [
        "probe",
        "--model",
        shared_model,
        "--device",
        "cpu",
        "--facts",
        path,
        "--relations",
        "lama_trex",
        "--output",
        out,
    ]
    if restricted:
        args += ["--vocab", vocab_file]
    invoke(*args)
    (rel,) = json.loads(out.read_text())["relations"]
    assert rel["relation"] == RELATION and rel["template"] == TEMPLATE
    words = vocab_file.read_text().split() if restricted else None
    p1, p10, mrr, n = _brute_force(shared_model, facts, words)
    assert rel["facts"] == N_FACTS
    assert rel["n"] == n == N_FACTS - rel["skipped"]
    assert n >= 40
    assert rel["p@1"] == pytest.approx(p1, abs=1e-9)
    assert rel["p@10"] == pytest.approx(p10, abs=1e-9)
    assert rel["mrr"] == pytest.approx(mrr, abs=1e-9)
    assert p10 > 0  # a figure worth comparing
