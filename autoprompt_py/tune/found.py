"""What a ``--template`` found: the start that trained prompt vectors take.

A search result (its trigger ids), an exported prompt (``export``'s PEFT or OptiPrompt folder,
or its embeddings file: the token ids it holds) or a tuned folder (its template, fixed
triggers, and for ``soft`` and ``prompt`` its trained vectors) is a found prompt; a template
text is not. ``--init auto`` (the default) starts from what was found where there is something, else from
random vocabulary tokens; ``--init found`` with nothing found is refused. Read without torch: the
CLI checks it before the model loads.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from autoprompt_py.errors import AutopromptError, shown
from autoprompt_py.template import Chat, Template, parse_template
from autoprompt_py.textfile import load_with, names_file

EXPORT_KIND = "autoprompt-export"  # export.MANIFEST_KIND (export.py imports torch)
EXPORT_MANIFESTS = ("autoprompt_export.json", "manifest.json")  # peft, optiprompt folders


@dataclass(frozen=True)
class FoundStart:
    """A found prompt: ``token_ids`` in order (a search result's triggers, an export's tokens),
    ``model`` the record of the model that found it, ``vectors`` a tuned folder's trained
    vectors file (soft, prompt) and ``method`` the method that trained them."""

    source: str  # the path given
    origin: str  # "search", "export" or "tuned"
    token_ids: tuple[int, ...]
    model: dict | None = None
    vectors: str | None = None
    method: str | None = None

    def record(self) -> dict:
        # "kind": the key result.json has always had for the origin
        return {"source": self.source, "kind": self.origin, "token_ids": list(self.token_ids),
                "model": (self.model or {}).get("name"), "method": self.method}  # fmt: skip


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def safetensors_metadata(path: Path) -> dict:
    """The string metadata of a safetensors file, read from its JSON header (no torch)."""

    def header(path: Path) -> dict:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            return json.loads(f.read(min(size, 100_000_000)))

    fix = "export it again with 'autoprompt export --format embeddings'"
    data = load_with(path, header, "safetensors file", fix, "--template")
    return data.get("__metadata__") or {} if isinstance(data, dict) else {}


def _export_template(data: dict, source: str) -> tuple[Template, tuple[int, ...]]:
    """An exported prompt's template (its triggers fixed) and token ids."""
    try:
        ids = data["token_ids"]
        ids = json.loads(ids) if isinstance(ids, str) else ids
        template = parse_template(data["template"])
        selection = data.get("selection", "triggers")
        chat = data.get("chat")
        chat = json.loads(chat) if isinstance(chat, str) else chat  # safetensors: a string
    except (KeyError, TypeError, ValueError):
        raise AutopromptError(
            f"--template {source}: an export without its template and token_ids; export again "
            "with 'autoprompt export'"
        ) from None
    if not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids):
        raise AutopromptError(f"--template {source}: token_ids must be token ids; export again")
    if template.num_triggers:
        if selection != "triggers" or len(ids) != template.num_triggers:
            raise AutopromptError(
                f"--template {source}: exported with --tokens {selection}, so its trigger ids "
                "cannot be told from its words; export with --tokens triggers, or pass the "
                "search result"
            )
        template = template.with_triggers(ids)
    return template.in_chat(Chat.from_record(chat, f"--template {source}")), tuple(ids)


def _model_record(value) -> dict | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {"name": value}
    return value if isinstance(value, dict) else None


