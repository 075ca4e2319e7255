"""The PEFT methods of autoprompt tune (prompt, ptuning, lora): the forward equals PEFT's own,
the base model stays bit-identical, and the saved adapter scores as the run measured."""

from __future__ import annotations

import pytest
import torch
from optional import requires

from autoprompt_py.model import load_model
from autoprompt_py.scoring import classify
from autoprompt_py.tune import TuneConfig, load_tune_task, tune
from autoprompt_py.tune.folder import attach_tuned, tuned_templates
from autoprompt_py.tune.methods import build_part
from autoprompt_py.tune.run import make_objective

pytestmark = requires("peft")

from test_tune import VERB, rows  # noqa: E402

TEMPLATE = "{sentence} It was [P] ."


@pytest.mark.parametrize(
    "family, method",
    [(f, m) for f in ("bert", "roberta", "albert", "deberta-v2") for m in ("prompt", "lora")]
    + [("bert", "ptuning"), ("bert", "prefix"), ("roberta", "prefix")],
)
def test_forward_equals_peft_and_base_stays(tiny_model_dirs, family, method):
    lm = load_model(tiny_model_dirs[family], device="cpu")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    task = load_tune_task(TEMPLATE, rows(), rows(), verbalizer=VERB)
    config = TuneConfig(method=method, init="vocab", num_virtual_tokens=3, steps=2)
    objective = make_objective(lm, task, config)
    part = build_part(lm, task, config, objective)
    if method == "lora":  # B starts at zero: make the adapter do something
        with torch.no_grad():
            for name, p in part.peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    data = objective.encode(rows(), part.template)
    b = data.batch(range(len(data)), lm.device)[1]
    part.train_mode(False)
    with torch.no_grad():
        got = part.logits({1: b})[1]
        kwargs = {"input_ids": b.input_ids, "attention_mask": b.attention_mask}
        if method == "lora" and lm.uses_token_type_ids:
            kwargs["token_type_ids"] = b.token_type_ids
        full = part.peft_model(**kwargs).logits  # PEFT's own forward (token types all 0)
        if method in ("prompt", "ptuning") and lm.uses_token_type_ids and b.token_type_ids.any():
            pytest.skip("PEFT's forward cannot pass token types with virtual tokens")
        shift = 0 if method in ("lora", "prefix") else 3
        want = full[torch.arange(len(b.index))[:, None], b.mask_positions + shift]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for name, p in part.peft_model.named_parameters():
        assert p.requires_grad == ("lora_" in name or "prompt_encoder" in name), name
    if method == "prefix":  # the prefixes change the masks' logits
        with torch.no_grad():
            plain = lm.mask_logits(b.mask_positions, b.attention_mask, b.input_ids,
                                   token_type_ids=b.token_type_ids)  # fmt: skip
        assert not torch.allclose(plain, got)
    tune_part_steps = tune(
        load_model(tiny_model_dirs[family], device="cpu"), task,
        TuneConfig(method=method, init="vocab", num_virtual_tokens=3, steps=2, lr=0.05),
        progress=False,
    )  # fmt: skip
    base = tune_part_steps.part.lm.model.get_base_model() if hasattr(
        tune_part_steps.part.lm.model, "get_base_model") else tune_part_steps.part.lm.model  # fmt: skip
    fresh = load_model(tiny_model_dirs[family], device="cpu").model.state_dict()
    sd = {k.replace("base_layer.", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
    for k, v in fresh.items():
        assert torch.equal(sd[k], v), k  # the base is bit-identical
    assert before.keys() <= fresh.keys()


@pytest.mark.parametrize("method", ["prompt", "lora", "prefix"])
def test_saved_adapter_scores_as_measured(tiny_model_dirs, tmp_path, method):
    path = tiny_model_dirs["bert"]
    task = load_tune_task(TEMPLATE, rows(), rows(), verbalizer=VERB)
    out = tune(load_model(path, device="cpu"), task,
               TuneConfig(method=method, init="vocab", steps=4, eval_every=2, lr=0.05),
               output=tmp_path / "t", progress=False)  # fmt: skip
    assert (tmp_path / "t" / "adapter_config.json").is_file()
    named = tuned_templates(str(tmp_path / "t"))
    scorer = attach_tuned(load_model(path, device="cpu"), [str(tmp_path / "t")])
    # virtual tokens take positions: the scorer's encoder cuts inputs to leave them room
    assert scorer.encoder(named[0].template).max_length == scorer.max_length
    res = classify(scorer, named[0].template, rows(), VERB.resolve(scorer.tokenizer))
    acc = sum(p == e.label for p, e in zip(res.predictions, rows())) / 6
    assert acc == out.result["dev"]["accuracy"]
