"""The state of a search, and its checkpoint file.

The state is everything that changes during a search (triggers, best so far, history, the
random generator), kept JSON-able so that a checkpoint is a small JSON document written
atomically after every iteration. A checkpoint also records the *identity* of the run (model,
data, task, settings); ``load_checkpoint`` refuses one made for another run and says what
differs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from autoprompt_py.errors import AutopromptError
from autoprompt_py.results import read_json, write_json
from autoprompt_py.textfile import regular_file

CHECKPOINT_KIND = "autoprompt-search-checkpoint"
CHECKPOINT_FORMAT = 3  # 1: no format or version recorded; 2: gcg's "buffer" in the state


@dataclass
class SearchState:
    """Everything that changes during a search; JSON-able, for checkpoints."""

    iteration: int  # iterations done, over all restarts
    trigger: list[int]
    best_trigger: list[int]  # the initial trigger while no fully real trigger was evaluated
    best_iteration: int
    best_dev: float | None  # None until a trigger without special tokens was evaluated
    best_dev_metrics: dict
    current_dev: float | None
    since_best: int
    rng: dict  # numpy bit generator state: batches, slots, candidates are drawn from it only
    initial: dict
    history: list[dict] = field(default_factory=list)
    stopped: str | None = None  # "patience"/"budget" once the last restart has ended the run
    restart: int = 0
    restart_iteration: int = 0  # iterations done in this restart
    restart_best: dict | None = None  # this restart's best: trigger, dev, dev_loss, iteration
    restart_initial: dict | None = None  # the current restart's initial trigger record
    restarts: list[dict] = field(default_factory=list)  # records of the finished restarts
    method_state: dict = field(default_factory=dict)  # the method's own (gcg: its buffer)
    seconds: float = 0.0  # search time spent (start and iterations, over resumes)
    cost: dict = field(default_factory=dict)  # objective.Cost as a dict
    curve: list[list] = field(default_factory=list)  # [seconds, forward passes, best dev]
    # best.py: every real trigger evaluated on dev [ids, dev, dev loss], and with --keep N > 1
    # the N best [ids, dev, dev loss, full dev metrics], best first
    visited: list[list] = field(default_factory=list)
    kept: list[list] = field(default_factory=list)


def save_checkpoint(path: str | Path, identity: dict, state: SearchState) -> None:
    write_json(
        path,
        {
            "kind": CHECKPOINT_KIND,
            "format": CHECKPOINT_FORMAT,
            "autoprompt_py": _version(),
            "identity": identity,
            "state": dataclasses.asdict(state),
        },
    )


def load_checkpoint(path: str | Path, identity: dict) -> SearchState:
    """The saved state, if the checkpoint was made by this version for the same model, data
    and settings. It is JSON, read with ``json``: nothing in it is ever executed (no pickle)."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        raise AutopromptError(
            f"--resume: no checkpoint at {path}; run without --resume to start a search"
        )
    regular_file(path, "checkpoint file", "--resume")  # a FIFO, a folder: refused unopened
    try:
        data = read_json(path, "checkpoint")
    except AutopromptError as e:  # binary garbage, a truncated file
        reason = str(e).removesuffix("; save it as UTF-8")
        raise AutopromptError(
            f"--resume: {reason}: not a search checkpoint (they are JSON); run without "
            "--resume to start over"
        ) from None
    if not isinstance(data, dict) or data.get("kind") != CHECKPOINT_KIND:
        raise AutopromptError(f"--resume: {path} is not a search checkpoint")
    made_by = (data.get("format"), data.get("autoprompt_py"))
    if made_by != (CHECKPOINT_FORMAT, _version()):
        raise AutopromptError(
            f"--resume: {path} was written by another version (autoprompt_py "
            f"{made_by[1] or 'unknown'}, checkpoint format {made_by[0] or 'unknown'}; this is "
            f"{_version()}, format {CHECKPOINT_FORMAT}), which cannot resume exactly; run "
            "without --resume to start over"
        )
    saved = data.get("identity", {})
    diffs = _differences(saved if isinstance(saved, dict) else {}, identity)
    if diffs:
        raise AutopromptError(
            f"--resume: {path} was made for another {'; '.join(diffs)}; resume with the same "
            "model, data and settings, or run without --resume to start over"
        )
    problem = _state_problem(data.get("state"), identity)
    if problem:
        raise AutopromptError(f"--resume: {path} is damaged ({problem}); start over")
    return SearchState(**data["state"])


def _version() -> str:
    from autoprompt_py._version import __version__

    return __version__


def _state_problem(state: object, identity: dict) -> str | None:
    """What is wrong with a checkpoint's state, checked field by field against SearchState's
    type hints (so that a hand-edited file fails here, not mid-search)."""
    if not isinstance(state, dict):
        return "no state"
    try:
        hints = typing.get_type_hints(SearchState)
    except (NameError, TypeError):  # a hint this Python cannot evaluate: check names only
        hints = {f.name: typing.Any for f in dataclasses.fields(SearchState)}
    required = {
        f.name
        for f in dataclasses.fields(SearchState)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(state))
    unknown = sorted(set(state) - set(hints))
    if missing or unknown:
        return f"fields {', '.join(missing + unknown)} do not fit this version's state"
    for name, value in state.items():
        if not _fits(value, hints[name]):
            return f"{name} = {_short(repr(value), 80)} is not a {hints[name]}"
    try:
        import numpy as np

        np.random.default_rng().bit_generator.state = state["rng"]
    except (TypeError, ValueError, KeyError):
        return "rng is not a random generator state"
    vocab = (identity.get("model") or {}).get("vocab_size")
    for name in ("trigger", "best_trigger"):
        ids = state.get(name)
        if isinstance(vocab, int) and isinstance(ids, list):
            if any(not 0 <= i < vocab for i in ids if isinstance(i, int)):
                return f"{name} holds token ids outside the model's {vocab}"
    return None


def _fits(value: object, hint: object) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and (not args or all(_fits(v, args[0]) for v in value))
    if origin is dict or dataclasses.is_dataclass(hint):  # a dataclass is saved as a dict
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a type this check does not know: trust it


_WHAT = {
    "model": "model",
    "models": "set of models",
    "template": "template",
    "train": "train data",
    "dev": "dev data",
    "verbalizer": "verbalizer",
    "aggregation": "aggregation",
    "label_field": "--label-field",
    "columns": "--columns",
    "relation": "relation",
    "vocab": "--vocab file",
    "filters": "token filters",
    "config": "search settings",
}


def _differences(saved: dict, current: dict) -> list[str]:
    out = []
    for key in dict.fromkeys([*current, *saved]):
        a, b = saved.get(key), current.get(key)
        if a == b:
            continue
        what = _WHAT.get(key, key)
        if isinstance(a, dict) and isinstance(b, dict):
            detail = ", ".join(
                "file contents differ"
                if k == "sha256"
                else f"{k}: {a.get(k)!r} there, {b.get(k)!r} here"
                for k in dict.fromkeys([*b, *a])
                if a.get(k) != b.get(k) and k != "weights_sha256"
            )
            if not detail and key == "model":
                detail = "different weights"
            out.append(f"{what} ({_short(detail)})")
        else:
            out.append(f"{what} ({_short(f'{a!r} there, {b!r} here')})")
    return out


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
