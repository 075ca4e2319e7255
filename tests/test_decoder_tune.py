"""Tuning on decoders: every PEFT adapter saved with ``task_type=CAUSAL_LM`` loads
with plain ``PeftModel.from_pretrained`` and, read one example at a time at the last token,
reproduces the dev accuracy the tune recorded; ``full`` gives a folder that ``--model`` loads
as a decoder; ``head`` a sequence classifier with its pad id set that transformers loads and
runs on a padded batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from optional import requires

from autoprompt_py.cli import main
from autoprompt_py.data import read_examples

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / "examples" / "sentiment" / "dev.tsv"


def _tune(model: Path, method: str, out: Path, template: str = "{sentence} It was [P]") -> dict:
    args = [
        "tune", "--model", model, "--device", "cpu", "--train",
        REPO / "examples" / "sentiment" / "train.tsv", "--dev", DEV,
        "--template", template, "--verbalizer", "sst2", "--method", method, "--steps", "12",
        "--lr", "0.05", "--eval-every", "4", "--output", out, "--quiet",
    ]  # fmt: skip
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    return json.loads((out / "result.json").read_text())


@requires("peft")
@pytest.mark.parametrize("method", ["prompt", "ptuning", "prefix", "lora"])
def test_peft_adapters_load_in_peft_and_reproduce_the_dev_metric(
    method, tiny_decoder_dirs, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_decoder_dirs["gpt2"]
    result = _tune(folder, method, tmp_path / method)
    config = json.loads((tmp_path / method / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM"
    assert result["model"]["kind"] == "causal"
    tok = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    model = PeftModel.from_pretrained(base, tmp_path / method).eval()
    great, terrible = (tok.encode(f" {w}")[0] for w in ("great", "terrible"))
    dev = read_examples(str(DEV), "label")
    correct, scores = [], []
    for e in dev:  # plain PEFT, one example at a time, the label words at the last token
        ids = torch.tensor([tok.encode(f"{e.fields['sentence']} It was")])
        with torch.no_grad():
            last = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
        correct.append(("1" if last[great] > last[terrible] else "0") == e.label)
        scores.append(last[[terrible, great]].log_softmax(-1).tolist())
    plain = sum(correct) / len(correct)
    assert result["dev"]["accuracy"] == pytest.approx(plain)  # the saved adapter is the best
    out = tmp_path / "score.json"  # and `score` reads the folder to the same figure
    args = [
        "score", "--model", folder, "--device", "cpu", "--data", DEV, "--template",
        tmp_path / method, "--verbalizer", "sst2", "--bootstrap", "0", "--output", out,
        "--predictions",
    ]  # fmt: skip
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    scored = json.loads(out.read_text())["templates"][0]
    assert scored["accuracy"] == pytest.approx(plain)
    ours = [p["scores"] for p in scored["predictions"]]
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(scores), atol=1e-4, rtol=0)
    # the adapter changed the model: its scores are not the base model's
    base_scores = []
    with model.disable_adapter(), torch.no_grad():
        for e in dev[:5]:
            ids = torch.tensor([tok.encode(f"{e.fields['sentence']} It was")])
            last = model(input_ids=ids).logits[0, -1]
            base_scores.append(last[[terrible, great]].log_softmax(-1).tolist())
    assert not torch.allclose(torch.tensor(base_scores), torch.tensor(scores[:5]), atol=1e-3)


def test_full_gives_a_decoder_folder(tiny_decoder_dirs, tmp_path):
    result = _tune(tiny_decoder_dirs["llama"], "full", tmp_path / "full")
    out = tmp_path / "score.json"
    args = [
        "score", "--model", tmp_path / "full", "--device", "cpu", "--data", DEV, "--template",
        tmp_path / "full", "--verbalizer", "sst2", "--bootstrap", "0", "--output", out,
        "--limit", "12",
    ]  # fmt: skip
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    scored = json.loads(out.read_text())
    assert scored["config"]["model_kind"] == "causal"
    assert result["model"]["kind"] == "causal"


def test_head_sets_the_pad_id_and_loads_in_transformers(tiny_decoder_dirs, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _tune(tiny_decoder_dirs["gpt2"], "head", tmp_path / "head")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "head").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "head")
    assert tok.pad_token_id is None  # the user's tokenizer is saved as it was
    pad = model.config.pad_token_id
    assert pad == tok.eos_token_id
    one, two = tok.encode("a fine film"), tok.encode("the plot is a real treat")
    batch = torch.tensor([one + [pad] * (len(two) - len(one)), two])
    mask = torch.tensor([[1] * len(one) + [0] * (len(two) - len(one)), [1] * len(two)])
    with torch.no_grad():
        together = model(input_ids=batch, attention_mask=mask).logits
        alone = model(input_ids=torch.tensor([one])).logits[0]
    torch.testing.assert_close(together[0], alone, atol=1e-5, rtol=0)


def _plain_continuation(model, tok, context: str, continuation: str) -> float:
    ctx = tok.encode(context)
    full = tok.encode(context + continuation)
    assert full[: len(ctx)] == ctx
    with torch.no_grad():
        lp = model(input_ids=torch.tensor([full])).logits[0].float().log_softmax(-1)
    lp = lp[len(lp) - len(full) :]  # PEFT returns the virtual tokens' positions first
    return float(sum(lp[i - 1, full[i]] for i in range(len(ctx), len(full))))


@requires("peft")
@pytest.mark.parametrize("method", ["prompt", "ptuning", "prefix", "lora"])
def test_tuning_with_text_after_the_slot_scores_continuations(method, tiny_decoder_dirs, tmp_path):
    """Text after the slot: the tune trains and `score` reads the folder on each label's
    log-likelihood with that text, which plain PEFT computes alike, one text at a time."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_decoder_dirs["gpt2"]
    result = _tune(folder, method, tmp_path / method, template="{sentence} It was [P] .")
    out = tmp_path / "score.json"
    args = [
        "score", "--model", folder, "--device", "cpu", "--data", DEV, "--limit", "10",
        "--template", tmp_path / method, "--verbalizer", "sst2", "--bootstrap", "0",
        "--output", out, "--predictions",
    ]  # fmt: skip
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    ours = [p["scores"] for p in json.loads(out.read_text())["templates"][0]["predictions"]]
    tok = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    model = PeftModel.from_pretrained(base, tmp_path / method).eval()
    want = []
    for e in read_examples(str(DEV), "label")[:10]:
        context = f"{e.fields['sentence']} It was"
        raw = torch.tensor(
            [_plain_continuation(model, tok, context, f" {w} .") for w in ("terrible", "great")]
        )
        want.append(raw.log_softmax(-1).tolist())
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(want), atol=1e-4, rtol=0)
    assert result["dev"]["accuracy"] >= 0  # and the tune itself ran on continuations


