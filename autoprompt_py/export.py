"""Found prompt → soft-prompt seeds: a PEFT prompt-tuning adapter, OptiPrompt vectors, or a
safetensors file of embeddings.

Every export holds exactly the input-embedding rows of the prompt's tokens, in order
(``FoundPrompt.embeddings``), and a record of where they came from. Writes are atomic: the
output is built in a temporary folder (or file) beside the target and renamed into place, so
a failed export leaves nothing behind; an existing target is replaced only with ``force``.

* ``peft``: ``adapter_config.json`` (a ``PromptTuningConfig``: task type
  ``FEATURE_EXTRACTION``, whose PEFT model prepends the virtual tokens to the input and
  returns the masked LM's own output; ``CAUSAL_LM`` for a decoder; ``num_virtual_tokens`` = the token count; ``token_dim``
  = the input embedding size, 128 for ALBERT-base rather than its hidden size) and
  ``adapter_model.safetensors`` (``prompt_embeddings``, float32), written directly rather than
  by PEFT's text initialization, which would tokenize with special tokens added. The config
  records ``prompt_tuning_init="TEXT"`` with the prompt's text for readability; PEFT never
  re-runs it when loading (``PeftModel.from_pretrained`` loads in inference mode, and
  ``load_peft_seed`` skips it), so the weights are always the ones written here.
* ``optiprompt``: ``template.txt`` with ``[X]``, ``[Y]`` and one ``[Vi]`` per exported token,
  ``vectors.npy`` ([n, E] float32, rows in order), ``token_ids.json``, ``manifest.json``, and
  for n ≤ 10 ``prompt_vecs.npy`` in OptiPrompt's own layout (10 rows, unused rows zero).
* ``embeddings``: one safetensors file with ``embeddings`` [n, E] (the model's dtype) and
  ``token_ids`` (int64), and string metadata: template, prompt, tokens, model, created, versions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprompt_py import remote_code
from autoprompt_py.errors import AutopromptError
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.model import config_value
from autoprompt_py.prompt import FoundPrompt, model_record
from autoprompt_py.results import (
    atomic_write,
    check_output_path,
    claim_output,
    provenance,
    read_json,
    staged_folder,
)
from autoprompt_py.textfile import check_safetensors

FORMATS = ("peft", "optiprompt", "embeddings")
PEFT_INSTALL = "pip install autoprompt-py[peft]"
MANIFEST_KIND = "autoprompt-export"
PEFT_MANIFEST = "autoprompt_export.json"
OPTIPROMPT_MAX_VECTORS = 10  # OptiPrompt's MAX_NUM_VECTORS: the [V] tokens it adds


def require_peft() -> Any:
    """The ``peft`` module, or a user error saying how to install it."""
    try:
        import peft
    except ImportError:
        raise AutopromptError(
            f"--format peft needs the PEFT library, which is not installed: {PEFT_INSTALL}"
        ) from None
    return peft


def check_target(out: str | Path, force: bool, fmt: str) -> Path:
    """Fail before any work when ``out`` cannot be written: a missing parent folder, an existing
    target without ``force``, or a file where a folder goes (and the reverse)."""
    if fmt not in FORMATS:
        raise AutopromptError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    wants_folder = fmt != "embeddings"
    resolved = check_output_path(out, "--out", folder=True)  # a symlink is followed
    given, out = Path(out).expanduser(), resolved
    if out.exists() or out.is_symlink():
        if out.is_dir() != wants_folder:
            what = "a folder" if out.is_dir() else "a file"
            need = "a folder" if wants_folder else "one .safetensors file"
            raise AutopromptError(
                f"--out {given} is {what}, but --format {fmt} writes {need}; choose another --out"
            )
    if not wants_folder and given.suffix.lower() != ".safetensors":  # not safetensors as e.npy
        raise AutopromptError(
            f"--out {given}: --format embeddings writes one safetensors file; name it "
            f"{given.with_suffix('.safetensors').name}"
        )
    # the one output decision of every command: an existing --out only with --force
    claim_output(given, "--out", force=force, folder=wants_folder)
    return out


def export_prompt(
    prompt: FoundPrompt, lm: LanguageModel, fmt: str, out: str | Path, force: bool = False
) -> Path:
    """Write ``prompt`` in one of ``FORMATS``; returns the path written."""
    writer = {"peft": to_peft, "optiprompt": to_optiprompt, "embeddings": to_embeddings}
    if fmt not in writer:
        raise AutopromptError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    return writer[fmt](prompt, lm, out, force=force)


def manifest(prompt: FoundPrompt, lm: LanguageModel, fmt: str, files: dict[str, str]) -> dict:
    """What an export folder records: the prompt, the model, and the usual provenance."""
    head = provenance(
        "export",
        {"format": fmt, "tokens": prompt.selection, "source": prompt.source, "model": lm.name},
    )
    return {
        "kind": MANIFEST_KIND,
        "format": fmt,
        **prompt.describe(),
        "model": model_record(lm),
        "files": files,
        **head,
    }


# ------------------------------------------------------------------------------------ PEFT


def to_peft(
    prompt: FoundPrompt, lm: LanguageModel, folder: str | Path, force: bool = False
) -> Path:
    """A prompt-tuning adapter folder that ``PeftModel.from_pretrained(base, folder)`` loads,
    whose virtual-token embeddings are the prompt's token embeddings."""
    peft = require_peft()
    from safetensors.torch import save_file

    target = check_target(folder, force, "peft")
    prompt.check_model(lm)
    vectors = prompt.embeddings(lm).float().contiguous()
    config = lm.model.config
    peft_config = peft.PromptTuningConfig(
        task_type=lm.peft_task_type(peft, "prompt"),  # a decoder's: PeftModelForCausalLM
        num_virtual_tokens=len(prompt),
        token_dim=int(vectors.shape[1]),
        num_transformer_submodules=1,
        num_layers=config_value(config, "num_hidden_layers", "n_layers", "num_layers"),
        num_attention_heads=config_value(config, "num_attention_heads", "n_heads"),
        prompt_tuning_init="TEXT",
        prompt_tuning_init_text=prompt.text,
        tokenizer_name_or_path=lm.name,
        base_model_name_or_path=lm.name,
        inference_mode=True,  # as PeftModel.save_pretrained writes it
    )
    with staged_folder(target, force) as tmp:
        peft_config.save_pretrained(str(tmp))
        save_file(
            {"prompt_embeddings": vectors},
            str(tmp / "adapter_model.safetensors"),
            metadata={"format": "pt"},
        )
        info = manifest(
            prompt,
            lm,
            "peft",
            {
                "adapter_config.json": "PEFT PromptTuningConfig",
                "adapter_model.safetensors": "prompt_embeddings [num_virtual_tokens, token_dim]",
            },
        )
        info["versions"]["peft"] = getattr(peft, "__version__", "unknown")
        _write_json(tmp / PEFT_MANIFEST, info)
    return target


