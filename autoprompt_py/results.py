"""Result files: written atomically, with the config, seed and library versions inside."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autoprompt_py.errors import AutopromptError


def versions() -> dict[str, str]:
    """Versions of the libraries that decide a result."""
    import numpy
    import torch
    import transformers

    import autoprompt_py

    return {
        "autoprompt_py": autoprompt_py.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def provenance(command: str, config: dict[str, Any]) -> dict[str, Any]:
    """The header every result file starts with (with the processes that made it)."""
    from autoprompt_py.distributed import describe

    return {
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        **describe(),
        "versions": versions(),
    }


def check_output_path(path: str | Path | None) -> None:
    """Fail early, before any work, when the output cannot be written."""
    if path is None:
        return
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise AutopromptError(
            f"--output {path}: the folder {parent} does not exist; create it first"
        )


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename tmp over ``path``: readers never see half a file.

    Under torch.distributed only rank 0 writes; the other ranks hold the same content."""
    from autoprompt_py.distributed import is_main

    if not is_main():
        return
    path = Path(path).expanduser()
    check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; a result file is for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: Any) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    atomic_write(path, write)


def read_json(path: str | Path, what: str = "result") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AutopromptError(f"{path}: no such {what} file") from None
    except json.JSONDecodeError as e:
        raise AutopromptError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
