"""Where trained prompt vectors start (``TuneConfig.init``), and the per-layer keys and values
that start a prefix (prefix tuning: the activations of real words, Li & Liang 2021)."""

from __future__ import annotations

import torch

from autoprompt_py.encoding import tokenize_piece
from autoprompt_py.errors import AutopromptError
from autoprompt_py.model_kind import CAUSAL

# the key and value projections of an attention layer, by family: BERT, RoBERTa, ELECTRA,
# ALBERT ("key"/"value"), DeBERTa-v2 ("key_proj"), DistilBERT ("k_lin"), others ("k_proj")
KEY_VALUE_NAMES = (("key", "value"), ("key_proj", "value_proj"), ("k_lin", "v_lin"),
                   ("k_proj", "v_proj"))  # fmt: skip


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
        special = set(lm.tokenizer.all_special_ids)
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


def key_value_modules(model: torch.nn.Module) -> tuple[list, list]:
    """The key and value projections of every attention layer (by the names families use)."""
    for key_name, value_name in KEY_VALUE_NAMES:
        keys = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == key_name]
        values = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == value_name]
        if keys and len(keys) == len(values):
            return keys, values
    raise AutopromptError(
        f"--method prefix: no key/value projections found in {type(model).__name__}; use "
        "--init random (PEFT's own start)"
    )


def prefix_activations(lm, ids: list[int], layers: int) -> torch.Tensor:
    """[n, layers × 2 × hidden]: per token, the key and then the value its hidden state gives in
    each layer when the model reads the tokens alone (positions 0..n-1, one segment), laid out
    as PEFT's ``PrefixTuningConfig`` embedding (``get_prompt`` views it [n, 2·layers, heads,
    head size]: layer l's key at 2l, its value at 2l + 1)."""
    if getattr(lm, "kind", None) == CAUSAL:  # a decoder's cache holds its keys after RoPE
        return _cached_key_values(lm, ids)
    keys, values = key_value_modules(lm.model)
    out: dict[str, list[torch.Tensor]] = {"k": [], "v": []}
    hooks = [m.register_forward_hook(lambda _m, _i, o, w=w: out[w].append(o.detach()))
             for ms, w in ((keys, "k"), (values, "v")) for m in ms]  # fmt: skip
    input_ids = torch.tensor([ids], device=lm.device)
    mask = torch.ones_like(input_ids)
    was_training = lm.model.training
    lm.model.eval()
    try:
        with torch.no_grad():
            lm.model(input_ids=input_ids, attention_mask=mask)
    finally:
        for h in hooks:
            h.remove()
        lm.model.train(was_training)
    if len(out["k"]) != layers or len(out["v"]) != layers:  # ALBERT: one module, called per layer
        raise AutopromptError(
            f"--method prefix: found {len(out['k'])} key projections run for {layers} layers; "
            "use --init random (PEFT's own start)"
        )
    rows = [torch.cat([k[0], v[0]], dim=-1) for k, v in zip(out["k"], out["v"])]  # [n, 2H] each
    return torch.cat(rows, dim=-1).float().cpu()


def _cached_key_values(lm, ids: list[int]) -> torch.Tensor:
    """``prefix_activations`` of a decoder: the keys and values its cache holds after reading
    ``ids`` (positions 0..n-1), as PEFT's prefix embedding lays them out."""
    input_ids = torch.tensor([ids], device=lm.device)
    with torch.no_grad():
        out = lm.model(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=True
        )
    cache = getattr(out, "cache", None) or out.past_key_values
    rows = []
    for layer in cache.layers:  # [1, kv heads, n, head size] each
        k, v = (t[0].transpose(0, 1).reshape(len(ids), -1) for t in (layer.keys, layer.values))
        rows.append(torch.cat([k, v], dim=-1))
    return torch.cat(rows, dim=-1).float().cpu()