def load_peft_seed(base_model: torch.nn.Module, folder: str | Path, adapter_name: str = "default"):
    """A trainable PEFT model starting from an exported adapter (``PeftModel.from_pretrained``
    loads prompt-learning adapters frozen only).

    The base model's own weights stay frozen; only the virtual-token embeddings train.
    """
    peft = require_peft()
    fix = "export the prompt again with 'autoprompt export --format peft'"
    read_json(Path(folder) / "adapter_config.json", "PEFT adapter config")
    check_safetensors(Path(folder) / "adapter_model.safetensors", fix=fix)
    config = peft.PeftConfig.from_pretrained(str(folder))
    init = config.prompt_tuning_init
    config.inference_mode = False
    config.prompt_tuning_init = "RANDOM"  # the weights come from the folder, not from text
    model = peft.get_peft_model(base_model, config, adapter_name=adapter_name)
    config.prompt_tuning_init = init
    # the prompt encoder loads its own weights (PEFT reports it among load_state_dict's
    # missing keys all the same, so that list says nothing here)
    peft.set_peft_model_state_dict(
        model, peft.load_peft_weights(str(folder)), adapter_name=adapter_name
    )
    return model


# ------------------------------------------------------------------------------ OptiPrompt


def to_optiprompt(
    prompt: FoundPrompt, lm: LanguageModel, folder: str | Path, force: bool = False
) -> Path:
    """OptiPrompt's starting point: the dense template and the vectors its ``[Vi]`` start from."""
    target = check_target(folder, force, "optiprompt")
    prompt.check_model(lm)
    vectors = prompt.embeddings(lm).float().numpy()
    names = prompt.vector_names()
    files = {
        "template.txt": "the template with [X], [Y] and one [Vi] per exported token",
        "vectors.npy": f"float32 [{len(prompt)}, {vectors.shape[1]}]: row i starts [V{{i+1}}]",
        "token_ids.json": "the token each [Vi] starts from",
        "manifest.json": "this record",
    }
    if len(prompt) <= OPTIPROMPT_MAX_VECTORS:
        files["prompt_vecs.npy"] = (
            f"OptiPrompt's own layout: {OPTIPROMPT_MAX_VECTORS} rows for [V1]..[V10], rows "
            f"after {len(prompt)} zero"
        )
    with staged_folder(target, force) as tmp:
        (tmp / "template.txt").write_text(prompt.optiprompt_template() + "\n", encoding="utf-8")
        np.save(tmp / "vectors.npy", vectors)
        if len(prompt) <= OPTIPROMPT_MAX_VECTORS:
            padded = np.zeros((OPTIPROMPT_MAX_VECTORS, vectors.shape[1]), dtype=np.float32)
            padded[: len(prompt)] = vectors
            np.save(tmp / "prompt_vecs.npy", padded)
        _write_json(
            tmp / "token_ids.json",
            {
                "vectors": names,
                "ids": list(prompt.token_ids),
                "tokens": list(prompt.tokens),
            },
        )
        info = manifest(prompt, lm, "optiprompt", files)
        info["optiprompt_template"] = prompt.optiprompt_template()
        _write_json(tmp / "manifest.json", info)
    return target


