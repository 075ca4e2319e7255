"""What the search minimizes, and the model passes that compute it.

``Objective`` turns mask logits into a per-row loss and a per-row outcome, for either mode:

* ``ClassificationObjective``: the negative log-likelihood of the gold label, the label's words
  aggregated as the verbalizer says (AutoPrompt: log of the summed word probabilities), read
  as ``score`` reads them (``slot_scores.py``); the outcome is the predicted label.
* ``RelationObjective``: the negative log-probability of the object token over the whole
  vocabulary (as AutoPrompt trains); the outcome is the gold token's rank among the evaluation
  vocabulary (LAMA's common vocabulary, or all tokens).

``TriggerScorer`` runs the three passes the search needs over pre-encoded batches, writing
trigger ids into the id tensors by index: the gradient with respect to the trigger embeddings,
the losses of many candidate triggers in one chunked forward, and a full evaluation.

Under torch.distributed every pass is sharded by rows, with the same layer in each method:
the rows are split among the ranks at the start (``distributed.shard_rows``: length-sorted,
every ``world_size``-th) and the per-rank sums are all-reduced at the end, so every rank
holds the same gradient, candidate losses and evaluation; the search loop above runs the
same on every rank and draws from the same seeded generator.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from autoprompt_py import distributed
from autoprompt_py.encoding import Batch
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.metrics import classification_metrics, rank_metrics
from autoprompt_py.model import DTYPES
from autoprompt_py.search.tensors import SplitTensors, length_chunks
from autoprompt_py.slot_scores import batch_label_scores, label_views
from autoprompt_py.verbalizer import ResolvedVerbalizer, consume_logsumexp

Logits = dict[int, torch.Tensor]  # number of masks k → logits [rows, k, vocab]


class Objective:
    """Loss and outcome per row from the logits of every view (number of masks)."""

    mask_counts: tuple[int, ...] = (1,)
    metric: str = ""

    def loss(self, logits: Logits, gold: torch.Tensor) -> torch.Tensor:
        """Per-row loss [rows] (float32)."""
        raise NotImplementedError

    def loss_and_outcome(
        self, logits: Logits, gold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row loss and outcome (predicted label index, or 1-based rank of the gold)."""
        raise NotImplementedError

    def hits(self, outcome: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        """Per-row bool: the main metric counts this row as right."""
        raise NotImplementedError

    def metrics(self, outcome: np.ndarray, gold: np.ndarray, loss: np.ndarray) -> dict:
        """Full metrics of a split, from the outcomes of ``loss_and_outcome``."""
        raise NotImplementedError

    def answer_log_probs(self, logits: Logits) -> torch.Tensor:
        """Log-probabilities over the possible answers [rows, answers] (the labels, or the
        evaluation vocabulary): what contextual calibration divides by p_cf."""
        raise NotImplementedError

    def judge(
        self, log_probs: torch.Tensor, gold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row loss and outcome from answer log-probabilities (``answer_log_probs``, or
        calibrated ones), as ``loss_and_outcome`` reads them."""
        raise NotImplementedError


def _consumable(logits: torch.Tensor) -> torch.Tensor | None:
    """float32 logits that may be overwritten (no autograd through them), or None."""
    if logits.requires_grad:
        return None
    return logits if logits.dtype == torch.float32 else logits.float()


class ClassificationObjective(Objective):
    metric = "accuracy"

    def __init__(
        self,
        verbalizer: ResolvedVerbalizer,
        among_labels: bool = False,
        after: Sequence[int] | None = None,
    ) -> None:
        self.verbalizer = verbalizer
        # True: cross-entropy over the labels' scores (how accuracy reads them); False:
        # AutoPrompt's loss, the gold label's log-probability over the whole vocabulary
        self.among_labels = among_labels
        self.after = None if after is None else list(after)  # a decoder's continuations
        self.mask_counts = tuple(label_views(verbalizer, self.after))

    def label_scores(self, logits: Logits) -> torch.Tensor:
        """The label scores ``score`` gives (``slot_scores.py``); the logits are consumed
        (normalized in place) where no gradient flows through them."""
        return batch_label_scores(logits, self.verbalizer, after=self.after, consume=True)

    def _nll(self, scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        if self.among_labels:
            return F.cross_entropy(scores.float(), gold, reduction="none")
        return self.verbalizer.nll(scores, gold)

    def loss(self, logits: Logits, gold: torch.Tensor) -> torch.Tensor:
        return self._nll(self.label_scores(logits), gold)

    def loss_and_outcome(
        self, logits: Logits, gold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.label_scores(logits)
        return self._nll(scores, gold), scores.argmax(1)

    def hits(self, outcome: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        return outcome == gold

    def answer_log_probs(self, logits: Logits) -> torch.Tensor:
        return self.label_scores(logits).float().log_softmax(-1)

    def judge(
        self, log_probs: torch.Tensor, gold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return -log_probs.gather(1, gold[:, None]).squeeze(1), log_probs.argmax(1)

    def metrics(self, outcome: np.ndarray, gold: np.ndarray, loss: np.ndarray) -> dict:
        names = self.verbalizer.labels
        gold_names, predicted = [names[i] for i in gold], [names[i] for i in outcome]
        out = classification_metrics(gold_names, predicted, names)
        return {**out, "loss": float(loss.mean()) if len(loss) else 0.0}


class RelationObjective(Objective):
    metric = "p@1"

    def __init__(self, eval_ids: Sequence[int] | None, device: torch.device) -> None:
        self.eval_ids = None if eval_ids is None else torch.tensor(sorted(eval_ids), device=device)

    def loss(self, logits: Logits, gold: torch.Tensor) -> torch.Tensor:
        x = _consumable(logits[1][:, 0])
        if x is None:
            logp = F.log_softmax(logits[1][:, 0].float(), dim=-1)
            return -logp.gather(1, gold[:, None]).squeeze(1)
        target = x.gather(1, gold[:, None]).squeeze(1)
        return consume_logsumexp(x) - target

    def loss_and_outcome(
        self, logits: Logits, gold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = logits[1][:, 0].float()
        target = scores.gather(1, gold[:, None])
        among = scores if self.eval_ids is None else scores[:, self.eval_ids]
        rank = (among > target).sum(1) + 1  # before the loss may overwrite the scores
        return self.loss(logits, gold), rank

    def hits(self, outcome: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        return outcome == 1

    def answer_log_probs(self, logits: Logits) -> torch.Tensor:
        scores = logits[1][:, 0].float()
        return (scores if self.eval_ids is None else scores[:, self.eval_ids]).log_softmax(-1)

    def judge(
        self, log_probs: torch.Tensor, gold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        column = gold if self.eval_ids is None else torch.searchsorted(self.eval_ids, gold)
        target = log_probs.gather(1, column[:, None])
        return -target.squeeze(1), (log_probs > target).sum(1) + 1

    def metrics(self, outcome: np.ndarray, gold: np.ndarray, loss: np.ndarray) -> dict:
        return {**rank_metrics(outcome), "loss": float(loss.mean()) if len(loss) else 0.0}


def write_triggers(batch: Batch, trigger: torch.Tensor) -> torch.Tensor:
    """The batch's input ids with ``trigger`` [triggers] written at the trigger positions."""
    ids = batch.input_ids.clone()
    ids.scatter_(1, batch.trigger_positions, trigger[None, :].expand(len(ids), -1))
    return ids


@dataclass
class Cost:
    """Model work done so far, in load-independent units: sequences (one example under one
    trigger, one view) run forward or back-propagated, batched model calls, and candidate
    triggers scored."""

    forward_passes: int = 0
    forward_calls: int = 0
    backward_passes: int = 0
    candidate_evaluations: int = 0

    def record(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Evaluation:
    """Per-example loss and outcome of a split, in the split's order (on the model's device)."""

    loss: torch.Tensor
    outcome: torch.Tensor


class TriggerScorer:
    """The model passes of a trigger search, over encoded batches.

    ``max_batch_tokens`` bounds the padded tokens of one forward (all views together);
    ``max_rows`` bounds its rows (default: 256 on CPU, where short chunks cost nothing extra;
    no bound on GPUs). ``chunk_overhead`` is the fixed cost of one forward call in padded
    tokens: length-sorted chunks are cut where the padding saved pays for another call
    (default: 256 on CPU, 8192 on GPUs, where calls are dear and big batches cheap).
    ``dtype`` other than float32 runs the passes under autocast.
    """

    def __init__(
        self,
        lm: LanguageModel,
        objective: Objective,
        max_batch_tokens: int = 65536,
        max_rows: int | None = None,
        dtype: str = "float32",
        chunk_overhead: int | None = None,
    ) -> None:
        self.lm = lm
        self.objective = objective
        self.max_batch_tokens = max_batch_tokens
        cpu = lm.device.type == "cpu"
        self.max_rows = max_rows if max_rows is not None else (256 if cpu else max_batch_tokens)
        if chunk_overhead is None:
            chunk_overhead = 256 if cpu else 8192
        self.chunk_overhead = chunk_overhead
        self.autocast_dtype = DTYPES[dtype] if dtype != "float32" else None
        # fp16 gradients of a mean loss underflow; the scale does not change the ranking
        self.grad_scale = 1024.0 if dtype == "float16" else 1.0
        self.cost = Cost()
        # called after every model chunk: the search's budget check (budget.Budget.check)
        self.on_chunk: Callable[[], None] | None = None

    def _chunk_done(self) -> None:
        if self.on_chunk is not None:
            self.on_chunk()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.lm.device.type, dtype=self.autocast_dtype)

    def logits(
        self,
        batches: dict[int, Batch],
        ids: dict[int, torch.Tensor] | None = None,
        embeds: dict[int, torch.Tensor] | None = None,
        group: int = 1,
    ) -> Logits:
        """Mask logits of every view, from ids or from input embeddings. ``group`` > 1: the
        rows come in groups of one example under ``group`` triggers, whose text before the
        first trigger a decoder runs once per group (``shared_prefix_logits``)."""
        out = {}
        with self._autocast():
            for k, b in batches.items():
                self.cost.forward_calls += 1
                self.cost.forward_passes += len(b.attention_mask)
                if embeds is not None and torch.is_grad_enabled():
                    self.cost.backward_passes += len(b.attention_mask)
                if group > 1 and ids is not None and embeds is None:
                    args = (b.mask_positions, b.attention_mask, ids[k], b.trigger_positions[:, 0])
                    out[k] = self.lm.shared_prefix_logits(*args, group, b.token_type_ids)
                    continue
                out[k] = self.lm.mask_logits(
                    b.mask_positions,
                    b.attention_mask,
                    input_ids=None if ids is None else ids[k],
                    inputs_embeds=None if embeds is None else embeds[k],
                    token_type_ids=b.token_type_ids,
                )
        return out

    # -- gradient ------------------------------------------------------------------------------

    def gradient(
        self, split: SplitTensors, batches: Sequence[np.ndarray], trigger: torch.Tensor
    ) -> torch.Tensor:
        """Gradient [triggers, dim] of the mean loss with respect to the trigger embeddings,
        averaged over ``batches`` (row indices into ``split``; gradient accumulation).

        The trigger embeddings are one leaf tensor scattered into every row's trigger positions,
        so autograd sums the per-row gradients; model weights are frozen and get no ``.grad``.
        """
        with torch.no_grad():
            leaf = self.lm.word_embeddings(trigger).detach()
        leaf.requires_grad_(True)
        for index in batches:
            scale = self.grad_scale / (len(index) * len(batches))
            split.ensure(index)
            for rows in self._chunks(split, distributed.shard_rows(index, split.lengths), 1):
                views = split.batch(rows)
                embeds = {}
                for k, b in views.items():
                    with torch.no_grad():
                        e = self.lm.word_embeddings(b.input_ids)
                    e[torch.arange(len(e), device=e.device)[:, None], b.trigger_positions] = (
                        leaf.to(e.dtype)[None].expand(len(e), -1, -1)
                    )
                    embeds[k] = e
                loss = self.objective.loss(
                    self.logits(views, embeds=embeds), split.gold[views[self._k0].index]
                )
                (loss.sum() * scale).backward()
                self._chunk_done()
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        return distributed.all_reduce_(grad) / self.grad_scale

    @property
    def _k0(self) -> int:
        return self.objective.mask_counts[0]

    def _chunks(
        self, split: SplitTensors, index: np.ndarray, rows_per_item: int
    ) -> Iterator[np.ndarray]:
        """``index`` in length order, in chunks within the token and row budgets."""
        index = np.asarray(index)
        split.ensure(index)
        lengths = split.lengths
        index = index[np.argsort(lengths[index], kind="stable")]
        yield from length_chunks(
            lengths[index] * len(split.views),
            self.max_batch_tokens,
            self.max_rows,
            index,
            rows_per_item,
            self.chunk_overhead,
        )

    # -- candidates ----------------------------------------------------------------------------

    @torch.inference_mode()
    def candidate_losses(
        self,
        split: SplitTensors,
        index: np.ndarray,
        trigger: torch.Tensor,
        positions: torch.Tensor,
        tokens: torch.Tensor,
        count_hits: bool = False,
    ) -> torch.Tensor:
        """Summed loss over the examples ``index`` of the current trigger and of each flip,
        [1 + flips]; with ``count_hits``, [2, 1 + flips]: summed loss and number of hits.

        Flip ``j`` writes ``tokens[j]`` at trigger slot ``positions[j]``. All (1 + flips) × batch
        rows go through the model together, example-major and in length order, in chunks
        bounded by ``max_batch_tokens`` and ``max_rows``, each cut to its own longest row.
        """
        variants = trigger[None, :].repeat(len(tokens) + 1, 1)  # [1 + flips, triggers]
        variants[torch.arange(1, len(tokens) + 1, device=variants.device), positions] = tokens
        return self.trigger_losses(split, index, variants, count_hits)

    def trigger_losses(
        self,
        split: SplitTensors,
        index: np.ndarray,
        triggers: torch.Tensor,
        count_hits: bool = False,
    ) -> torch.Tensor:
        """Summed loss over the examples ``index`` of each of the full triggers [C, triggers]:
        [C]; with ``count_hits``, [2, C]: summed loss and number of hits.

        The general form of ``candidate_losses`` (a flip is a trigger that differs in one
        slot): all C × batch rows go through the model together, example-major, in chunks.
        """
        per_example = len(triggers)
        self.cost.candidate_evaluations += per_example
        total = torch.zeros(
            2 if count_hits else 1, per_example, dtype=torch.float32, device=split.device
        )
        split.ensure(index)
        index = distributed.shard_rows(index, split.lengths)  # this rank's rows
        for examples in self._chunks(split, index, per_example):
            views = split.batch(np.repeat(examples, per_example))  # example-major rows
            rows_var = triggers.repeat(len(examples), 1)
            ids = {
                k: b.input_ids.scatter_(1, b.trigger_positions, rows_var) for k, b in views.items()
            }
            logits = self.logits(views, ids=ids, group=per_example)
            gold = split.gold[views[self._k0].index]
            if count_hits:
                loss, outcome = self.objective.loss_and_outcome(logits, gold)
                hits = self.objective.hits(outcome, gold).float()
                total += torch.stack([loss, hits]).view(2, len(examples), per_example).sum(1)
            else:
                loss = self.objective.loss(logits, gold)
                total[0] += loss.view(len(examples), per_example).sum(0)
            self._chunk_done()
        distributed.all_reduce_(total)  # the sums over every rank's rows
        return total if count_hits else total[0]

    # -- evaluation ----------------------------------------------------------------------------

    def plan(
        self, split: SplitTensors, index: np.ndarray | None = None
    ) -> list[tuple[torch.Tensor, dict[int, Batch]]]:
        """Evaluation chunks of ``split`` (or of its rows ``index``), cut once for reuse.

        Under torch.distributed, chunks hold at most 1/world_size of the rows, so that
        ``evaluate`` has a chunk for every rank."""
        index = np.arange(len(split)) if index is None else np.asarray(index)
        max_rows = self.max_rows
        if distributed.world_size() > 1:
            max_rows = min(max_rows, -(-len(index) // distributed.world_size()))
        saved, self.max_rows = self.max_rows, max_rows
        try:
            chunks = list(self._chunks(split, index, 1))
        finally:
            self.max_rows = saved
        return [(torch.as_tensor(idx, device=split.device), split.batch(idx)) for idx in chunks]

    @torch.inference_mode()
    def evaluate(
        self,
        split: SplitTensors,
        trigger: torch.Tensor,
        plan: list[tuple[torch.Tensor, dict[int, Batch]]] | None = None,
    ) -> Evaluation:
        """Loss and outcome of the examples of ``split`` in ``plan`` (default: all) with
        ``trigger`` written in; rows outside the plan are zero.

        Under torch.distributed each rank runs every ``world_size``-th chunk of the plan and
        the rows are summed over ranks (zeros elsewhere: exact)."""
        loss = torch.zeros(len(split), dtype=torch.float32, device=split.device)
        outcome = torch.zeros(len(split), dtype=torch.long, device=split.device)
        for idx, views in distributed.mine(plan if plan is not None else self.plan(split)):
            ids = {k: write_triggers(b, trigger) for k, b in views.items()}
            chunk_loss, chunk_outcome = self.objective.loss_and_outcome(
                self.logits(views, ids=ids), split.gold[idx]
            )
            loss[idx] = chunk_loss.float()
            outcome[idx] = chunk_outcome
            self._chunk_done()
        distributed.all_reduce_(loss)
        distributed.all_reduce_(outcome)
        return Evaluation(loss, outcome)
