"""Where an interrupted ``predict`` stands: ``<output>.partial`` holds the rows written, and
``<output>.partial.json`` the run's identity (config, model, input) and how many input rows
and bytes of the partial file were saved after the last whole window."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

from autoprompt_py.errors import AutopromptError, shown
from autoprompt_py.prediction.config import PredictConfig
from autoprompt_py.textfile import open_binary, read_text, regular_file


def run_identity(
    config: PredictConfig, data: str, model: str | list[str], dtype: str, fmt: str
) -> dict:
    """What a partial output must match to be resumed: the config, model (several: every
    one's name) and input."""
    ident = {"config": asdict(config), "model": model, "dtype": dtype, "format": fmt}
    if data != "-":
        path = Path(data)
        st = path.stat()
        with open_binary(path, "data file") as f:
            head = hashlib.sha256(f.read(1 << 20)).hexdigest()
        ident["input"] = {"path": str(path.resolve()), "bytes": st.st_size, "sha256_1mb": head}
    return json.loads(json.dumps(ident))  # plain JSON: tuples as lists, as read back


def _mismatch(saved: dict, now: dict) -> str | None:
    for key, what in (("input", "input file"), ("model", "model"), ("dtype", "dtype")):
        if saved.get(key) != now.get(key):
            return f"it was made from another {what} ({shown(saved.get(key))})"
    if saved.get("format") != now.get("format"):
        return f"it is in another format ({saved.get('format')})"
    old, new = saved.get("config", {}), now.get("config", {})
    for key in new:
        if old.get(key) != new.get(key):
            return f"its {key} was {shown(old.get(key))}, now {shown(new.get(key))}"
    return None


def resume_point(target: Path, identity: dict) -> dict | None:
    """The saved record of the partial output (rows read, bytes kept), checked against this
    run; None when no window was saved yet (the run starts over)."""
    sidecar, partial = sidecar_path(target), partial_path(target)
    fix = "pass --force to start over"
    try:  # a FIFO or a folder in their place: refused unopened, by name
        if partial.exists():
            regular_file(partial, "partial output")
        if not sidecar.exists():
            return None
        text = read_text(sidecar, "record of the partial output")
    except AutopromptError as e:
        raise AutopromptError(f"--resume: {e}; {fix}") from None
    try:
        saved = json.loads(text)
        point = {k: int(saved[k]) for k in ("read", "bytes", "rows", "skipped")}
        made_by = saved.get("identity", {})
        if not isinstance(made_by, dict):
            raise TypeError(made_by)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise AutopromptError(
            f"--resume: {sidecar} is damaged ({type(e).__name__}); {fix}"
        ) from None
    why = _mismatch(made_by, identity)
    if why:
        raise AutopromptError(
            f"--resume: {partial_path(target)} is not this run's ({why}); {fix}, or rerun with the "
            "options it was made with"
        )
    have = partial.stat().st_size if partial.exists() else 0
    if have < point["bytes"]:
        raise AutopromptError(
            f"--resume: {partial_path(target)} holds {have} bytes, fewer than the "
            f"{point['bytes']} its record says were saved; {fix}"
        )
    return point


def partial_path(target: Path) -> Path:
    return target.with_name(target.name + ".partial")


def sidecar_path(target: Path) -> Path:
    return target.with_name(target.name + ".partial.json")


def save_point(
    target: Path, identity: dict, read: int, rows: int, skipped: int, offset: int
) -> None:
    """Record, atomically, that the first ``offset`` bytes of the partial file hold the rows
    of the first ``read`` input rows."""
    state = {"identity": identity, "read": read, "rows": rows, "skipped": skipped, "bytes": offset}
    tmp = sidecar_path(target).with_suffix(".tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp, sidecar_path(target))
