"""Where trained prompt vectors start (``TuneConfig.init``), and the per-layer keys and values
that start a prefix (prefix tuning: the activations of real words, Li & Liang 2021)."""

from __future__ import annotations

import torch

from autoprompt_py.encoding import tokenize_piece
from autoprompt_py.errors import AutopromptError


def start_ids(
    lm, n: int, init: str, seed: int, found_ids: list[int] | None = None, text: str | None = None
) -> list[int] | None:
    """The n token ids the vectors start as (repeated to fill), or None for ``random``.

    ``found``: the given ids (what the template found); ``text``: the tokens of ``text``;
    ``vocab``: n random non-special tokens, drawn with ``seed``.
    """
    if init == "random":
        return None
    if init == "found":
        if not found_ids:
            raise AutopromptError(
                "--init found: the template found nothing to start from; pass a search result "
                "as --template, or use --init text --init-text WORDS"
            )
        ids = list(found_ids)
    elif init == "text":
        ids = tokenize_piece(lm.tokenizer, text or "", True)
        if not ids:
            raise AutopromptError(f"--init-text {text!r}: no tokens in it; give some words")
    else:  # vocab
        generator = torch.Generator().manual_seed(seed)
        special = lm.special_ids
        allowed = torch.tensor([i for i in range(len(lm.tokenizer)) if i not in special])
        allowed = allowed[allowed < lm.embeddings.shape[0]]
        ids = allowed[torch.randint(len(allowed), (n,), generator=generator)].tolist()
    return (ids * (n // len(ids) + 1))[:n]


def init_vectors(
    lm, n: int, init: str, seed: int, found_ids: list[int] | None = None, text: str | None = None
) -> tuple[torch.Tensor, list[int] | None]:
    """[n, embedding size] float32 start vectors, and the token ids they copy (None: random).

    The rows of the model's own input embedding matrix: a ``found`` start is exactly the
    discrete prompt the model reads.
    """
    emb = lm.embeddings.detach().float()
    ids = start_ids(lm, n, init, seed, found_ids, text)
    if ids is None:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(n, emb.shape[1], generator=generator) * emb.std().cpu(), None
    return emb[torch.tensor(ids, device=emb.device)].cpu().clone(), ids


def prefix_activations(lm, ids: list[int], layers: int) -> torch.Tensor:
    """[n, layers × 2 × hidden]: the keys and values the model gives ``ids`` in every layer,
    as PEFT's ``PrefixTuningConfig`` embedding lays them out (``LanguageModel.prefix_key_values``:
    a masked LM's projections, a decoder's cache)."""
    return lm.prefix_key_values(ids, layers)
