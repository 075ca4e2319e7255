"""Where ``predict``'s prompts come from: a protocol, and one registry of prompt sources.

A *source* turns a ``--template`` argument into prompts; a *prompt* reads examples at its
answer slot (``rows``: a ``slot_scores.SlotRows``). ``predict`` only sees ``Prompt``: template text, shipped sets and search
results are one source (``TemplateSource``, through ``resources.load_templates``); a tuned
folder of ``autoprompt tune`` is another (``TunedSource``): one class and one line in
``SOURCES``, without a change to ``predict``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from autoprompt_py.continuation import continuation_log_probs
from autoprompt_py.data import Example
from autoprompt_py.encoding import EncodedDataset
from autoprompt_py.evaluation import require_closed
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.resources import NamedTemplate, load_templates, with_chat
from autoprompt_py.slot_scores import SlotRows, continued
from autoprompt_py.template import Chat, Template


@runtime_checkable
class Prompt(Protocol):
    """One prompt member: what it reads, and how it reads examples at its answer slot."""

    name: str
    text: str  # how results name it (the template with its trigger tokens)
    relation: str | None

    @property
    def fields(self) -> list[str]: ...

    @property
    def is_relational(self) -> bool: ...

    @property
    def space_before(self) -> bool: ...  # a space before the prediction slot

    def encode(
        self, lm: LanguageModel, examples: Sequence[Example], n_masks: int
    ) -> EncodedDataset:
        """The examples encoded for ``rows`` (no model work: it may run in a thread)."""
        ...

    def rows(
        self,
        lm: LanguageModel,
        examples: Sequence[Example],
        plan: BatchPlan,
        encoded: Mapping[int, EncodedDataset] | None = None,
    ) -> SlotRows:
        """The examples read at this prompt's slot (``slot_scores.py``), in ``plan``'s
        batches, this process's share; ``encoded``: ``encode``'s results by number of masks,
        where already made."""
        ...

    @property
    def truncated(self) -> int: ...  # inputs cut so far

    def check(self, lm: LanguageModel) -> None:
        """Refuse, before any output is opened, a prompt this model cannot read."""
        ...


class PromptSource(Protocol):
    """Turns one ``--template`` argument into prompts, or says it does not know it;
    ``chat`` (``--chat``): every template read as a chat turn (None: as it came)."""

    def accepts(self, spec: str) -> bool: ...

    def load(self, spec: str, chat: Chat | None = None) -> list[Prompt]: ...


@dataclass(frozen=True)
class BatchPlan:
    """How a window is cut into batches: length-sorted, at most ``max_rows`` rows and
    ``max_tokens`` padded tokens each; under torchrun this process takes batches
    ``rank, rank + world, ...``."""

    max_rows: int
    max_tokens: int
    rank: int = 0
    world: int = 1

    def batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Row indices of every batch (all processes'), shortest rows first."""
        order = np.argsort(lengths, kind="stable")
        out, start = [], 0
        while start < len(order):
            end = start + 1
            # sorted: the padded width of a batch is its last row's length
            while (
                end < len(order)
                and end - start < self.max_rows
                and (end - start + 1) * lengths[order[end]] <= self.max_tokens
            ):
                end += 1
            out.append(order[start:end])
            start = end
        return out

    def mine(self, lengths: np.ndarray) -> list[np.ndarray]:
        return self.batches(lengths)[self.rank :: self.world]


