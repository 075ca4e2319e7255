"""Template × tokenizer × example → ids, for every tiny model family.

Exactness against plain tokenization: the encoder tokenizes each part of a template on its own
and concatenates the pieces. For WordPiece (bert, distilbert, electra) and byte-level BPE
(roberta, modernbert) that equals ``tokenizer(full_text)`` of the same example written out by
plain string substitution, for every template. For SentencePiece (albert, deberta-v2) it is equal
wherever whitespace separates the parts of the template; where a field is glued to punctuation
without a space (PET's ``"{sentence}"``, ``{sentence}.``) SentencePiece segments differently:
each piece is tokenized as if it started a word (``▁"``, ``▁the``), while the whole string gives
``▁"``, ``t``, ``h``, ``e``. The text is the same, only its segmentation differs, which
``test_sentencepiece_glued_parts_differ_only_in_segmentation`` pins down.
"""

from __future__ import annotations

import re

import pytest
from tiny_models import FAMILIES
from transformers import AutoTokenizer

from autoprompt_py.data import Example
from autoprompt_py.encoding import TemplateEncoder, tokenize_piece
from autoprompt_py.errors import AutopromptError
from autoprompt_py.template import parse_template

SENTENCEPIECE = ("albert", "deberta-v2")
EXACT = tuple(f for f in FAMILIES if f not in SENTENCEPIECE)
MAX = 64


def masked_encoder(*args, **kw) -> TemplateEncoder:
    """An encoder for these masked LMs' tokenizers: the slot is a mask."""
    return TemplateEncoder(*args, next_token=False, **kw)


@pytest.fixture(scope="module")
def tokenizers(tiny_model_dirs):
    return {f: AutoTokenizer.from_pretrained(d) for f, d in tiny_model_dirs.items()}


def plain_text(template: str, tokenizer, fields: dict, masks: int = 1, triggers=()) -> list[str]:
    """The example written out by string substitution: one string per segment."""
    fills = iter(triggers)

    def sub(m: re.Match) -> str:
        tok = m.group(0)
        if tok == "[T]":
            return next(fills, tokenizer.mask_token)
        if tok in ("[P]", "[MASK]", "[Y]", "<mask>"):
            return " ".join([tokenizer.mask_token] * masks)
        if tok == "[X]":
            return fields["sub_label"]
        return fields[tok[1:-1].split(":")[0].strip()]

    segments = template.split(" [SEP] ")
    return [re.sub(r"\[T\]|\[P\]|\[MASK\]|\[Y\]|\[X\]|<mask>|\{[^{}]+\}", sub, s) for s in segments]


def encode(template: str, tokenizer, fields: dict, **kw):
    return masked_encoder(parse_template(template), tokenizer, MAX, **kw).encode(Example(fields))


SENTENCES = [
    "the movie was great, really!",
    "Dante was born in Florence",
    "it is not so bad",
]
SPACED_TEMPLATES = [
    "{sentence} It was [MASK] .",
    "{sentence} It was [MASK].",
    "Just [MASK] ! {sentence}",
    "[MASK] : {sentence}",
    "{sentence} All in all, the movie was [MASK] .",
]
GLUED_TEMPLATES = [
    '"{sentence}" It was [MASK] .',
    "{sentence}. [MASK]!",
]


