"""Where trained prompt vectors start (``TuneConfig.init``)."""

from __future__ import annotations

import torch

from autoprompt_py.encoding import tokenize_piece
from autoprompt_py.errors import AutopromptError


def init_vectors(
    lm, n: int, init: str, seed: int, found_ids: list[int] | None = None, text: str | None = None
) -> tuple[torch.Tensor, list[int] | None]:
    """[n, embedding size] float32 start vectors, and the token ids they copy (None: random).

    ``found``: the given ids (a search result's triggers, or a template's literal words);
    ``text``: the tokens of ``text``, repeated to fill n; ``vocab``: n random non-special
    tokens; ``random``: normal with the embedding matrix's std.
    """
    emb = lm.embeddings.detach().float()
    generator = torch.Generator().manual_seed(seed)
    if init == "random":
        vectors = torch.randn(n, emb.shape[1], generator=generator) * emb.std().cpu()
        return vectors, None
    if init == "found":
        if not found_ids:
            raise AutopromptError(
                "--init found needs a search result (or a template with words) to start from; "
                "use --init vocab, random or text"
            )
        ids = list(found_ids)
    elif init == "text":
        ids = tokenize_piece(lm.tokenizer, text or "", True)
        if not ids:
            raise AutopromptError(f"--init-text {text!r}: no tokens in it; give some words")
    else:  # vocab
        special = set(lm.tokenizer.all_special_ids)
        allowed = torch.tensor([i for i in range(len(lm.tokenizer)) if i not in special])
        allowed = allowed[allowed < emb.shape[0]]
        ids = allowed[torch.randint(len(allowed), (n,), generator=generator)].tolist()
    ids = (ids * (n // len(ids) + 1))[:n]
    return emb[torch.tensor(ids, device=emb.device)].cpu().clone(), ids
