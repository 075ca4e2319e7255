"""Result files: written atomically, with the config, seed and library versions inside."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from autoprompt_py.errors import AutopromptError, os_fix, warn
from autoprompt_py.textfile import parse_json, read_text, special_kind


def versions() -> dict[str, str]:
    """Versions of the libraries that decide a result."""
    import numpy
    import torch
    import transformers

    from autoprompt_py._version import __version__

    return {
        "autoprompt_py": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def provenance(command: str, config: dict[str, Any]) -> dict[str, Any]:
    """The header every result file starts with (with the processes that made it)."""
    from autoprompt_py import remote_code
    from autoprompt_py.distributed import describe

    return {
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        **describe(),
        "versions": versions(),
        **remote_code.provenance(),  # models whose own code ran (--trust-remote-code)
    }


def run_record_path(target: str | Path) -> Path:
    """Where the record of an output that has no room for one goes (predictions, a verbalizer):
    ``<output>.run.json``, with the config, versions and counts."""
    target = Path(target)
    return target.with_name(target.name + ".run.json")


def check_output_path(
    path: str | Path | None, option: str = "--output", folder: bool = False
) -> Path | None:
    """Fail early, before any work, when ``path`` cannot be written; return the path to write.

    Refused: an empty path, a folder that does not exist or cannot be written, an existing
    folder (unless ``folder``: an export folder), an existing read-only file, and anything that
    is not a regular file (``/dev/null``, a FIFO, a socket), which is never replaced. A symlink
    is followed: the file it names is the one written (atomically), and the link stays.
    """
    if path is None:
        return None
    if not str(path).strip():
        raise AutopromptError(f"{option} {str(path)!r}: an empty path; give a file name")
    if "\0" in str(path):
        raise AutopromptError(f"{option} {str(path)!r}: a path cannot hold a NUL character")
    given = Path(path).expanduser()
    target = Path(os.path.realpath(given))
    name = f"{option} {given}" + (f" (a link to {target})" if given.is_symlink() else "")
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:  # a link loop, a file used as a folder
        raise AutopromptError(f"{name}: cannot be written ({e.strerror})") from None
    if mode is not None and stat.S_ISDIR(mode) and not folder:
        raise AutopromptError(f"{name} is a folder; give a file name, e.g. {given}/out.json")
    if mode is not None and not stat.S_ISDIR(mode) and not stat.S_ISREG(mode):
        raise AutopromptError(
            f"{name} is {special_kind(mode)}, not a regular file; it is never replaced: choose a file name"
        )
    parent = target.parent
    if not parent.is_dir():
        raise AutopromptError(f"{name}: the folder {parent} does not exist; create it first")
    # os.access also says no for an immutable (chattr +i) folder or a read-only file system,
    # even to root
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AutopromptError(f"{name}: the folder {parent} is not writable; choose another folder")
    if mode is not None and stat.S_ISREG(mode) and not os.access(target, os.W_OK):
        raise AutopromptError(f"{name} is read-only; make it writable or choose another file name")
    return target


def refuse_overwrite(
    path: str | Path | None, option: str = "--output", force: bool = False, resumable: bool = False
) -> Path | None:
    """``check_output_path``, and refuse an existing file unless ``force``: a finished result
    can be hours of work, so it is never replaced silently. ``resumable`` names ``--resume``
    in the fix, for commands that can continue what the file holds. Under torchrun rank 0
    decides for every rank (``claim_output``)."""
    return claim_output(path, option, force=force, resumable=resumable).target


@dataclass(frozen=True)
class Claim:
    """What a run does with its output: ``fresh`` (nothing there), ``resume`` (continue what an
    interrupted run left) or ``replace`` (--force over an earlier result or partial files)."""

    target: Path | None
    start: str = "fresh"


def claim_output(
    path: str | Path | None,
    option: str = "--output",
    *,
    force: bool = False,
    resume: bool = False,
    resumable: bool = False,
    partials: Sequence[str | Path] = (),
    partial_option: str | None = None,
    folder: bool = False,
) -> Claim:
    """The one decision every command takes about its output before any work: fresh, resume,
    replace, or refuse (an ``AutopromptError`` saying which flag to pass).

    ``partials`` are what an interrupted run leaves beside the output (``<out>.partial``, a
    checkpoint; ``partial_option`` names the option that chose it); ``resume`` continues them.
    ``folder``: the output is a folder (tune, export). A path another live run is writing is
    refused with its pid. Under torchrun rank 0 alone looks at the files and every rank gets
    its answer: a rank that looked for itself would see what rank 0 has just begun to write.
    """
    return from_main(
        lambda: _claim(
            path,
            option,
            force,
            resume,
            resumable or bool(partials),
            partials,
            partial_option,
            folder,
        )
    )


def _claim(path, option, force, resume, resumable, partials, partial_option, folder) -> Claim:
    target = check_output_path(path, option, folder)
    if target is None:
        return Claim(None)
    # an empty folder (a checkpoint whose first save failed) holds nothing to resume
    left = [p for p in map(Path, partials) if (p.exists() or p.is_symlink()) and not _empty_dir(p)]
    for p in (target, *left):
        _refuse_if_locked(p)
    done = target.exists() or target.is_symlink()
    if folder and done and not target.is_dir():
        raise AutopromptError(f"{option} {path} is a file, not a folder; choose another path")
    if resume:
        if left:
            return Claim(target, "resume")
        if done:
            raise AutopromptError(
                f"{option} {path} is already complete; nothing to resume (pass --force to redo it)"
            )
        where = " or ".join(str(p) for p in partials) or str(path)
        raise AutopromptError(
            f"--resume: nothing to resume: no checkpoint or partial output at {where}; run "
            "without --resume to start"
        )
    if force:
        return Claim(target, "replace" if done or left else "fresh")
    if done:
        fix = "pass --resume to continue it, " if resumable and (left or not partials) else ""
        raise AutopromptError(
            f"{option} {path} already exists; {fix}pass --force to replace it, or choose "
            "another path"
        )
    if left:
        if partial_option is not None:
            raise AutopromptError(
                f"{partial_option} {left[0]} already exists; pass --resume to continue it, "
                "pass --force to replace it, or choose another path"
            )
        raise AutopromptError(
            f"{option} {path}: an interrupted run left {left[0]}; pass --resume to continue "
            "it, or --force to start over"
        )
    return Claim(target)


def _empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not any(path.iterdir())
    except OSError:
        return False


T = TypeVar("T")
_DECIDING: list[bool] = []  # non-empty while rank 0 runs a decision (from_main nests)


def from_main(decide: Callable[[], T]) -> T:
    """A decision about shared files: under torchrun rank 0 alone runs ``decide``, and every
    rank returns its answer or raises its AutopromptError; in one process, ``decide()``. A
    decision that calls another (``claim_output`` inside a command's own) is one exchange."""
    from autoprompt_py import distributed

    if not distributed.active() or _DECIDING:  # nested in a decision: rank 0 is deciding
        return decide()
    import torch.distributed as dist

    answer: list[Any] = [None]
    failure = None
    if distributed.rank() == 0:
        _DECIDING.append(True)
        try:
            answer[0] = ("ok", decide())
        except Exception as e:  # an AutopromptError is every rank's; another, rank 0's own
            failure = e
            answer[0] = ("error" if isinstance(e, AutopromptError) else "lost", str(e))
        finally:
            _DECIDING.pop()
    try:
        dist.broadcast_object_list(answer, src=0)
    except Exception as e:
        raise distributed.PeerLost(str(e).strip().splitlines()[0][:300]) from None
    if failure is not None:
        raise failure
    kind, value = answer[0]
    if kind == "error":
        raise AutopromptError(value)
    if kind != "ok":
        raise distributed.PeerLost(f"rank 0 failed: {value}")
    return value


def atomic_write(path: str | Path, write: Callable[[Path], None], option: str = "") -> None:
    """Call ``write(tmp)`` then rename tmp over ``path``: readers never see half a file.

    The target is checked as ``check_output_path`` does (a symlink is followed); a file that
    is replaced keeps its permissions.
    """
    from autoprompt_py.distributed import is_main

    if not is_main():  # under torch.distributed only rank 0 writes; the others hold the same
        return
    target = check_output_path(path, option.strip() or "output")
    assert target is not None
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()  # mkstemp makes 0600; a result file is for sharing
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise AutopromptError(f"{path}: cannot write in {target.parent} ({e.strerror})") from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as e:  # the disk filled up, the folder went read-only meanwhile
        Path(tmp).unlink(missing_ok=True)
        raise AutopromptError(f"{path}: cannot write ({e.strerror or e}){os_fix(e)}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def output_lock(*paths: str | Path | None) -> Iterator[None]:
    """Hold ``<path>.lock`` for each path while a run writes it: a second run with the same
    output is refused with the first one's pid. A lock left by a process that no longer runs
    (on this host) is taken over with a warning; the locks are removed on exit."""
    from autoprompt_py.distributed import is_main

    held: list[Path] = []
    try:
        # a folder too (tune's): the lock sits beside it
        targets = [check_output_path(p, folder=True) for p in paths if p is not None]
        if not is_main():  # under torch.distributed rank 0 writes, so rank 0 holds the locks
            targets = []
        for target in dict.fromkeys(t for t in targets if t is not None):
            lock = _take_lock(target)
            if lock is not None:
                held.append(lock)
        yield
    finally:
        for lock in reversed(held):
            if (_lock_owner(lock) or {}).get("pid") == os.getpid():
                lock.unlink(missing_ok=True)


def _take_lock(target: Path) -> Path | None:
    """The lock taken, or None when this process holds it already (the CLI locks before the
    model loads, ``run_search`` again)."""
    lock = target.with_name(target.name + ".lock")
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner and (owner.get("pid"), owner.get("host")) == (me["pid"], me["host"]):
                return None
            if _holder_alive(lock, owner):
                raise _busy(target, lock, owner) from None
            what = f"pid {owner['pid']}" if owner else "an unknown process"
            warn(f"{lock}: taking over the lock of {what}, which no longer runs")
            lock.unlink(missing_ok=True)
            continue
        except OSError as e:
            raise AutopromptError(f"{lock}: cannot create the lock file ({e.strerror})") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return lock
    raise AutopromptError(f"{lock}: another run keeps taking this lock; try again")


def _refuse_if_locked(target: Path) -> None:
    """Refuse ``target`` while another live run holds its lock (its files are being written,
    not left by an interrupted run)."""
    lock = target.with_name(target.name + ".lock")
    if not lock.exists():
        return
    owner = _lock_owner(lock)
    if owner and (owner.get("pid"), owner.get("host")) == (os.getpid(), socket.gethostname()):
        return
    if _holder_alive(lock, owner):
        raise _busy(target, lock, owner)


def _busy(target: Path, lock: Path, owner: dict | None) -> AutopromptError:
    who = (
        f"pid {owner['pid']} on {owner.get('host', '?')}, since {owner.get('started', '?')}"
        if owner
        else "a run that is starting"
    )
    return AutopromptError(
        f"{target} is being written by another run ({who}); wait for it to end "
        f"or choose another output (if that run is gone, delete {lock})"
    )


def _lock_owner(lock: Path) -> dict | None:
    try:
        owner = parse_json(read_text(lock, "lock file"), str(lock))
    except AutopromptError:  # garbage, half-written, not a regular file: no owner to name
        return None
    if isinstance(owner, dict) and isinstance(owner.get("pid"), int):
        return owner
    return None


def _holder_alive(lock: Path, owner: dict | None) -> bool:
    if owner is None:  # empty or garbage: being written right now, or left half-written
        try:
            return time.time() - lock.stat().st_mtime < 10
        except OSError:
            return False
    if owner.get("host") != socket.gethostname():
        return True  # another machine's process cannot be checked from here
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def write_json(path: str | Path, data: Any, option: str = "") -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    atomic_write(path, write, option)


def read_json(path: str | Path, what: str = "result") -> Any:
    return parse_json(read_text(path, f"{what} file"), str(path))


@contextlib.contextmanager
def staged_folder(target: Path, force: bool, option: str = "--out") -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success rename it into place (an
    existing ``target`` only with ``force``): a folder is never half-written."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; an output is not
        yield tmp
        for path in tmp.rglob("*"):  # safetensors writes 0600: every file as the umask says
            if path.is_file() and not path.is_symlink():
                os.chmod(path, 0o666 & ~current_umask())
        if target.exists() or target.is_symlink():
            if not force:
                raise AutopromptError(
                    f"{option} {target} already exists; choose another path or "
                    "pass --force to replace it"
                )
            old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(target, old)
            os.replace(tmp, target)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
