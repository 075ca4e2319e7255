"""The classification objective of a trigger search on a decoder whose template has text after
the slot, or label words of several tokens: each label word is a view of its own (the word's
tokens written into the slot, ``encoding.TemplateEncoder(answer_ids=...)``), and its score is
the log-probability of the word's tokens and of the text after the slot, given the text before
it with the trigger (``continuation.py``'s definition, which ``score`` uses)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from autoprompt_py.continuation import word_log_likelihoods
from autoprompt_py.search.scorer import ClassificationObjective, Logits
from autoprompt_py.verbalizer import ResolvedVerbalizer


class ContinuationObjective(ClassificationObjective):
    """Views keyed by each word's token ids; ``after`` the ids of the text after the slot."""

    def __init__(
        self, verbalizer: ResolvedVerbalizer, among_labels: bool, after: Sequence[int]
    ) -> None:
        super().__init__(verbalizer, among_labels)
        self.mask_counts = tuple(tuple(p) for p in verbalizer.pieces)  # one view per word
        self.after = list(after)

    def label_scores(self, logits: Logits) -> torch.Tensor:
        """Word log-likelihoods from each word's view, aggregated over each label's words as
        ``score`` does."""
        words = word_log_likelihoods(logits, self.verbalizer.pieces, self.after)
        return self.verbalizer.aggregate(words)
