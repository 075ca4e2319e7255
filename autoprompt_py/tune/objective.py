"""How a trained model is read and judged: the same label scores ``score`` uses.

Classification: the verbalizer's label scores from the mask logits (``verbalizer.py``: one
forward per number of label-word pieces), loss the cross-entropy over the labels' scores
(PET's), metric accuracy (argmax). Relation mode: the object
token's logit over the vocabulary (or ``--vocab``), loss the cross-entropy over those
candidates, metric P@1 as ``probe`` ranks (no candidate scoring above the gold one).
Examples are encoded once (``encoding.py``), never inside the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from autoprompt_py.continuation import check_aggregation, slot_is_last
from autoprompt_py.data import Example
from autoprompt_py.encoding import Batch, EncodedDataset
from autoprompt_py.errors import AutopromptError
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.slot_scores import batch_label_scores, label_views
from autoprompt_py.template import Template
from autoprompt_py.verbalizer import ResolvedVerbalizer
from autoprompt_py.vocab import single_token_id, vocab_token_ids


@dataclass
class Encoded:
    """One split, encoded once per number of masks; ``gold`` the target of each kept row."""

    datasets: dict[int, EncodedDataset]
    gold: torch.Tensor
    rows: list[int]  # which examples of the split were kept (relation: one-token objects)

    def __len__(self) -> int:
        return len(self.gold)

    def batch(self, indices: Sequence[int], device: torch.device) -> dict[int, Batch]:
        return {k: d.collate(indices).to(device) for k, d in self.datasets.items()}

    def eval_orders(self, batch_size: int) -> list[list[int]]:
        """Length-sorted batches (little padding), as ``scoring.py`` makes them."""
        first = next(iter(self.datasets.values()))
        order = sorted(range(len(first)), key=lambda i: len(first.examples[i].input_ids))
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


class Objective:
    """Scores, loss and hits for one task on one model; ``metric`` names the dev metric.
    ``max_length`` is the model's, less what a method prepends (``peft_methods.py``)."""

    def __init__(
        self,
        template: Template,
        lm: LanguageModel,
        verbalizer: ResolvedVerbalizer | None = None,
        vocab: list[str] | None = None,
        head: bool = False,
    ) -> None:
        self.template = template
        self.lm = lm
        self.tokenizer = tokenizer = lm.tokenizer
        self.max_length = lm.max_length
        self.verbalizer = verbalizer
        self.head = head  # the scores are the head's own label logits
        self.relational = verbalizer is None
        self.metric = "p@1" if self.relational else "accuracy"
        self.candidates: torch.Tensor | None = None
        if self.relational and vocab is not None:
            ids = vocab_token_ids(tokenizer, vocab, template.answer_space)
            if not ids:
                raise AutopromptError("--vocab: none of its words is one token of this model")
            self.candidates = torch.tensor(ids)
        self.vocab_size = lm.vocab_size
        # a decoder reading text after the slot, or words of several tokens: each word is a
        # view of its own, scored as a continuation, as `score` scores it (continuation.py)
        self.after: list[int] | None = None
        if lm.reads_next_token and not head:
            if self.relational and not slot_is_last(template):
                raise AutopromptError(
                    f"template {template.source!r}: on a decoder, a relation is tuned on the "
                    "next token, so [Y] must be last in the template; move it to the end"
                )
            if not self.relational and (not slot_is_last(template) or verbalizer.multi_piece_words):
                check_aggregation(verbalizer.aggregation, template.source)
                first = verbalizer.pieces[0]
                self.after = lm.encoder(template, answer_ids=first).after_slot_ids

    @property
    def piece_counts(self) -> list:
        if self.head:
            return [0]
        if self.verbalizer is None:
            return [1]
        return label_views(self.verbalizer, self.after)

    def encode(self, examples: Sequence[Example], template: Template | None = None) -> Encoded:
        template = template or self.template
        if self.relational:
            space = self.template.answer_space
            ids = [single_token_id(self.tokenizer, e.label, space) for e in examples]
            if self.candidates is not None:
                allowed = set(self.candidates.tolist())
                where = {t: i for i, t in enumerate(self.candidates.tolist())}
                ids = [where[i] if i in allowed else None for i in ids]
            rows = [i for i, t in enumerate(ids) if t is not None]
            gold = torch.tensor([ids[i] for i in rows], dtype=torch.long)
        else:
            labels = self.verbalizer.labels
            rows = list(range(len(examples)))
            gold = torch.tensor([labels.index(e.label) for e in examples], dtype=torch.long)
        kept = [examples[i] for i in rows]
        if not kept:
            raise AutopromptError(
                "no fact has an object that is one token of this model's vocabulary (or of "
                "--vocab); nothing to train or score"
            )
        datasets = {
            k: self.lm.encoder(
                template, n_masks=k if isinstance(k, int) else len(k),
                answer_ids=None if isinstance(k, int) else k, max_length=self.max_length,
            ).encode_all(kept)
            for k in self.piece_counts
        }  # fmt: skip
        return Encoded(datasets, gold, rows)

    def scores(self, logits: dict[int, torch.Tensor]) -> torch.Tensor:
        """[batch, classes]: label scores, or the candidates' logits (relation mode)."""
        if self.head:
            return logits[0].float()
        if self.relational:
            out = logits[1][:, 0].float()
            return out[:, self.candidates.to(out.device)] if self.candidates is not None else out
        return batch_label_scores(logits, self.verbalizer, after=self.after)

    def loss(self, scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the batch: over the labels' scores (as search's ``labels``
        objective and PET), the head's logits, or the candidate tokens."""
        return F.cross_entropy(scores, gold)

    def hits(self, scores: torch.Tensor, gold: torch.Tensor) -> np.ndarray:
        """1 where the gold class is predicted: argmax (classification) or rank 1 (relation)."""
        if self.relational:
            target = scores.gather(1, gold[:, None])
            return ((scores > target).sum(1) == 0).cpu().numpy().astype(np.float64)
        return (scores.argmax(1) == gold).cpu().numpy().astype(np.float64)
