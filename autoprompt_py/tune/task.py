"""What a training run learns from: the template, train/dev/test examples, how labels are read.

Read and checked before any model loads, with the readers of ``data.py`` and the dev split of
``search.task``. The few-shot protocol (LM-BFF): ``shots`` K draws K examples of each class
from the training file with ``data_seed`` (relation mode: K facts); ``dev_shots`` likewise.
Without a dev file, ``shots`` draws dev too: ``dev_shots`` (default K) per class from the
training rows the sample left (LM-BFF's D_dev, as large as D_train and apart from it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoprompt_py.data import Example, check_fields, labels_of, read_examples, read_facts
from autoprompt_py.errors import AutopromptError
from autoprompt_py.resources import load_templates
from autoprompt_py.search.task import file_sha256, read_answers, relation_id, split_off_dev
from autoprompt_py.template import Chat, Template, Trigger
from autoprompt_py.tune.found import FoundStart, read_found
from autoprompt_py.verbalizer import AGGREGATIONS, Verbalizer


@dataclass
class TuneTask:
    """A checked training problem; ``found``: what the template was read from, when it is a
    found prompt (a search result, an export, a tuned folder: ``found.py``), the start of the
    trained vectors."""

    template: Template
    train: list[Example]
    dev: list[Example]
    test: list[Example] | None = None
    verbalizer: Verbalizer | None = None
    aggregation: str = "sum"
    relation: str | None = None
    vocab: list[str] | None = None
    sources: dict = field(default_factory=dict)
    identity: dict = field(default_factory=dict)
    found: FoundStart | None = None

    @property
    def mode(self) -> str:
        return "relation" if self.template.is_relational else "classification"

    @property
    def open_triggers(self) -> int:
        return sum(t is None for t in self.template.trigger_ids)


def sample_shots(
    examples: list[Example], k: int, seed: int, option: str, source: str, per_class: bool = True
) -> list[Example]:
    """K examples of each label (or K in all), drawn with ``seed``, in the file's order."""
    rng = np.random.default_rng(seed)
    if not per_class:
        if k > len(examples):
            raise AutopromptError(
                f"{option} {k}: {source} has only {len(examples)} facts; use {option} "
                f"{len(examples)} or fewer"
            )
        keep = set(rng.choice(len(examples), size=k, replace=False).tolist())
        return [e for i, e in enumerate(examples) if i in keep]
    keep: set[int] = set()
    for label in labels_of(examples):
        rows = [i for i, e in enumerate(examples) if e.label == label]
        if k > len(rows):
            raise AutopromptError(
                f"{option} {k}: class {label!r} has only {len(rows)} examples in {source}; use "
                f"{option} {len(rows)} or fewer"
            )
        keep.update(rng.choice(rows, size=k, replace=False).tolist())
    return [e for i, e in enumerate(examples) if i in keep]


def _read(path: str | Path, relational: bool, label_field: str, columns) -> list[Example]:
    if relational:
        facts = read_facts(path)
        if len(facts) != 1:
            raise AutopromptError(
                f"{path}: holds facts of {len(facts)} relations; tune one relation at a time "
                "(give one .jsonl file)"
            )
        return next(iter(facts.values()))
    return read_examples(path, label_field, columns)


