"""The state of a search, and its checkpoint file.

The state is everything that changes during a search (triggers, best so far, history, the
random generator), kept JSON-able so that a checkpoint is a small JSON document written
atomically after every iteration. A checkpoint also records the *identity* of the run (model,
data, task, settings); ``load_checkpoint`` refuses one made for another run and says what
differs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from autoprompt_py.errors import AutopromptError
from autoprompt_py.results import read_json, write_json

CHECKPOINT_KIND = "autoprompt-search-checkpoint"


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
    buffer: list[list] = field(default_factory=list)  # gcg: [train loss, trigger] best first
    seconds: float = 0.0  # search time spent (start and iterations, over resumes)
    cost: dict = field(default_factory=dict)  # objective.Cost as a dict
    curve: list[list] = field(default_factory=list)  # [seconds, forward passes, best dev]


def save_checkpoint(path: str | Path, identity: dict, state: SearchState) -> None:
    write_json(
        path, {"kind": CHECKPOINT_KIND, "identity": identity, "state": dataclasses.asdict(state)}
    )


def load_checkpoint(path: str | Path, identity: dict) -> SearchState:
    """The saved state, if the checkpoint was made for the same model, data and settings."""
    path = Path(path)
    if not path.is_file():
        raise AutopromptError(
            f"--resume: no checkpoint at {path}; run without --resume to start a search"
        )
    data = read_json(path, "checkpoint")
    if not isinstance(data, dict) or data.get("kind") != CHECKPOINT_KIND:
        raise AutopromptError(f"--resume: {path} is not a search checkpoint")
    saved = data.get("identity", {})
    diffs = _differences(saved, identity)
    if diffs:
        raise AutopromptError(
            f"--resume: {path} was made for another {'; '.join(diffs)}; resume with the same "
            "model, data and settings, or run without --resume to start over"
        )
    try:
        return SearchState(**data["state"])
    except (KeyError, TypeError):
        raise AutopromptError(f"--resume: {path} is damaged (no valid state); start over") from None


_WHAT = {
    "model": "model",
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
