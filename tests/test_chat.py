"""Chat templates (``--chat``, ``--system``): a template read as a user's message and the
start of the assistant's turn, rendered with the tokenizer's own chat template.

Every figure is checked against an independent computation: ``apply_chat_template`` on the
user's text written out, the tokenizer on the rendered text (a bos the template writes and
the tokenizer adds again kept once), the label word right after the generation prompt with no
space, and one plain transformers forward per text. The tiny decoders carry real chat
templates (``tiny_decoders.build_chat_decoder``: Qwen2's ChatML, Llama 3's headers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from optional import requires
from transformers import AutoModelForCausalLM, AutoTokenizer

from autoprompt_py.cli import main
from autoprompt_py.results import run_record_path

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    ("i have to say the plot is a real treat .", "1"),
    ("the photography is clumsy and loud .", "0"),
    ("a fine film", "1"),
    ("to be fair , this picture is boring and lazy .", "0"),
    ("the direction is clever , warm and funny .", "1"),
]
ONE_TOKEN = {"0": ["bad"], "1": ["great"]}  # one token each with no space before them
SST2 = {"0": ["terrible"], "1": ["great"]}  # "terrible" has several: a continuation
SLOT_LAST = "{sentence} It was [P]"
TEXT_AFTER = "{sentence} It was [P] ."


def run(*args) -> object:
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return r


def ok(*args) -> object:
    r = run(*args)
    assert r.exit_code == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("chat-data") / "rows.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{lab}\n" for s, lab in SENTENCES))
    return path


class Reference:
    """log p(text after the generation prompt | the rendered chat), by plain transformers."""

    def __init__(self, folder: Path) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(folder).eval()
        self.tok = AutoTokenizer.from_pretrained(folder)

    def rendered(self, user: str, system: str | None = None) -> str:
        messages = [{"role": "user", "content": user}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def ids(self, text: str) -> list[int]:
        ids = self.tok(text)["input_ids"]
        bos = self.tok.bos_token_id
        if bos is not None and ids[:2] == [bos, bos]:  # written by the template, added again
            ids = ids[1:]
        return ids

    def log_prob(self, context: str, continuation: str) -> float:
        ctx, full = self.ids(context), self.ids(context + continuation)
        assert full[: len(ctx)] == ctx, (context, continuation)
        with torch.no_grad():
            lp = self.model(torch.tensor([full])).logits[0].log_softmax(-1)
        return float(sum(lp[i - 1, full[i]] for i in range(len(ctx), len(full))))

    def next_token(self, context: str) -> torch.Tensor:
        with torch.no_grad():
            return self.model(torch.tensor([self.ids(context)])).logits[0, -1].log_softmax(-1)

    def label_scores(self, template: str, words: dict, system: str | None = None) -> np.ndarray:
        """[examples, labels]: log-softmax over the labels of each word's log-probability."""
        user, after = template.split(" [P]")
        out = []
        for sentence, _ in SENTENCES:
            context = self.rendered(user.replace("{sentence}", sentence), system)
            lp = [self.log_prob(context, w[0] + after) for w in words.values()]
            out.append(torch.tensor(lp).log_softmax(0).numpy())
        return np.array(out)


@pytest.fixture(scope="module")
def reference(tiny_chat_dirs):
    cache: dict[str, Reference] = {}

    def get(name: str) -> Reference:
        if name not in cache:
            cache[name] = Reference(tiny_chat_dirs[name])
        return cache[name]

    return get


def score_json(model: Path, data: Path, template: str, words: dict, out: Path, *extra) -> dict:
    ok(
        "score", "--model", model, "--device", "cpu", "--data", data, "--template", template,
        "--verbalizer", json.dumps(words), "--bootstrap", "0", "--predictions",
        "--output", out, "--force", *extra,
    )  # fmt: skip
    return json.loads(out.read_text())


def scores_of(result: dict) -> np.ndarray:
    return np.array([p["scores"] for p in result["templates"][0]["predictions"]])


@pytest.mark.parametrize("name", ["qwen2-chatml", "opt-llama3", "gpt2-llama3"])
@pytest.mark.parametrize("template, words", [(SLOT_LAST, ONE_TOKEN), (TEXT_AFTER, SST2)])
def test_score_equals_apply_chat_template(
    name, template, words, tiny_chat_dirs, reference, data, tmp_path
):
    result = score_json(tiny_chat_dirs[name], data, template, words, tmp_path / "s.json", "--chat")
    assert result["config"]["chat"] is True and result["config"]["system"] is None
    assert result["templates"][0]["chat"] == {"system": None}
    want = reference(name).label_scores(template, words)
    np.testing.assert_allclose(scores_of(result), want, atol=2e-4)


