"""Batched cloze evaluation: label scores for classification, ranks for relation facts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from autoprompt_py import distributed
from autoprompt_py.continuation import (
    check_aggregation,
    continuation_log_probs,
    needs_continuation,
    report_boundary_merges,
    require_slot_last,
)
from autoprompt_py.data import Example, check_fields
from autoprompt_py.encoding import Batch, EncodedDataset
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.template import Template
from autoprompt_py.verbalizer import ResolvedVerbalizer
from autoprompt_py.vocab import single_token_id


def iter_mask_logits(
    lm: LanguageModel,
    dataset: EncodedDataset,
    batch_size: int,
    desc: str | None = None,
) -> Iterator[tuple[Batch, torch.Tensor]]:
    """(batch, logits [batch, masks, vocab]) over the dataset in length-sorted batches.

    Under torch.distributed each rank gets every ``world_size``-th batch (the same batches as
    one process makes, so the same numbers); callers fill zeros elsewhere and sum over ranks.
    """
    world, rank = distributed.world_size(), distributed.rank()
    with (
        torch.inference_mode(),
        tqdm(total=len(dataset), desc=desc, unit="ex", disable=desc is None, leave=False) as bar,
    ):
        for i, batch in enumerate(dataset.batches(batch_size)):
            if i % world != rank:
                bar.update(len(batch.index))  # the others' share, done meanwhile
                continue
            b = batch.to(lm.device)
            logits = lm.mask_logits(
                b.mask_positions,
                b.attention_mask,
                input_ids=b.input_ids,
                token_type_ids=b.token_type_ids,
            )
            yield b, logits
            bar.update(len(batch.index))


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
    if needs_continuation(lm, template, verbalizer.pieces):  # a decoder: see continuation.py
        check_aggregation(verbalizer.aggregation, template.source)
        words, truncated = continuation_log_probs(
            lm, template, examples, verbalizer.pieces, batch_size, desc
        )
        scores = verbalizer.aggregate(words)
        return Classification(scores.numpy(), verbalizer.labels, truncated)
    word_scores = torch.zeros(len(examples), len(verbalizer.words))
    truncated = 0
    for k in verbalizer.piece_counts:
        encoder = lm.encoder(template, n_masks=k)
        dataset = encoder.encode_all(examples)
        truncated = max(truncated, dataset.num_truncated)
        for batch, logits in iter_mask_logits(lm, dataset, batch_size, desc):
            idx, values = verbalizer.word_scores(logits)
            word_scores[batch.index.cpu()[:, None], idx] = values.float().cpu()
    distributed.all_reduce_(word_scores)  # each rank scored its batches; zeros elsewhere
    scores = verbalizer.aggregate(word_scores)
    return Classification(scores.numpy(), verbalizer.labels, truncated)


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
    encoder = lm.encoder(template)
    dataset = encoder.encode_all(keep)
    candidates = (
        torch.tensor(sorted(vocab_ids), device=lm.device) if vocab_ids is not None else None
    )
    gold_kept = torch.tensor(gold[scored], device=lm.device)
    k = min(top_k, len(candidates) if candidates is not None else lm.vocab_size)
    # filled per batch, then summed over ranks (each rank has its batches, zeros elsewhere)
    kept_ranks = torch.zeros(len(keep), dtype=torch.long)
    kept_top = torch.zeros(len(keep), k, dtype=torch.long)
    for batch, logits in iter_mask_logits(lm, dataset, batch_size, desc):
        logits = logits[:, 0].float()
        target = logits.gather(1, gold_kept[batch.index][:, None])
        if candidates is not None:
            logits = logits[:, candidates]
        rank = (logits > target).sum(1) + 1
        top = logits.topk(k, dim=1).indices
        if candidates is not None:
            top = candidates[top]
        kept_ranks[batch.index.cpu()] = rank.cpu()
        kept_top[batch.index.cpu()] = top.cpu()
    distributed.all_reduce_(kept_ranks)
    distributed.all_reduce_(kept_top)
    ranks[positions] = kept_ranks.numpy()
    for r, ids in zip(positions, kept_top.tolist()):
        tops[r] = lm.tokenizer.convert_ids_to_tokens(ids)
    return Probe(ranks, tops, scored, dataset.num_truncated)
