"""Decoders under ``torchrun``: two processes give what one gives, for ``score``
(continuation scoring of text after the slot, next-token scoring where the slot is last) and
for a GCG search (the prefix cache and the re-tokenization filter on every rank), soft-prompt
tuning (DDP) and predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_distributed import VOLATILE, assert_close, invoke, torchrun

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "examples" / "sentiment" / "train.tsv"
DEV = REPO / "examples" / "sentiment" / "dev.tsv"


def _stable(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in VOLATILE}


def test_score_on_two_processes_matches_one(tiny_decoder_dirs, tmp_path):
    args = [
        "score", "--model", tiny_decoder_dirs["llama"], "--device", "cpu", "--data", DEV,
        "--limit", "24", "--template", "sst2", "--template", "{sentence} It was [P]",
        "--verbalizer", "sst2", "--batch-size", "3", "--bootstrap", "20", "--predictions",
        "--calibrate",
    ]  # fmt: skip
    r = torchrun(*args, "--output", tmp_path / "two.json")
    assert r.returncode == 0, r.stderr[-2000:]
    one = invoke(*args, "--output", tmp_path / "one.json")
    assert one.exit_code == 0, one.stderr
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert b["world_size"] == 2
    assert_close(_stable(a), _stable(b))


@pytest.mark.parametrize("method", ["gcg"])
def test_search_on_two_processes_matches_one(method, tiny_decoder_dirs, tmp_path):
    args = [
        "search", "--model", tiny_decoder_dirs["gpt2"], "--device", "cpu", "--train", TRAIN,
        "--dev", DEV, "--template", "{sentence} [T] [T] It was [P]", "--verbalizer", "sst2",
        "--method", method, "--search-width", "8", "--topk", "6", "--iters", "3",
        "--batch-size", "5", "--accumulation-steps", "2", "--train-eval-limit", "9",
        "--dev-limit", "20", "--quiet",
    ]  # fmt: skip
    r = torchrun(*args, "--output", tmp_path / "two.json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert invoke(*args, "--output", tmp_path / "one.json").exit_code == 0
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert [h["trigger"] for h in a["history"]] == [h["trigger"] for h in b["history"]]
    assert_close(_stable(a), _stable(b))


def test_tune_on_two_processes_matches_one(tiny_decoder_dirs, tmp_path):
    """Soft prompts on a decoder with text after the slot (continuation loss): DDP on two
    processes follows the same curve as one process with the same global batch."""
    args = [
        "tune", "--model", tiny_decoder_dirs["qwen2"], "--device", "cpu", "--train", TRAIN,
        "--dev", DEV, "--template", "{sentence} [T] [T] It was [P] .", "--verbalizer", "sst2",
        "--method", "soft", "--init", "vocab", "--steps", "4", "--eval-every", "2",
        "--batch-size", "8", "--lr", "0.1", "--no-dropout", "--quiet",
    ]  # fmt: skip
    assert invoke(*args, "--output", tmp_path / "one").exit_code == 0
    r = torchrun(*args, "--output", tmp_path / "two")
    assert r.returncode == 0, r.stderr[-2000:]
    one, two = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("one", "two"))
    assert two["world_size"] == 2 and one["model"]["kind"] == two["model"]["kind"] == "causal"
    assert [c["dev"] for c in one["curve"]] == [c["dev"] for c in two["curve"]]
    assert [c["train_loss"] or 0 for c in one["curve"]] == pytest.approx(
        [c["train_loss"] or 0 for c in two["curve"]], rel=1e-5
    )


def test_predict_on_two_processes_writes_the_bytes_of_one(tiny_decoder_dirs, tmp_path):
    args = [
        "predict", "--model", tiny_decoder_dirs["opt"], "--device", "cpu", "--data", DEV,
        "--template", "{sentence} It was [P] .", "--template", "{sentence} It was [P]",
        "--verbalizer", "sst2", "--ensemble", "--calibrate", "--window", "7",
        "--batch-size", "3",
    ]  # fmt: skip
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert invoke(*args, "--output", one).exit_code == 0
    r = torchrun(*args, "--output", two)
    assert r.returncode == 0, r.stderr[-2000:]
    assert two.read_bytes() == one.read_bytes() and one.read_text().count("\n") > 20