def test_the_system_message_is_the_one_given(tiny_chat_dirs, reference, data, tmp_path):
    system = "You judge film reviews."
    args = ("--chat", "--system", system)
    model = tiny_chat_dirs["qwen2-chatml"]
    result = score_json(model, data, TEXT_AFTER, SST2, tmp_path / "s.json", *args)
    assert result["config"]["system"] == system
    want = reference("qwen2-chatml").label_scores(TEXT_AFTER, SST2, system)
    np.testing.assert_allclose(scores_of(result), want, atol=2e-4)
    default = score_json(model, data, TEXT_AFTER, SST2, tmp_path / "d.json", "--chat")
    assert not np.allclose(scores_of(default), scores_of(result))  # ChatML's own system text


@pytest.mark.parametrize("template, words", [(SLOT_LAST, ONE_TOKEN), (TEXT_AFTER, SST2)])
def test_batch_size_changes_no_figure(template, words, tiny_chat_dirs, data, tmp_path):
    model = tiny_chat_dirs["opt-llama3"]
    one = score_json(model, data, template, words, tmp_path / "1.json", "--chat", "--batch-size", 1)
    many = score_json(
        model, data, template, words, tmp_path / "7.json", "--chat", "--batch-size", 7
    )
    np.testing.assert_allclose(scores_of(one), scores_of(many), rtol=1e-5, atol=1e-5)
    assert one["templates"][0]["accuracy"] == many["templates"][0]["accuracy"]


def test_one_bos_where_the_template_writes_it_and_the_tokenizer_adds_it(tiny_chat_dirs):
    from autoprompt_py.data import Example
    from autoprompt_py.encoding import TemplateEncoder
    from autoprompt_py.template import Chat, parse_template

    example = Example({"sentence": "a fine film"}, "1", "row")
    template = parse_template(SLOT_LAST).in_chat(Chat())
    for name in ("opt-llama3", "llama-llama3", "gpt2-llama3"):
        tok = AutoTokenizer.from_pretrained(tiny_chat_dirs[name])
        ids = TemplateEncoder(template, tok, 128, next_token=True).encode(example).input_ids
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id, name
        assert tok.convert_ids_to_tokens(ids[1]) == "<|start_header_id|>", name


LLAMA2 = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}{% endfor %}"
)


@pytest.mark.parametrize("name", ["gpt2-llama3", "llama-llama3"])
def test_a_header_ending_in_a_space_gives_it_to_the_first_word(name, tiny_chat_dirs):
    """Llama 2's ``[INST] ``: the message's first word is read after the space, as the
    whole rendered text tokenizes (``▁a``, ``Ġa``), not after a token of its own."""
    from autoprompt_py.data import Example
    from autoprompt_py.encoding import TemplateEncoder
    from autoprompt_py.template import Chat, parse_template

    ref = Reference(tiny_chat_dirs[name])
    ref.tok.chat_template = LLAMA2
    for template in ("{sentence} It was [P] .", "Review: {sentence} It was [P] ."):
        parsed = parse_template(template).in_chat(Chat())
        user = template.split(" [P]")[0].replace("{sentence}", "a fine film")
        encoder = TemplateEncoder(parsed, ref.tok, 128, next_token=True)
        got = encoder.encode(Example({"sentence": "a fine film"}))
        whole = ref.ids(ref.rendered(user) + " .")  # the answer slot holds no token
        assert got.input_ids == whole, ref.tok.convert_ids_to_tokens(got.input_ids)


def test_predict_equals_apply_chat_template(tiny_chat_dirs, reference, data, tmp_path):
    out = tmp_path / "rows.jsonl"
    ok(
        "predict", "--model", tiny_chat_dirs["gpt2-llama3"], "--device", "cpu", "--data", data,
        "--template", TEXT_AFTER, "--verbalizer", json.dumps(SST2), "--output", out,
        "--batch-size", 2, "--chat",
    )  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    got = np.array([[row["p_0"], row["p_1"]] for row in rows])
    want = np.exp(reference("gpt2-llama3").label_scores(TEXT_AFTER, SST2))
    np.testing.assert_allclose(got, want, atol=1e-5)
    record = json.loads(run_record_path(out).read_text())
    assert record["config"]["chat"] is True and record["config"]["system"] is None


