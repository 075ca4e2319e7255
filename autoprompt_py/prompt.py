"""A found prompt: the discrete tokens that a soft prompt can start from.

A ``FoundPrompt`` comes from a ``search`` result file or from a hand-written template, and
knows which of its tokens to export (``TOKEN_CHOICES``):

* ``triggers``: the trigger tokens, in order (a search result's ids, exactly as searched);
* ``all``: every literal and trigger token in template order, without the input fields and
  the prediction slot (literals are tokenized as ``encoding.py`` does, so each keeps its
  leading-space form: ``Ġwas``, ``▁was``);
* ``auto`` (the default): ``triggers`` when the template has any, else ``all``, which for a
  template without triggers is its literal words.

``embeddings(lm)`` copies those tokens' rows of the model's input embedding matrix: exactly the
vectors the model itself looks the tokens up as. ``export.py`` writes them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedTokenizerBase

from autoprompt_py.encoding import tokenize_piece
from autoprompt_py.errors import AutopromptError, shown
from autoprompt_py.model_kind import check_kind
from autoprompt_py.resources import RESULT_KIND, template_from_result
from autoprompt_py.template import (
    SUBJECT_FIELD,
    Field,
    Literal,
    Predict,
    Template,
    Trigger,
    parse_template,
)
from autoprompt_py.textfile import parse_json, read_text

if TYPE_CHECKING:
    from autoprompt_py.language_model import LanguageModel

TOKEN_CHOICES = ("auto", "triggers", "all")


def model_record(lm: LanguageModel) -> dict[str, Any]:
    """What identifies a model's vocabulary and embedding space, as result files record it."""
    return {
        "name": lm.name,
        "kind": lm.kind,  # masked or causal: a result is refused on the other kind
        "model_type": getattr(lm.model.config, "model_type", None),
        "vocab_size": int(lm.embeddings.shape[0]),
        "embedding_size": int(lm.embeddings.shape[1]),
    }


