"""How natural a trigger reads: the masked-LM pseudo-log-likelihood of its tokens.

Usage (what the search calls)::

    from autoprompt_py.search.fluency import TriggerFluency, pseudo_perplexity

    fluency = TriggerFluency(lm, task.template)  # encodes the context once
    pll = fluency.pll(candidates)  # LongTensor [C, L] trigger ids -> FloatTensor [C]
    score = score + weight * pll  # e.g. --fluency W: W x PLL added to the selection score
    fluency.perplexity(best_ids)  # float, for the result file
    fluency.forward_passes, fluency.forward_calls  # rows run, model calls (for the cost)

The pseudo-log-likelihood (PLL) of Salazar et al. (2020), "Masked Language Model Scoring":
each trigger token is masked in turn, in context, and the log-probability the masked LM gives
it there is summed over the trigger slots. ``pseudo_perplexity`` is ``exp(-PLL / L)``.

The context is the template itself with its trigger slots filled, its literal words kept, its
prediction slot as one mask token and its fields removed (empty): for
``{sentence} [T] [T] [T] [P] .`` a trigger ``a b c`` is scored in ``[CLS] a b c [MASK] .
[SEP]``. Without the fields the score belongs to the prompt alone, the same for every example,
so a candidate costs L rows (one per slot) rather than L per example; and it rates the trigger
as part of the text a user would reuse. Pass ``example=`` to score inside one example instead.
Only the trigger tokens are scored: literal words are context, not part of the sum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from autoprompt_py.data import Example, check_fields
from autoprompt_py.errors import AutopromptError
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.template import Template


def pseudo_perplexity(pll: float | torch.Tensor, n_tokens: int) -> float | torch.Tensor:
    """``exp(-pll / n_tokens)``: a float for a float, elementwise for a tensor."""
    if n_tokens < 1:
        raise ValueError("pseudo-perplexity needs at least one token")
    if isinstance(pll, torch.Tensor):
        return torch.exp(-pll / n_tokens)
    return math.exp(-pll / n_tokens)


class TriggerFluency:
    """Pseudo-log-likelihoods of candidate triggers for one template and masked LM.

    The context is encoded once; ``pll`` runs C×L rows (candidate × masked slot) through the
    model under ``torch.inference_mode`` in chunks of at most ``max_rows`` rows, the MLM head
    only at the masked slot. ``forward_passes`` counts rows run, ``forward_calls`` model calls.
    """

    def __init__(
        self,
        lm: LanguageModel,
        template: Template,
        example: Example | None = None,
        max_rows: int = 1024,
    ) -> None:
        if template.num_triggers == 0:
            raise AutopromptError(
                f"template {template.source!r} has no trigger slot [T] whose fluency to score"
            )
        if max_rows < 1:
            raise AutopromptError("fluency: max_rows must be positive")
        if example is None:
            example = Example({name: "" for name in template.fields}, source="fluency context")
        else:
            check_fields([example], template.fields, template.source)
        encoded = lm.encoder(template).encode(example)
        device = lm.device
        self.lm = lm
        self.max_rows = max_rows
        self.input_ids = torch.tensor(encoded.input_ids, dtype=torch.long, device=device)
        self.token_type_ids = torch.tensor(encoded.token_type_ids, dtype=torch.long, device=device)
        self.trigger_positions = torch.tensor(
            encoded.trigger_positions, dtype=torch.long, device=device
        )
        self.forward_passes = 0
        self.forward_calls = 0

    @property
    def n_triggers(self) -> int:
        return len(self.trigger_positions)

    def _as_batch(self, triggers: torch.Tensor | Sequence) -> torch.Tensor:
        ids = torch.as_tensor(triggers, dtype=torch.long, device=self.lm.device)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] != self.n_triggers:
            raise AutopromptError(
                f"fluency: triggers of shape {tuple(ids.shape)}; the template has "
                f"{self.n_triggers} trigger slots, so give [candidates, {self.n_triggers}] ids"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.lm.vocab_size):
            raise AutopromptError(
                f"fluency: trigger ids must lie in [0, {self.lm.vocab_size}) for {self.lm.name}"
            )
        return ids

    def token_log_probs(self, triggers: torch.Tensor | Sequence) -> torch.Tensor:
        """log p(token | rest) per slot, float32 [C, L], each slot masked in turn (on a
        decoder: log p(token | the text before it), all slots of a candidate in one row)."""
        ids = self._as_batch(triggers)
        if self.lm.reads_next_token:  # log p(token | the text before it), not masked in turn
            return self._causal_log_probs(ids)
        n_cand, n_slots = ids.shape
        n_rows = n_cand * n_slots
        out = torch.empty(n_rows, dtype=torch.float32, device=ids.device)
        mask_id = self.lm.mask_token_id
        # row r is candidate r // L with its slot r % L masked
        cand_of_row = torch.arange(n_cand, device=ids.device).repeat_interleave(n_slots)
        slot_of_row = torch.arange(n_slots, device=ids.device).repeat(n_cand)
        targets = ids.reshape(-1)
        with torch.inference_mode():
            for start in range(0, n_rows, self.max_rows):
                rows = slice(start, min(start + self.max_rows, n_rows))
                cand, slot = cand_of_row[rows], slot_of_row[rows]
                n = len(cand)
                row_ids = self.input_ids.expand(n, -1).clone()
                row_ids[:, self.trigger_positions] = ids[cand]
                masked_at = self.trigger_positions[slot]
                row_ids[torch.arange(n, device=ids.device), masked_at] = mask_id
                logits = self.lm.mask_logits(
                    masked_at[:, None],
                    attention_mask=torch.ones_like(row_ids),
                    input_ids=row_ids,
                    token_type_ids=self.token_type_ids.expand(n, -1),
                )[:, 0].float()
                gold = logits.gather(-1, targets[rows, None])[:, 0]
                out[rows] = gold - logits.logsumexp(-1)
                self.forward_passes += n
                self.forward_calls += 1
        # a normal tensor again, so callers may mix it into tensors that autograd records
        return out.reshape(n_cand, n_slots).clone()

    def _causal_log_probs(self, ids: torch.Tensor) -> torch.Tensor:
        """A decoder's log-likelihood of each trigger token given the text before it: one row
        per candidate; a trigger at the very start is read after the bos (or eos) token."""
        context, at = self.input_ids, self.trigger_positions
        if int(at[0]) == 0:
            tok = self.lm.tokenizer
            start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            context = torch.cat([context.new_tensor([start or 0]), context])
            at = at + 1
        out = torch.empty(ids.shape, dtype=torch.float32, device=ids.device)
        with torch.inference_mode():
            for start in range(0, len(ids), self.max_rows):
                rows = slice(start, start + self.max_rows)
                row_ids = context.expand(len(ids[rows]), -1).clone()
                row_ids[:, at] = ids[rows]
                logits = self.lm.mask_logits(
                    (at - 1).expand(len(row_ids), -1),
                    torch.ones_like(row_ids),
                    input_ids=row_ids,
                ).float()
                gold = logits.gather(-1, ids[rows, :, None])[..., 0]
                out[rows] = gold - logits.logsumexp(-1)
                self.forward_passes += len(row_ids)
                self.forward_calls += 1
        return out.clone()

    def pll(self, triggers: torch.Tensor | Sequence) -> torch.Tensor:
        """Pseudo-log-likelihood of each candidate trigger: [C, L] ids → float32 [C]."""
        return self.token_log_probs(triggers).sum(-1)

    def perplexities(self, triggers: torch.Tensor | Sequence) -> torch.Tensor:
        """Pseudo-perplexity of each candidate trigger: [C, L] ids → float32 [C]."""
        return pseudo_perplexity(self.pll(triggers), self.n_triggers)

    def perplexity(self, trigger: torch.Tensor | Sequence[int]) -> float:
        """Pseudo-perplexity of one trigger (L ids)."""
        ids = self._as_batch(trigger)
        if len(ids) != 1:
            raise AutopromptError(f"fluency: perplexity takes one trigger, not {len(ids)}")
        return float(self.perplexities(ids)[0])
