"""Label-token search (AutoPrompt §2.2): which words should stand for each class.

As in the paper: run the template (triggers filled in) over labeled examples and keep the MLM
head's *transform output* at the prediction slot, the vector the head multiplies with every
word's output embedding to get the word's logit. Fit a logistic regression from that vector to
the class; then put each word's output embedding through the classifier in place of the
vector: the words the classifier assigns most confidently to a class are its label words.
Words are ranked by the log-odds of their class, ``z_c - logsumexp(z_others)`` with
``z = W e_w``, which orders them like the paper's ``p(y | e_w)`` without saturating. The
intercept is left out: it was fitted to the features' offset, which word embeddings do not
share, and it would add the same constant to every word of a class.

sklearn is not a dependency: the regression is fitted with torch's L-BFGS on standardized
features, which is deterministic.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autoprompt_py import distributed
from autoprompt_py.continuation import require_next_token
from autoprompt_py.data import Example, check_fields, labels_of
from autoprompt_py.encoding import spaces_are_tokens
from autoprompt_py.errors import AutopromptError
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.search.candidates import TokenFilters, VocabStrings, allowed_tokens
from autoprompt_py.several import check_shared_vocabulary, shared_rows
from autoprompt_py.slot_scores import iter_mask_logits
from autoprompt_py.template import Template
from autoprompt_py.verbalizer import Verbalizer


@dataclass
class LabelSearch:
    """The found verbalizer, each chosen word's log-odds, and how well the classifier fits."""

    verbalizer: dict[str, list[str]]
    scores: dict[str, list[tuple[str, float]]]
    train_accuracy: float  # several models: the mean of theirs
    n: int
    model_accuracies: list[float] | None = None  # several models: each one's


@contextlib.contextmanager
def head_transform_output(lm: LanguageModel) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """Capture the MLM head's transform output at the mask positions during forwards.

    Yields (captured list, output embedding matrix [vocab, dim]): each forward appends a
    [batch, masks, dim] tensor; logits are ``captured @ E.T + bias``.
    """
    captured: list[torch.Tensor] = []
    model = lm.model
    out = model.get_output_embeddings()
    if isinstance(out, nn.Linear) and out.weight.shape[0] >= lm.vocab_size:
        # BERT, RoBERTa, ALBERT, DistilBERT, ELECTRA, ModernBERT: a decoder Linear after the
        # transform; its input is the transform output
        handle = out.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()))
        weight = out.weight
    else:
        head = getattr(getattr(model, "lm_predictions", None), "lm_head", None)
        norm = getattr(head, "LayerNorm", None)
        if norm is None:
            raise AutopromptError(
                f"--model {lm.name}: label search cannot find the output projection of this "
                f"model's MLM head ({getattr(model.config, 'model_type', type(model).__name__)})"
            )
        # DeBERTa-v2/v3: the transform ends in LayerNorm, then a product with the input
        # embeddings
        handle = norm.register_forward_hook(lambda m, args, o: captured.append(o.detach()))
        weight = lm.embeddings
    try:
        yield captured, weight.detach()
    finally:
        handle.remove()


def mask_features(
    lm: LanguageModel, template: Template, examples: Sequence[Example], batch_size: int = 32
) -> torch.Tensor:
    """The head's transform output at the prediction slot of each example, [examples, dim]."""
    check_fields(examples, template.fields, template.source)
    require_next_token(
        lm, template, [1], "labels"
    )  # a decoder reads the slot after all its context
    dataset = lm.encoder(template).encode_all(examples)
    with head_transform_output(lm) as (captured, weight):
        # zeros: under torch.distributed each rank fills its batches, then the sum over ranks
        features = torch.zeros(len(examples), weight.shape[1], device=lm.device)
        for batch, _ in iter_mask_logits(lm, dataset, batch_size):
            features[batch.index] = captured.pop()[:, 0].float()
    distributed.all_reduce_(features)
    # made under inference mode; a plain copy can take part in autograd (the regression)
    return features.clone()


