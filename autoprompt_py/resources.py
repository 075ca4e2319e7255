"""Resolving ``--template`` and ``--verbalizer`` arguments: a file, a shipped name, or text.

Shipped sets live in the repository's ``templates/`` and ``verbalizers/`` folders; a wheel
carries them as ``autoprompt_py/_resources/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from autoprompt_py.errors import AutopromptError, shown
from autoprompt_py.model_kind import check_kind
from autoprompt_py.template import Chat, Template, parse_template
from autoprompt_py.textfile import lines, names_file, parse_json, read_text

if TYPE_CHECKING:  # verbalizer.py imports torch: not needed to name the shipped sets
    from autoprompt_py.verbalizer import Verbalizer

_PACKAGE = Path(__file__).resolve().parent
RESULT_KIND = "autoprompt-search"


def shipped_dir(kind: str) -> Path:
    """The folder of shipped ``templates`` or ``verbalizers``, installed or in a checkout."""
    for candidate in (_PACKAGE / "_resources" / kind, _PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    return _PACKAGE / "_resources" / kind


def shipped_names(kind: str) -> list[str]:
    return sorted(p.stem for p in shipped_dir(kind).glob("*.json*"))


@dataclass(frozen=True)
class NamedTemplate:
    """A template with a name to report it by, and the relation it is for (LAMA sets)."""

    name: str
    template: Template
    relation: str | None = None
    model_kind: str | None = None  # a search result's model kind (model_kind.py), else None


def with_chat(named: list[NamedTemplate], chat: Chat | None) -> list[NamedTemplate]:
    """``--chat``: every template read as a chat turn (``chat``, over the chat a template
    records: ``Chat.over``); None: each as it came (a search result or tuned folder keeps the
    chat it records)."""
    if chat is None:
        return named
    return [replace(t, template=t.template.in_chat(chat.over(t.template.chat))) for t in named]


def load_templates(
    spec: str, option: str = "--template", kept: bool = False
) -> list[NamedTemplate]:
    """Templates from a file (.jsonl set, .txt lines, .json search result), a shipped set's
    name (``sst2``, ``lama_trex``), or template text. ``option`` names the argument in
    messages (``--relations``). A search result gives its best trigger; with ``kept``, every
    trigger it kept (``search --keep N``), best first, named ``<stem>:<rank>``."""
    path = Path(spec)
    if names_file(path):
        return _templates_from_file(path, kept)
    shipped = shipped_dir("templates") / f"{spec}.jsonl"
    if names_file(shipped):
        return _templates_from_file(shipped)
    if option == "--template" and any(m in spec for m in ("{", "[", "<mask>")):
        return [NamedTemplate(spec, parse_template(spec))]
    if option != "--template":  # --relations takes files and shipped sets, not text
        raise AutopromptError(
            f"{option} {shown(spec)}: no such file, nor a shipped template set "
            f"({', '.join(shipped_names('templates')) or 'none found'})"
        )
    raise AutopromptError(
        f"{option} {shown(spec)}: not a file, a shipped template set "
        f"({', '.join(shipped_names('templates')) or 'none found'}) or template text with "
        "{field} and [P]"
    )


def load_verbalizer(spec: str) -> Verbalizer:
    """A verbalizer from a JSON file, a shipped name (``sst2``), or inline JSON."""
    from autoprompt_py.verbalizer import Verbalizer

    path = Path(spec)
    if names_file(path):
        return Verbalizer.from_file(path)
    shipped = shipped_dir("verbalizers") / f"{spec}.json"
    if names_file(shipped):
        return Verbalizer.from_file(shipped)
    if spec.lstrip().startswith("{"):
        return Verbalizer.from_dict(parse_json(spec, "--verbalizer: inline", False), "--verbalizer")
    raise AutopromptError(
        f"--verbalizer {shown(spec)}: not a file, a shipped verbalizer "
        f"({', '.join(shipped_names('verbalizers')) or 'none found'}) or inline JSON"
    )


def template_from_result(result: dict, source: str) -> Template:
    """The searched template of a ``search`` result, with its trigger tokens fixed. A result
    may have been edited by hand: the trigger's ids, tokens and words are checked (whole
    numbers, one per [T] slot), and refused naming the field."""
    try:
        template = parse_template(result["template"])
        trigger = result["trigger"]
        ids = trigger["ids"]
    except (KeyError, TypeError):
        raise AutopromptError(
            f"{source}: not a search result (it needs 'template' and 'trigger': "
            "{'ids': [...]}); pass a template instead"
        ) from None
    except AutopromptError as e:
        raise AutopromptError(f"{source}: its 'template': {e}") from None
    fix = "restore the file 'autoprompt search' wrote, or run the search again"
    if not isinstance(ids, list) or not all(_whole(i) and i >= 0 for i in ids):
        raise AutopromptError(
            f"{source}: trigger.ids must be a list of token ids (whole numbers ≥ 0), not "
            f"{shown(json.dumps(ids, allow_nan=True))}; {fix}"
        )
    if len(ids) != template.num_triggers:
        raise AutopromptError(
            f"{source}: trigger.ids holds {len(ids)} ids but its template has "
            f"{template.num_triggers} trigger slots [T]; {fix}"
        )
    for key in ("tokens", "words"):
        value = trigger.get(key)
        if value is not None and (
            not isinstance(value, list)
            or len(value) != len(ids)
            or not all(isinstance(v, str) for v in value)
        ):
            raise AutopromptError(
                f"{source}: trigger.{key} must be a list of {len(ids)} strings, one per id of "
                f"trigger.ids; {fix}"
            )
    chat = Chat.from_record(result.get("chat"), source)
    return template.with_triggers(ids, trigger.get("tokens")).in_chat(chat)


def check_trigger_ids(
    named: list[NamedTemplate], vocab_size: int, model: str, kind: str | None = None
) -> None:
    """Refuse trigger ids a model does not have (a result of another model, or edited by
    hand) before they reach its embedding lookup, and a result made on the other ``kind``."""
    for t in named:
        if kind is not None:
            check_kind(t.model_kind, kind, f"template {t.name!r}", model)
        bad = [i for i in t.template.trigger_ids if i is not None and not 0 <= i < vocab_size]
        if bad:
            raise AutopromptError(
                f"template {t.name!r}: trigger.ids {bad[:5]} are outside the vocabulary of --model {model} "
                f"({vocab_size} tokens); use the model the triggers were searched with"
            )


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kept_templates(path: Path, data: dict) -> list[NamedTemplate]:
    """Every trigger a search result kept (``kept``), best first."""
    kind = (data.get("model") if isinstance(data.get("model"), dict) else {}).get("kind")
    kept = data["kept"]
    if not isinstance(kept, list) or not kept or not all(isinstance(k, dict) for k in kept):
        raise AutopromptError(
            f"{path}: 'kept' must be a list of the triggers the search kept; restore the file "
            "'autoprompt search' wrote, or run the search again"
        )
    return [
        NamedTemplate(
            f"{path.stem}:{rank}",
            template_from_result(
                {"template": data.get("template"), "trigger": k.get("trigger")},
                f"{path} (kept trigger {rank})",
            ),
            data.get("relation"),
            kind,
        )
        for rank, k in enumerate(kept, 1)
    ]


def _templates_from_file(path: Path, kept: bool = False) -> list[NamedTemplate]:
    text = read_text(path, "template file")
    if path.suffix == ".json":
        data = parse_json(text, str(path))
        if isinstance(data, dict) and data.get("kind") == RESULT_KIND:
            if kept and "kept" in data:
                return _kept_templates(path, data)
            return [
                NamedTemplate(
                    path.stem,
                    template_from_result(data, str(path)),
                    data.get("relation"),
                    (data.get("model") if isinstance(data.get("model"), dict) else {}).get("kind"),
                )
            ]
        raise AutopromptError(
            f"{path}: a .json template file must be a search result; write template sets "
            'as .jsonl lines of {"name": ..., "template": ...}'
        )
    out = []
    for line_no, line in lines(text):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if path.suffix == ".jsonl":
            row = parse_json(line, f"{path}:{line_no}", False)
            texts = row.get("template") if isinstance(row, dict) else None
            if texts is None:
                raise AutopromptError(
                    f'{path}:{line_no}: each line must be a JSON object with a "template"'
                )
            relation = row.get("relation")
            relation = None if relation is None else str(relation)
            name = row.get("name") or relation or f"{path.stem}:{line_no}"
        else:
            texts, relation, name = line.strip(), None, f"{path.stem}:{line_no}"
        # a list of templates on one line: several paraphrases of one relation
        several = isinstance(texts, list)
        if not several:
            texts = [texts]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise AutopromptError(
                f'{path}:{line_no}: "template" must be a template text or a list of them'
            )
        for i, tpl_text in enumerate(texts, 1):
            try:
                template = parse_template(tpl_text)
            except AutopromptError as e:
                raise AutopromptError(f"{path}:{line_no}: {e}") from None
            out.append(NamedTemplate(f"{name}:{i}" if several else str(name), template, relation))
    if not out:
        raise AutopromptError(f"{path}: no templates in the file")
    return out
