"""Verbalizers: label → words, resolved to token ids per tokenizer, and label scores from logits.

The pipeline is explicit, as in OpenPrompt: *project* the mask logits onto each label word
(a word of k pieces is read at k masks), then *aggregate* the words of a label by one of
``AGGREGATIONS``:

* ``sum``: log of the summed word probabilities (AutoPrompt);
* ``mean-logit``: the mean of the words' raw logits (PET);
* ``mean-logprob``: the mean of the words' log-probabilities (OpenPrompt; the same argmax).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from autoprompt_py.encoding import tokenize_piece
from autoprompt_py.errors import AutopromptError, shown, warn
from autoprompt_py.textfile import parse_json, read_text

AGGREGATIONS = ("sum", "mean-logit", "mean-logprob")


@dataclass(frozen=True)
class Verbalizer:
    """Label → list of plain words, as written in a verbalizer JSON file."""

    words: dict[str, list[str]]
    source: str = "verbalizer"

    @property
    def labels(self) -> list[str]:
        return list(self.words)

    @classmethod
    def from_dict(cls, mapping: dict, source: str = "verbalizer") -> Verbalizer:
        if not isinstance(mapping, dict) or not mapping:
            raise AutopromptError(
                f"{source}: a verbalizer is a JSON object of label → word(s), e.g. "
                '{"0": ["terrible"], "1": ["great"]}'
            )
        words: dict[str, list[str]] = {}
        for label, value in mapping.items():
            items = [value] if isinstance(value, str) else value
            if (
                not isinstance(items, list)
                or not items
                or not all(isinstance(w, str) and w.strip() for w in items)
            ):
                raise AutopromptError(
                    f"{source}: label {label!r} must map to a word or a non-empty list of words"
                )
            words[str(label)] = [w.strip() for w in items]
        _refuse_shared_words(words, source)
        return cls(words, source)

    @classmethod
    def from_file(cls, path: str | Path) -> Verbalizer:
        path = Path(path)
        return cls.from_dict(parse_json(read_text(path, "verbalizer file"), str(path)), str(path))

    def check_labels(self, data_labels: Sequence[str], data_source: str) -> None:
        """Every data label must be in the verbalizer; verbalizer labels the data never uses
        (a one-row file) are only warned about: they are predicted, never gold."""
        missing = [lab for lab in dict.fromkeys(data_labels) if lab not in self.words]
        if missing:
            raise AutopromptError(
                f"{data_source}: labels {', '.join(map(repr, missing))} are not in "
                f"{self.source} (its labels: {', '.join(map(repr, self.words))}); add them to "
                "the verbalizer or choose another --label-field"
            )
        unused = [lab for lab in self.words if lab not in set(data_labels)]
        if unused:
            warn(
                f"{self.source}: labels {', '.join(map(repr, unused))} never occur in "
                f"{data_source}; they can be predicted but never be right "
                "(macro-F1 counts them as 0)"
            )

    def resolve(
        self,
        tokenizer: PreTrainedTokenizerBase,
        aggregation: str = "sum",
        space_before: bool = True,
    ) -> ResolvedVerbalizer:
        """Token ids of every word for this tokenizer (``Ġgreat``, ``▁great``, ``great``)."""
        if aggregation not in AGGREGATIONS:
            raise AutopromptError(
                f"aggregation {aggregation!r}: use one of {', '.join(AGGREGATIONS)}"
            )
        word_label, pieces, flat = [], [], []
        for li, (label, words) in enumerate(self.words.items()):
            for w in words:
                ids = tokenize_piece(tokenizer, w, space_before)
                if not ids or tokenizer.unk_token_id in ids:
                    raise AutopromptError(
                        f"{self.source}: word {w!r} of label {label!r} maps to the unknown "
                        f"token of this model's vocabulary; choose another word"
                    )
                word_label.append(li)
                pieces.append(tuple(ids))
                flat.append(w)
        # "Great" and "great" are one token on an uncased model: the labels would tie
        first: dict[tuple[int, ...], int] = {}
        for w, (p, li) in enumerate(zip(pieces, word_label)):
            other = first.setdefault(p, w)
            if word_label[other] != li:
                raise AutopromptError(
                    f"{self.source}: words {shown(flat[other])} (label "
                    f"{self.labels[word_label[other]]!r}) and {shown(flat[w])} (label "
                    f"{self.labels[li]!r}) are the same tokens for this model, so the labels "
                    "could never be told apart; give each label its own words"
                )
        return ResolvedVerbalizer(self.labels, flat, word_label, pieces, aggregation)


def _refuse_shared_words(words: dict[str, list[str]], source: str) -> None:
    """One word for two labels makes them indistinguishable: refuse, naming word and labels."""
    owner: dict[str, str] = {}
    for label, items in words.items():
        for w in items:
            other = owner.setdefault(w, label)
            if other != label:
                raise AutopromptError(
                    f"{source}: word {shown(w)} is given for labels {other!r} and {label!r}, "
                    "which could then never be told apart; give each label its own words"
                )


def consume_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``x.logsumexp(-1)`` computed in place, destroying ``x``: no [rows, vocab] temporary.

    Without gradients this is the one pass over the vocabulary that normalizing needs;
    ``log_softmax`` would also write a full [rows, vocab] result (memory-bound on CPUs).
    """
    top = x.amax(-1, keepdim=True)
    return x.sub_(top).exp_().sum(-1).log_().add_(top.squeeze(-1))


