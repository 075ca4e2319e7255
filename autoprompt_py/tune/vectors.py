"""The trained prompt vectors as one safetensors file, in ``export --format embeddings``'s layout."""

from __future__ import annotations

import json
from pathlib import Path

EMBEDDINGS_FILE = "embeddings.safetensors"
TUNE_KIND = "autoprompt-tune"


def write_embeddings(folder: Path, lm, template, vectors) -> dict[str, str]:
    """``embeddings.safetensors`` as ``export --format embeddings`` lays it out."""
    from safetensors.torch import save_file

    from autoprompt_py import remote_code
    from autoprompt_py.prompt import model_record
    from autoprompt_py.results import provenance

    head = provenance("tune", {"format": "embeddings", "model": lm.name})
    metadata = {
        "kind": TUNE_KIND,
        "format": "embeddings",
        "template": template.render(),
        "model": lm.name,
        "model_record": json.dumps(model_record(lm)),
        "created": head["created"],
        "versions": json.dumps(head["versions"]),
        **remote_code.metadata(),  # models whose own code ran (--trust-remote-code)
    }
    tensors = {"embeddings": vectors.to(lm.dtype).cpu().contiguous()}
    save_file(tensors, str(folder / EMBEDDINGS_FILE), metadata=metadata)
    return {EMBEDDINGS_FILE: "the trained vectors [n, E], one per [T] slot, template in metadata"}


def read_embeddings(path: str | Path):
    """The ``embeddings`` tensor [n, E] of a tuned folder's (or an export's) safetensors file;
    a truncated or damaged file, or one without that tensor, is one line naming it."""
    from safetensors.torch import load_file

    from autoprompt_py.textfile import load_with

    def embeddings(path: Path):
        return load_file(str(path))["embeddings"]

    fix = "run autoprompt tune again, or give another folder"
    return load_with(path, embeddings, "safetensors file", fix)
