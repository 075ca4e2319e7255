"""Batched cloze evaluation: label scores for classification, ranks for relation facts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from autoprompt_py import distributed
from autoprompt_py.continuation import report_boundary_merges, require_slot_last
from autoprompt_py.data import Example, check_fields
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.slot_scores import label_scores, template_rows
from autoprompt_py.template import Template
from autoprompt_py.verbalizer import ResolvedVerbalizer
from autoprompt_py.vocab import single_token_id


@dataclass
class Classification:
    """Label scores [examples, labels] in the examples' order; argmax is the prediction."""

    scores: np.ndarray
    labels: list[str]
    truncated: int

    @property
    def predictions(self) -> list[str]:
        return [self.labels[i] for i in self.scores.argmax(1)]


def classify(
    lm: LanguageModel,
    template: Template,
    examples: Sequence[Example],
    verbalizer: ResolvedVerbalizer,
    batch_size: int = 32,
    desc: str | None = None,
) -> Classification:
    """Score every label of every example; one pass per distinct number of label-word pieces."""
    check_fields(examples, template.fields, template.source)
    # a decoder's label rows against the text written out (once: not for content-free rows)
    if examples and examples[0].label is not None:
        report_boundary_merges(lm, template, examples[0], verbalizer.words, verbalizer.pieces)
    rows = template_rows(lm, template, examples, batch_size=batch_size, desc=desc)
    scores = label_scores(rows, verbalizer)
    return Classification(scores.numpy(), verbalizer.labels, rows.truncated)


@dataclass
class Probe:
    """Per fact: the rank of the gold object among the candidates (0 where skipped)."""

    ranks: np.ndarray
    top: list[list[str]]  # the top predictions of each scored fact
    scored: np.ndarray  # bool: the object is one token (and in the vocabulary)
    truncated: int

    @property
    def num_skipped(self) -> int:
        return int((~self.scored).sum())


def probe_facts(
    lm: LanguageModel,
    template: Template,
    facts: Sequence[Example],
    vocab_ids: Sequence[int] | None = None,
    batch_size: int = 64,
    top_k: int = 10,
    desc: str | None = None,
) -> Probe:
    """Rank each fact's object at the prediction slot, over ``vocab_ids`` or the whole vocabulary.

    Facts whose object is not a single token (or not in the vocabulary) are skipped, as LAMA does.
    """
    check_fields(facts, template.fields, template.source)
    require_slot_last(lm, template)
    space = template.answer_space
    ids = (single_token_id(lm.tokenizer, f.label, space) for f in facts)
    gold = np.array([-1 if i is None else i for i in ids], dtype=np.int64)
    if vocab_ids is not None:
        allowed = np.zeros(lm.vocab_size, dtype=bool)
        allowed[list(vocab_ids)] = True
        gold = np.where((gold >= 0) & allowed[np.maximum(gold, 0)], gold, -1)
    scored = gold >= 0
    keep = [f for f, s in zip(facts, scored) if s]
    ranks = np.zeros(len(facts), dtype=np.int64)
    tops: list[list[str]] = [[] for _ in facts]
    positions = np.flatnonzero(scored)
    if not keep:
        return Probe(ranks, tops, scored, 0)
    rows = template_rows(lm, template, keep, batch_size=batch_size, desc=desc)
    candidates = (
        torch.tensor(sorted(vocab_ids), device=lm.device) if vocab_ids is not None else None
    )
    gold_kept = torch.tensor(gold[scored], device=lm.device)
    k = min(top_k, len(candidates) if candidates is not None else lm.vocab_size)
    # filled per batch, then summed over ranks (each rank has its batches, zeros elsewhere)
    kept_ranks = torch.zeros(len(keep), dtype=torch.long)
    kept_top = torch.zeros(len(keep), k, dtype=torch.long)
    for index, logits in rows.mask_logits(1):
        logits = logits[:, 0].float()
        target = logits.gather(1, gold_kept[index.to(lm.device)][:, None])
        if candidates is not None:
            logits = logits[:, candidates]
        rank = (logits > target).sum(1) + 1
        top = logits.topk(k, dim=1).indices
        if candidates is not None:
            top = candidates[top]
        kept_ranks[index] = rank.cpu()
        kept_top[index] = top.cpu()
    distributed.all_reduce_(kept_ranks)
    distributed.all_reduce_(kept_top)
    ranks[positions] = kept_ranks.numpy()
    for r, ids in zip(positions, kept_top.tolist()):
        tops[r] = lm.tokenizer.convert_ids_to_tokens(ids)
    return Probe(ranks, tops, scored, rows.truncated)
