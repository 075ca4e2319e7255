"""Pseudo-log-likelihood of triggers: equal to masking each token by hand with plain
transformers, the same in a batch as one by one, in any chunking."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from autoprompt_py.data import Example
from autoprompt_py.errors import AutopromptError
from autoprompt_py.model import load_model
from autoprompt_py.search.fluency import TriggerFluency, pseudo_perplexity
from autoprompt_py.template import parse_template

TEMPLATE = "{sentence} [T] [T] [T] [P] ."


def direct_pll(model, input_ids: list[int], positions: list[int], mask_id: int) -> float:
    """Salazar et al.'s PLL written out: mask each position in turn, full forward, log_softmax."""
    total = 0.0
    for pos in positions:
        ids = torch.tensor([input_ids])
        ids[0, pos] = mask_id
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        total += float(logits[0, pos].log_softmax(-1)[input_ids[pos]])
    return total


def phrase_in_text(tokenizer, text: str, n: int) -> tuple[list[int], list[int]]:
    """Ids of ``text`` as the tokenizer encodes it whole, and the positions of its first n
    content tokens (the trigger phrase)."""
    enc = tokenizer(text, return_special_tokens_mask=True)
    content = [i for i, s in enumerate(enc["special_tokens_mask"]) if not s]
    return enc["input_ids"], content[:n]


def test_pll_equals_direct_computation(tiny_model_dir, tiny_mlm):
    model, tokenizer = tiny_mlm
    input_ids, positions = phrase_in_text(tokenizer, f"the movie was {tokenizer.mask_token} .", 3)
    phrase = [input_ids[p] for p in positions]
    expected = direct_pll(model, input_ids, positions, tokenizer.mask_token_id)

    fluency = TriggerFluency(load_model(tiny_model_dir, device="cpu"), parse_template(TEMPLATE))
    # the documented context: template literals kept, field removed, prediction slot masked
    context = fluency.input_ids.clone()
    context[fluency.trigger_positions] = torch.tensor(phrase)
    assert context.tolist() == input_ids
    pll = fluency.pll(torch.tensor([phrase]))
    assert pll.shape == (1,) and pll.dtype == torch.float32
    assert float(pll[0]) == pytest.approx(expected, abs=1e-4)
    assert fluency.perplexity(phrase) == pytest.approx(math.exp(-expected / 3), rel=1e-4)
    assert fluency.forward_passes == 3 + 3  # one row per slot, twice


@pytest.mark.parametrize("family", ["bert"])
def test_example_context_equals_direct_computation(tiny_model_dir, tiny_mlm):
    model, tokenizer = tiny_mlm
    text = f"a great film . it was very {tokenizer.mask_token} ."
    input_ids, content = phrase_in_text(tokenizer, text, 7)
    positions = content[4:7]  # "it was very" after the sentence "a great film ."
    expected = direct_pll(model, input_ids, positions, tokenizer.mask_token_id)
    fluency = TriggerFluency(
        load_model(tiny_model_dir, device="cpu"),
        parse_template(TEMPLATE),
        example=Example({"sentence": "a great film ."}),
    )
    assert fluency.trigger_positions.tolist() == positions
    phrase = [input_ids[p] for p in positions]
    assert float(fluency.pll([phrase])[0]) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_batch_equals_one_by_one_in_any_chunking(tiny_model_dir):
    lm = load_model(tiny_model_dir, device="cpu")
    template = parse_template("[X] lives in [T] [T] , [T] [Y] .")
    generator = torch.Generator().manual_seed(0)
    candidates = torch.randint(5, lm.vocab_size, (7, 3), generator=generator)
    single = TriggerFluency(lm, template)
    one_by_one = torch.stack([single.pll(c[None])[0] for c in candidates])
    for max_rows in (1, 2, 5, 21, 1000):
        batched = TriggerFluency(lm, template, max_rows=max_rows)
        pll = batched.pll(candidates)
        assert pll.shape == (7,)
        torch.testing.assert_close(pll, one_by_one, atol=1e-5, rtol=1e-5)
        assert batched.forward_passes == 21
        assert batched.forward_calls == math.ceil(21 / max_rows)
    per_slot = single.token_log_probs(candidates)
    assert per_slot.shape == (7, 3) and bool((per_slot < 0).all())
    torch.testing.assert_close(per_slot.sum(-1), one_by_one)
    torch.testing.assert_close(single.perplexities(candidates), torch.exp(-one_by_one / 3))
    # distinct candidates get distinct scores: the rows are not mixed up
    assert len(set(one_by_one.tolist())) == 7


def test_pseudo_perplexity():
    assert pseudo_perplexity(-6.0, 3) == pytest.approx(math.exp(2.0))
    assert pseudo_perplexity(0.0, 2) == 1.0
    torch.testing.assert_close(
        pseudo_perplexity(torch.tensor([-3.0, -6.0]), 3), torch.exp(torch.tensor([1.0, 2.0]))
    )
    with pytest.raises(ValueError):
        pseudo_perplexity(-1.0, 0)


@pytest.mark.parametrize("family", ["bert"])
def test_bad_input(tiny_model_dir):
    lm = load_model(tiny_model_dir, device="cpu")
    with pytest.raises(AutopromptError, match="no trigger slot"):
        TriggerFluency(lm, parse_template("{sentence} It was [P] ."))
    fluency = TriggerFluency(lm, parse_template(TEMPLATE))
    with pytest.raises(AutopromptError, match=r"3 trigger slots"):
        fluency.pll(torch.tensor([[5, 6]]))
    with pytest.raises(AutopromptError, match=r"must lie in \[0, "):
        fluency.pll(torch.tensor([[5, 6, lm.vocab_size]]))
    with pytest.raises(AutopromptError, match="one trigger"):
        fluency.perplexity(torch.tensor([[5, 6, 7], [5, 6, 8]]))
    with pytest.raises(AutopromptError, match="sentence"):
        TriggerFluency(lm, parse_template(TEMPLATE), example=Example({"text": "x"}))
    assert fluency.forward_passes == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "template, text",
    [
        (TEMPLATE, "the movie was [MASK] ."),
        ("[X] [T] [T] [T] [Y] .", "was born in [MASK] ."),
    ],
)
def test_shared_model_equals_direct_computation(shared_model, template, text):
    tokenizer = AutoTokenizer.from_pretrained(shared_model)
    model = AutoModelForMaskedLM.from_pretrained(shared_model).eval()
    input_ids, positions = phrase_in_text(tokenizer, text, 3)
    expected = direct_pll(model, input_ids, positions, tokenizer.mask_token_id)
    fluency = TriggerFluency(load_model(shared_model, device="cpu"), parse_template(template))
    phrase = [input_ids[p] for p in positions]
    assert float(fluency.pll([phrase])[0]) == pytest.approx(expected, abs=1e-4)
    # a natural phrase reads better than the original code's seed-0 SST-2 trigger (benchmarks.md)
    found = tokenizer.convert_tokens_to_ids(["##yat", "malmo", "tragic"])
    assert fluency.perplexity(phrase) * 100 < fluency.perplexity(found)
