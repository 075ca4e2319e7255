"""A decoder whose tokenizer names a mask token (as Gemma's does) is read as a decoder all
the same: the tokenizer is loaded as saved, mask token included, and every figure equals the
one of the same decoder whose tokenizer names none. The two folders differ only in the
``mask_token`` entry of ``tokenizer_config.json``: the same weights, vocabulary and ids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_decoders import build_tiny_decoder, build_tokenizer

from autoprompt_py.causal_model import CausalLM
from autoprompt_py.cli import main
from autoprompt_py.model import load_model
from autoprompt_py.template import parse_template
from autoprompt_py.tune.init import start_ids

REPO = Path(__file__).resolve().parents[1]
SENTIMENT = REPO / "examples" / "sentiment"
FAMILIES = ("gpt2", "llama")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """family -> {"mask": folder whose tokenizer names <mask>, "none": the same without}."""
    root = tmp_path_factory.mktemp("decoders-with-a-mask-token")
    out = {}
    for family in FAMILIES:
        tokenizer = build_tokenizer(family)
        tokenizer.add_special_tokens({"mask_token": "<mask>"})
        named = build_tiny_decoder(family, root / family / "mask", tokenizer)
        plain = root / family / "none"
        shutil.copytree(named, plain)
        config = plain / "tokenizer_config.json"
        entries = json.loads(config.read_text())
        assert entries.pop("mask_token") == "<mask>"
        config.write_text(json.dumps(entries))
        out[family] = {"mask": named, "none": plain}
    return out


def _invoke(*args) -> None:
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("family", FAMILIES)
def test_the_tokenizer_keeps_its_mask_token_and_the_model_fills_none(family, pairs):
    named = load_model(pairs[family]["mask"], device="cpu")
    plain = load_model(pairs[family]["none"], device="cpu")
    assert isinstance(named, CausalLM) and isinstance(plain, CausalLM)
    tok = named.tokenizer
    assert tok.mask_token == "<mask>" and tok.mask_token_id == len(tok) - 1  # never cleared
    assert plain.tokenizer.mask_token is None
    assert tok.get_vocab() == plain.tokenizer.get_vocab()
    for lm in (named, plain):
        assert lm.mask_token is None and lm.mask_token_id is None
    assert named.special_ids == plain.special_ids  # the mask token is not a special id here
    assert named.trigger_fill_id == plain.trigger_fill_id != tok.mask_token_id
    template = parse_template("{sentence} [T] [T] It was [P] .")
    assert named.encoder(template).next_token and named.encoder(template).n_read == 1
    # a tuned prompt's random start draws from the same tokens
    assert start_ids(named, 6, "vocab", 3) == start_ids(plain, 6, "vocab", 3)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("template", ["{sentence} It was [P]", "{sentence} It was [P] ."])
def test_score_is_that_of_the_tokenizer_without_one(family, template, pairs, tmp_path):
    results = []
    for which in ("mask", "none"):
        out = tmp_path / f"{which}.json"
        _invoke(
            "score", "--model", pairs[family][which], "--device", "cpu",
            "--data", SENTIMENT / "dev.tsv", "--limit", "12", "--template", template,
            "--verbalizer", "sst2", "--bootstrap", "0", "--calibrate", "--output", out,
        )  # fmt: skip
        results.append(json.loads(out.read_text())["templates"][0])
    named, plain = results
    assert named["calibrated"] == plain["calibrated"]  # no [MASK] content-free row on either
    for key in ("accuracy", "calibrated"):
        assert named[key] == plain[key], key


@pytest.mark.parametrize("family", FAMILIES)
def test_search_finds_what_it_finds_without_one(family, pairs, tmp_path):
    results = []
    for which in ("mask", "none"):
        out = tmp_path / f"{which}.json"
        _invoke(
            "search", "--model", pairs[family][which], "--device", "cpu",
            "--train", SENTIMENT / "train.tsv", "--dev", SENTIMENT / "dev.tsv",
            "--train-limit", "16", "--dev-limit", "12",
            "--template", "{sentence} [T] [T] It was [P] .", "--verbalizer", "sst2",
            "--search-width", "16", "--iters", "2", "--seed", "0", "--calibrate",
            "--fluency", "0.1", "--quiet", "--output", out,
        )  # fmt: skip
        results.append(json.loads(out.read_text()))
    named, plain = results
    assert named["trigger"] == plain["trigger"]
    assert named["dev"] == plain["dev"] and named["train"] == plain["train"]
