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
from autoprompt_py.results import check_output_path
from autoprompt_py.tune.vectors import EMBEDDINGS_FILE, TUNE_KIND

RESULT_FILE = "result.json"


def check_output_folder(output: str | Path, force: bool = False) -> Path:
    """Fail before any work when the folder cannot be written or exists without ``force``."""
    target = check_output_path(output, "--output", folder=True)
    if target.exists() and not target.is_dir():
        raise AutopromptError(f"--output {output} is a file; tune writes a folder: choose another")
    if target.exists() and not force:
        raise AutopromptError(
            f"--output {output} already exists; pass --resume to continue its run, --force to "
            "replace it, or choose another folder"
        )
    return target


def write_folder(target: Path, force: bool, part, result: dict) -> Path:
    from autoprompt_py.distributed import is_main
    from autoprompt_py.export import _staged_folder
    from autoprompt_py.results import write_json

    if not is_main():  # under torchrun rank 0 writes; the others hold the same weights
        return target

    with _staged_folder(target, force) as tmp:
        files = part.save(tmp)
        result["files"] = {**files, RESULT_FILE: "this record"}
        write_json(tmp / RESULT_FILE, result)
    return target


def read_tuned(folder: str | Path) -> dict | None:
    """The ``result.json`` of a tuned folder, or None when ``folder`` is not one."""
    path = Path(folder)
    try:
        if not (path / RESULT_FILE).is_file():
            return None
    except (OSError, ValueError):
        return None
    from autoprompt_py.results import read_json

    data = read_json(path / RESULT_FILE, "tune result")
    return data if isinstance(data, dict) and data.get("kind") == TUNE_KIND else None


def tuned_templates(spec: str):
    """``--template TUNED_FOLDER``: its template as a ``NamedTemplate`` (soft: the slots as
    vector ids past the tuned model's vocabulary), or None when ``spec`` is no tuned folder."""
    result = read_tuned(spec)
    if result is None:
        return None
    from autoprompt_py.resources import NamedTemplate
    from autoprompt_py.template import parse_template

    template = parse_template(result["template"])
    if result["method"] == "soft":
        from autoprompt_py.tune.methods.soft import vector_template

        template = vector_template(template, int(result["model"]["vocab_size"]))
    elif result["method"] == "head":
        raise AutopromptError(
            f"--template {spec}: a classification head (--method head) reads no prompt; its "
            "dev and test metrics are in its result.json"
        )
    elif template.num_triggers:  # a search result's triggers, fixed while the model trained
        template = template.with_triggers(result["trigger_ids"], result.get("trigger_tokens"))
    return [NamedTemplate(Path(spec).name, template, result.get("relation"))]


def load_templates_or_tuned(spec: str, option: str = "--template"):
    """``resources.load_templates``, or a tuned folder's template."""
    from autoprompt_py.resources import load_templates

    return tuned_templates(spec) or load_templates(spec, option)


def attach_tuned(lm, specs):
    """The model to score ``specs`` (``--template`` values) with: for a ``soft`` folder, ``lm``
    with its vectors; a folder of another model is refused."""
    from autoprompt_py.prompt import model_record

    tuned = [(s, r) for s in specs if (r := read_tuned(s)) is not None]
    if not tuned:
        return lm
    changing = [(s, r) for s, r in tuned if r["method"] != "full"]
    if len(changing) > 1:
        raise AutopromptError("--template: give one tuned prompt folder per run")
    for spec, result in tuned:
        want, have = result["model"], model_record(lm)
        if result["method"] == "full":
            if Path(lm.name).resolve() != Path(spec).resolve():
                raise AutopromptError(
                    f"--template {spec}: the prompt was trained with the whole model, which "
                    f"the folder holds; pass --model {spec}"
                )
        elif (want["vocab_size"], want["embedding_size"], want["name"]) != (
            have["vocab_size"],
            have["embedding_size"],
            have["name"],
        ):
            raise AutopromptError(
                f"--template {spec}: tuned for --model {want['name']} (vocabulary "
                f"{want['vocab_size']}, embeddings {want['embedding_size']}), not {lm.name}; "
                f"pass --model {want['name']}"
            )
    if not changing:
        return lm
    spec, result = changing[0]
    if result["method"] == "prefix":
        from autoprompt_py.tune.methods.peft_methods import PrefixLM, require_peft

        peft = require_peft("prefix")
        return PrefixLM(lm, peft.PeftModel.from_pretrained(lm.model, spec))
    if result["method"] == "lora":
        from autoprompt_py.tune.methods.peft_methods import require_peft

        peft = require_peft("lora")
        peft.PeftModel.from_pretrained(lm.model, spec)  # the LoRA layers go into lm.model
        return lm
    from safetensors.torch import load_file

    vectors = load_file(str(Path(spec) / EMBEDDINGS_FILE))["embeddings"].to(lm.device)
    if result["method"] == "soft":
        from autoprompt_py.tune.methods.soft import SoftPromptLM

        return SoftPromptLM(lm, vectors)
    from autoprompt_py.tune.methods.peft_methods import PrependLM

    return PrependLM(lm, vectors)