def read_found(spec: str) -> tuple[Template, str | None, FoundStart] | None:
    """(template, relation, what it found) when ``spec`` names a found prompt, else None."""
    from autoprompt_py.resources import RESULT_KIND, template_from_result
    from autoprompt_py.textfile import parse_json, read_text
    from autoprompt_py.tune.folder import read_tuned

    path = Path(spec)
    if names_file(path) and path.suffix == ".json":
        data = parse_json(read_text(path, "template file", "--template"), str(path))
        if isinstance(data, dict) and data.get("kind") == RESULT_KIND:
            template = template_from_result(data, str(path))
            ids = tuple(int(i) for i in template.trigger_ids)
            found = FoundStart(str(path), "search", ids, _model_record(data.get("model")))
            return template, data.get("relation"), found
        if isinstance(data, dict) and data.get("kind") == EXPORT_KIND:
            template, ids = _export_template(data, str(path))
            found = FoundStart(str(path), "export", ids, _model_record(data.get("model")))
            return template, data.get("relation"), found
        return None
    if names_file(path) and path.suffix == ".safetensors":
        meta = safetensors_metadata(path)
        if meta.get("kind") != EXPORT_KIND:
            raise AutopromptError(
                f"--template {path}: not an exported prompt (no kind {EXPORT_KIND!r} in its "
                "metadata); pass the file 'autoprompt export --format embeddings' wrote"
            )
        template, ids = _export_template(meta, str(path))
        model = _model_record(meta.get("model_record")) or _model_record(meta.get("model"))
        return template, None, FoundStart(str(path), "export", ids, model)
    if not _is_dir(path):
        return None
    result = read_tuned(path)
    if result is not None:
        template = parse_template(result["template"])
        template = template.in_chat(Chat.from_record(result.get("chat"), str(path)))
        ids = result.get("trigger_ids") or []
        if template.num_triggers and ids and all(i is not None for i in ids):
            template = template.with_triggers(ids, result.get("trigger_tokens"))
        else:
            ids = []
        vectors = path / "embeddings.safetensors"
        method = result.get("method")
        found = FoundStart(str(path), "tuned", tuple(ids), _model_record(result.get("model")),
                    str(vectors) if vectors.is_file() else None, method)  # fmt: skip
        return template, result.get("relation"), found
    for name in EXPORT_MANIFESTS:
        if names_file(path / name):
            data = parse_json(
                read_text(path / name, "export manifest", "--template"), str(path / name)
            )
            if isinstance(data, dict) and data.get("kind") == EXPORT_KIND:
                template, ids = _export_template(data, str(path))
                found = FoundStart(str(path), "export", ids, _model_record(data.get("model")))
                return template, data.get("relation"), found
    return None


def has_found(task) -> bool:
    """Something found to start from: a found prompt's file, or trigger slots fixed to tokens."""
    if task.found is not None:
        return bool(task.found.token_ids or task.found.vectors)
    return bool(task.template.num_triggers) and task.open_triggers == 0


def resolve_init(config, task) -> str:
    """``--init auto``: ``found`` where the template found something, else ``vocab``."""
    if config.init != "auto":
        return config.init
    return "found" if has_found(task) else "vocab"


def found_ids(task) -> list[int]:
    """The found prompt's token ids: the file's, or the template's fixed triggers."""
    if task.found is not None and task.found.token_ids:
        return list(task.found.token_ids)
    ids = task.template.trigger_ids
    return [int(i) for i in ids] if ids and all(i is not None for i in ids) else []


def check_init(config, task) -> None:
    """``--init found`` needs something found: refused in one line before the model loads."""
    from autoprompt_py.tune.config import VECTOR_METHODS

    if config.method not in VECTOR_METHODS or resolve_init(config, task) != "found":
        return
    if not has_found(task):
        raise AutopromptError(
            f"--init found: the template {shown(task.template.source)} found nothing to start "
            "from; pass a search result (or an exported prompt, or a tuned folder) as "
            "--template, or use --init text --init-text WORDS"
        )


def _same_name(a: str | None, b: str | None) -> bool:
    from autoprompt_py.default_model import is_default_model

    if a == b or (is_default_model(a) and is_default_model(b)):
        return True
    try:
        return a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)
    except (OSError, ValueError):
        return False


def check_found_model(found: FoundStart | None, lm) -> None:
    """A prompt found with one model is refused on another, naming both."""
    if found is None or not found.model:
        return
    want = found.model
    sizes = [(want.get(k), v) for k, v in (("vocab_size", int(lm.embeddings.shape[0])),
             ("embedding_size", int(lm.embeddings.shape[1])))]  # fmt: skip
    if not _same_name(want.get("name"), lm.name) or any(w is not None and w != h for w, h in sizes):
        verb = {"search": "searched", "export": "exported", "tuned": "tuned"}[found.origin]
        raise AutopromptError(
            f"--template {found.source}: {verb} with --model {want.get('name')}, not --model "
            f"{lm.name}; pass --model {want.get('name')}, or search again with {lm.name}"
        )
