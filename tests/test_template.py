"""The template language: AutoPrompt, PET and LAMA styles parse into one structure."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprompt_py.errors import AutopromptError
from autoprompt_py.resources import load_templates, shipped_dir
from autoprompt_py.template import (
    SUBJECT_FIELD,
    Field,
    Literal,
    Predict,
    Template,
    Trigger,
    parse_template,
)

# --------------------------------------------------------------------------------------------
# the three styles
# --------------------------------------------------------------------------------------------


def test_autoprompt_style_drops_cls_and_sep():
    t = parse_template("[CLS] {sentence} [T] [T] [T] [P] . [SEP]")
    assert t.segments == (
        (
            Field("sentence", False),
            Trigger(True),
            Trigger(True),
            Trigger(True),
            Predict(True, "[P]"),
            Literal(".", True),
        ),
    )
    assert t.fields == ["sentence"]
    assert t.num_triggers == 3
    assert t.trigger_ids == [None, None, None]
    assert t.predict == Predict(True, "[P]")
    assert not t.is_relational
    assert t.render() == "{sentence} [T] [T] [T] [P] ."


def test_roberta_specials_are_dropped_and_mask_is_a_prediction_slot():
    t = parse_template("<s> {sentence} [T] <mask> . </s>")
    assert t.segments == (
        (Field("sentence", False), Trigger(True), Predict(True, "[MASK]"), Literal(".", True)),
    )


def test_pet_style_with_quotes_keeps_glued_punctuation():
    t = parse_template('"{sentence}" It was <mask>.')
    assert t.segments == (
        (
            Literal('"', False),
            Field("sentence", False),
            Literal('" It was', False),
            Predict(True, "[MASK]"),
            Literal(".", False),
        ),
    )
    assert t.render() == '"{sentence}" It was [MASK].'


def test_pet_style_two_segment_pattern():
    t = parse_template("{premise} ? [SEP] [MASK] , {hypothesis}")
    assert len(t.segments) == 2
    first, second = t.segments
    assert first == (Field("premise", False), Literal("?", True))
    # the first part of a segment never has a space before it
    assert second == (Predict(False, "[MASK]"), Literal(",", True), Field("hypothesis", True))
    assert t.fields == ["premise", "hypothesis"]
    assert t.render() == "{premise} ? [SEP] [MASK] , {hypothesis}"


def test_leading_and_trailing_sep_do_not_make_segments():
    t = parse_template("[SEP] {a} [P] [SEP]")
    assert len(t.segments) == 1
    assert t.segments[0][0] == Field("a", False)


def test_lama_style():
    t = parse_template("[X] was born in [Y] .")
    assert t.segments == (
        (
            Field(SUBJECT_FIELD, False, True, "[X]"),
            Literal("was born in", True),
            Predict(True, "[Y]"),
            Literal(".", True),
        ),
    )
    assert t.is_relational
    assert t.fields == [SUBJECT_FIELD]
    assert t.render() == "[X] was born in [Y] ."


def test_lama_object_first():
    t = parse_template("[Y] participated in the [X] .")
    assert t.parts[0] == Predict(False, "[Y]")
    assert t.is_relational


def test_fixed_and_shortenable_fields():
    t = parse_template("{question:fixed} {context} {answer : shortenable} [P]")
    assert [p for p in t.parts if isinstance(p, Field)] == [
        Field("question", False, False),
        Field("context", True, True),
        Field("answer", True, True),
    ]
    assert t.render() == "{question:fixed} {context} {answer} [P]"


def test_field_name_whitespace_is_stripped():
    assert parse_template("{ sentence } [P]").fields == ["sentence"]


def test_repeated_field_is_listed_once():
    t = parse_template("{a} [P] {a}")
    assert t.fields == ["a"]


def test_brace_escapes():
    t = parse_template("{{not a field}} {sentence} [P] }}")
    assert t.segments == (
        (
            Literal("{not a field}", False),
            Field("sentence", True),
            Predict(True, "[P]"),
            Literal("}", True),
        ),
    )
    assert t.fields == ["sentence"]
    assert t.render() == "{{not a field}} {sentence} [P] }}"


def test_escape_glued_to_a_field():
    t = parse_template("{{{a}}} [P]")
    assert t.segments == (
        (Literal("{", False), Field("a", False), Literal("}", False), Predict(True, "[P]")),
    )


def test_literal_whitespace_and_spacing_flags():
    t = parse_template("{a}, so  it [P]!")
    assert t.segments == (
        (Field("a", False), Literal(", so  it", False), Predict(True, "[P]"), Literal("!", False)),
    )


def test_with_triggers_fixes_slots_and_renders_tokens():
    t = parse_template("{s} [T] [T] [P] .")
    fixed = t.with_triggers([7, 9], ["Ġgreat", "wow"])
    assert fixed.trigger_ids == [7, 9]
    assert fixed.render() == "{s} [T] [T] [P] ."
    assert fixed.render("token") == "{s} Ġgreat wow [P] ."
    assert t.trigger_ids == [None, None]  # the original is untouched
    with pytest.raises(AutopromptError, match="2 trigger slots"):
        t.with_triggers([1])


@pytest.mark.parametrize("name", ["sst2", "agnews", "lama_trex"])
def test_shipped_template_sets_parse(name):
    assert (shipped_dir("templates") / f"{name}.jsonl").is_file()
    named = load_templates(name)
    assert named
    for n in named:
        assert isinstance(n.template, Template)
        assert sum(isinstance(p, Predict) for p in n.template.parts) == 1
        if name == "lama_trex":
            assert n.relation and re.fullmatch(r"P\d+", n.relation)
            assert n.template.is_relational


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty template"),
        ("   ", "empty template"),
        ("{sentence} It was .", "no prediction slot"),
        ("{sentence} [P] and [MASK]", "2 prediction slots"),
        ("{sentence} [T] [P] [Z]", r"unknown marker \[Z\]"),
        ("{sentence} [P] {}", "bad field"),
        ("{sentence!} [P]", "bad field"),
        ("{sentence:bold} [P]", "unknown field option 'bold'"),
        ("{a} [SEP] {b} [SEP] {c} [P]", "at most two segments"),
        ("[CLS] [SEP]", "no text, field or slot"),
        ("{sentence It was [MASK] .", "unmatched '{'"),
        ("{sentence} it } was [P]", "unmatched '}'"),
        ("{a{b} [P]", "unmatched '{'"),
    ],
)
def test_errors(text, message):
    with pytest.raises(AutopromptError, match=message) as info:
        parse_template(text)
    msg = str(info.value)
    assert "\n" not in msg
    if text.strip():
        assert repr(text) in msg  # names the template


def test_error_in_a_template_file_names_file_and_line(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("{sentence} It was [MASK] .\n# a comment\n{sentence} no slot here\n")
    with pytest.raises(AutopromptError, match=r"mine\.txt:3: .*no prediction slot"):
        load_templates(str(path))


# --------------------------------------------------------------------------------------------
# parse(render(t)) == t for generated templates
# --------------------------------------------------------------------------------------------

# literal text: anything but markers; braces are fine (render escapes them)
_literal_text = (
    st.text(alphabet="abcPSTXYZ .,!?'\"-:;()[]<>{}/", min_size=1, max_size=12)
    .map(str.strip)
    .filter(lambda s: s and not re.search(r"\[[A-Z]+\]|<mask>|</?s>", s))
)
_field_name = st.from_regex(r"[a-z_][a-z0-9_.\-]{0,8}", fullmatch=True)


@st.composite
def _part(draw, allow_literal: bool):
    kinds = ["field", "trigger", "subject"] + (["literal"] if allow_literal else [])
    kind = draw(st.sampled_from(kinds))
    space = draw(st.booleans())
    if kind == "literal":
        return Literal(draw(_literal_text), space)
    if kind == "field":
        return Field(draw(_field_name), space, draw(st.booleans()))
    if kind == "subject":
        return Field(SUBJECT_FIELD, space, True, "[X]")
    return Trigger(space)


@st.composite
def _segment(draw):
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        # two literals in a row would parse as one
        allow_literal = not parts or not isinstance(parts[-1], Literal)
        parts.append(draw(_part(allow_literal)))
    return parts


@st.composite
def templates(draw):
    segments = [draw(_segment()) for _ in range(draw(st.integers(1, 2)))]
    # exactly one prediction slot, anywhere that does not split two literals
    s = draw(st.integers(0, len(segments) - 1))
    i = draw(st.integers(0, len(segments[s])))
    marker = draw(st.sampled_from(["[P]", "[MASK]", "[Y]"]))
    segments[s].insert(i, Predict(draw(st.booleans()), marker))
    return Template(tuple((replace(seg[0], space_before=False), *seg[1:]) for seg in segments))


@settings(max_examples=300, deadline=None)
@given(templates())
def test_parse_render_roundtrip(template):
    text = template.render()
    parsed = parse_template(text)
    assert parsed.segments == template.segments, text
    assert parsed.render() == text
