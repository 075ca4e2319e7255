"""The settings of ``predict``, in one typed object (as ``search.SearchConfig``).

The CLI builds a ``PredictConfig`` and reads its defaults (so ``predict --help`` imports no
torch: the checks that need the scoring modules import them when a config is made);
``predict(...)`` and ``write_predictions`` take it, and a resumed run compares it whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoprompt_py.errors import AutopromptError


@dataclass(frozen=True)
class PredictConfig:
    """Everything that decides the predictions (and so a resumed run's identity)."""

    templates: tuple[str, ...]
    verbalizers: tuple[str, ...] = ()
    aggregation: str = "sum"
    ensemble: bool = False
    ensemble_rule: str = "mean-logprob"
    weights: tuple[float, ...] | None = None
    calibrate: bool = False
    content_free: tuple[str, ...] | None = None
    relation: str | None = None
    vocab: str | None = None
    top_k: int = 10
    with_labels: bool = False
    label_field: str | None = None  # default: label, or obj_label for relation facts
    keep_columns: tuple[str, ...] | str = ()
    columns: tuple[str, ...] | None = None
    input_format: str | None = None
    on_error: str = "skip"
    limit: int | None = None
    window: int = 4096
    batch_size: int = 32
    max_batch_tokens: int | str = 65536
    bootstrap: int = 1000
    seed: int = 0
    chat: bool = False  # every template read as a chat turn (template.Chat), with ``system``
    system: str | None = None

    def __post_init__(self) -> None:
        if not self.templates:
            raise AutopromptError("--template: give at least one template")
        if self.system is not None and not self.chat:
            raise AutopromptError("--system is the system message of --chat: add --chat")
        # imported here: the CLI reads this class's defaults while --help runs, without torch
        from autoprompt_py.ensemble import check_rule
        from autoprompt_py.verbalizer import AGGREGATIONS

        if self.aggregation not in AGGREGATIONS:
            raise AutopromptError(f"--aggregation {self.aggregation!r}: use {AGGREGATIONS}")
        check_rule(self.ensemble_rule)
        if self.weights is not None and not self.ensemble:
            raise AutopromptError("--weights weighs ensemble members: add --ensemble, or drop it")
        if self.content_free and not self.calibrate:
            raise AutopromptError(
                "--content-free texts are used by --calibrate: add --calibrate, or drop them"
            )
        if self.window < 1 or self.batch_size < 1 or self.top_k < 1:
            raise AutopromptError("--window, --batch-size and --top-k must be at least 1")
        mbt = self.max_batch_tokens
        if not (mbt == "auto" or (isinstance(mbt, int) and mbt >= 1)):
            raise AutopromptError(f"--max-batch-tokens {mbt!r}: give a number of tokens or auto")
