"""``--max-batch-tokens auto``: how many padded tokens one forward may take, from the free
memory of the device.

The bound is set by the gradient pass of a search, which keeps every layer's activations for
the backward pass; an estimate per padded token (activations of each layer, attention scores
at a typical padded length, the MLM head's logits at the mask) times the free memory that is
safe to use. Inference passes need less, so the same bound is safe for them.
"""

from __future__ import annotations

from typing import Any

import torch

from autoprompt_py.errors import AutopromptError

CPU_TOKENS = 65536  # on CPUs memory is rarely the limit: the fixed default
MIN_TOKENS = 512
MAX_TOKENS = 1 << 20


def _get(config: Any, *names: str, default: int | None = None) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value:
            return int(value)
    if default is None:
        raise AutopromptError(
            f"--max-batch-tokens auto: the model config has none of {', '.join(names)}; "
            "give a number of tokens instead"
        )
    return default


def bytes_per_token(config: Any, dtype: str = "float32", seq_len: int = 256) -> float:
    """Estimated device memory of one padded token in a gradient pass, in bytes."""
    hidden = _get(config, "hidden_size", "dim", "d_model")
    layers = _get(config, "num_hidden_layers", "n_layers", "num_layers")
    heads = _get(config, "num_attention_heads", "n_heads", default=max(1, hidden // 64))
    inner = _get(config, "intermediate_size", "hidden_dim", default=4 * hidden)
    vocab = _get(config, "vocab_size")
    half = dtype in ("bfloat16", "float16")
    elem = 2 if half else 4
    # kept for backward per layer: q, k, v, attention output, residuals and layer norms
    # (~10 × hidden), the feed-forward's input to and output of the activation (2 × inner),
    # attention scores, probabilities and dropout mask (heads × padded length)
    layer = (10 * hidden + 2 * inner + 3 * heads * seq_len) * elem
    if half:
        layer += 4 * hidden * 4  # autocast keeps float32 copies around layer norms and softmax
    # one row's logits, log-probabilities and their gradient at the mask, over seq_len tokens
    head = 3 * vocab * 4 / seq_len
    return layers * layer + head


def batch_tokens_for(
    free_bytes: int,
    config: Any,
    dtype: str = "float32",
    seq_len: int = 256,
    fraction: float = 0.6,
) -> int:
    """Padded tokens per forward that fit in ``fraction`` of ``free_bytes``."""
    tokens = int(free_bytes * fraction / bytes_per_token(config, dtype, seq_len))
    if tokens < MIN_TOKENS:
        raise AutopromptError(
            f"--max-batch-tokens auto: only {free_bytes / 2**20:.0f} MiB of device memory are "
            f"free, too little for {MIN_TOKENS} tokens a forward; free the GPU or use a "
            "smaller --dtype (bfloat16)"
        )
    return min(MAX_TOKENS, tokens // 256 * 256)


def auto_max_batch_tokens(lm: Any, dtype: str = "float32") -> int:
    """The bound for ``lm`` on its device: from ``torch.cuda.mem_get_info`` on a GPU."""
    if lm.device.type != "cuda":
        return CPU_TOKENS
    free, _ = torch.cuda.mem_get_info(lm.device)
    return batch_tokens_for(free, lm.model.config, dtype, min(lm.max_length, 256))
