"""The template language: one safe parser for AutoPrompt, PET and LAMA style prompts.

A template is text with markers:

* ``{field}``: an input field of the example, shortenable (long inputs are cut from it);
  ``{field:fixed}`` marks one that must never be cut.
* ``[T]``: a trigger slot that search fills (or a fixed trigger token after search).
* ``[P]``, ``[MASK]``, ``<mask>`` or ``[Y]``: the prediction slot (exactly one).
* ``[X]``: LAMA's subject, the same as ``{sub_label}``.
* ``[SEP]`` between two parts splits the template into two segments (a sentence pair);
  ``[CLS]``, ``<s>``, ``</s>`` and a leading or trailing ``[SEP]`` are dropped because the
  tokenizer adds the model's own special tokens.

Everything else is literal text. The parser knows nothing of tokenizers; ``encoding.py`` does.
A template may be read as a chat turn (``Chat``): ``chat.py`` renders it with a decoder's own
chat template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from autoprompt_py.errors import AutopromptError, shown

SUBJECT_FIELD = "sub_label"
OBJECT_FIELD = "obj_label"

_PREDICT_MARKERS = {"[P]", "[MASK]", "<mask>", "[Y]"}
_DROPPED_MARKERS = {"[CLS]", "<s>", "</s>"}
_TOKEN_RE = re.compile(r"\{\{|\}\}|\{[^{}]*\}|\[[A-Z]+\]|<mask>|</?s>")


@dataclass(frozen=True)
class Literal:
    text: str
    space_before: bool


@dataclass(frozen=True)
class Field:
    name: str
    space_before: bool
    shortenable: bool = True
    marker: str | None = None  # "[X]" when written LAMA style; renders back the same way


@dataclass(frozen=True)
class Trigger:
    space_before: bool
    token_id: int | None = None  # fixed after a search; None is an open slot
    token: str | None = None  # the token's text, for rendering


@dataclass(frozen=True)
class Predict:
    space_before: bool
    marker: str = "[P]"


Part = Literal | Field | Trigger | Predict


@dataclass(frozen=True)
class Chat:
    """A template read as a chat (``--chat``): the text before the answer slot is the user's
    message, ``system`` the system message (None: the chat template's own default), and the
    slot opens the assistant's turn, read right after the generation prompt with no space
    before it (lm-evaluation-harness's chat convention). ``chat.py`` renders it."""

    system: str | None = None

    def __post_init__(self) -> None:
        if self.system is not None and "[T]" in self.system:
            raise AutopromptError(
                f"--system {shown(self.system)}: trigger slots [T] go in the template (the "
                "user's message), not in the system text; move them there"
            )

    def over(self, recorded: Chat | None) -> Chat:
        """This ``--chat`` over the chat a result records: its system message is kept
        unless ``--system`` gives another (re-scoring a found prompt gives its metric)."""
        if self.system is None and recorded is not None:
            return recorded
        return self

    def record(self) -> dict:
        """As result files record it (``"chat": {"system": ...}``; no chat: null)."""
        return {"system": self.system}

    @classmethod
    def from_record(cls, value: object, source: str) -> Chat | None:
        """A result's ``chat`` entry back (null or absent: no chat)."""
        if value is None:
            return None
        system = value.get("system") if isinstance(value, dict) else 0
        if not (system is None or isinstance(system, str)):
            raise AutopromptError(
                f'{source}: "chat" must be null or {{"system": text or null}}, not '
                f"{shown(value)}; restore the file autoprompt wrote"
            )
        return cls(system)


def chat_settings(chat: Chat | None) -> dict:
    """``--chat`` and ``--system`` as a command's record of its options holds them."""
    return {"chat": chat is not None, "system": chat.system if chat is not None else None}


@dataclass(frozen=True)
class Template:
    """A parsed template: one or two segments of parts, with exactly one prediction slot;
    ``chat``: read as a chat turn (None: plain text)."""

    segments: tuple[tuple[Part, ...], ...]
    source: str = ""
    chat: Chat | None = None

    @property
    def parts(self) -> list[Part]:
        return [p for seg in self.segments for p in seg]

    @property
    def fields(self) -> list[str]:
        names: list[str] = []
        for p in self.parts:
            if isinstance(p, Field) and p.name not in names:
                names.append(p.name)
        return names

    @property
    def num_triggers(self) -> int:
        return sum(isinstance(p, Trigger) for p in self.parts)

    @property
    def trigger_ids(self) -> list[int | None]:
        return [p.token_id for p in self.parts if isinstance(p, Trigger)]

    @property
    def predict(self) -> Predict:
        return next(p for p in self.parts if isinstance(p, Predict))

    @property
    def answer_space(self) -> bool:
        """Whether the answer is tokenized after a space (``Ġgreat``): as written before the
        slot, except in a chat, where it starts the assistant's turn (no space)."""
        return self.predict.space_before and self.chat is None

    def in_chat(self, chat: Chat | None) -> Template:
        """The same template read as a chat turn (``chat``), or as plain text (None)."""
        return replace(self, chat=chat)

    @property
    def is_relational(self) -> bool:
        """True for LAMA-style templates, whose examples are (subject, object) facts."""
        return SUBJECT_FIELD in self.fields

    def with_triggers(self, token_ids: list[int], tokens: list[str] | None = None) -> Template:
        """The same template with its trigger slots fixed to these token ids, in order."""
        if len(token_ids) != self.num_triggers:
            raise AutopromptError(
                f"template {self.source!r} has {self.num_triggers} trigger slots [T] "
                f"but {len(token_ids)} trigger tokens were given"
            )
        fills = iter(zip(token_ids, tokens or [None] * len(token_ids)))

        def fill(p: Part) -> Part:
            if not isinstance(p, Trigger):
                return p
            token_id, token = next(fills)
            return replace(p, token_id=int(token_id), token=token)

        segs = tuple(tuple(fill(p) for p in seg) for seg in self.segments)
        return Template(segs, self.source, self.chat)

    def render(self, triggers: str = "marker") -> str:
        """Text of the template. ``triggers``: "marker" writes ``[T]``, "token" the fixed tokens."""
        out: list[str] = []
        for i, seg in enumerate(self.segments):
            if i:
                out.append(" [SEP] ")
            for p in seg:
                if isinstance(p, Literal):
                    text = p.text.replace("{", "{{").replace("}", "}}")
                elif isinstance(p, Field):
                    text = p.marker or ("{" + p.name + ("" if p.shortenable else ":fixed") + "}")
                elif isinstance(p, Trigger):
                    if triggers == "token" and p.token is not None:
                        text = p.token
                    else:
                        text = "[T]"
                else:
                    text = p.marker
                out.append((" " if p.space_before and out else "") + text)
        return "".join(out).strip()

    def __str__(self) -> str:
        return self.render()


def parse_template(text: str) -> Template:
    """Parse template text; raise AutopromptError naming the problem and the fix."""
    if not text or not text.strip():
        raise AutopromptError("empty template: write e.g. '{sentence} It was [MASK] .'")
    segments: list[list[Part]] = [[]]
    literal = ""  # literal text gathered since the last marker, escapes resolved

    def flush_literal() -> None:
        nonlocal literal
        if literal.strip():
            segments[-1].append(Literal(literal.strip(), literal[0].isspace()))
        literal = ""

    pos = 0
    for m in _TOKEN_RE.finditer(text):
        literal += _plain(text, pos, m.start())
        pos = m.end()
        tok = m.group(0)
        if tok in ("{{", "}}"):
            literal += tok[0]
            continue
        flush_literal()
        space = m.start() > 0 and text[m.start() - 1].isspace()
        if tok.startswith("{"):
            segments[-1].append(_parse_field(tok, text, space))
        elif tok == "[T]":
            segments[-1].append(Trigger(space))
        elif tok in _PREDICT_MARKERS:
            segments[-1].append(Predict(space, "[MASK]" if tok == "<mask>" else tok))
        elif tok == "[X]":
            segments[-1].append(Field(SUBJECT_FIELD, space, True, "[X]"))
        elif tok == "[SEP]":
            segments.append([])
        elif tok not in _DROPPED_MARKERS:
            raise AutopromptError(
                f"template {shown(text)}: unknown marker {tok}; use [T] (trigger), [P]/[MASK]/[Y] "
                "(prediction), [X] (subject), [SEP] or {field}"
            )
    literal += _plain(text, pos, len(text))
    flush_literal()

    segs = tuple(tuple(s) for s in segments if s)
    if len(segs) > 2:
        raise AutopromptError(
            f"template {shown(text)}: {len(segs) - 1} inner [SEP] markers; at most two segments "
            "(one [SEP]) are supported"
        )
    if not segs:
        raise AutopromptError(f"template {shown(text)} has no text, field or slot")
    segs = tuple(_first_part_unspaced(s) for s in segs)
    template = Template(segs, text)
    n_pred = sum(isinstance(p, Predict) for p in template.parts)
    if n_pred != 1:
        what = "no prediction slot" if n_pred == 0 else f"{n_pred} prediction slots"
        raise AutopromptError(
            f"template {shown(text)} has {what}: write exactly one [P] (or [MASK], [Y])"
        )
    return template


def _plain(text: str, start: int, end: int) -> str:
    # Text between markers: a brace here is neither a field nor an escape ({{, }}).
    chunk = text[start:end]
    for i, ch in enumerate(chunk):
        if ch in "{}":
            raise AutopromptError(
                f"template {shown(text)}: unmatched {ch!r} at character {start + i + 1}; close the "
                "field as {name}, or write {{ or }} for a literal brace"
            )
    return chunk


def _first_part_unspaced(seg: tuple[Part, ...]) -> tuple[Part, ...]:
    # A segment's first part starts the text: no space is tokenized before it.
    return (replace(seg[0], space_before=False),) + seg[1:]


def _parse_field(tok: str, text: str, space: bool) -> Field:
    inner = tok[1:-1].strip()
    name, _, option = inner.partition(":")
    name, option = name.strip(), option.strip()
    if not name or not re.fullmatch(r"[\w.\-/ ]+", name):
        raise AutopromptError(
            f"template {shown(text)}: bad field {shown(tok)[1:-1]}; a field is a column name in braces, "
            "e.g. {sentence} or {sentence:fixed}"
        )
    if option not in ("", "fixed", "shortenable"):
        raise AutopromptError(
            f"template {shown(text)}: unknown field option {shown(option)} in {shown(tok)[1:-1]}; "
            "use {name} (shortenable) or {name:fixed}"
        )
    return Field(name, space, option != "fixed")