# ------------------------------------------------------------------------------ safetensors


def to_embeddings(
    prompt: FoundPrompt, lm: LanguageModel, file: str | Path, force: bool = False
) -> Path:
    """One safetensors file: ``embeddings`` [n, E], ``token_ids`` [n], string metadata."""
    from safetensors.torch import save_file

    target = check_target(file, force, "embeddings")
    prompt.check_model(lm)
    tensors = {
        "embeddings": prompt.embeddings(lm).contiguous(),
        "token_ids": torch.tensor(prompt.token_ids, dtype=torch.long),
    }
    head = provenance(
        "export",
        {
            "format": "embeddings",
            "tokens": prompt.selection,
            "source": prompt.source,
            "model": lm.name,
        },
    )
    metadata = {
        "kind": MANIFEST_KIND,
        "format": "embeddings",
        "template": prompt.template.render(),
        "chat": json.dumps(prompt.describe()["chat"], ensure_ascii=False),
        "prompt": prompt.prompt,
        "tokens": json.dumps(list(prompt.tokens), ensure_ascii=False),
        "token_ids": json.dumps(list(prompt.token_ids)),
        "text": prompt.text,
        "selection": prompt.selection,
        "source": prompt.source,
        "model": lm.name,
        "model_record": json.dumps(model_record(lm)),
        "created": head["created"],
        "versions": json.dumps(head["versions"]),
        **remote_code.metadata(),  # models whose own code ran (--trust-remote-code)
    }

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=metadata)

    atomic_write(target, write)
    return target


# ------------------------------------------------------------------------------ helpers


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
