"""The settings of a training run, in one typed object (as ``search.SearchConfig``).

The CLI builds a ``TuneConfig``, ``tune(...)`` takes it, a checkpoint is tied to its
``identity()`` and ``result.json`` records it whole. Checks that need only the config run
when it is made; ``check_task`` runs once the template and the data are known, still before
any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoprompt_py.errors import AutopromptError
from autoprompt_py.tune.methods import REGISTRY

METHODS = tuple(REGISTRY)  # soft, full, head, prompt, ptuning, prefix, lora
INITS = ("auto", "found", "text", "vocab", "random")
ENCODERS = ("mlp", "lstm")
# which weights a run ends with (``tune/select.py``): ``auto`` is ``best-dev`` with a dev set
# of SMALL_DEV examples or more, else the rule measured best on held-out data with small dev
SELECTS = ("auto", "best-dev", "last", "average", "cv")
SMALL_DEV = 100
SMALL_DEV_RULE = "last"  # measured best on held-out data at K = 16 (docs/tuning.md)
PEFT_METHODS = ("prompt", "ptuning", "prefix", "lora")
# methods whose trainable part is a few vectors in the input: they take --init
VECTOR_METHODS = ("soft", "prompt", "ptuning", "prefix")
# per-method learning rates (the defaults chosen on dev by scripts/compare_tuning.py, see the
# README): vectors in a frozen model move slowly, whole-model updates must not
DEFAULT_LR = {
    "soft": 3e-3,
    "prompt": 3e-3,
    "ptuning": 1e-3,
    "prefix": 3e-3,
    "lora": 1e-3,
    "full": 1e-4,
    "head": 1e-4,
}
DEFAULT_STEPS = 200
# with --shots (K per class): (learning rate, steps) per method, chosen on held-out SST-2
# sentences at K = 16 under SMALL_DEV_RULE (docs/tuning.md, docs/select-runs.jsonl); the
# methods not measured there keep DEFAULT_LR and DEFAULT_STEPS
FEW_SHOT = {
    "full": (1e-4, 250),
    "lora": (1e-3, 100),
    "soft": (1e-2, 250),
    "prompt": (1e-2, 250),
    "head": (1e-4, 250),
}


def _whole(option: str, value: int | None, low: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise AutopromptError(f"--{option} {value}: must be a whole number ≥ {low}")


@dataclass(frozen=True)
class TuneConfig:
    """The knobs of a training run. ``identity()`` names those that decide its course.

    ``method`` is what trains (see ``tune/methods``); ``init`` where trained prompt vectors
    start: ``found`` (what the template found: a search result's trigger tokens, an exported
    prompt's tokens, a tuned folder's vectors), ``auto`` (found where there is something
    found, else vocab), ``text`` (embeddings of ``init_text``'s tokens, repeated to
    fill), ``vocab`` (random vocabulary tokens), ``random`` (normal, the embedding matrix's
    std). ``steps`` optimizer steps of ``batch_size`` examples (or ``epochs`` passes over the
    training set, whichever is given); AdamW with a linear warmup over ``warmup`` of the steps
    and a linear decay to 0; gradients clipped to ``max_grad_norm``; dev scored every
    ``eval_every`` steps; ``select`` decides the weights the run ends with (``select.py``:
    ``best-dev``, ``last``, ``average`` of the last ``average_last`` checkpoints, ``cv`` on
    ``cv_folds`` folds, ``auto`` by the dev set's size). ``shots`` K: K training examples per
    class, drawn with ``data_seed`` (LM-BFF's protocol); ``dev_shots`` likewise for dev; with
    ``shots``, ``lr`` and ``steps`` default to ``FEW_SHOT``'s per-method values.
    """

    method: str = "soft"
    select: str = "auto"  # which checkpoint the run ends with: SELECTS, tune/select.py
    average_last: int = 3  # select average: the last N evaluated checkpoints
    cv_folds: int = 4  # select cv: folds of the training examples
    init: str = "auto"  # found where the template found something, else vocab (found.py)
    init_text: str | None = None
    lr: float | None = None  # None: FEW_SHOT's with shots, else DEFAULT_LR[method]
    steps: int | None = None  # None: from epochs, else FEW_SHOT's with shots, else 200
    epochs: float | None = None
    batch_size: int = 16
    eval_batch_size: int = 64
    warmup: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    eval_every: int = 50
    time_budget: float | None = None
    seed: int = 0
    shots: int | None = None
    dev_shots: int | None = None
    data_seed: int = 0
    num_virtual_tokens: int | None = None  # prompt/ptuning/prefix; None: the found prompt's length
    encoder: str = "mlp"  # ptuning's prompt encoder
    encoder_hidden: int = 128
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    dropout: bool = True  # the model's own dropout on while training (as PEFT and PET train)
    dtype: str = "float32"
    # how a step is computed, not what it computes (``tune/parallel.py``; not in identity())
    grad_accum: int | None = None  # micro-batches per process and step; None: derived
    global_batch: int | None = None  # rows per step over all processes; None: batch × accum
    shard: bool = False  # FSDP under torchrun (full, lora)
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        choices = (("method", METHODS), ("select", SELECTS), ("init", INITS), ("encoder", ENCODERS))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise AutopromptError(
                    f"--{name} {getattr(self, name)!r}: use one of {', '.join(allowed)}"
                )
        if self.lr is not None and not (0 < self.lr <= 1):
            raise AutopromptError(f"--lr {self.lr}: must be a learning rate > 0 and ≤ 1, e.g. 1e-4")
        for name in ("batch_size", "eval_batch_size", "eval_every", "encoder_hidden", "lora_r",
                     "average_last"):  # fmt: skip
            _whole(name.replace("_", "-"), getattr(self, name), 1)
        _whole("cv-folds", self.cv_folds, 2)
        if self.select == "cv" and self.time_budget is not None:
            raise AutopromptError(
                "--select cv trains once per fold to choose its number of steps, so it needs "
                "--steps (or --epochs), not --time-budget; use another --select with a budget"
            )
        _whole("steps", self.steps, 1)
        _whole("shots", self.shots, 1)
        _whole("dev-shots", self.dev_shots, 1)
        _whole("num-virtual-tokens", self.num_virtual_tokens, 1)
        _whole("lora-alpha", self.lora_alpha, 1)
        if self.epochs is not None and not self.epochs > 0:
            raise AutopromptError(f"--epochs {self.epochs}: must be a number of passes > 0")
        if self.steps is not None and self.epochs is not None:
            raise AutopromptError("--steps and --epochs: give one of them, not both")
        if not 0 <= self.warmup < 1:
            raise AutopromptError(
                f"--warmup {self.warmup}: must be a fraction of the steps in [0, 1)"
            )
        if not self.weight_decay >= 0:
            raise AutopromptError(f"--weight-decay {self.weight_decay}: must be ≥ 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise AutopromptError(
                f"--max-grad-norm {self.max_grad_norm}: must be > 0 (leave it out for no clipping)"
            )
        if self.time_budget is not None and not self.time_budget > 0:
            raise AutopromptError(f"--time-budget {self.time_budget}: must be seconds > 0")
        if not 0 <= self.lora_dropout < 1:
            raise AutopromptError(f"--lora-dropout {self.lora_dropout}: must be in [0, 1)")
        if self.init == "text" and not (self.init_text or "").strip():
            raise AutopromptError("--init text needs --init-text WORDS (e.g. the label words)")
        _whole("grad-accum", self.grad_accum, 1)
        _whole("global-batch", self.global_batch, 1)
        if self.shard and self.method not in ("full", "lora"):
            raise AutopromptError(
                f"--shard splits the model's weights over the processes, for --method full or "
                f"lora; --method {self.method} trains few weights: leave --shard out (DDP)"
            )

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.shots is not None and self.method in FEW_SHOT:
            return FEW_SHOT[self.method][0]
        return DEFAULT_LR[self.method]

    def total_steps(self, n_train: int) -> int:
        """Optimizer steps of the run: ``steps``, or ``epochs`` passes of ``n_train`` rows."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            per_epoch = -(-n_train // self.step_batch)
            return max(1, round(self.epochs * per_epoch))
        if self.shots is not None and self.method in FEW_SHOT:
            return FEW_SHOT[self.method][1]
        return DEFAULT_STEPS

    def check_task(self, num_triggers: int, open_triggers: int, relational: bool) -> None:
        """Checks that need the template: before any model loads."""
        if self.method == "soft" and num_triggers == 0:
            raise AutopromptError(
                "--method soft trains the template's trigger slots [T], and this template has "
                "none; add [T] markers (e.g. '{sentence} [T] [T] [T] [P] .'), give a search "
                "result, or use --method prompt (virtual tokens before the input)"
            )
        if self.method != "soft" and open_triggers:
            raise AutopromptError(
                f"--method {self.method} keeps the prompt fixed, but the template has "
                f"{open_triggers} open trigger slots [T]; give a search result, write words "
                "in their place, or use --method soft"
            )
        if self.method == "soft" and self.init == "found" and open_triggers:
            raise AutopromptError(
                "--init found starts the trigger vectors from a search result's tokens, but "
                "the template's [T] slots are open; give the search result as --template, or "
                "use --init vocab, random or text"
            )
        if self.method == "head" and relational:
            raise AutopromptError(
                "--method head trains a classification head, which needs a fixed set of labels; "
                "a relation template ([X] … [Y]) predicts tokens: use --method full or soft"
            )

    def identity(self) -> dict:
        """Settings a resumed run must share (steps and time budget may change: a run can be
        extended)."""
        keys = ["method", "init", "init_text", "lr", "batch_size", "warmup", "weight_decay"]
        keys += ["max_grad_norm", "seed", "shots", "dev_shots", "data_seed", "dtype", "dropout"]
        keys += ["num_virtual_tokens", "encoder", "encoder_hidden", "lora_r", "lora_alpha"]
        keys += ["lora_dropout", "eval_every", "steps", "epochs", "select", "average_last"]
        keys += ["cv_folds"]
        # the rows of a step decide the run, not how they are split (processes, micro-batches)
        return {k: getattr(self, k) for k in keys} | {"batch_size": self.step_batch}

    @property
    def step_batch(self) -> int:
        """Rows per optimizer step over all processes and micro-batches (the global batch)."""
        return self.global_batch or self.batch_size * (self.grad_accum or 1)