@dataclass
class ResolvedVerbalizer:
    labels: list[str]
    words: list[str]
    word_label: list[int]
    pieces: list[tuple[int, ...]]
    aggregation: str

    @property
    def piece_counts(self) -> list[int]:
        """The distinct numbers of masks needed: one forward pass per number."""
        return sorted({len(p) for p in self.pieces})

    @property
    def multi_piece_words(self) -> list[str]:
        return [w for w, p in zip(self.words, self.pieces) if len(p) > 1]

    @property
    def token_ids(self) -> list[int]:
        """Every token id used by a label word."""
        return sorted({t for p in self.pieces for t in p})

    def word_scores(
        self, logits: torch.Tensor, consume: bool = False, normalize: bool = True
    ) -> tuple[list[int], torch.Tensor]:
        """Scores of the words with k pieces from logits [batch, k, vocab] at their k masks.

        Returns the word indices and [batch, words]: the mean piece logit (mean-logit) or the
        summed piece log-probabilities (otherwise). ``consume``: without autograd, the
        normalizer is computed in place, overwriting float32 ``logits`` (the search's hot path:
        the same numbers, no [batch, k, vocab] temporary). ``normalize=False`` leaves out the
        vocabulary's log-normalizer, the same for every word of a row with k pieces: for a
        caller that normalises the label scores over the labels, and whose words all have the
        same number of pieces, the result is the same (``predict``: a tenth of its time).
        """
        batch, k, _ = logits.shape
        idx = [w for w, p in enumerate(self.pieces) if len(p) == k]
        if not idx:
            return idx, logits.new_zeros(batch, 0)
        ids = torch.tensor([self.pieces[w] for w in idx], device=logits.device)  # [words, k]
        picked = logits.gather(2, ids.T.unsqueeze(0).expand(batch, -1, -1)).float()
        if not normalize:
            pass
        elif self.aggregation != "mean-logit" and consume and not logits.requires_grad:
            x = logits if logits.dtype == torch.float32 else logits.float()
            picked -= consume_logsumexp(x)[..., None]
        elif self.aggregation != "mean-logit":
            # log-probabilities of the picked tokens only: no [batch, k, vocab] log_softmax copy
            picked = picked - logits.float().logsumexp(-1, keepdim=True)
        return idx, picked.mean(1) if self.aggregation == "mean-logit" else picked.sum(1)

    def aggregate(self, word_scores: torch.Tensor) -> torch.Tensor:
        """Label scores [batch, labels] from word scores [batch, words]."""
        device = word_scores.device
        member = torch.zeros(len(self.labels), len(self.words), dtype=torch.bool, device=device)
        member[self.word_label, list(range(len(self.words)))] = True
        if self.aggregation == "sum":
            expanded = word_scores.unsqueeze(1).masked_fill(~member, float("-inf"))
            return expanded.logsumexp(-1)
        weights = member.float() / member.sum(1, keepdim=True)
        return word_scores @ weights.T

    def label_scores(
        self, logits_by_masks: dict[int, torch.Tensor], consume: bool = False
    ) -> torch.Tensor:
        """Label scores [batch, labels] from mask logits {k: [batch, k, vocab]} of one batch
        (``consume``: see ``word_scores``)."""
        first = next(iter(logits_by_masks.values()))
        scores = first.new_empty(first.shape[0], len(self.words), dtype=torch.float32)
        for logits in logits_by_masks.values():
            idx, values = self.word_scores(logits, consume)
            scores[:, idx] = values
        return self.aggregate(scores)

    def nll(self, scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        """Per-example negative log-likelihood of the gold label, from ``label_scores``."""
        if self.aggregation == "mean-logit":
            return F.cross_entropy(scores, gold, reduction="none")
        return -scores.gather(1, gold[:, None]).squeeze(1)