class TemplatePrompt:
    """A closed template (text, a shipped set's line, a search result) on the model's input ids."""

    def __init__(self, named: NamedTemplate) -> None:
        require_closed(named.template, named.name)
        self.name = named.name
        self.template: Template = named.template
        self.text = named.template.render("token")
        self.relation = named.relation
        self._truncated = 0

    @property
    def fields(self) -> list[str]:
        return self.template.fields

    @property
    def is_relational(self) -> bool:
        return self.template.is_relational

    @property
    def space_before(self) -> bool:
        return self.template.answer_space

    @property
    def truncated(self) -> int:
        return self._truncated

    def check(self, lm: LanguageModel) -> None:
        pass  # a written template fits any model (encoding refuses what it cannot read)

    def encode(
        self, lm: LanguageModel, examples: Sequence[Example], n_masks: int
    ) -> EncodedDataset:
        encoder = lm.encoder(self.template, n_masks=n_masks)
        dataset = encoder.encode_all(examples)
        if n_masks == 1:
            self._truncated += dataset.num_truncated
        return dataset

    def rows(
        self,
        lm: LanguageModel,
        examples: Sequence[Example],
        plan: BatchPlan,
        encoded: Mapping[int, EncodedDataset] | None = None,
    ) -> SlotRows:
        encoded = encoded or {}

        def mask_logits(k: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            dataset = encoded.get(k)
            if dataset is None:  # this class's encode: ``lm`` already has a tuned part
                dataset = TemplatePrompt.encode(self, lm, examples, k)
            lengths = np.array([len(e.input_ids) for e in dataset.examples])
            with torch.inference_mode():
                for index in plan.mine(lengths):
                    b = dataset.collate(index.tolist()).to(lm.device)
                    logits = lm.mask_logits(
                        b.mask_positions,
                        b.attention_mask,
                        input_ids=b.input_ids,
                        token_type_ids=b.token_type_ids,
                    )
                    yield torch.from_numpy(index), logits

        def continuation(candidates: Sequence[Sequence[int]]) -> tuple[torch.Tensor, int]:
            scores = continuation_log_probs(lm, self.template, examples, candidates, plan.max_rows)
            return scores[0], 0  # truncation is counted by ``encode``, which every window runs

        return SlotRows(
            n=len(examples),
            name=self.name,
            vocab_size=lm.vocab_size,
            mask_logits=mask_logits,
            continued=lambda c: continued(lm, self.template, c),
            continuation=continuation,
        )


class TemplateSource:
    """Template text, a shipped set, a .jsonl/.txt set or a ``search`` result file."""

    def accepts(self, spec: str) -> bool:
        return True  # the last resort: load_templates names every form it takes

    def load(self, spec: str, chat: Chat | None = None) -> list[Prompt]:
        return [TemplatePrompt(t) for t in with_chat(load_templates(spec), chat)]


class TunedPrompt(TemplatePrompt):
    """The prompt of an ``autoprompt tune`` folder: its template, run on the model with the
    folder's trained part attached (soft vectors, a PEFT adapter, deep prompts)."""

    def __init__(self, named: NamedTemplate, folder: str) -> None:
        super().__init__(named)
        self.folder = folder
        self._attached: tuple[LanguageModel, LanguageModel] | None = None  # (base, with the part)

    def _with_part(self, lm: LanguageModel) -> LanguageModel:
        from autoprompt_py.tune.folder import attach_tuned

        if self._attached is None or self._attached[0] is not lm:  # attached once per model
            self._attached = (lm, attach_tuned(lm, [self.folder]))
        return self._attached[1]

    def check(self, lm: LanguageModel) -> None:
        self._with_part(lm)  # attaching refuses a folder of another model or kind

    def encode(
        self, lm: LanguageModel, examples: Sequence[Example], n_masks: int
    ) -> EncodedDataset:
        return super().encode(self._with_part(lm), examples, n_masks)  # its max_length

    def rows(
        self,
        lm: LanguageModel,
        examples: Sequence[Example],
        plan: BatchPlan,
        encoded: Mapping[int, EncodedDataset] | None = None,
    ) -> SlotRows:
        return super().rows(self._with_part(lm), examples, plan, encoded)


class TunedSource:
    """A folder written by ``autoprompt tune`` (its ``result.json`` says so)."""

    def accepts(self, spec: str) -> bool:
        from autoprompt_py.tune.folder import read_tuned

        return read_tuned(spec) is not None

    def load(self, spec: str, chat: Chat | None = None) -> list[Prompt]:
        from autoprompt_py.tune.folder import tuned_templates

        return [TunedPrompt(t, spec) for t in with_chat(tuned_templates(spec), chat)]


# The registry: the first source that accepts an argument loads it (a new one goes first).
SOURCES: list[PromptSource] = [TunedSource(), TemplateSource()]


def load_prompts(specs: Sequence[str], chat: Chat | None = None) -> list[Prompt]:
    """Every prompt of every ``--template`` argument, in order (``chat``: ``--chat``)."""
    out: list[Prompt] = []
    for spec in specs:
        source = next(s for s in SOURCES if s.accepts(spec))
        out += source.load(spec, chat)
    return out
