"""The AutoPrompt step (Shin et al., 2020): one slot, HotFlip candidates, accept only if better.

1. the gradient of the mean loss with respect to the trigger embeddings, over
   ``accumulation_steps`` random batches;
2. for the slot(s) chosen (``random``: one at random, as AutoPrompt; ``sweep``: each slot in
   turn; ``all``: every slot), the top ``num_cand`` HotFlip candidates after the filters;
3. the current trigger and every candidate flip scored together on fresh batches (as many as
   the gradient's, as the original code does), the same examples for all, in one chunked
   forward; the best flip replaces the current trigger only if its summed loss is strictly
   lower (or, with ``select="metric"``, its number of hits strictly higher).

A slot holding a special token ([MASK] at the start) is chosen before any other and its best
flip is always taken: the original keeps a [MASK] whenever no flip of it beats it, and a
[MASK] is not a prompt anyone can reuse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autoprompt_py.search.move import Move

if TYPE_CHECKING:
    import numpy as np

    from autoprompt_py.search.move import SearchView
    from autoprompt_py.search.state import SearchState

# numpy, torch and the candidate code load when a search runs, not when the registry (and
# with it the CLI's --method help) reads this class


class AutoPrompt:
    """The AutoPrompt method (``method.Method``); it keeps no state of its own."""

    name = "autoprompt"
    help = "one slot's HotFlip flips, taken only if better (Shin et al., 2020)"
    options = ("num_cand", "position")
    # AutoPrompt's 10 (few candidates, many rows)
    accumulation = {"classification": 10, "relation": 10}

    def check(self, config: Any, slots: int) -> None:
        pass  # --position, --num-cand: checked by SearchConfig (any slot count works)

    def prepare(self, search: SearchView) -> None:
        from autoprompt_py.search.candidates import warn_candidates

        warn_candidates(search.allowed, "--num-cand", search.config.num_cand)

    def propose(self, search: SearchView, state: SearchState, rng: np.random.Generator) -> Move:
        return propose(search, state, rng)


def _slots(search: SearchView, state: SearchState, rng: np.random.Generator) -> list[int]:
    n_slots = len(state.trigger)
    special = search.special_slots(state.trigger)
    position = search.config.position
    if position == "random":
        return (
            [int(special[rng.integers(len(special))])] if special else [int(rng.integers(n_slots))]
        )
    if position == "sweep":
        first = state.restart_iteration % n_slots
        order = [(first + j) % n_slots for j in range(n_slots)]
        return [next((j for j in order if j in special), first)]
    return special or list(range(n_slots))


def propose(search: SearchView, state: SearchState, rng: np.random.Generator) -> Move:
    import numpy as np
    import torch

    from autoprompt_py.search.candidates import hotflip_candidates

    config = search.config
    grad_batches, candidate_rows = search.sample(rng)
    slots = _slots(search, state, rng)
    forced = bool(search.special_slots(state.trigger))

    trigger = search.ids(state.trigger)
    grad = search.scorer.gradient(search.train, grad_batches, trigger)
    slot_tensor = search.ids(slots)
    candidates = hotflip_candidates(
        grad[slot_tensor], search.embeddings, search.allowed, config.num_cand, trigger[slot_tensor]
    )
    positions = slot_tensor.repeat_interleave(candidates.shape[1])
    tokens = candidates.reshape(-1)
    flipped = np.repeat(np.asarray(state.trigger)[None], len(tokens), axis=0)
    flipped[np.arange(len(tokens)), positions.cpu().numpy()] = tokens.cpu().numpy()
    keep = torch.as_tensor(search.retokenizes(flipped), device=tokens.device)
    if not bool(keep.any()):  # every flip fails to read back as text: stay
        return Move(
            list(state.trigger), False, float("nan"), {"position": slots[0], "accepted": False}
        )
    positions, tokens = positions[keep], tokens[keep]
    by_hits = config.select == "metric"
    scores = search.scorer.candidate_losses(
        search.train, candidate_rows, trigger, positions, tokens, count_hits=by_hits
    ).tolist()
    losses, hits = (scores[0], scores[1]) if by_hits else (scores, None)
    size = len(candidate_rows)
    if config.fluency:
        variants = trigger[None, :].repeat(len(tokens) + 1, 1)
        variants[np.arange(1, len(tokens) + 1), positions] = tokens
        bonus = (search.fluency_bonus(variants) * size).tolist()
    else:
        bonus = [0.0] * len(losses)
    flips = range(1, len(losses))
    if hits is None:  # lowest loss (minus the fluency bonus)
        best = min(flips, key=lambda j: losses[j] - bonus[j])
        accepted = losses[best] - bonus[best] < losses[0] - bonus[0]
    else:  # most hits (plus the bonus), ties to the lower loss
        best = max(flips, key=lambda j: (hits[j] + bonus[j], -losses[j]))
        accepted = hits[best] + bonus[best] > hits[0] + bonus[0]
    accepted = accepted or forced
    new_trigger = list(state.trigger)
    position = slots[0]
    if accepted:
        position = int(positions[best - 1])
        new_trigger[position] = int(tokens[best - 1])
    return Move(
        new_trigger,
        accepted,
        (losses[best] if accepted else losses[0]) / size,
        {"position": position, "accepted": accepted},
    )