@dataclass(frozen=True)
class FoundPrompt:
    """The tokens of a prompt, chosen for export, with where they came from.

    ``template`` has its trigger slots fixed (for a search result); ``model`` is the result
    file's model record (None for a hand-written template).
    """

    template: Template
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    selection: str  # "triggers" or "all": what token_ids hold
    text: str  # the selected tokens as readable text
    source: str  # the result file, or "template"
    model: dict[str, Any] | None = None
    relation: str | None = None
    mode: str | None = None
    # how many of token_ids each part of template.parts gave (0 for fields and the slot)
    part_counts: tuple[int, ...] = field(default=(), repr=False)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def prompt(self) -> str:
        """The template with its trigger tokens written in."""
        return self.template.render(triggers="token")

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_result(
        cls,
        result: str | Path | dict,
        tokenizer: PreTrainedTokenizerBase | None = None,
        tokens: str = "auto",
        source: str | None = None,
    ) -> FoundPrompt:
        """From a ``search`` result (a path, or its parsed JSON; ``source`` names it in errors).

        The tokenizer is needed for ``tokens="all"`` (literal words are tokenized) and gives the
        readable text; the trigger ids always come from the file.
        """
        if isinstance(result, dict):
            data, source = result, source or "search result"
        else:
            data, source = read_result(result), str(result)
        try:
            template = template_from_result(data, source)
        except AutopromptError as e:
            msg = str(e)
            raise AutopromptError(msg if msg.startswith(source) else f"{source}: {msg}") from None
        trigger = data.get("trigger") or {}
        words = trigger.get("words") if isinstance(trigger, dict) else None
        model = data.get("model") if isinstance(data.get("model"), dict) else None
        return cls._build(
            template,
            tokenizer,
            tokens,
            source,
            model,
            data.get("relation"),
            data.get("mode"),
            words,
        )

    @classmethod
    def from_template(
        cls,
        template: str | Template,
        tokenizer: PreTrainedTokenizerBase,
        tokens: str = "auto",
    ) -> FoundPrompt:
        """From a hand-written template: its literal words (and fixed triggers, if any)."""
        if isinstance(template, str):
            template = parse_template(template)
        mode = "relation" if template.is_relational else "classification"
        return cls._build(template, tokenizer, tokens, "template", None, None, mode, None)

    @classmethod
    def _build(
        cls,
        template: Template,
        tokenizer: PreTrainedTokenizerBase | None,
        tokens: str,
        source: str,
        model: dict | None,
        relation: str | None,
        mode: str | None,
        words: list[str] | None,
    ) -> FoundPrompt:
        selection = _selection(template, tokens, source)
        if selection == "all" and tokenizer is None:
            raise ValueError(
                "tokens='all' tokenizes the template's literal words: pass a tokenizer"
            )
        ids: list[int] = []
        toks: list[str | None] = []
        counts: list[int] = []
        for p in template.parts:
            if isinstance(p, Trigger):
                piece, names = [int(p.token_id)], [p.token]
            elif isinstance(p, Literal) and selection == "all":
                piece = tokenize_piece(tokenizer, p.text, p.space_before)
                names = tokenizer.convert_ids_to_tokens(piece)
            else:
                piece, names = [], []
            ids += piece
            toks += names
            counts.append(len(piece))
        if not ids:
            raise AutopromptError(_nothing_to_export(template, source, selection))
        if any(t is None for t in toks):
            if tokenizer is None or max(ids) >= len(tokenizer):
                toks = [t if t is not None else str(i) for t, i in zip(toks, ids)]
            else:
                toks = tokenizer.convert_ids_to_tokens(ids)
        if tokenizer is not None and max(ids) < len(tokenizer):
            text = tokenizer.decode(ids).strip()
        elif words and selection == "triggers":
            text = " ".join(words)
        else:
            text = " ".join(toks)
        return cls(
            template,
            tuple(ids),
            tuple(toks),
            selection,
            text,
            source,
            model,
            relation,
            mode,
            tuple(counts),
        )

    # ---------------------------------------------------------------- the model

    def check_model(self, lm: LanguageModel) -> None:
        """Refuse a model whose vocabulary or embedding size differs from the search's model.

        Token ids only mean the same tokens in the same vocabulary: the sizes must match the
        result file's model record, and each trigger id must be the token the file recorded.
        """
        vocab, dim = lm.embeddings.shape
        bad = [i for i in self.token_ids if not 0 <= i < vocab]
        rec = self.model or {}
        check_kind(rec.get("kind"), lm.kind, self.source, lm.name)
        searched = rec.get("name") or "another model"
        where = (
            f"{self.source} (searched with {searched})"
            if rec
            else _named(self.template, self.source)
        )
        if rec:
            want_vocab, want_dim = rec.get("vocab_size"), rec.get("embedding_size")
            for key, value in (("vocab_size", want_vocab), ("embedding_size", want_dim)):
                if value is not None and (
                    not isinstance(value, int) or isinstance(value, bool) or value < 1
                ):  # a hand-edited record: NaN, 1e400, "30522"
                    raise AutopromptError(
                        f"{self.source}: model.{key} must be a whole number of at least 1, not "
                        f"{shown(repr(value))}; restore the file 'autoprompt search' wrote"
                    )
            vocab_ok = want_vocab is None or want_vocab in (vocab, len(lm.tokenizer))
            dim_ok = want_dim is None or want_dim == dim
            if not (vocab_ok and dim_ok):
                raise AutopromptError(
                    f"{where}: --model {lm.name} has a vocabulary of {vocab} and embedding size "
                    f"{dim}, but the search's model had {want_vocab} and {want_dim}; export with "
                    f"--model {searched}, the model the triggers were searched with"
                )
        if bad:
            raise AutopromptError(
                f"{where}: token ids {bad} are outside --model {lm.name}'s vocabulary of {vocab}; "
                f"export with the model the prompt was found with"
            )
        recorded = [
            (i, t)
            for p in self.template.parts
            if isinstance(p, Trigger)
            for i, t in [(p.token_id, p.token)]
            if t is not None
        ]
        if recorded:
            ids = [i for i, _ in recorded]
            have = lm.tokenizer.convert_ids_to_tokens(ids)
            want = [t for _, t in recorded]
            if have != want:
                raise AutopromptError(
                    f"{where}: trigger ids {ids} are {have} in --model {lm.name} but {want} in "
                    f"the file: the vocabularies differ; export with --model {searched}"
                )

    def embeddings(self, lm: LanguageModel) -> torch.Tensor:
        """[n_tokens, embedding size]: a copy of the input embedding rows of the tokens."""
        ids = torch.tensor(self.token_ids, dtype=torch.long, device=lm.embeddings.device)
        with torch.no_grad():
            return lm.embeddings.detach().index_select(0, ids).clone().cpu()

    # ---------------------------------------------------------------- templates

    def vector_names(self) -> list[str]:
        """OptiPrompt's names of the new tokens: ``[V1]`` … ``[Vn]``."""
        return [f"[V{i}]" for i in range(1, len(self) + 1)]

    def optiprompt_template(self) -> str:
        """The template with each exported token replaced by its vector ``[Vi]``.

        Parts are separated by spaces, so ``[X]``, ``[Y]`` and each ``[Vi]`` stand alone as
        OptiPrompt's templates need (``[X] [V1] [V2] [V3] [Y] .``); fields other than the
        subject stay ``{field}``, literals not exported stay text.
        """
        names = iter(self.vector_names())
        counts = iter(self.part_counts)
        out: list[str] = []
        for s, seg in enumerate(self.template.segments):
            if s:
                out.append("[SEP]")
            for p in seg:
                n = next(counts)
                if n:
                    out += [next(names) for _ in range(n)]
                elif isinstance(p, Literal):
                    out.append(p.text)
                elif isinstance(p, Field):
                    out.append("[X]" if p.name == SUBJECT_FIELD else "{" + p.name + "}")
                elif isinstance(p, Predict):
                    out.append("[Y]")
        return " ".join(out)

    def describe(self) -> dict[str, Any]:
        """The prompt as export manifests record it."""
        return {
            "source": self.source,
            "template": self.template.render(),
            "chat": None if self.template.chat is None else self.template.chat.record(),
            "prompt": self.prompt,
            "mode": self.mode,
            "relation": self.relation,
            "selection": self.selection,
            "token_ids": list(self.token_ids),
            "tokens": list(self.tokens),
            "text": self.text,
            "searched_with": self.model,
        }


