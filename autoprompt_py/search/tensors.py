"""A data split encoded into padded tensors, from which the search slices its batches.

The search loop never tokenizes: every example is encoded once per *view* (one view per number
of masks the verbalizer's label words need, usually just one), padded into one tensor per field
and kept on the model's device. A batch is an index into those rows, cut to its longest row.

A row is encoded the first time a step asks for it (``ensure``), in one batched tokenizer call
per request: a short search over a large training set reads every row but encodes only those
it samples (``search --iters 0`` on SST-2's 67k rows encodes none of them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from autoprompt_py.data import Example, check_fields
from autoprompt_py.encoding import Batch, TemplateEncoder
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.template import Field, Template


@dataclass
class _View:
    encoder: TemplateEncoder
    input_ids: torch.Tensor  # [N, width]: grows to the longest row encoded so far
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    trigger_positions: torch.Tensor  # [N, triggers]
    mask_positions: torch.Tensor  # [N, masks]
    lengths: np.ndarray  # [N] tokens per row (0 until encoded), to cut batches
    truncated: int = 0  # encoded rows that were cut to fit

    def fill(self, rows: np.ndarray, examples: Sequence[Example], pad_id: int) -> None:
        encoded = self.encoder.encode_all(examples)
        part = encoded.collate(range(len(encoded)))
        width = part.input_ids.shape[1]
        if width > self.input_ids.shape[1]:  # a longer row than any before: widen
            n, old = self.input_ids.shape
            for name, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
                t = getattr(self, name)
                wider = torch.full((n, width), fill, dtype=t.dtype, device=t.device)
                wider[:, :old] = t
                setattr(self, name, wider)
        device = self.input_ids.device
        at = torch.as_tensor(rows, dtype=torch.long, device=device)
        self.input_ids[at, :width] = part.input_ids.to(device)
        self.attention_mask[at, :width] = part.attention_mask.to(device)
        self.token_type_ids[at, :width] = part.token_type_ids.to(device)
        self.trigger_positions[at] = part.trigger_positions.to(device)
        self.mask_positions[at] = part.mask_positions.to(device)
        self.lengths[rows] = [len(e.input_ids) for e in encoded.examples]
        self.truncated += encoded.num_truncated


class SplitTensors:
    """One split (train or dev) as tensors: views by number of masks, and the gold targets.

    ``gold`` holds the label index (classification) or the object token id (relation facts).
    With ``lazy``, rows are encoded when first asked for; without, all at once. A template with
    a ``{field:fixed}`` is always encoded at once: only there can one row be too long to fit
    whatever is cut, and that error belongs at the start, not hours into a search. Rows are
    encoded by the model's encoder (``LanguageModel.encoder``), cut to ``max_length`` if given,
    and kept on its device.
    """

    def __init__(
        self,
        template: Template,
        lm: LanguageModel,
        examples: Sequence[Example],
        gold: Sequence[int],
        mask_counts: Sequence[int | tuple[int, ...]],
        lazy: bool = False,
        max_length: int | None = None,
    ) -> None:
        check_fields(examples, template.fields, template.source)  # every row, before any work
        self.size = len(examples)
        self.device = device = lm.device
        self.examples = examples
        self.gold = torch.tensor(list(gold), dtype=torch.long, device=device)
        pad_id = lm.tokenizer.pad_token_id
        self._pad_id = 0 if pad_id is None else pad_id
        self._encoded = np.zeros(self.size, dtype=bool)
        n, triggers = self.size, template.num_triggers
        self.views: dict[int, _View] = {}
        for k in mask_counts:  # a number of masks, or a decoder's answer ids (a tuple)
            ids = torch.full((n, 0), self._pad_id, dtype=torch.long, device=device)
            encoder = (
                lm.encoder(template, n_masks=k, max_length=max_length)
                if isinstance(k, int)
                else lm.encoder(template, n_masks=len(k), answer_ids=k, max_length=max_length)
            )
            self.views[k] = _View(
                encoder,
                ids,
                torch.zeros_like(ids),
                torch.zeros_like(ids),
                torch.zeros((n, triggers), dtype=torch.long, device=device),
                torch.zeros((n, encoder.n_read), dtype=torch.long, device=device),
                np.zeros(n, dtype=np.int64),
            )
        fixed = any(isinstance(p, Field) and not p.shortenable for p in template.parts)
        if not lazy or fixed:
            self.ensure(np.arange(n))

    def __len__(self) -> int:
        return self.size

    @property
    def parts(self) -> tuple[SplitTensors, ...]:
        """The split of each model of the search: this one (``joint.JointSplit``: several)."""
        return (self,)

    @property
    def encoded(self) -> int:
        """How many rows have been encoded so far."""
        return int(self._encoded.sum())

    @property
    def truncated(self) -> int:
        """Encoded rows cut to the model's length (in the view that cut most)."""
        return max(v.truncated for v in self.views.values())

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per row, the longest of its views (0 for a row not encoded yet: ``ensure``
        the rows first)."""
        return np.max([v.lengths for v in self.views.values()], axis=0)

    def ensure(self, index: np.ndarray) -> None:
        """Encode the rows of ``index`` that are not encoded yet."""
        index = np.asarray(index, dtype=np.int64)
        todo = np.unique(index[~self._encoded[index]])
        if not len(todo):
            return
        rows = [self.examples[i] for i in todo]
        # a step may ask from inside inference mode; the split's tensors must stay normal ones,
        # which any later step (a gradient, too) may read and fill
        with torch.inference_mode(False), torch.no_grad():
            for v in self.views.values():
                v.fill(todo, rows, self._pad_id)
        self._encoded[todo] = True

    def batch(self, index: np.ndarray) -> dict[int, Batch]:
        """The rows ``index`` of every view, each cut to its longest row."""
        self.ensure(index)
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