# --------------------------------------------------------------------------------------------
# positions of masks and triggers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_and_open_trigger_positions(family, tokenizers):
    tok = tokenizers[family]
    enc = encode("[T] {sentence} [T] [T] It was [MASK] .", tok, {"sentence": SENTENCES[0]})
    ids = enc.input_ids
    assert len(enc.trigger_positions) == 3
    assert len(enc.mask_positions) == 1
    assert [ids[i] for i in enc.mask_positions] == [tok.mask_token_id]
    # open trigger slots start as the mask token, as AutoPrompt does
    assert [ids[i] for i in enc.trigger_positions] == [tok.mask_token_id] * 3
    holding_mask = {i for i, x in enumerate(ids) if x == tok.mask_token_id}
    assert holding_mask == set(enc.trigger_positions) | set(enc.mask_positions)
    assert enc.trigger_positions == sorted(enc.trigger_positions)
    assert enc.trigger_positions[-1] < enc.mask_positions[0]
    assert len(enc.token_type_ids) == len(ids)
    assert enc.truncated == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_trigger_fill_id_and_fixed_triggers(family, tokenizers):
    tok = tokenizers[family]
    fields = {"sentence": SENTENCES[1]}
    fill = tokenize_piece(tok, "the", True)[0]
    enc = encode("{sentence} [T] [T] [T] [MASK] .", tok, fields, trigger_fill_id=fill)
    assert [enc.input_ids[i] for i in enc.trigger_positions] == [fill] * 3
    assert [enc.input_ids[i] for i in enc.mask_positions] == [tok.mask_token_id]

    words = ["atmosphere", "dialogue", "alot"]
    fixed_ids = [tokenize_piece(tok, w, True)[0] for w in words]
    template = parse_template("{sentence} [T] [T] [T] [MASK] .").with_triggers(fixed_ids)
    enc = masked_encoder(template, tok, MAX).encode(Example(fields))
    assert [enc.input_ids[i] for i in enc.trigger_positions] == fixed_ids
    assert [enc.input_ids[i] for i in enc.mask_positions] == [tok.mask_token_id]
    # a fixed trigger is the same token the plain text tokenizes to
    full = tok(*plain_text("{sentence} [T] [T] [T] [MASK] .", tok, fields, triggers=words))
    assert enc.input_ids == full["input_ids"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("k", [2, 3])
def test_multi_mask_prediction_slot(family, k, tokenizers):
    tok = tokenizers[family]
    fields = {"sentence": SENTENCES[0]}
    enc = encode("{sentence} It was [MASK] .", tok, fields, n_masks=k)
    start = enc.mask_positions[0]
    assert enc.mask_positions == list(range(start, start + k))
    assert [enc.input_ids[i] for i in enc.mask_positions] == [tok.mask_token_id] * k
    full = tok(*plain_text("{sentence} It was [MASK] .", tok, fields, masks=k))
    assert enc.input_ids == full["input_ids"]


# --------------------------------------------------------------------------------------------
# equal to plain tokenization of the substituted text
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_spaced_templates_equal_plain_tokenization(family, tokenizers):
    tok = tokenizers[family]
    for template in SPACED_TEMPLATES:
        for sentence in SENTENCES:
            fields = {"sentence": sentence}
            enc = encode(template, tok, fields)
            full = tok(*plain_text(template, tok, fields))["input_ids"]
            assert enc.input_ids == full, (
                template,
                sentence,
                tok.convert_ids_to_tokens(enc.input_ids),
            )
            masks = [i for i, x in enumerate(full) if x == tok.mask_token_id]
            assert enc.mask_positions == masks


@pytest.mark.parametrize("family", FAMILIES)
def test_lama_template_equals_plain_tokenization(family, tokenizers):
    tok = tokenizers[family]
    for subject in ("Dante", "Paris", "the city of Rome"):
        fields = {"sub_label": subject}
        enc = encode("[X] was born in [Y] .", tok, fields)
        assert enc.input_ids == tok(*plain_text("[X] was born in [Y] .", tok, fields))["input_ids"]


@pytest.mark.parametrize("family", EXACT)
def test_glued_templates_equal_plain_tokenization(family, tokenizers):
    """WordPiece and byte-level BPE: exact even where a field is glued to punctuation."""
    tok = tokenizers[family]
    for template in GLUED_TEMPLATES:
        for sentence in SENTENCES:
            fields = {"sentence": sentence}
            enc = encode(template, tok, fields)
            assert enc.input_ids == tok(*plain_text(template, tok, fields))["input_ids"], template


@pytest.mark.parametrize("family", SENTENCEPIECE)
def test_sentencepiece_glued_parts_differ_only_in_segmentation(family, tokenizers):
    tok = tokenizers[family]
    differs = 0
    for template in GLUED_TEMPLATES:
        for sentence in SENTENCES:
            fields = {"sentence": sentence}
            enc = encode(template, tok, fields)
            full = tok(*plain_text(template, tok, fields))["input_ids"]
            differs += enc.input_ids != full
            ours = "".join(tok.convert_ids_to_tokens(enc.input_ids)).replace("▁", "")
            theirs = "".join(tok.convert_ids_to_tokens(full)).replace("▁", "")
            assert ours == theirs  # same text
            assert [enc.input_ids[i] for i in enc.mask_positions] == [tok.mask_token_id]
            assert full.count(tok.mask_token_id) == 1
    assert differs, "SentencePiece is now exact here: update this module's docstring"


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_all_equals_encode(family, tokenizers):
    tok = tokenizers[family]
    template = parse_template("{sentence} [T] It was [MASK] . {other:fixed}")
    encoder = masked_encoder(template, tok, MAX)
    examples = [Example({"sentence": s, "other": s.upper()}) for s in SENTENCES]
    dataset = encoder.encode_all(examples)
    assert [e.input_ids for e in dataset.examples] == [
        encoder.encode(e).input_ids for e in examples
    ]
    assert [e.mask_positions for e in dataset.examples] == [
        encoder.encode(e).mask_positions for e in examples
    ]


# --------------------------------------------------------------------------------------------
# sentence pairs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_pair_template_uses_the_tokenizers_pair_layout(family, tokenizers):
    tok = tokenizers[family]
    template = "{premise} ? [SEP] [MASK] , {hypothesis}"
    fields = {"premise": "Dante was born in Florence", "hypothesis": "it is not true"}
    enc = encode(template, tok, fields)
    a, b = plain_text(template, tok, fields)
    full = tok(a, b, return_token_type_ids=True)
    assert enc.input_ids == full["input_ids"]
    assert enc.token_type_ids == full["token_type_ids"]
    assert [enc.input_ids[i] for i in enc.mask_positions] == [tok.mask_token_id]


def test_pair_layout_bert_and_roberta(tokenizers):
    template = "{a} [SEP] [MASK] {b}"
    fields = {"a": "it was", "b": "good"}
    bert = tokenizers["bert"]
    enc = encode(template, bert, fields)
    assert bert.convert_ids_to_tokens(enc.input_ids) == [
        "[CLS]",
        "it",
        "was",
        "[SEP]",
        "[MASK]",
        "good",
        "[SEP]",
    ]
    assert enc.token_type_ids == [0, 0, 0, 0, 1, 1, 1]
    assert enc.mask_positions == [4]
    roberta = tokenizers["roberta"]
    enc = encode(template, roberta, fields)
    assert roberta.convert_ids_to_tokens(enc.input_ids) == [
        "<s>",
        "it",
        "Ġwas",
        "</s>",
        "</s>",
        "<mask>",
        "Ġgood",
        "</s>",
    ]
    assert enc.mask_positions == [5]


# --------------------------------------------------------------------------------------------
# truncation
# --------------------------------------------------------------------------------------------


def _words(tok, n: int, word: str = "very") -> str:
    text = " ".join([word] * n)
    assert len(tokenize_piece(tok, text, True)) == n
    assert len(tokenize_piece(tok, text, False)) == n
    return text


TRUNC_TEMPLATE = "{a} [T] {b} It was [MASK] . {c:fixed}"


@pytest.mark.parametrize("family", FAMILIES)
def test_truncation_cuts_only_the_longest_shortenable_field(family, tokenizers):
    tok = tokenizers[family]
    encoder = masked_encoder(parse_template(TRUNC_TEMPLATE), tok, MAX)
    fields = {"a": _words(tok, 60), "b": _words(tok, 3, "good"), "c": _words(tok, 3, "bad")}
    enc = encoder.encode(Example(fields))
    untruncated = masked_encoder(parse_template(TRUNC_TEMPLATE), tok, 10_000).encode(
        Example(fields)
    )
    excess = len(untruncated.input_ids) - MAX
    assert excess > 0
    assert len(enc.input_ids) == MAX
    assert enc.truncated == excess
    # exactly what the example with ``a`` cut to its first words gives: b, c, the template
    # words, the trigger and the mask are all intact
    cut = dict(fields, a=_words(tok, 60 - excess))
    expected = encoder.encode(Example(cut))
    assert expected.truncated == 0
    assert enc.input_ids == expected.input_ids
    assert enc.mask_positions == expected.mask_positions
    assert enc.trigger_positions == expected.trigger_positions
    assert [enc.input_ids[i] for i in enc.mask_positions] == [tok.mask_token_id]


@pytest.mark.parametrize("family", FAMILIES)
def test_truncation_evens_out_two_long_fields(family, tokenizers):
    tok = tokenizers[family]
    encoder = masked_encoder(parse_template(TRUNC_TEMPLATE), tok, MAX)
    la, lb = 34, 30
    fields = {"a": _words(tok, la), "b": _words(tok, lb, "good"), "c": _words(tok, 2, "bad")}
    enc = encoder.encode(Example(fields))
    assert len(enc.input_ids) == MAX
    remaining = la + lb - enc.truncated
    assert enc.truncated > la - lb  # both fields had to give
    matches = []
    for x in range(remaining + 1):
        if abs(2 * x - remaining) > 1:
            continue
        cut = dict(fields, a=_words(tok, x), b=_words(tok, remaining - x, "good"))
        if encoder.encode(Example(cut)).input_ids == enc.input_ids:
            matches.append(x)
    assert matches, "the two fields were not cut to (nearly) equal lengths"


@pytest.mark.parametrize("family", FAMILIES)
def test_truncation_in_a_pair_template(family, tokenizers):
    tok = tokenizers[family]
    encoder = masked_encoder(parse_template("{a} [SEP] [MASK] , {b}"), tok, MAX)
    enc = encoder.encode(Example({"a": _words(tok, 50), "b": _words(tok, 40, "good")}))
    assert len(enc.input_ids) == MAX
    assert len(enc.token_type_ids) == MAX
    assert enc.truncated == 50 + 40 + 2 + encoder.layout.count - MAX
    assert [enc.input_ids[i] for i in enc.mask_positions] == [tok.mask_token_id]


@pytest.mark.parametrize("family", FAMILIES)
def test_truncated_rows_are_counted(family, tokenizers):
    tok = tokenizers[family]
    encoder = masked_encoder(parse_template("{sentence} It was [MASK] ."), tok, MAX)
    examples = [
        Example({"sentence": _words(tok, 100)}),
        Example({"sentence": "short"}),
        Example({"sentence": _words(tok, 70, "good")}),
    ]
    dataset = encoder.encode_all(examples)
    assert dataset.num_truncated == 2
    assert [len(e.input_ids) == MAX for e in dataset.examples] == [True, False, True]


@pytest.mark.parametrize("family", ["bert", "roberta", "albert"])
def test_template_too_long_even_with_empty_fields_raises(family, tokenizers):
    tok = tokenizers[family]
    text = "{sentence} " + " ".join(["[T]"] * 70) + " [MASK] ."
    encoder = masked_encoder(parse_template(text), tok, MAX)
    with pytest.raises(AutopromptError, match="more than the model's 64") as info:
        encoder.encode(Example({"sentence": "great"}, source="data.tsv:7"))
    assert "data.tsv:7" in str(info.value)
    assert "\n" not in str(info.value)
    # a fixed field is never cut either
    encoder = masked_encoder(parse_template("{s:fixed} It was [MASK] ."), tok, MAX)
    with pytest.raises(AutopromptError, match="even with its shortenable fields emptied"):
        encoder.encode(Example({"s": _words(tok, 80)}))


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------


def test_batches_pad_and_keep_the_index(tokenizers):
    tok = tokenizers["roberta"]
    encoder = masked_encoder(parse_template("{sentence} [T] It was [MASK] ."), tok, MAX)
    examples = [Example({"sentence": _words(tok, n)}) for n in (9, 1, 5, 3, 7)]
    dataset = encoder.encode_all(examples)
    seen = []
    for batch in dataset.batches(2):
        for j, i in enumerate(batch.index.tolist()):
            row = dataset.examples[i]
            n = len(row.input_ids)
            assert batch.input_ids[j, :n].tolist() == row.input_ids
            assert batch.input_ids[j, n:].eq(tok.pad_token_id).all()
            assert batch.attention_mask[j].tolist() == [1] * n + [0] * (
                batch.input_ids.shape[1] - n
            )
            assert batch.mask_positions[j].tolist() == row.mask_positions
            assert batch.trigger_positions[j].tolist() == row.trigger_positions
            seen.append(i)
    assert sorted(seen) == list(range(5))
    assert seen == sorted(seen, key=lambda i: len(dataset.examples[i].input_ids))
    assert [b.index.tolist() for b in dataset.batches(2, sort_by_length=False)] == [
        [0, 1],
        [2, 3],
        [4],
    ]
