"""A whole trigger search run: build the engine, start or resume, checkpoint every iteration,
write the result file (also on Ctrl-C).

The methods (``autoprompt.py``, ``gcg.py``) and what they share (``engine.py``) are described
in their modules; the settings in ``config.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprompt_py.encoding import tokenize_piece
from autoprompt_py.errors import AutopromptError, shown
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.results import from_main, output_lock, write_json
from autoprompt_py.search import record as record_of
from autoprompt_py.search.candidates import TokenFilters
from autoprompt_py.search.config import SearchConfig
from autoprompt_py.search.engine import TriggerSearch
from autoprompt_py.search.state import SearchState, load_checkpoint, save_checkpoint
from autoprompt_py.search.task import SearchTask
from autoprompt_py.template import Template, Trigger
from autoprompt_py.vocab import single_token_id

__all__ = ["SearchConfig", "SearchOutcome", "TriggerSearch", "run_search", "trigger_ids_from_words"]


@dataclass
class SearchOutcome:
    result: dict
    state: SearchState
    interrupted: bool = False
    stop: KeyboardInterrupt | None = None  # the stop itself (Ctrl-C or SIGTERM), to re-raise


def trigger_ids_from_words(
    tokenizer: Any, template: Template, words: str | Sequence[str], what: str = "--initial-trigger"
) -> list[int]:
    """Token ids for the template's trigger slots from words (``atmosphere alot dialogue``) or
    raw tokens (``Ġgreat``): each must be one token of this model's vocabulary."""
    words = words.split() if isinstance(words, str) else list(words)
    slots = [p for p in template.parts if isinstance(p, Trigger)]
    if len(words) != len(slots):
        raise AutopromptError(
            f"{what}: {len(words)} token{'s' * (len(words) != 1)} for the {len(slots)} "
            f"trigger slot{'s' * (len(slots) != 1)} [T] of "
            f"{shown(template.source)}; give exactly {len(slots)}"
        )
    vocab = tokenizer.get_vocab()
    ids = []
    for w, slot in zip(words, slots):
        token_id = single_token_id(tokenizer, w, slot.space_before)
        if token_id is None:
            token_id = vocab.get(w)
        if token_id is None:
            pieces = tokenizer.convert_ids_to_tokens(
                tokenize_piece(tokenizer, w, slot.space_before)
            )
            raise AutopromptError(
                f"{what}: {w!r} is not one token of this model's vocabulary (it becomes "
                f"{' '.join(pieces) or 'nothing'}); use single-token words"
            )
        ids.append(int(token_id))
    return ids


@contextlib.contextmanager
def _progress_bar(
    search: TriggerSearch, state: SearchState, enabled: bool
) -> Iterator[Callable[[SearchState, dict], None]]:
    """A tqdm bar on stderr (iterations, or open-ended under a budget); yields the function
    that shows an iteration's entry."""
    from tqdm.auto import tqdm

    c, metric = search.config, search.objective.metric
    budgeted = c.time_budget is not None or c.max_forward_passes is not None
    with tqdm(
        total=None if budgeted else c.iters * c.restarts,
        initial=state.iteration,
        desc=f"search ({c.method})",
        unit="it",
        disable=not enabled,
        dynamic_ncols=True,
    ) as bar:

        def show(s: SearchState, entry: dict) -> None:
            best = "-" if s.best_dev is None else f"{s.best_dev:.3f}"
            dev = "-" if entry["dev"] is None else f"{entry['dev']:.3f}"
            bar.set_postfix_str(
                f"r{s.restart} dev {metric} {dev} best {best} | "
                + " ".join(search.words(s.trigger)),
                refresh=False,
            )
            bar.update(1)

        yield show


# -- the whole run --------------------------------------------------------------------------------