@pytest.mark.parametrize(
    "method, template",
    [("soft", "{sentence} [T] [T] It was [P] ."), ("full", "{sentence} It was [P] .")],
)
def test_soft_and_full_with_text_after_the_slot_reproduce_the_dev_metric(
    method, template, tiny_decoder_dirs, tmp_path
):
    folder = tiny_decoder_dirs["llama"]
    result = _tune(folder, method, tmp_path / method, template=template)
    model = tmp_path / method if method == "full" else folder
    out = tmp_path / "score.json"
    args = [
        "score", "--model", model, "--device", "cpu", "--data", DEV, "--template",
        tmp_path / method, "--verbalizer", "sst2", "--bootstrap", "0", "--output", out,
    ]  # fmt: skip
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    scored = json.loads(out.read_text())["templates"][0]["accuracy"]
    assert scored == pytest.approx(result["dev"]["accuracy"])


def _plain_relation_loss(folder: Path, text: str, obj: str) -> float:
    """Cross-entropy of `` obj`` as the next token after ``text`` over the whole vocabulary,
    with plain transformers: the tokenizer's own special tokens, one forward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    (target,) = tok.encode(f" {obj}", add_special_tokens=False)[-1:]
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        last = model(input_ids=ids).logits[0, -1].float()
    return float(-last.log_softmax(-1)[target])


@pytest.mark.parametrize("family", ["gpt2", "llama", "opt"])
@pytest.mark.parametrize("method", [pytest.param("lora", marks=requires("peft")), "full", "soft"])
def test_relation_tuning_loss_equals_a_plain_computation(
    family, method, tiny_decoder_dirs, tmp_path
):
    """Facts on a decoder, ``[Y]`` last: the dev loss at step 0 (LoRA and full start as the
    model; soft from a decoder search's found prompt) is the plain next-token cross-entropy."""
    folder = tiny_decoder_dirs[family]
    facts = REPO / "examples" / "P19"
    fact = json.loads((facts / "dev.jsonl").read_text().splitlines()[0])
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps(fact) + "\n")
    template = "[X] was born in [Y]"
    if method == "soft":  # seeded from a search result on this decoder
        template = str(tmp_path / "found.json")
        args = ["search", "--model", folder, "--device", "cpu", "--template",
                "[X] [T] [T] was born in [Y]", "--train", facts / "train.jsonl", "--dev", dev,
                "--iters", "1", "--output", template, "--quiet"]  # fmt: skip
        r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
    args = ["tune", "--model", folder, "--device", "cpu", "--train", facts / "train.jsonl",
            "--dev", dev, "--template", template, "--method", method, "--steps", "1",
            "--output", tmp_path / "out", "--quiet"]  # fmt: skip
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    prompt = "[X] was born in [Y]"
    if method == "soft":
        prompt = json.loads(Path(template).read_text())["prompt"]
        assert result["seed"]["kind"] == "search" and result["init"] == "found"
    text = prompt.replace("[X]", fact["sub_label"]).replace(" [Y]", "")
    want = _plain_relation_loss(folder, text, fact["obj_label"])
    assert result["curve"][0]["dev_loss"] == pytest.approx(want, abs=1e-4)