def fit_logistic_regression(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: int,
    l2: float = 1e-3,
    max_iter: int = 200,
    seed: int = 0,
    standardize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (weights [classes, dim], bias [classes]) on raw features.

    Fitted on standardized features (L-BFGS converges in a few dozen steps there) with an L2
    penalty, then mapped back, so that ``x @ W.T + b`` holds for the raw features.
    """
    torch.manual_seed(seed)  # L-BFGS is deterministic; this only pins anything it may draw
    x = x.float()
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6) if standardize else torch.ones_like(mean)
    z = (x - mean) / std
    w = torch.zeros(classes, x.shape[1], device=x.device, requires_grad=True)
    b = torch.zeros(classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_raw = (w / std).detach()
    return w_raw, (b - (w_raw * mean).sum(1)).detach()


def search_labels(
    lm: LanguageModel | Sequence[LanguageModel],
    template: Template,
    examples: Sequence[Example],
    *,
    per_class: int = 3,
    filters: TokenFilters | None = None,
    batch_size: int = 32,
    l2: float = 1.0,
    seed: int = 0,
) -> LabelSearch:
    """The ``per_class`` best label words of each class (labels of ``examples``).

    ``template`` should have its trigger tokens fixed (open slots hold the mask token).
    Every word is checked to map back to its single token, as a verbalizer file reads it.
    Several models (sharing a vocabulary, ``several.py``): each fits its own classifier, and
    a word's log-odds are the mean over the models; ``model_accuracies`` holds each fit's.
    """
    lms = list(lm) if isinstance(lm, (list, tuple)) else [lm]
    check_shared_vocabulary(lms)
    labels = labels_of(examples)
    if len(labels) < 2:
        raise AutopromptError(
            f"{examples[0].source.rsplit(':', 1)[0] if examples else 'train'}: label search "
            f"needs at least two classes, found {len(labels)}; check --label-field"
        )
    rows = shared_rows(lms)
    fits = [_log_odds(m, template, examples, labels, batch_size, l2, seed, rows) for m in lms]
    log_odds = torch.stack([f[0].to(lms[0].device) for f in fits]).mean(0)
    accuracies = [f[1] for f in fits]
    lm = lms[0]
    tokenizer = lm.tokenizer
    vocab = VocabStrings.of(tokenizer, rows)
    space = template.answer_space
    filters = filters or TokenFilters()
    if not space and spaces_are_tokens(tokenizer):
        # an answer with no space before it (a chat's) starts with a byte-level token
        # without Ġ, which the subword filter drops; the round trip below keeps the words
        filters = dataclasses.replace(filters, subwords=False)
    allowed = allowed_tokens(tokenizer, rows, filters, (), vocab)
    log_odds = log_odds.masked_fill(~allowed.to(log_odds.device)[None], float("-inf"))
    taken: set[str] = set()
    chosen: dict[str, list[tuple[str, float]]] = {}
    for c, label in enumerate(labels):
        order = log_odds[c].argsort(descending=True).tolist()
        picked: list[tuple[str, float]] = []
        for token_id in order:
            score = float(log_odds[c, token_id])
            if len(picked) == per_class or score == float("-inf"):
                break
            word = vocab.words[token_id]
            if word.lower() in taken or not _round_trips(tokenizer, word, token_id, space):
                continue
            taken.add(word.lower())
            picked.append((word, score))
        if not picked:
            raise AutopromptError(
                f"label search found no word for class {label!r} that passes the filters; "
                "turn some off (e.g. --no-filter-capitalized)"
            )
        chosen[label] = picked
    return LabelSearch(
        {lab: [w for w, _ in ws] for lab, ws in chosen.items()},
        chosen,
        sum(accuracies) / len(accuracies),
        len(examples),
        accuracies if len(lms) > 1 else None,
    )


def _log_odds(
    lm: LanguageModel,
    template: Template,
    examples: Sequence[Example],
    labels: list[str],
    batch_size: int,
    l2: float,
    seed: int,
    rows: int,
) -> tuple[torch.Tensor, float]:
    """One model's classifier: each word's log-odds of each class [classes, rows], and the
    classifier's train accuracy."""
    index = {lab: i for i, lab in enumerate(labels)}
    x = mask_features(lm, template, examples, batch_size)
    y = torch.tensor([index[e.label] for e in examples], device=x.device)
    w, b = fit_logistic_regression(x, y, len(labels), l2, seed=seed)
    accuracy = float(((x @ w.T + b).argmax(1) == y).float().mean())

    with head_transform_output(lm) as (_, out_embeddings):
        z = out_embeddings[:rows].float() @ w.T  # [vocab, classes]
    others = (
        z[:, None, :]
        .expand(-1, len(labels), -1)
        .masked_fill(torch.eye(len(labels), dtype=torch.bool, device=z.device)[None], float("-inf"))
    )
    return (z - others.logsumexp(-1)).T, accuracy


def _round_trips(tokenizer, word: str, token_id: int, space: bool) -> bool:
    """A verbalizer word must resolve to exactly this one token."""
    if not word:
        return False
    try:
        resolved = Verbalizer({"_": [word]}).resolve(tokenizer, "sum", space)
    except AutopromptError:
        return False
    return resolved.pieces == [(token_id,)]
