"""Many processes on torch.distributed: the process group, row shards, reductions, faults.

A command launched by ``torchrun`` (or ``accelerate launch``, or an ``srun`` wrapper that sets
the same variables) sees ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; ``run`` then joins the
process group (NCCL on CUDA, gloo on CPU) around the command. Without them, or with
``WORLD_SIZE=1``, nothing here does anything: every helper is a no-op in one process.

The computations shard *rows* (examples) and reduce sums, so the numbers a command produces do
not depend on the number of processes beyond float summation order. Only rank 0 writes files
and prints (``results.atomic_write`` and the silenced streams of the other ranks see to it).

Faults: every rank ends by posting its status (ok, or its one-line error) in the group's
key-value store, then waits for the others' (bounded by ``--dist-timeout``). A rank whose
collective fails because a peer died or failed posts "lost"; rank 0 prints the first real
error it finds (the failing rank's message), every rank exits non-zero. A rank that fails
destroys its process group at once, so that peers blocked in a collective with it fail fast
instead of waiting for the timeout.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch

from autoprompt_py.errors import AutopromptError, os_error

BACKENDS = ("auto", "nccl", "gloo")
DEFAULT_TIMEOUT_S = 300.0
T = TypeVar("T")


@dataclass(frozen=True)
class Launch:
    """What the launcher says about this process."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Launch:
        values = {}
        for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            raw = os.environ.get(key)
            if raw is None or raw == "":
                continue
            try:
                values[key] = int(raw)
            except ValueError:
                raise AutopromptError(
                    f"environment variable {key}={raw!r} is not a number; launch with torchrun"
                ) from None
        world = values.get("WORLD_SIZE", 1)
        rank = values.get("RANK", 0)
        if world < 1 or not 0 <= rank < world:
            raise AutopromptError(
                f"environment: RANK={rank} does not fit WORLD_SIZE={world}; launch with torchrun"
            )
        return cls(world, rank, values.get("LOCAL_RANK", rank))


class PeerLost(RuntimeError):
    """A collective failed: another process died, failed or stopped responding."""


# -- where this process stands ---------------------------------------------------------------


def _dist():
    import torch.distributed as dist

    return dist


def active() -> bool:
    """True inside an initialized process group of more than one process."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return _dist().get_world_size() if active() else 1


def rank() -> int:
    return _dist().get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0 (also before the group is up: the launcher's RANK decides)."""
    if active():
        return rank() == 0
    try:
        return Launch.from_env().rank == 0
    except AutopromptError:
        return True


def backend() -> str | None:
    return str(_dist().get_backend()) if active() else None


def describe() -> dict:
    """What a result records about the processes that made it."""
    return {"world_size": world_size(), "backend": backend()}


# -- setup -------------------------------------------------------------------------------------


def choose_backend(requested: str = "auto", device: str = "auto") -> str:
    """nccl where the processes use CUDA GPUs, gloo on CPUs; ``requested`` overrides."""
    if requested not in BACKENDS:
        raise AutopromptError(f"--backend {requested!r}: use one of {', '.join(BACKENDS)}")
    cuda = torch.cuda.is_available() and device != "cpu"
    if requested == "nccl":
        if not torch.cuda.is_available():
            raise AutopromptError(
                "--backend nccl: no CUDA GPU is available here (NCCL needs one GPU per "
                "process); use --backend gloo, or auto, on CPUs"
            )
        if device == "cpu":
            raise AutopromptError("--backend nccl runs on GPUs; drop --device cpu, or use gloo")
        return "nccl"
    if requested == "gloo":
        return "gloo"
    return "nccl" if cuda else "gloo"


def local_device(device: str = "auto") -> str:
    """The device of this process: under a launcher with CUDA, ``cuda:LOCAL_RANK``."""
    launch = Launch.from_env()
    if launch.world_size == 1 or device == "cpu" or not torch.cuda.is_available():
        return device
    if device in ("auto", "cuda"):
        return f"cuda:{launch.local_rank % torch.cuda.device_count()}"
    raise AutopromptError(
        f"--device {device}: under torchrun every process takes its own GPU "
        "(cuda:LOCAL_RANK); give --device auto or cuda"
    )


