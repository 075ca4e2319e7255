"""Exports of found prompts load back as exactly the model's input embeddings of their tokens."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from optional import requires
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_models import FAMILIES
from transformers import AutoModelForMaskedLM

from autoprompt_py.encoding import tokenize_piece
from autoprompt_py.errors import AutopromptError
from autoprompt_py.export import (
    OPTIPROMPT_MAX_VECTORS,
    PEFT_MANIFEST,
    export_prompt,
    load_peft_seed,
    to_embeddings,
    to_optiprompt,
    to_peft,
)
from autoprompt_py.model import load_model
from autoprompt_py.prompt import FoundPrompt, model_record
from autoprompt_py.template import parse_template

# PEFT asks transformers a deprecated question on every load; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

TRIGGER_WORDS = ("movie", "atmosphere", "great")
RELATION_WORDS = ("city", "capital")


@pytest.fixture(scope="module")
def peft():
    import peft  # the tests that take it are marked requires("peft")

    return peft


@pytest.fixture(scope="module")
def lms(tiny_model_dirs):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_model(tiny_model_dirs[family], device="cpu")
        return cache[family]

    return get


def search_result(
    lm, template="{sentence} [T] [T] [T] [P] .", words=TRIGGER_WORDS, relation=None
) -> dict:
    """A search result as ``autoprompt search`` writes it, with ids from this tokenizer."""
    ids = [tokenize_piece(lm.tokenizer, w, True)[0] for w in words]
    tokens = lm.tokenizer.convert_ids_to_tokens(ids)
    filled = parse_template(template).with_triggers(ids, tokens)
    return {
        "kind": "autoprompt-search",
        "template": template,
        "prompt": filled.render(triggers="token"),
        "trigger": {"ids": ids, "tokens": tokens, "words": list(words)},
        "mode": "relation" if relation else "classification",
        "relation": relation,
        "verbalizer": None if relation else {"0": ["terrible"], "1": ["great"]},
        "model": model_record(lm),
        "config": {},
        "versions": {},
    }


def write_result(path, data) -> str:
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def base_rows(model_dir, ids) -> torch.Tensor:
    base = AutoModelForMaskedLM.from_pretrained(model_dir)
    return base.get_input_embeddings().weight.detach()[ids]


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- exact loads


@pytest.mark.parametrize("family", FAMILIES)
@requires("peft")
def test_peft_adapter_loads_with_the_trigger_embeddings(
    family, lms, tiny_model_dirs, tmp_path, peft
):
    lm = lms(family)
    data = search_result(lm)
    prompt = FoundPrompt.from_result(write_result(tmp_path / "r.json", data), lm.tokenizer)
    out = to_peft(prompt, lm, tmp_path / "adapter")

    base = AutoModelForMaskedLM.from_pretrained(tiny_model_dirs[family]).eval()
    model = peft.PeftModel.from_pretrained(base, out)
    config = model.peft_config["default"]
    ids = data["trigger"]["ids"]
    expected = base.get_input_embeddings().weight.detach()[ids]
    assert config.peft_type == peft.PeftType.PROMPT_TUNING
    assert config.num_virtual_tokens == len(ids) == 3
    assert config.token_dim == expected.shape[1]  # ALBERT: the embedding size, not the hidden
    assert config.prompt_tuning_init_text == lm.tokenizer.decode(ids).strip()
    assert torch.equal(model.get_prompt_embedding_to_save("default"), expected)
    assert torch.equal(model.prompt_encoder["default"].embedding.weight.detach(), expected)

    # The seeded adapter is the hard prompt: prepending the virtual tokens gives the model's
    # output for the same tokens prepended as ids.
    enc = lm.tokenizer(["it was great ."], return_tensors="pt")
    with torch.no_grad():
        soft = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        hard_ids = torch.cat([torch.tensor([ids]), enc["input_ids"]], dim=1)
        hard = base(input_ids=hard_ids, attention_mask=torch.ones_like(hard_ids)).logits
    assert soft.shape == hard.shape
    torch.testing.assert_close(soft, hard, rtol=1e-4, atol=1e-4)

    manifest = json.loads((out / PEFT_MANIFEST).read_text())
    assert manifest["token_ids"] == ids and manifest["selection"] == "triggers"
    assert manifest["model"]["embedding_size"] == expected.shape[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_optiprompt_vectors_are_the_trigger_embeddings(family, lms, tiny_model_dirs, tmp_path):
    lm = lms(family)
    data = search_result(lm, "[X] [T] [T] [Y] .", RELATION_WORDS, relation="P36")
    prompt = FoundPrompt.from_result(data, lm.tokenizer)
    out = to_optiprompt(prompt, lm, tmp_path / "opti")

    ids = data["trigger"]["ids"]
    expected = base_rows(tiny_model_dirs[family], ids).numpy()
    vectors = np.load(out / "vectors.npy")
    assert vectors.dtype == np.float32 and vectors.shape == expected.shape
    assert np.array_equal(vectors, expected)
    assert (out / "template.txt").read_text().strip() == "[X] [V1] [V2] [Y] ."
    record = json.loads((out / "token_ids.json").read_text())
    assert record == {"vectors": ["[V1]", "[V2]"], "ids": ids, "tokens": data["trigger"]["tokens"]}
    padded = np.load(out / "prompt_vecs.npy")  # OptiPrompt's own layout
    assert padded.shape == (OPTIPROMPT_MAX_VECTORS, expected.shape[1])
    assert np.array_equal(padded[:2], expected) and not padded[2:].any()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["relation"] == "P36" and manifest["model"] == model_record(lm)


@pytest.mark.parametrize("family", FAMILIES)
def test_safetensors_file_holds_embeddings_ids_and_metadata(family, lms, tiny_model_dirs, tmp_path):
    lm = lms(family)
    data = search_result(lm)
    prompt = FoundPrompt.from_result(data, lm.tokenizer)
    out = to_embeddings(prompt, lm, tmp_path / "seed.safetensors")

    ids = data["trigger"]["ids"]
    tensors = load_file(out)
    assert torch.equal(tensors["embeddings"], base_rows(tiny_model_dirs[family], ids))
    assert tensors["token_ids"].dtype == torch.int64 and tensors["token_ids"].tolist() == ids
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    assert meta["template"] == "{sentence} [T] [T] [T] [P] ."
    assert meta["prompt"] == data["prompt"]
    assert json.loads(meta["tokens"]) == data["trigger"]["tokens"]
    assert meta["model"] == lm.name and meta["created"]
    assert "torch" in json.loads(meta["versions"])


# ----------------------------------------------------------------------------- which tokens


def test_hand_written_template_exports_its_literal_words(lms):
    lm = lms("roberta")
    prompt = FoundPrompt.from_template("{sentence} It was [MASK] .", lm.tokenizer)
    assert prompt.selection == "all"
    assert prompt.tokens == ("ĠIt", "Ġwas", "Ġ.")  # as encoding.py tokenizes them in context
    # the same ids the encoder puts between the sentence and the mask
    from autoprompt_py.data import Example

    enc = lm.encoder(prompt.template, max_length=64).encode(Example({"sentence": "good"}))
    mask = enc.mask_positions[0]
    assert enc.input_ids[mask - 2 : mask] + enc.input_ids[mask + 1 : mask + 2] == list(
        prompt.token_ids
    )
    assert prompt.optiprompt_template() == "{sentence} [V1] [V2] [Y] [V3]"


def test_mixed_template_triggers_by_default_all_on_request(lms):
    lm = lms("bert")
    data = search_result(lm, "{sentence} [T] [T] so it was [P] .", ("movie", "atmosphere"))
    auto = FoundPrompt.from_result(data, lm.tokenizer)
    assert auto.selection == "triggers" and auto.tokens == ("movie", "atmosphere")
    every = FoundPrompt.from_result(data, lm.tokenizer, tokens="all")
    assert every.tokens == ("movie", "atmosphere", "so", "it", "was", ".")
    assert every.optiprompt_template() == "{sentence} [V1] [V2] [V3] [V4] [V5] [Y] [V6]"
    assert auto.optiprompt_template() == "{sentence} [V1] [V2] so it was [Y] ."
    assert torch.equal(every.embeddings(lm), lm.embeddings.detach()[list(every.token_ids)])


def test_subject_field_is_optiprompts_x(lms):
    lm = lms("bert")
    prompt = FoundPrompt.from_template("{sub_label} was born in [Y] .", lm.tokenizer)
    assert prompt.mode == "relation"
    assert prompt.optiprompt_template() == "[X] [V1] [V2] [V3] [Y] [V4]"


@requires("peft")
def test_export_prompt_dispatches_every_format(lms, tmp_path, peft):
    lm = lms("bert")
    prompt = FoundPrompt.from_template("[X] was born in [Y] .", lm.tokenizer)
    for fmt, name in (("peft", "p"), ("optiprompt", "o"), ("embeddings", "e.safetensors")):
        assert export_prompt(prompt, lm, fmt, tmp_path / name).exists()


@requires("peft")
def test_trainable_seed_starts_from_the_export_and_trains_only_the_prompt(
    lms, tiny_model_dirs, tmp_path, peft
):
    lm = lms("bert")
    prompt = FoundPrompt.from_template("{sentence} It was [MASK] .", lm.tokenizer)
    folder = to_peft(prompt, lm, tmp_path / "seed")
    base = AutoModelForMaskedLM.from_pretrained(tiny_model_dirs["bert"])
    model = load_peft_seed(base, folder)
    weight = model.prompt_encoder["default"].embedding.weight
    assert torch.equal(weight.detach(), prompt.embeddings(lm))
    assert weight.requires_grad
    assert not any(p.requires_grad for p in base.parameters())
    enc = lm.tokenizer(["good"], return_tensors="pt")
    model(**{k: enc[k] for k in ("input_ids", "attention_mask")}).logits.sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["prompt_tuning_init"] == "TEXT" and config["inference_mode"] is True


# ----------------------------------------------------------------------------- bad input


def test_result_from_another_model_is_refused(lms, tmp_path):
    bert, roberta = lms("bert"), lms("roberta")
    path = write_result(tmp_path / "r.json", search_result(bert))
    prompt = FoundPrompt.from_result(path, roberta.tokenizer)
    with pytest.raises(AutopromptError) as err:
        to_embeddings(prompt, roberta, tmp_path / "e.safetensors")
    msg = str(err.value)
    assert str(roberta.name) in msg and str(bert.name) in msg and "r.json" in msg
    assert not (tmp_path / "e.safetensors").exists()


def test_result_with_other_tokens_at_the_same_ids_is_refused(lms, tmp_path):
    lm = lms("bert")
    data = search_result(lm)
    data["trigger"]["tokens"] = ["x", "y", "z"]  # same sizes, another vocabulary
    prompt = FoundPrompt.from_result(data, lm.tokenizer)
    with pytest.raises(AutopromptError, match="vocabularies differ"):
        prompt.check_model(lm)


def test_albert_embedding_size_mismatch_is_named(lms):
    albert = lms("albert")
    data = search_result(albert)
    data["model"]["embedding_size"] = 32  # a result from a model whose embeddings are wider
    prompt = FoundPrompt.from_result(data, albert.tokenizer)
    with pytest.raises(AutopromptError, match="embedding size 16"):
        prompt.check_model(albert)


@pytest.mark.parametrize(
    "template, tokens, message",
    [
        ("{sentence} [MASK]", "auto", "no trigger or literal tokens"),
        ("{sentence} It was [MASK] .", "triggers", "--tokens all"),
        ("{sentence} [T] [T] [MASK] .", "auto", "2 open trigger slots"),
    ],
)
def test_nothing_to_export(lms, template, tokens, message):
    with pytest.raises(AutopromptError, match=message):
        FoundPrompt.from_template(template, lms("bert").tokenizer, tokens)


def test_not_a_search_result(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"template": "[X] [T] [Y]"}')
    with pytest.raises(AutopromptError, match="not a search result"):
        FoundPrompt.from_result(path)
    with pytest.raises(AutopromptError, match="no such search result"):
        FoundPrompt.from_result(tmp_path / "missing.json")


@requires("peft")
def test_existing_target_needs_force(lms, tmp_path, peft):
    lm = lms("bert")
    prompt = FoundPrompt.from_result(search_result(lm), lm.tokenizer)
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(AutopromptError, match="--force"):
        to_peft(prompt, lm, target)
    assert (target / "old.txt").exists()
    to_peft(prompt, lm, target, force=True)
    assert not (target / "old.txt").exists() and (target / "adapter_config.json").exists()
    assert leftovers(tmp_path) == []
    file = tmp_path / "e.safetensors"
    file.write_text("old")
    with pytest.raises(AutopromptError, match="--force"):
        to_embeddings(prompt, lm, file)
    to_embeddings(prompt, lm, file, force=True)
    assert load_file(file)["token_ids"].tolist() == list(prompt.token_ids)
    with pytest.raises(AutopromptError, match="is a folder"):
        to_embeddings(prompt, lm, target, force=True)


def test_peft_missing_says_how_to_install(lms, tmp_path, monkeypatch):
    lm = lms("bert")
    prompt = FoundPrompt.from_result(search_result(lm), lm.tokenizer)
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(AutopromptError, match=r"pip install autoprompt-py\[peft\]"):
        to_peft(prompt, lm, tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing_behind(lms, tmp_path, monkeypatch):
    lm = lms("bert")
    prompt = FoundPrompt.from_result(search_result(lm), lm.tokenizer)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken)
    with pytest.raises(OSError):
        to_optiprompt(prompt, lm, tmp_path / "opti")
    assert list(tmp_path.iterdir()) == []