@pytest.mark.parametrize("chat", [True, False])
def test_probe_reads_a_chat_only_with_chat(chat, tiny_chat_dirs, reference, tmp_path):
    name = "qwen2-chatml"
    out = tmp_path / "probe.json"
    facts = REPO / "examples" / "lama_mini" / "P36.jsonl"
    ok(
        "probe", "--model", tiny_chat_dirs[name], "--device", "cpu", "--facts", facts,
        "--template", "The capital of [X] is [Y]", "--select-on", "none", "--predictions",
        "--output", out, *(["--chat"] if chat else []),
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["config"]["chat"] is chat
    ref = reference(name)
    checked = 0
    for fact in result["relations"][0]["predictions"]:
        user = f"The capital of {fact['sub_label']} is"
        # a chat: the object opens the assistant's turn; plain text: it follows a space
        if chat:
            context, word = ref.rendered(user), fact["obj_label"]
        else:
            context, word = user, " " + fact["obj_label"]
        ids = ref.tok.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            assert fact["rank"] is None
            continue
        lp = ref.next_token(context)
        assert fact["rank"] == int((lp > lp[ids[0]]).sum()) + 1, fact
        checked += 1
    assert checked >= 3


TRAIN = REPO / "examples" / "sentiment" / "train.tsv"


def test_search_finds_a_chat_prompt_that_scores_again_to_its_metric(tiny_chat_dirs, data, tmp_path):
    model, out = tiny_chat_dirs["qwen2-chatml"], tmp_path / "found.json"
    system = "You judge film reviews."
    ok(
        "search", "--model", model, "--device", "cpu", "--train", TRAIN, "--train-limit", 24,
        "--dev", data, "--template", "{sentence} [T] [T] It was [P]",
        "--verbalizer", json.dumps(ONE_TOKEN), "--iters", 3, "--search-width", 16, "--topk", 16,
        "--quiet", "--output", out, "--chat", "--system", system,
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["chat"] == {"system": system}
    assert result["config"]["chat"] is True and result["config"]["system"] == system
    # scored again from its file (which says it is a chat), the metric the search recorded
    scored = score_json(model, data, out, ONE_TOKEN, tmp_path / "score.json")
    assert scored["templates"][0]["chat"] == {"system": system}
    assert scored["templates"][0]["accuracy"] == result["dev"]["accuracy"]
    again = score_json(model, data, out, ONE_TOKEN, tmp_path / "again.json", "--chat")
    assert again["templates"][0]["chat"] == {"system": system}  # --chat keeps its system
    assert scores_of(again).tolist() == scores_of(scored).tolist()
    # export records the chat, and a prompt seeded from the export reads it back
    from autoprompt_py.tune.found import read_found

    ok(
        "export",
        out,
        "--model",
        model,
        "--format",
        "embeddings",
        "--out",
        tmp_path / "e.safetensors",
    )
    template, _, _ = read_found(str(tmp_path / "e.safetensors"))
    assert template.chat is not None and template.chat.system == system
    # and the same scores as the found prompt rendered by hand
    words = " ".join(result["trigger"]["words"])
    template = SLOT_LAST.replace("It was", f"{words} It was")
    ref = Reference(model)
    np.testing.assert_allclose(
        scores_of(scored), ref.label_scores(template, ONE_TOKEN, system), atol=2e-4
    )


def test_the_prefix_cache_holds_the_chat_header(tiny_chat_dirs):
    """The search runs the text before the first trigger, chat header included, once per
    example (``shared_prefix_logits``): the same logits as whole rows."""
    from autoprompt_py.chat import chat_frame
    from autoprompt_py.data import Example
    from autoprompt_py.model import load_model
    from autoprompt_py.template import Chat, parse_template

    lm = load_model(tiny_chat_dirs["opt-llama3"], device="cpu")
    template = parse_template("{sentence} [T] [T] It was [P]").in_chat(Chat("Be brief."))
    examples = [Example({"sentence": s}, lab, f"row{i}") for i, (s, lab) in enumerate(SENTENCES)]
    encoded = lm.encoder(template).encode_all(examples[:2])
    prefix = [i for i, _ in lm.encoder(template, max_length=128).layout.prefix]
    header = chat_frame(lm.tokenizer, template.chat, tuple(prefix), True).header
    assert len(header) > 10 and encoded.examples[0].input_ids[: len(header)] == list(header)
    assert encoded.examples[0].trigger_positions[0] > len(header)  # cached with the text
    group = 3
    batch = encoded.collate([0, 0, 0, 1, 1, 1])
    ids = batch.input_ids.clone()
    slots = batch.trigger_positions
    ids.scatter_(1, slots, torch.randint(50, 500, slots.shape))  # three triggers per example
    args = (batch.mask_positions, batch.attention_mask)
    with torch.no_grad():
        whole = lm.mask_logits(*args, input_ids=ids)
        cached = lm.shared_prefix_logits(*args, ids, slots[:, 0], group)
    torch.testing.assert_close(cached, whole, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["soft", pytest.param("lora", marks=requires("peft"))])
def test_tune_on_a_chat_scores_again_to_its_metric(method, tiny_chat_dirs, data, tmp_path):
    model, out = tiny_chat_dirs["gpt2-llama3"], tmp_path / method
    template = "{sentence} [T] [T] It was [P]" if method == "soft" else SLOT_LAST
    ok(
        "tune", "--model", model, "--device", "cpu", "--train", TRAIN, "--dev", data,
        "--template", template, "--verbalizer", json.dumps(ONE_TOKEN), "--method", method,
        "--steps", 4, "--eval-every", 2, "--lr", 0.05, "--output", out, "--quiet", "--chat",
    )  # fmt: skip
    result = json.loads((out / "result.json").read_text())
    assert result["chat"] == {"system": None} and result["config"]["chat"] is True
    scored = score_json(model, data, out, ONE_TOKEN, tmp_path / "score.json")
    assert scored["templates"][0]["chat"] == {"system": None}
    assert scored["templates"][0]["accuracy"] == pytest.approx(result["dev"]["accuracy"])


def test_labels_on_a_chat_are_words_with_no_space_before_them(tiny_chat_dirs, tmp_path):
    from autoprompt_py.verbalizer import Verbalizer

    model, out = tiny_chat_dirs["qwen2-chatml"], tmp_path / "verbalizer.json"
    ok(
        "labels", "--model", model, "--device", "cpu", "--train", TRAIN, "--train-limit", 40,
        "--template", SLOT_LAST, "--per-class", 2, "--output", out, "--chat",
    )  # fmt: skip
    words = json.loads(out.read_text())
    record = json.loads(run_record_path(out).read_text())
    assert record["config"]["chat"] is True
    tok = AutoTokenizer.from_pretrained(model)
    resolved = Verbalizer.from_dict(words).resolve(tok, space_before=False)
    assert all(len(p) == 1 and not tok.convert_ids_to_tokens(p[0]).startswith("Ġ")
               for p in resolved.pieces)  # fmt: skip


def one_line_error(r, *parts: str) -> None:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for part in parts:
        assert part in lines[0], lines[0]


def test_refusals_are_one_line(tiny_chat_dirs, tiny_decoder_dirs, tiny_model_dirs, data, tmp_path):
    def score(model, *extra):
        return run(
            "score", "--model", model, "--device", "cpu", "--data", data, "--template",
            SLOT_LAST, "--verbalizer", json.dumps(ONE_TOKEN), *extra,
        )  # fmt: skip

    one_line_error(score(tiny_model_dirs["bert"], "--chat"), "--chat", "masked LM")
    one_line_error(score(tiny_decoder_dirs["gpt2"], "--chat"), "--chat", "no chat template")
    one_line_error(score(tiny_chat_dirs["qwen2-chatml"], "--system", "Be brief."), "add --chat")
    one_line_error(score(tiny_chat_dirs["qwen2-chatml"], "--chat", "--system", "[T] x"), "[T]")
    r = run(
        "tune", "--model", tiny_chat_dirs["qwen2-chatml"], "--device", "cpu", "--train", TRAIN,
        "--dev", data, "--template", SLOT_LAST, "--verbalizer", json.dumps(ONE_TOKEN),
        "--method", "head", "--steps", 1, "--output", tmp_path / "head", "--chat",
    )  # fmt: skip
    one_line_error(r, "--chat", "--method head")
