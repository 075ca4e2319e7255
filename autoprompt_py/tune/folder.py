"""The output folder of ``tune``, and reading it back for ``score`` / ``probe``.

Beside ``result.json`` (kind ``autoprompt-tune``) a folder holds the trained weights in the
format their consumer loads: a ``save_pretrained`` model folder for ``full`` and ``head``
(``--model FOLDER``), and for ``soft`` the trained vectors as ``embeddings.safetensors`` in the
layout ``export --format embeddings`` writes (``embeddings`` [n, E], the template in the
metadata). It is written in a temporary folder and renamed into place: never half-written.
"""

from __future__ import annotations

from pathlib import Path

from autoprompt_py.errors import AutopromptError
from autoprompt_py.results import claim_output
from autoprompt_py.textfile import check_safetensors, names_file, regular_file
from autoprompt_py.tune.vectors import TUNE_KIND

RESULT_FILE = "result.json"


def check_output_folder(
    output: str | Path, *, force: bool = False, resume: bool = False, searching: bool = False
) -> Path:
    """Fail before any work when the folder cannot be written, or exists (or an interrupted
    run left its checkpoint ``<output>.ckpt``) without ``force`` or ``resume``; ``resume``
    needs the checkpoint. ``searching``: a search comes first (``pipeline.py``), whose
    checkpoint ``<output>.search.json.ckpt`` is resumable too. Under torchrun rank 0 decides
    for every rank."""
    if Path(output).is_file():
        raise AutopromptError(f"--output {output} is a file; tune writes a folder: choose another")
    partials = [checkpoint_path(output)]
    if searching:
        partials.append(search_checkpoint_path(output))
    claim = claim_output(output, force=force, resume=resume, partials=partials, folder=True)
    assert claim.target is not None
    return claim.target


def checkpoint_path(output: str | Path) -> Path:
    """Where a run saves its state to resume: ``<output>.ckpt``, beside the folder."""
    return Path(str(output) + ".ckpt")


def search_result_path(output: str | Path) -> Path:
    """Where a search before tuning writes its result: ``<output>.search.json``, beside."""
    return Path(str(output).rstrip("/\\") + ".search.json")


def search_checkpoint_path(output: str | Path) -> Path:
    """The state of that search, which ``--resume`` continues: ``<output>.search.json.ckpt``."""
    return Path(str(search_result_path(output)) + ".ckpt")


def write_folder(target: Path, force: bool, part, result: dict) -> Path:
    from autoprompt_py.distributed import is_main
    from autoprompt_py.results import staged_folder, write_json

    if not is_main():  # under torchrun rank 0 writes; the others hold the same weights
        return target

    with staged_folder(target, force, "--output") as tmp:
        files = part.save(tmp)
        result["files"] = {**files, RESULT_FILE: "this record"}
        write_json(tmp / RESULT_FILE, result)
    return target


def read_tuned(folder: str | Path) -> dict | None:
    """The ``result.json`` of a tuned folder, or None when ``folder`` is not one."""
    path = Path(folder)
    if not names_file(path / RESULT_FILE):  # a FIFO there is named by read_json, unopened
        return None
    from autoprompt_py.results import read_json

    data = read_json(path / RESULT_FILE, "tune result")
    if not isinstance(data, dict) or data.get("kind") != TUNE_KIND:
        return None
    check_tuned(path, data)
    return data