def run_search(
    lm: LanguageModel | Sequence[LanguageModel],
    task: SearchTask,
    config: SearchConfig | None = None,
    *,
    filters: TokenFilters | None = None,
    output: str | Path | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    initial_trigger: str | Sequence[str] | None = None,
    progress: bool = True,
    record: dict | None = None,
    on_iteration: Callable[[SearchState, dict], None] | None = None,
) -> SearchOutcome:
    """Search, checkpointing every iteration; write the result to ``output`` at the end.

    ``checkpoint`` defaults to ``<output>.ckpt`` (``default_checkpoint``); both are locked
    while the search runs (a second run on them is refused). ``config.max_batch_tokens="auto"``
    is sized from the device's free memory. Ctrl-C (KeyboardInterrupt, or SIGTERM under the
    CLI) stops the search: the best trigger so far is written and the outcome says
    ``interrupted``. ``record`` is more configuration written into the result (the CLI passes
    its options). Several models (a list of ``lm``) are searched together (``joint.py``).
    """
    started = time.perf_counter()
    filters = filters or TokenFilters()
    config = config or SearchConfig()
    if config.max_batch_tokens == "auto":
        from autoprompt_py import distributed
        from autoprompt_py.memory import auto_max_batch_tokens

        # one budget for all ranks: the GPU with the least free memory decides
        lms = lm if isinstance(lm, (list, tuple)) else [lm]
        tokens = distributed.agree_min(min(auto_max_batch_tokens(m, config.dtype) for m in lms))
        config = dataclasses.replace(config, max_batch_tokens=tokens)
    checkpoint = default_checkpoint(output, checkpoint)
    with output_lock(output, checkpoint):
        return _run(
            lm,
            task,
            config,
            filters,
            output,
            checkpoint,
            resume,
            initial_trigger,
            progress,
            record,
            on_iteration,
            started,
        )


def default_checkpoint(
    output: str | Path | None, checkpoint: str | Path | None = None
) -> str | Path | None:
    """Where the search state is saved: ``checkpoint`` (as given, for its error messages),
    else ``<output>.ckpt`` (None: nowhere)."""
    if checkpoint is not None:
        return checkpoint
    return None if output is None else Path(str(output) + ".ckpt")


def _run(
    lm: LanguageModel | Sequence[LanguageModel],
    task: SearchTask,
    config: SearchConfig,
    filters: TokenFilters,
    output: str | Path | None,
    checkpoint: str | Path | None,
    resume: bool,
    initial_trigger: str | Sequence[str] | None,
    progress: bool,
    record: dict | None,
    on_iteration: Callable[[SearchState, dict], None] | None,
    started: float,
) -> SearchOutcome:
    search = TriggerSearch(lm, task, config, filters, config.search_method)
    config = search.config  # with the mode's defaults filled in
    identity = record_of.identity(search)
    if resume:
        if checkpoint is None:
            raise AutopromptError("--resume needs --output or --checkpoint to find the state")
        # rank 0 reads it for every rank: it will soon write the next one over it
        state = from_main(lambda: load_checkpoint(checkpoint, identity))
    else:
        initial = (
            trigger_ids_from_words(search.lm.tokenizer, task.template, initial_trigger)
            if initial_trigger is not None
            else None
        )
        state = search.start(initial)
        if checkpoint is not None:
            save_checkpoint(checkpoint, identity, state)

    def save(s: SearchState) -> None:
        if checkpoint is not None:
            save_checkpoint(checkpoint, identity, s)

    stop: KeyboardInterrupt | None = None
    try:
        with _progress_bar(search, state, progress) as show:

            def iteration_done(s: SearchState, entry: dict) -> None:
                show(s, entry)
                if on_iteration is not None:
                    on_iteration(s, entry)

            search.run(state, save, iteration_done)
    except KeyboardInterrupt as e:
        stop = e
    interrupted = stop is not None
    config_record = {**dataclasses.asdict(config), "filters": filters.describe(), **(record or {})}
    try:
        result = record_of.result(
            search,
            state,
            config_record,
            interrupted,
            time.perf_counter() - started,
            train=not interrupted,
        )
    except KeyboardInterrupt as e:  # during the final train evaluation: write without it
        stop, interrupted = e, True
        result = record_of.result(
            search, state, config_record, True, time.perf_counter() - started, train=False
        )
    if output is not None:
        write_json(output, result)
    return SearchOutcome(result, state, interrupted, stop)