def init(requested: str = "auto", device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S):
    """Join the process group the launcher describes (nothing for one process)."""
    launch = Launch.from_env()
    name = choose_backend(requested, device)
    if launch.world_size == 1 or active():
        return
    dist = _dist()
    if name == "nccl":
        torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        dist.init_process_group(name, timeout=timedelta(seconds=timeout_s))
        # the rendezvous itself: returns once every rank has joined
        dist.barrier()
    except Exception as e:
        raise AutopromptError(
            f"rank {launch.rank}: could not join the other {launch.world_size - 1} processes "
            f"at {where} within --dist-timeout {timeout_s:g} s ({_first_line(e)}); check that "
            "every process was started and can reach that address"
        ) from None


def shutdown() -> None:
    if active():
        _dist().destroy_process_group()


# -- work sharing --------------------------------------------------------------------------------


def require_rows(n: int, what: str) -> None:
    """Every process needs at least one row: fewer rows than processes is a launch mistake."""
    launch = Launch.from_env()
    if n < launch.world_size:
        raise AutopromptError(
            f"{what}: {n} row{'s' * (n != 1)} for {launch.world_size} processes; every "
            f"process needs at least one: run with at most {max(n, 1)} processes "
            "(torchrun --nproc-per-node)"
        )


def shard_rows(index: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
    """This rank's rows of ``index``: every ``world_size``-th row in length order, so that each
    rank gets rows of every length (the same work) and padding stays low."""
    index = np.asarray(index)
    world = world_size()
    if world == 1:
        return index
    if lengths is not None:
        index = index[np.argsort(lengths[index], kind="stable")]
    return index[rank() :: world]


def mine(items: Sequence[T]) -> list[T]:
    """This rank's share of a sequence of work items (every ``world_size``-th)."""
    return list(items[rank() :: world_size()]) if active() else list(items)


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or min, max) ``tensor`` over all ranks, in place; a no-op in one process."""
    if not active():
        return tensor
    dist = _dist()
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    # NCCL reduces GPU tensors only; gloo takes either
    moved = tensor.cuda() if backend() == "nccl" and tensor.device.type != "cuda" else tensor
    try:
        dist.all_reduce(moved, op=ops[op])
    except Exception as e:
        raise PeerLost(_first_line(e)) from None
    if moved is not tensor:
        tensor.copy_(moved)
    return tensor


def agree_any(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (a decision all ranks must share, such as
    a time budget each rank measures on its own clock)."""
    if not active():
        return flag
    return bool(all_reduce_(torch.tensor([int(flag)], dtype=torch.long), "max")[0])


def agree_min(value: int) -> int:
    """The smallest ``value`` over all ranks (e.g. a memory budget every rank can afford)."""
    if not active():
        return value
    return int(all_reduce_(torch.tensor([value], dtype=torch.long), "min")[0])


# -- the command wrapper -----------------------------------------------------------------------