def load_tune_task(
    template: str | Template,
    train: str | Path | list[Example],
    dev: str | Path | list[Example] | None = None,
    test: str | Path | list[Example] | None = None,
    *,
    verbalizer: str | Verbalizer | None = None,
    aggregation: str = "sum",
    vocab: str | Path | None = None,
    label_field: str = "label",
    columns: Sequence[str] | None = None,
    dev_fraction: float = 0.2,
    split_seed: int = 0,
    shots: int | None = None,
    dev_shots: int | None = None,
    data_seed: int = 0,
    chat: Chat | None = None,
) -> TuneTask:
    """Read and check a training task; raises AutopromptError naming the file and the fix.

    Files or lists of examples; without ``dev``, a seeded ``dev_fraction`` of train is dev
    (with ``shots``: ``dev_shots``, default K, per class drawn apart from the training sample).
    ``chat``: the template read as a chat turn (None: as given; a found prompt keeps its own).
    """
    relation = None
    found = None
    read = read_found(template) if not isinstance(template, Template) else None
    if isinstance(template, Template):
        tpl = template
    elif read is not None:
        tpl, relation, found = read
    else:
        named = load_templates(template)
        if len(named) != 1:
            raise AutopromptError(
                f"--template {template}: holds {len(named)} templates; tune takes one (write "
                "it as text, or pick one line of the set)"
            )
        tpl, relation = named[0].template, named[0].relation
    if aggregation not in AGGREGATIONS:
        raise AutopromptError(
            f"--aggregation {aggregation!r}: use one of {', '.join(AGGREGATIONS)}"
        )
    tpl = tpl.in_chat(chat.over(tpl.chat)) if chat is not None else tpl
    rel = tpl.is_relational
    sources: dict = {"template": tpl.source, "found": found.source if found else None}
    identity: dict = {"template": tpl.render(), "trigger_ids": tpl.trigger_ids}
    if tpl.chat is not None:  # (absent otherwise: checkpoints from before chats still match)
        identity["chat"] = tpl.chat.record()

    def load(data, name: str) -> list[Example]:
        if isinstance(data, list):
            sources[name] = f"{len(data)} examples given"
            identity[name] = [e.source for e in data]
            return data
        sources[name] = str(data)
        identity[name] = file_sha256(data)
        return _read(data, rel, label_field, columns)

    train_rows = load(train, "train")
    apart = dev is None and shots is not None  # LM-BFF: dev drawn from the rest of train
    if dev is not None:
        dev_rows = load(dev, "dev")
    elif apart:
        dev_shots = dev_shots or shots
        dev_rows = []  # drawn below, from the rows the training sample leaves
        each = "facts" if rel else "per class"
        sources["dev"] = f"{dev_shots} {each} of {sources['train']} apart from training"
        identity["dev"] = {"apart_from_train": dev_shots}
    else:
        train_rows, dev_rows = split_off_dev(train_rows, dev_fraction, split_seed, sources["train"])
        sources["dev"] = f"{dev_fraction:g} of {sources['train']} (seed {split_seed})"
        identity["dev"] = {"split_of_train": dev_fraction, "seed": split_seed}
    test_rows = load(test, "test") if test is not None else None
    if shots is not None:
        everything = train_rows
        train_rows = sample_shots(
            train_rows, shots, data_seed, "--shots", sources["train"], not rel
        )
        if apart:
            taken = {id(e) for e in train_rows}
            dev_rows = [e for e in everything if id(e) not in taken]
    if dev_shots is not None:
        dev_rows = sample_shots(
            dev_rows, dev_shots, data_seed, "--dev-shots", sources["dev"], not rel
        )
    identity.update(shots=shots, dev_shots=dev_shots, data_seed=data_seed)
    for rows in (train_rows, dev_rows, test_rows or []):
        check_fields(rows, tpl.fields, tpl.source)
    others = [(dev_rows, sources["dev"]), (test_rows or [], sources.get("test", "test"))]
    verb, vocab_words = read_answers(tpl, verbalizer, vocab, (train_rows, sources["train"]), others)
    if rel:
        relation = relation or (relation_id(train) if not isinstance(train, list) else None)
        if vocab is not None:
            identity["vocab"] = file_sha256(vocab)
            sources["vocab"] = str(vocab)
    else:
        identity.update(verbalizer=verb.words, aggregation=aggregation, label_field=label_field)
    return TuneTask(
        tpl,
        train_rows,
        dev_rows,
        test_rows,
        verb,
        aggregation,
        relation,
        vocab_words,
        sources,
        identity,
        found,
    )


def fields_only(template: Template) -> Template:
    """The template's input fields alone (the ``head`` baseline reads no prompt)."""
    from autoprompt_py.template import Field

    segs = tuple(tuple(p for p in seg if isinstance(p, Field)) for seg in template.segments)
    return Template(tuple(s for s in segs if s), template.source)


def trigger_slots(template: Template) -> list[Trigger]:
    return [p for p in template.parts if isinstance(p, Trigger)]
