"""The GCG step (Zou et al., 2023, "Universal and Transferable Adversarial Attacks on Aligned
Language Models"; with nanoGCG's refinements), over a data set of examples:

1. the gradient of the mean loss with respect to every trigger slot's embedding, over
   ``accumulation_steps`` random batches;
2. per slot, the ``topk`` tokens of ``-(E · g)`` among the allowed tokens (HotFlip's score);
3. ``search_width`` candidate triggers, each writing one of its slots' top-k tokens (drawn
   uniformly) into ``n_replace`` distinct random slots; a slot holding a special token is
   replaced in every candidate; duplicates and the current trigger are dropped;
4. all candidates scored in one batched forward on the same fresh rows; the search **moves to
   the best even when it is worse than the current trigger** (the engine keeps the best so
   far on dev), which lets it leave a local optimum.

With ``buffer_size`` B > 0 (nanoGCG's attack buffer), the B best triggers seen (by their loss
on the rows they were scored on) are kept, and each step starts from the best of them.
All random draws come from the search state's one seeded generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autoprompt_py.errors import AutopromptError
from autoprompt_py.search.move import Move

if TYPE_CHECKING:
    import numpy as np

    from autoprompt_py.search.move import SearchView
    from autoprompt_py.search.state import SearchState

# numpy, torch and the candidate code load when a search runs, not when the registry (and
# with it the CLI's --method help) reads this class


def sample_candidates(
    current: np.ndarray,
    top: np.ndarray,
    width: int,
    n_replace: int,
    rng: np.random.Generator,
    always: list[int] = (),
) -> np.ndarray:
    """``width`` triggers [width, L] from ``current`` [L], each with ``n_replace`` distinct
    random slots (and every slot in ``always``) set to a random one of that slot's ``top``
    [L, k] tokens; duplicates and the current trigger dropped, first occurrences kept."""
    import numpy as np

    n_slots, k = top.shape
    slots = rng.random((width, n_slots)).argsort(1)[:, :n_replace]
    picks = rng.integers(k, size=(width, n_replace))
    out = np.repeat(current[None, :], width, axis=0)
    rows = np.arange(width)[:, None]
    out[rows, slots] = top[slots, picks]
    if len(always):
        forced = np.asarray(always)
        out[:, forced] = top[forced, rng.integers(k, size=(width, len(forced)))]
    _, first = np.unique(out, axis=0, return_index=True)
    out = out[np.sort(first)]
    return out[(out != current[None, :]).any(1)]


class GCG:
    """The GCG method (``method.Method``); its state: ``{"buffer": [[loss, trigger], …]}``,
    best first, with ``buffer_size`` > 0."""

    name = "gcg"
    help = (
        "many candidate triggers per step, changing several slots, moving to the best even "
        "if worse (Zou et al., 2023)"
    )
    options = ("search_width", "n_replace", "topk", "buffer_size")
    # GCG scores many candidates, each on fewer rows, and on relations (a few hundred short
    # facts) more, cheaper steps win (measured: see the README)
    accumulation = {"classification": 6, "relation": 2}

    def check(self, config: Any, slots: int) -> None:
        if config.n_replace > slots:
            raise AutopromptError(
                f"--n-replace {config.n_replace}: must be between 1 and the number of trigger "
                f"slots ({slots})"
            )

    def prepare(self, search: SearchView) -> None:
        from autoprompt_py.search.candidates import warn_candidates

        warn_candidates(search.allowed, "--topk", search.config.topk)

    def propose(self, search: SearchView, state: SearchState, rng: np.random.Generator) -> Move:
        return propose(search, state, rng)


def propose(search: SearchView, state: SearchState, rng: np.random.Generator) -> Move:
    import numpy as np
    import torch

    from autoprompt_py.search.candidates import hotflip_candidates

    config = search.config
    buffer_in = state.method_state.get("buffer", [])
    start = buffer_in[0][1] if buffer_in else state.trigger
    grad_batches, candidate_rows = search.sample(rng)
    trigger = search.ids(start)
    grad = search.scorer.gradient(search.train, grad_batches, trigger)
    top = hotflip_candidates(grad, search.embeddings, search.allowed, config.topk, trigger)
    current = np.asarray(start, dtype=np.int64)
    special = search.special_slots(start)
    candidates = sample_candidates(
        current, top.cpu().numpy(), config.search_width, config.n_replace, rng, special
    )
    candidates = candidates[search.retokenizes(candidates)]
    size = len(candidate_rows)
    if len(candidates) == 0:  # e.g. top-k of 1 token per slot already in place
        return Move(list(start), False, float("nan"), {"candidates": 0, "moved": False})
    triggers = torch.as_tensor(np.concatenate([current[None], candidates]), device=trigger.device)
    by_hits = config.select == "metric"
    scores = search.scorer.trigger_losses(
        search.train, candidate_rows, triggers, count_hits=by_hits
    ).cpu()
    losses = (scores[0] if by_hits else scores) / size
    bonus = search.fluency_bonus(triggers)
    if by_hits:  # most hits (plus the bonus), ties to the lower loss
        key = scores[1] / size + bonus - losses * 1e-6
        best = 1 + int(key[1:].argmax())
    else:
        best = 1 + int((losses - bonus)[1:].argmin())
    chosen = [int(t) for t in triggers[best]]
    detail = {
        "candidates": len(candidates),
        "current_loss": float(losses[0]),
        "moved": True,
        "worse": bool(losses[best] - bonus[best] > losses[0] - bonus[0]),
    }
    method_state = None
    if config.buffer_size > 0:
        selection = float(losses[best] - bonus[best])
        buffer = [list(b) for b in buffer_in]
        if not buffer and not special:
            buffer.append([float(losses[0] - bonus[0]), list(start)])
        if len(buffer) < config.buffer_size:
            buffer.append([selection, chosen])
        elif selection < buffer[-1][0]:
            buffer[-1] = [selection, chosen]
        buffer.sort(key=lambda b: b[0])
        chosen = list(buffer[0][1])
        detail["moved"] = chosen != list(state.trigger)
        method_state = {"buffer": buffer}
    return Move(chosen, detail["moved"], float(losses[best]), detail, method_state)