def run(
    command: Callable[[], Any],
    requested: str = "auto",
    device: str = "auto",
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Any:
    """Run a CLI command in the process group the launcher describes.

    One process: checks ``requested`` and calls ``command`` (errors propagate as usual).
    Several: only rank 0 prints; an error on any rank ends every rank with a non-zero exit
    and one line from rank 0 (``error: ...``), within the timeout, never a hang.
    """
    launch = Launch.from_env()
    if launch.world_size == 1:
        choose_backend(requested, device)
        return command()
    if launch.rank != 0:
        _silence()
    try:
        init(requested, device, timeout_s)
    except AutopromptError as e:
        # before the group exists nobody can relay: every rank says why it stops
        _say(f"error: {e}")
        _exit(2)
    failure: tuple[int, str, bool] | None = None  # (exit code, message, peer lost)
    try:
        command()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if code:
            failure = (code, "", False)
    except AutopromptError as e:
        failure = (2, str(e), False)
    except KeyboardInterrupt:
        failure = (130, "interrupted", False)
    except PeerLost as e:
        failure = (1, str(e), True)
    except Exception as e:  # a bug or a device error (CUDA out of memory): one line still
        mapped = os_error(e)  # a full disk: a user's to fix, exit 2 as in one process
        failure = (
            (2, str(mapped), False)
            if mapped
            else (1, f"{type(e).__name__}: {_first_line(e)}", _looks_lost(e))
        )
    _finish(launch, failure, timeout_s)


def _finish(launch: Launch, failure: tuple[int, str, bool] | None, timeout_s: float) -> None:
    """Post this rank's status, read the others', let rank 0 speak, exit alike."""
    store = _store()
    key = _key_prefix()
    status = {"code": 0, "message": "", "lost": False}
    if failure is not None:
        status = {"code": failure[0], "message": failure[1], "lost": failure[2]}
        # peers blocked in a collective with this rank fail now rather than at the timeout
        _abort_group()
    statuses: dict[int, dict] = {}
    if store is not None:
        try:
            store.set(f"{key}{launch.rank}", json.dumps(status))
            keys = [f"{key}{r}" for r in range(launch.world_size)]
            # a failed rank waits less: the others may be dead
            _wait(store, keys, timeout_s if failure is None else min(timeout_s, 2.0))
            for r, k in enumerate(keys):
                if store.check([k]):
                    statuses[r] = json.loads(store.get(k).decode("utf-8"))
        except Exception:  # the store lived in a process that is gone
            statuses = {}
    statuses[launch.rank] = status
    missing = [r for r in range(launch.world_size) if r not in statuses]
    failed = [r for r, s in sorted(statuses.items()) if s["code"]]
    real = [r for r in failed if not statuses[r]["lost"]]
    code = max((statuses[r]["code"] for r in failed), default=0)
    if missing and not code:
        code = 1
    if code and launch.rank == 0:
        _say(_failure_line(statuses, real, failed, missing))
    elif code and launch.rank != 0 and 0 in missing and not real:
        # rank 0 is gone: somebody has to say something
        _say(f"error: rank {launch.rank}: {status['message'] or 'rank 0 stopped responding'}")
    if store is not None:
        try:
            # rank 0 says "done" once it has spoken: no rank leaves before (torchrun stops
            # the rest as soon as one exits non-zero); without torchrun rank 0 hosts the
            # store, so it stays until every rank has read
            store.set(f"{key}done/{launch.rank}", "1")
            if launch.rank == 0:
                _wait(store, [f"{key}done/{r}" for r in statuses], min(timeout_s, 5.0))
            else:
                _wait(store, [f"{key}done/0"], min(timeout_s, 5.0))
        except Exception:
            pass
    if code:
        _exit(code)
    shutdown()


def _wait(store: Any, keys: list[str], seconds: float) -> bool:
    """Poll until every key is set (``store.wait`` raises on timeout and blocks on a dead host)."""
    deadline = time.monotonic() + seconds
    while not store.check(keys):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _failure_line(
    statuses: dict[int, dict], real: list[int], failed: list[int], missing: list[int]
) -> str:
    if real:
        messages = {statuses[r]["message"] for r in real}
        first = real[0]
        message = statuses[first]["message"]
        if not message:  # a command that exited by itself has already said why
            return ""
        same = len(messages) == 1 and len(real) == len(statuses) and not missing
        return f"error: {message}" if first == 0 or same else f"error: rank {first}: {message}"
    if missing:
        ranks = ", ".join(map(str, missing))
        detail = next((statuses[r]["message"] for r in failed), "")
        return (
            f"error: rank {ranks} died or stopped responding"
            + (f" ({detail})" if detail else "")
            + "; a search resumes from its last checkpoint with --resume"
        )
    return f"error: a process lost contact with the others ({statuses[failed[0]]['message']})"


def _key_prefix() -> str:
    return f"autoprompt/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/status/"


def _store():
    try:
        return _dist().distributed_c10d._get_default_store()
    except Exception:
        return None


def _abort_group() -> None:
    try:
        if _dist().is_initialized():
            _dist().destroy_process_group()
    except Exception:
        pass


def _looks_lost(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(
        s in text for s in ("connection", "timed out", "timeout", "closed", "distbackend", "nccl")
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)  # gloo's "[.../pair.cc:553] " source prefix
    line = line.split(". This is typically")[0]
    return line[:300]


def _silence() -> None:
    """The other ranks print nothing but errors (written to the real stderr by ``_say``): not
    Python's output, nor what torch's C++ side writes to file descriptor 2 (a store's
    connection warnings when rank 0 leaves first)."""
    global _REAL_STDERR
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    try:
        _REAL_STDERR = os.fdopen(os.dup(2), "w")
        os.dup2(devnull.fileno(), 2)
    except OSError:  # no file descriptor 2 (embedded): Python's streams are enough
        pass
    sys.stdout = devnull
    sys.stderr = devnull


_REAL_STDERR = None  # where _say writes once fd 2 is silenced


def _say(line: str) -> None:
    """One line on the real stderr (the silenced ranks' ``sys.stderr`` goes nowhere)."""
    if not line:
        return
    try:
        stream = _REAL_STDERR or sys.__stderr__
        stream.write(line + "\n")
        stream.flush()
    except Exception:
        pass


def _exit(code: int) -> None:
    """Leave now: a dead peer can make interpreter shutdown (NCCL, gloo threads) hang."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)
