"""Continuation scoring on decoders: each candidate (a label word, a relation object) scored as
the log-probability of its tokens *and of the template text after the slot*, given the text
before the slot (lm-evaluation-harness's log-likelihood), batched one candidate per row.

Used where reading the next token at the slot is not enough: text follows the slot
(``{sentence} It was [P] .``) or a candidate has several tokens. Where the slot is last and
every candidate is one token, one forward gives them all (``CausalLM.mask_logits``).
The template is encoded once per example (``encoding.py``: the text before and after the slot,
the slot itself holding no token); each row is that text with a candidate's tokens inserted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from autoprompt_py import distributed
from autoprompt_py.chat import render, tokenize_rendered
from autoprompt_py.data import Example
from autoprompt_py.errors import AutopromptError, warn
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.template import Field, Literal, Part, Predict, Template, Trigger


def slot_is_last(template: Template) -> bool:
    """True when nothing follows the prediction slot in the template."""
    return isinstance(template.segments[-1][-1], Predict)


def needs_continuation(
    lm: LanguageModel, template: Template, candidates: Sequence[Sequence[int]] | None
) -> bool:
    """True for a decoder that must score candidates as continuations (see the module doc)."""
    if not lm.reads_next_token:
        return False
    return not slot_is_last(template) or any(len(c) > 1 for c in candidates or ())


def require_slot_last(lm: LanguageModel, template: Template) -> None:
    """Ranking the whole vocabulary on a decoder reads the next token, so [Y] must be last
    (text after it would make every token of the vocabulary a continuation to score)."""
    if needs_continuation(lm, template, None):
        raise AutopromptError(
            f"template {template.source!r}: on a decoder, relation probing over the whole "
            "vocabulary needs [Y] last in the template; move [Y] to the end, or give --vocab "
            "(its words are then scored as continuations)"
        )


def require_next_token(
    lm: LanguageModel, template: Template, mask_counts: Sequence[int], command: str
) -> None:
    """``command`` on a decoder reads the next token at the slot: the slot must be last and
    every answer one token (continuation losses are not searched over there)."""
    if not lm.reads_next_token:
        return
    if not slot_is_last(template):
        raise AutopromptError(
            f"template {template.source!r}: '{command}' on a decoder needs the answer slot "
            "last (text after it is scored by 'score' and 'predict', not searched over); end "
            "the template with [P]"
        )
    if max(mask_counts) > 1:
        raise AutopromptError(
            f"'{command}' on a decoder needs label words of one token each (with their "
            "leading space); choose single-token words for the verbalizer"
        )


def written_out(lm: LanguageModel, template: Template, example: Example, answer: str) -> str:
    """The example's text as a user would write it, with ``answer`` in the slot; in a chat,
    the text before the slot rendered as the user's message by the chat template, and the
    answer right after its generation prompt."""
    parts = template.parts
    if template.chat is None:
        return _joined(lm, parts, example, answer)
    at = parts.index(template.predict)
    user = _joined(lm, parts[:at], example, answer)
    return render(lm.tokenizer, template.chat, user) + _joined(lm, parts[at:], example, answer)


def _joined(lm: LanguageModel, parts: Sequence[Part], example: Example, answer: str) -> str:
    out: list[str] = []
    for p in parts:
        if isinstance(p, Literal):
            text = p.text
        elif isinstance(p, Field):
            text = example.fields[p.name].strip()
        elif isinstance(p, Trigger):
            text = lm.tokenizer.decode([p.token_id]).strip() if p.token_id is not None else ""
        else:
            text = answer
        if text:
            out.append((" " if p.space_before and out else "") + text)
    return "".join(out)


def report_boundary_merges(
    lm: LanguageModel, template: Template, example: Example, words: Sequence[str],
    pieces: Sequence[Sequence[int]],
) -> None:  # fmt: skip
    """Warn when a label word's row (the template's pieces, each tokenized on its own) is not
    what the tokenizer makes of the text written out: a merge across a boundary, or a
    SentencePiece ``▁`` before text that follows without a space. Checked on one example."""
    vocab = len(lm.tokenizer)  # a soft prompt's slots are ids past it: they have no text
    if not lm.reads_next_token or any(t is None or t >= vocab for t in template.trigger_ids):
        return
    encoder = lm.encoder(template)
    enc = encoder.encode(example)
    p = enc.mask_positions[0]
    end = len(enc.input_ids) - len(encoder.layout.suffix)
    prefix = [i for i, _ in encoder.layout.prefix]
    for word, ids in zip(words, pieces):
        row = enc.input_ids[: p + 1] + list(ids) + enc.input_ids[p + 1 : end]
        whole = tokenize_rendered(lm.tokenizer, written_out(lm, template, example, word), prefix)
        whole = whole[: len(whole) - len(encoder.layout.suffix)]
        if row != whole:
            where = example.source or "the first example"
            what = "the spaces around the slot"
            if template.chat is not None:
                what += " (in a chat: the words next to the chat template's own text)"
            warn(
                f"template {template.source!r}, label word {word!r}: written out, the text "
                f"tokenizes differently from the template's pieces ({where}); scores are of "
                f"the pieces — check {what}"
            )
            return


def word_log_likelihoods(
    logits: Mapping[tuple[int, ...], torch.Tensor],
    pieces: Sequence[Sequence[int]],
    after: Sequence[int],
) -> torch.Tensor:
    """[rows, words]: each word's log-likelihood with the text after the slot (``after``
    ids), from its own view's logits [rows, tokens, vocab] read at the position before each
    token (``TemplateEncoder(answer_ids=word)``): the search's and tuning's form of
    ``continuation_log_probs``."""
    columns = []
    for p in pieces:
        x = logits[tuple(p)]
        t = torch.tensor([*p, *after], device=x.device)[None, :, None].expand(len(x), -1, 1)
        columns.append((x.gather(2, t).squeeze(2).float() - x.float().logsumexp(-1)).sum(1))
    return torch.stack(columns, 1)


def check_aggregation(aggregation: str, template_name: str) -> None:
    """``mean-logit`` averages raw logits read at a mask; a continuation's score is a
    log-probability of several tokens, which has no logit: refused by name."""
    if aggregation == "mean-logit":
        raise AutopromptError(
            f"--aggregation mean-logit has no meaning on a decoder scoring {template_name!r} "
            "as a continuation (text after the slot, or label words of several tokens); use "
            "sum or mean-logprob"
        )


def continuation_log_probs(
    lm: LanguageModel,
    template: Template,
    examples: Sequence[Example],
    candidates: Sequence[Sequence[int]],
    batch_size: int = 32,
    desc: str | None = None,
) -> tuple[torch.Tensor, int]:
    """log p(candidate tokens + the text after the slot | the text before it), float32
    [examples, candidates], and the number of truncated inputs.

    ``batch_size`` counts rows (one example × one candidate). Under torch.distributed each
    rank scores every ``world_size``-th batch of the same batches; the sum over ranks is
    the one-process result.
    """
    longest = max(len(c) for c in candidates)
    encoder = lm.encoder(template, n_masks=longest)
    dataset = encoder.encode_all(examples)
    n_special = len(encoder.layout.suffix)  # an eos the tokenizer appends is not scored
    lengths = np.array([len(e.input_ids) for e in dataset.examples])
    sizes = np.array([len(c) for c in candidates])
    # rows (example, candidate) in length order: little padding, the same batches every run
    row_len = (lengths[:, None] + sizes[None, :]).ravel()
    order = np.argsort(row_len, kind="stable")
    n_cand = len(candidates)
    out = torch.zeros(len(examples) * n_cand, dtype=torch.float32)
    world, rank = distributed.world_size(), distributed.rank()
    pad = dataset.pad_id
    with (
        torch.inference_mode(),
        tqdm(total=len(order), desc=desc, unit="row", disable=desc is None, leave=False) as bar,
    ):
        for b, start in enumerate(range(0, len(order), batch_size)):
            rows = order[start : start + batch_size]
            bar.update(len(rows))
            if b % world != rank:
                continue
            seqs, first, counts = [], [], []
            for r in rows.tolist():
                enc = dataset.examples[r // n_cand]
                cand = list(candidates[r % n_cand])
                p = enc.mask_positions[0]
                ids = enc.input_ids
                seqs.append(ids[: p + 1] + cand + ids[p + 1 :])
                first.append(p)  # the position whose logits predict the first candidate token
                counts.append(len(cand) + len(ids) - p - 1 - n_special)
            width, m = max(map(len, seqs)), max(counts)
            ids_t = torch.full((len(rows), width), pad, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for j, s in enumerate(seqs):
                ids_t[j, : len(s)] = torch.tensor(s)
                attention[j, : len(s)] = 1
            steps = torch.arange(m)
            count_t = torch.tensor(counts)
            valid = steps[None, :] < count_t[:, None]
            positions = torch.where(valid, torch.tensor(first)[:, None] + steps, 0)
            dev = lm.device
            scores = _sequence_log_probs(
                lm, ids_t.to(dev), attention.to(dev), positions.to(dev), valid.to(dev)
            )
            out[torch.from_numpy(rows)] = scores.float().cpu()
    distributed.all_reduce_(out)
    return out.view(len(examples), n_cand), dataset.num_truncated


def _sequence_log_probs(
    lm: LanguageModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """Σ_j log p(input_ids[r, positions[r, j] + 1] | the tokens up to positions[r, j]) over
    the ``valid`` j of each row, [rows] float32. Through ``lm.mask_logits``, so a tuned
    wrapper (soft vectors, a PEFT prefix) reads the continuation as it reads a slot."""
    logits = lm.mask_logits(positions, attention_mask, input_ids=input_ids)
    targets = input_ids.gather(1, (positions + 1).clamp(max=input_ids.shape[1] - 1))
    picked = logits.gather(2, targets[..., None]).squeeze(-1).float()
    picked = picked - logits.float().logsumexp(-1)
    return (picked * valid).sum(1)