def read_result(path: str | Path) -> dict:
    """A ``search`` result file, checked to be one."""
    path = Path(path)
    data = parse_json(read_text(path, "search result file"), str(path))
    if not isinstance(data, dict) or data.get("kind") != RESULT_KIND:
        raise AutopromptError(
            f'{path}: not a search result (no "kind": "{RESULT_KIND}"); pass the .json '
            "written by 'autoprompt search', or a hand-written prompt with --template"
        )
    return data


def _selection(template: Template, tokens: str, source: str) -> str:
    if tokens not in TOKEN_CHOICES:
        raise AutopromptError(f"--tokens {tokens!r}: use one of {', '.join(TOKEN_CHOICES)}")
    open_slots = sum(t is None for t in template.trigger_ids)
    if open_slots:
        raise AutopromptError(
            f"{_named(template, source)} has {open_slots} open trigger slots [T] with no tokens; "
            "export the result file of 'autoprompt search', or write words in their place"
        )
    if tokens == "auto":
        return "triggers" if template.num_triggers else "all"
    return tokens


def _nothing_to_export(template: Template, source: str, selection: str) -> str:
    if selection == "triggers":
        return (
            f"{_named(template, source)} has no trigger tokens to export; use --tokens all "
            "to export its literal words"
        )
    return (
        f"{_named(template, source)} has no trigger or literal tokens to export (only "
        "fields and the prediction slot); write the prompt's words in the template"
    )


def _named(template: Template, source: str) -> str:
    if source == "template":
        return f"template {shown(template.source)}"
    return f"{source}: template {shown(template.source)}"
