"""A data split encoded once into padded tensors, from which the search slices its batches.

The search loop never tokenizes: every example is encoded once per *view* (one view per number
of masks the verbalizer's label words need, usually just one), padded into one tensor per field
and kept on the model's device. A batch is an index into those rows, cut to its longest row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from autoprompt_py.data import Example
from autoprompt_py.encoding import Batch, TemplateEncoder
from autoprompt_py.template import Template


@dataclass
class _View:
    input_ids: torch.Tensor  # [N, width]
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    trigger_positions: torch.Tensor  # [N, triggers]
    mask_positions: torch.Tensor  # [N, masks]
    lengths: np.ndarray  # [N] tokens per row, to cut batches to their longest row


class SplitTensors:
    """One split (train or dev) as tensors: views by number of masks, and the gold targets.

    ``gold`` holds the label index (classification) or the object token id (relation facts).
    """

    def __init__(
        self,
        template: Template,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        examples: Sequence[Example],
        gold: Sequence[int],
        mask_counts: Sequence[int],
        device: torch.device,
    ) -> None:
        self.size = len(examples)
        self.device = device
        self.gold = torch.tensor(list(gold), dtype=torch.long, device=device)
        self.views: dict[int, _View] = {}
        self.truncated = 0
        for k in mask_counts:
            encoded = TemplateEncoder(template, tokenizer, max_length, n_masks=k).encode_all(
                examples
            )
            self.truncated = max(self.truncated, encoded.num_truncated)
            full = encoded.collate(range(len(encoded)))
            self.views[k] = _View(
                full.input_ids.to(device),
                full.attention_mask.to(device),
                full.token_type_ids.to(device),
                full.trigger_positions.to(device),
                full.mask_positions.to(device),
                np.array([len(e.input_ids) for e in encoded.examples]),
            )
        # one length per example for ordering: the longest of its views
        self.lengths = np.max([v.lengths for v in self.views.values()], axis=0)

    def __len__(self) -> int:
        return self.size

    def batch(self, index: np.ndarray) -> dict[int, Batch]:
        """The rows ``index`` of every view, each cut to its longest row."""
        rows = torch.as_tensor(index, dtype=torch.long, device=self.device)
        out = {}
        for k, v in self.views.items():
            width = int(v.lengths[index].max())
            out[k] = Batch(
                v.input_ids[rows, :width],
                v.attention_mask[rows, :width],
                v.token_type_ids[rows, :width],
                v.trigger_positions[rows],
                v.mask_positions[rows],
                rows,
            )
        return out


def length_chunks(
    sorted_lengths: np.ndarray,
    max_tokens: int,
    max_rows: int,
    items: np.ndarray | None = None,
    rows_per_item: int = 1,
    overhead: int = 256,
) -> Iterator[np.ndarray]:
    """Items sorted by length, cut into consecutive chunks of least padded tokens.

    A chunk costs ``overhead`` (a forward call's fixed cost, in tokens) plus its rows × its
    longest row; a dynamic program picks the cheapest cut such that every chunk stays within
    ``max_tokens`` padded tokens and ``max_rows`` rows (a single item may exceed them). Each
    item stands for ``rows_per_item`` rows (one per candidate trigger).
    """
    lengths = np.asarray(sorted_lengths, dtype=np.int64)
    items = np.arange(len(lengths)) if items is None else items
    n = len(lengths)
    cap = max(1, max_rows // rows_per_item)
    cost = np.zeros(n + 1)
    start = np.zeros(n + 1, dtype=np.int64)
    for i in range(1, n + 1):
        lo = max(0, i - cap)
        size = (i - np.arange(lo, i)) * rows_per_item * lengths[i - 1]
        total = cost[lo:i] + overhead + size
        total[:-1][size[:-1] > max_tokens] = np.inf  # one item alone is always allowed
        best = int(np.argmin(total))
        cost[i], start[i] = total[best], lo + best
    cuts = []
    i = n
    while i > 0:
        cuts.append((int(start[i]), i))
        i = int(start[i])
    for a, b in reversed(cuts):
        yield items[a:b]
