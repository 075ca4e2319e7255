"""A model folder's own code runs only when the user says so (``--trust-remote-code``).

transformers runs Python shipped beside a model when its ``config.json`` (or
``tokenizer_config.json``) names classes in an ``auto_map``, and for a ``model_type`` it does
not know it may ask on the terminal whether to run that code. autoprompt passes
``trust_remote_code`` explicitly at every load (False unless asked), so nothing is ever asked
and standard input is never read; and before any load it reads those JSON files itself and
refuses, in one line, a model that needs code of its own. Models loaded with trust are
remembered for the process, and every result file records them (``results.provenance``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from autoprompt_py.default_model import is_default_model
from autoprompt_py.errors import AutopromptError
from autoprompt_py.textfile import parse_json, read_bytes, read_text

FLAG = "--trust-remote-code"
# what the process ran with trust: name -> {"model", "revision", "code"} (results record it)
_TRUSTED: dict[str, dict[str, Any]] = {}


def check_remote_code(name: str | Path | None, trust_remote_code: bool = False) -> None:
    """Refuse, before anything of it is imported, a model that needs its own code, unless
    ``trust_remote_code``. ``name`` is a local folder or a hub id (read from the local
    cache when there; an id not cached is refused by transformers itself, which is passed
    ``trust_remote_code=False``)."""
    if is_default_model(name):
        return
    files = _json_files(str(name))
    if files is None:
        return
    if trust_remote_code:
        folder = Path(str(name)).expanduser()
        missing = missing_code(folder, *files) if folder.is_dir() else None
        if missing is not None:
            raise AutopromptError(f"--model {name}: {missing}")
        return
    asks = needs_code(*files)
    if asks is not None:
        raise AutopromptError(refusal(str(name), asks))


def needs_code(config: dict, tokenizer_config: dict | None = None) -> str | None:
    """What code a model's JSON files ask for (a phrase naming the class), or None."""
    for cfg, where, auto in (
        (config, "config.json", "AutoModelForMaskedLM"),
        (tokenizer_config or {}, "tokenizer_config.json", "AutoTokenizer"),
    ):
        auto_map = cfg.get("auto_map")
        if isinstance(auto_map, dict) and auto_map:
            ref = auto_map.get(auto, next(iter(auto_map.values())))
            if isinstance(ref, list | tuple):  # AutoTokenizer: [slow, fast]
                ref = next((r for r in reversed(ref) if r), None)
            if isinstance(ref, str) and "." in ref:
                module, cls = ref.rsplit(".", 1)
                return f"{cls} from {module.split('--')[-1]}.py, named by auto_map in {where}"
            return f"the code named by auto_map in {where}"
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type and not _known_model_type(model_type):
        import transformers

        arch = (config.get("architectures") or [None])[0]
        what = f"{arch} of " if isinstance(arch, str) else ""
        return (
            f"{what}model_type {model_type!r} in config.json, which transformers "
            f"{transformers.__version__} does not have (a newer transformers may)"
        )
    return None


def missing_code(folder: Path, config: dict, tokenizer_config: dict | None = None) -> str | None:
    """What a local folder lacks of the code its ``auto_map`` names (a phrase naming the
    file and the folder), or None. transformers would say the file is missing from a hub
    address built from the folder's path; the fix is in the folder."""
    for cfg, where in ((config, "config.json"), (tokenizer_config or {}, "tokenizer_config.json")):
        auto_map = cfg.get("auto_map")
        refs = auto_map.values() if isinstance(auto_map, dict) else ()
        for ref in refs:
            for r in ref if isinstance(ref, list | tuple) else [ref]:
                # "repo--module.Class" is code of another hub repository, not of the folder
                if isinstance(r, str) and "." in r and "--" not in r:
                    file = f"{r.rsplit('.', 1)[0]}.py"
                    if not (folder / file).exists():
                        return missing_file(folder, file, f"auto_map in {where} names it")
    return None


def missing_file(folder: Path | str, file: str, why: str) -> str:
    return (
        f"the folder {folder} has no {file} ({why}); put the model's code files beside its "
        "config.json, as they were saved"
    )


def local_load_failure(reason: str, folder: str) -> str | None:
    """transformers' message for a code file a local folder lacks (one that the model's code
    imports), said of the folder rather than of a hub address built from its path."""
    found = re.search(r"(?:have a file named |No such file or directory: ')([^\s']+?\.py)", reason)
    if found is None:
        return None
    return missing_file(folder, Path(found.group(1)).name, "the model's code imports it")


def refusal(name: str, asks: str) -> str:
    return (
        f"--model {name}: this model needs code of its own ({asks}); autoprompt never runs a "
        f"model's code unless asked: read that code, then pass {FLAG} "
        "(Python: trust_remote_code=True)"
    )


def remember_trusted(name: str, source: str) -> None:
    """Record a model loaded with trust: its revision (the hub commit, where there is one)
    and, for a local folder, a SHA-256 of each of its ``.py`` files."""
    folder = Path(source).expanduser()
    code = {}
    if folder.is_dir():
        code = {p.name: _sha256(p) for p in sorted(folder.glob("*.py")) if p.is_file()}
    revision = None
    if not folder.exists():  # a hub id: its files lie in the cache under snapshots/<commit>/
        cached = _cached(name, "config.json")
        revision = cached.parent.name if cached is not None else None
    _TRUSTED[name] = {"model": name, "revision": revision, "code": code}


def provenance() -> dict[str, Any]:
    """What result files add once the process loaded a model with trust (else nothing):
    code once imported can change anything the process computes after."""
    if not _TRUSTED:
        return {}
    return {"trust_remote_code": True, "trusted_models": list(_TRUSTED.values())}


def metadata() -> dict[str, str]:
    """``provenance()`` as safetensors metadata (string values)."""
    return {key: json.dumps(value) for key, value in provenance().items()}


def _json_files(name: str) -> tuple[dict, dict | None] | None:
    """(config.json, tokenizer_config.json or None) of a local folder, or of a hub id in
    the local cache; None when there is no config.json to read (transformers then fails or
    downloads it, never running code: it is passed trust_remote_code=False)."""
    folder = Path(name).expanduser()
    if folder.exists():
        config, tokenizer = folder / "config.json", folder / "tokenizer_config.json"
    else:
        config, tokenizer = _cached(name, "config.json"), _cached(name, "tokenizer_config.json")
    data = _read(config)
    return None if data is None else (data, _read(tokenizer))


def _cached(name: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, filename)
    except Exception:  # not a valid repo id: nothing cached
        return None
    return Path(found) if isinstance(found, str) else None


def _read(path: Path | None) -> dict | None:
    if path is None or not path.exists():
        return None
    data = parse_json(read_text(path, "model file"), str(path))
    return data if isinstance(data, dict) else None


def _known_model_type(model_type: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def _sha256(path: Path) -> str:
    return hashlib.sha256(read_bytes(path, "model code file")).hexdigest()
