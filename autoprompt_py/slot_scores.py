"""Scores at the answer slot: the one path from model outputs to label and candidate scores.

``score`` (``scoring.classify``), ``probe`` (``probing``) and ``predict`` (any prompt, a
tuned one included) all read their rows through a ``SlotRows`` and turn them into scores
here (``label_scores``, ``candidate_scores``; ``batch_label_scores`` for the
batches of search and tuning, read in every view at once). A ``SlotRows`` says how its rows are read: logits at k masks (a masked model's masks,
a decoder's position before the slot) batch by batch, or, where a decoder must read the
candidates as continuations (text after the slot, answers of several tokens:
``continuation.py``), each candidate's log-likelihood. Which of the two applies is the
rows' question, asked once here, so a fix to either path is one edit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from autoprompt_py import distributed
from autoprompt_py.continuation import (
    check_aggregation,
    continuation_log_probs,
    needs_continuation,
    require_slot_last,
    word_log_likelihoods,
)
from autoprompt_py.data import Example
from autoprompt_py.encoding import Batch, EncodedDataset
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.template import Template
from autoprompt_py.verbalizer import ResolvedVerbalizer

Candidates = Sequence[Sequence[int]]


@dataclass
class SlotRows:
    """``n`` rows read at the answer slot of the prompt ``name``.

    ``mask_logits(k)``: (row indices [batch] on the CPU, logits [batch, k, vocab]) for this
    process's share of the batches (the others' rows stay zero and are summed over
    processes). ``continued(candidates)``: whether the candidates are read as continuations
    (None: the whole vocabulary, which is never; a decoder that cannot refuses there);
    ``continuation(candidates)``: their log-likelihoods [rows, candidates], summed over
    processes already. ``truncated``: inputs cut, the most over the reads made.
    """

    n: int
    name: str
    vocab_size: int
    mask_logits: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]
    continued: Callable[[Candidates | None], bool]
    continuation: Callable[[Candidates], tuple[torch.Tensor, int]]
    truncated: int = 0

    def read_continuation(self, candidates: Candidates) -> torch.Tensor:
        scores, truncated = self.continuation(candidates)
        self.truncated = max(self.truncated, truncated)
        return scores


def label_scores(
    rows: SlotRows, verbalizer: ResolvedVerbalizer, *, over_labels: bool = False
) -> torch.Tensor:
    """Label scores [rows, labels] (``verbalizer.aggregate`` of its words' scores), one pass
    per number of label-word pieces. ``over_labels``: the caller normalises the scores over
    the labels, so the vocabulary's normalizer, the same for every word of k pieces in a row,
    is left out where every word has the same k (the same result, a tenth of the time)."""
    if rows.continued(verbalizer.pieces):
        check_aggregation(verbalizer.aggregation, rows.name)
        return verbalizer.aggregate(rows.read_continuation(verbalizer.pieces))
    word_scores = torch.zeros(rows.n, len(verbalizer.words))
    normalize = not over_labels or len(verbalizer.piece_counts) > 1
    for k in verbalizer.piece_counts:
        for index, logits in rows.mask_logits(k):
            idx, values = verbalizer.word_scores(logits, normalize=normalize)
            word_scores[index[:, None], idx] = values.float().cpu()
    distributed.all_reduce_(word_scores)  # each process scored its batches; zeros elsewhere
    return verbalizer.aggregate(word_scores)


def candidate_scores(rows: SlotRows, candidates: Sequence[int] | None) -> np.ndarray:
    """Log-softmax over the candidate tokens (None: the whole vocabulary) at the slot,
    [rows, candidates] float32."""
    as_words = None if candidates is None else [(c,) for c in candidates]
    if rows.continued(as_words):
        return rows.read_continuation(as_words).log_softmax(-1).numpy()
    width = rows.vocab_size if candidates is None else len(candidates)
    out = torch.zeros(rows.n, width, dtype=torch.float32)
    cand = None if candidates is None else torch.tensor(list(candidates))
    for index, logits in rows.mask_logits(1):
        logits = logits[:, 0].float()
        if cand is not None:
            cand = cand.to(logits.device)  # copied once: later batches find it there
            logits = logits[:, cand]
        out[index] = logits.log_softmax(-1).cpu()
    distributed.all_reduce_(out)  # zeros where another process scored the batch
    return out.numpy()


def label_views(
    verbalizer: ResolvedVerbalizer, after: Sequence[int] | None = None
) -> list[int] | list[tuple[int, ...]]:
    """The views a batch is read in for ``batch_label_scores``: one per number of masks, or,
    a decoder reading the words as continuations (``after``: the ids after the slot), one
    per word, keyed by its tokens (``TemplateEncoder(answer_ids=...)``)."""
    if after is not None:
        return [tuple(p) for p in verbalizer.pieces]
    return list(verbalizer.piece_counts)


def batch_label_scores(
    logits: Mapping[int | tuple[int, ...], torch.Tensor],
    verbalizer: ResolvedVerbalizer,
    *,
    after: Sequence[int] | None = None,
    consume: bool = False,
) -> torch.Tensor:
    """Label scores [batch, labels] of one batch read in every view at once (``label_views``),
    as search and tuning read theirs, with autograd; the numbers ``label_scores`` gives for
    the same rows. ``consume``: see ``ResolvedVerbalizer.word_scores``."""
    if after is not None:
        return verbalizer.aggregate(word_log_likelihoods(logits, verbalizer.pieces, after))
    return verbalizer.label_scores(logits, consume)


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


def continued(lm: LanguageModel, template: Template, candidates: Candidates | None) -> bool:
    """Whether ``template``'s candidates are read as continuations on ``lm``; the whole
    vocabulary (None) never is: a decoder with text after the slot is refused there."""
    if candidates is None:
        require_slot_last(lm, template)
        return False
    return needs_continuation(lm, template, candidates)


def template_rows(
    lm: LanguageModel,
    template: Template,
    examples: Sequence[Example],
    *,
    batch_size: int,
    desc: str | None = None,
) -> SlotRows:
    """``examples`` in ``template`` on ``lm``, in length-sorted batches of ``batch_size``
    (``desc``: a progress bar's title)."""
    rows: SlotRows

    def mask_logits(k: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dataset = lm.encoder(template, n_masks=k).encode_all(examples)
        rows.truncated = max(rows.truncated, dataset.num_truncated)
        for batch, logits in iter_mask_logits(lm, dataset, batch_size, desc):
            yield batch.index.cpu(), logits

    rows = SlotRows(
        n=len(examples),
        name=template.source,
        vocab_size=lm.vocab_size,
        mask_logits=mask_logits,
        continued=lambda c: continued(lm, template, c),
        continuation=lambda c: continuation_log_probs(lm, template, examples, c, batch_size, desc),
    )
    return rows