def check_tuned(folder: Path, result: dict) -> None:
    """A tuned folder is whole before anything reads it: its record names a known method and
    a template, and every file it lists (and every safetensors file in it) is there and
    readable. A damaged one is one line naming the file, never a loader's traceback."""
    from autoprompt_py.tune.config import METHODS

    fix = "run autoprompt tune again, or give another folder"
    where = folder / RESULT_FILE
    for key in ("method", "template"):
        if not isinstance(result.get(key), str):
            raise AutopromptError(f"{where}: no {key!r}; not a whole tune record: {fix}")
    if result["method"] not in METHODS:
        raise AutopromptError(
            f"{where}: method {result['method']!r} is none of {', '.join(METHODS)}; {fix}"
        )
    files = result.get("files") if isinstance(result.get("files"), dict) else {}
    listed = [folder / n for n in files if "." in n and n != RESULT_FILE]  # "model": a folder
    for path in dict.fromkeys([*listed, *sorted(folder.glob("*.safetensors"))]):
        try:
            size = path.stat().st_size
        except OSError as e:
            raise AutopromptError(f"{path}: {e.strerror} (the folder lists it); {fix}") from None
        regular_file(path, "file the folder lists", fix=fix)  # a FIFO: refused unopened
        if size == 0:
            raise AutopromptError(f"{path}: an empty file (0 bytes); {fix}")
        if path.suffix == ".json":
            from autoprompt_py.results import read_json

            read_json(path, "tuned folder")
        elif path.suffix == ".safetensors":
            check_safetensors(path, fix=fix)


def tuned_templates(spec: str):
    """``--template TUNED_FOLDER``: its template as a ``NamedTemplate`` (soft: the slots as
    vector ids past the tuned model's vocabulary), or None when ``spec`` is no tuned folder."""
    result = read_tuned(spec)
    if result is None:
        return None
    from autoprompt_py.resources import NamedTemplate
    from autoprompt_py.template import Chat, parse_template
    from autoprompt_py.tune.methods import method_module

    template = parse_template(result["template"])
    template = method_module(result["method"]).tuned_template(template, result, spec)
    template = template.in_chat(Chat.from_record(result.get("chat"), f"{spec}/{RESULT_FILE}"))
    return [NamedTemplate(Path(spec).name, template, result.get("relation"))]


def check_model_folder(model: str | None) -> None:
    """``--model TUNED_FOLDER``: right where the folder is a model (``full``); a prompt
    folder (soft, PEFT) or a head is refused, with where it goes instead."""
    result = read_tuned(model) if model else None
    if result is None:
        return
    from autoprompt_py.tune.methods import method_module

    module = method_module(result["method"])
    if not module.MODEL_FOLDER:
        raise module.not_a_model(model, result)


def load_templates_or_tuned(spec: str, option: str = "--template", kept: bool = False):
    """``resources.load_templates`` (``kept``: every trigger a search result kept), or a
    tuned folder's template."""
    from autoprompt_py.resources import load_templates

    return tuned_templates(spec) or load_templates(spec, option, kept)


def attach_tuned(lm, specs):
    """The model to score ``specs`` (``--template`` values) with: ``lm``, or ``lm`` reading a
    tuned folder's prompt (its method's ``attach``); a folder of another model is refused."""
    from autoprompt_py.tune.methods import method_module

    tuned = [(s, r, method_module(r["method"])) for s in specs if (r := read_tuned(s))]
    on_base = [(s, r, m) for s, r, m in tuned if m.ON_BASE_MODEL]
    if len(on_base) > 1:
        raise AutopromptError("--template: give one tuned prompt folder per run")
    for spec, result, module in tuned:
        if not module.ON_BASE_MODEL:
            module.attach(lm, spec, result)  # the folder is the model: checks it is --model
    if not on_base:
        return lm
    spec, result, module = on_base[0]
    return module.attach(lm, spec, result)


def prompted_model(lm, specs, model_name: str):
    """``attach_tuned`` after checking that the trigger ids of every ``--template`` that is
    not a tuned folder fit this model's vocabulary (a tuned soft prompt's slots are ids past
    it, on purpose): what ``score`` and ``probe`` run each model with."""
    from autoprompt_py.resources import check_trigger_ids, load_templates

    written = [t for s in specs if read_tuned(s) is None for t in load_templates(s, kept=True)]
    check_trigger_ids(written, lm.vocab_size, model_name, kind=lm.kind)
    return attach_tuned(lm, specs)
