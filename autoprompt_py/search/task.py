"""What a search is about: the template, the train and dev examples, and how they are judged.

``load_task`` reads and checks everything a user gives before any model is loaded, so a bad
argument fails in a second with one line. Two modes follow from the template:

* classification (``{field}`` templates): examples with a label, and a verbalizer;
* relation (LAMA templates with ``[X]``): facts whose object token is the label, predicted over
  the whole vocabulary and, for the dev metric, over ``--vocab`` when given.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autoprompt_py.data import (
    Example,
    check_fields,
    labels_of,
    read_examples,
    read_facts,
    split_dev,
)
from autoprompt_py.errors import AutopromptError, shown
from autoprompt_py.resources import load_templates, load_verbalizer
from autoprompt_py.template import Chat, Template
from autoprompt_py.textfile import open_binary
from autoprompt_py.verbalizer import AGGREGATIONS, Verbalizer
from autoprompt_py.vocab import read_vocab


@dataclass
class SearchTask:
    """A checked search problem: template with [T] slots, examples, and how labels are read."""

    template: Template
    train: list[Example]
    dev: list[Example]
    verbalizer: Verbalizer | None = None
    aggregation: str = "sum"
    relation: str | None = None
    vocab: list[str] | None = None  # words restricting the relation dev metric
    identity: dict = field(default_factory=dict)  # what the data is (checkpoints compare it)
    sources: dict = field(default_factory=dict)  # where it came from (paths, split), for results

    @property
    def mode(self) -> str:
        return "relation" if self.template.is_relational else "classification"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open_binary(path, "data file") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_search_template(spec: str | Template) -> tuple[Template, str | None]:
    """One template with trigger slots, from text, a file or a search result; and its relation."""
    if isinstance(spec, Template):
        template, relation = spec, None
    else:
        named = load_templates(spec)
        if len(named) != 1:
            raise AutopromptError(
                f"--template {spec}: holds {len(named)} templates; search takes one (write it "
                "as text, or pick one line of the set)"
            )
        template, relation = named[0].template, named[0].relation
    if template.num_triggers == 0:
        raise AutopromptError(
            f"template {shown(template.source)} has no trigger slot [T]; add [T] markers where the "
            "trigger tokens go, e.g. '{sentence} [T] [T] [T] [P] .'"
        )
    return template, relation


def load_task(
    template: str | Template,
    train: str | Path,
    dev: str | Path | None = None,
    verbalizer: str | Verbalizer | None = None,
    *,
    aggregation: str = "sum",
    vocab: str | Path | None = None,
    relation: str | None = None,
    label_field: str = "label",
    columns: Sequence[str] | None = None,
    train_limit: int | None = None,
    dev_limit: int | None = None,
    dev_fraction: float = 0.2,
    seed: int = 0,
    chat: Chat | None = None,
) -> SearchTask:
    """Read and check a search task; raises AutopromptError naming the file and the fix.

    Without ``dev``, a seeded ``dev_fraction`` of the train examples becomes the dev set.
    ``chat``: the template read as a chat turn (None: as given; a result keeps its own).
    """
    tpl, template_relation = load_search_template(template)
    tpl = tpl.in_chat(chat.over(tpl.chat)) if chat is not None else tpl
    if aggregation not in AGGREGATIONS:
        raise AutopromptError(
            f"--aggregation {aggregation!r}: use one of {', '.join(AGGREGATIONS)}"
        )
    identity: dict = {"template": tpl.source}
    if tpl.chat is not None:  # (absent otherwise: checkpoints from before chats still match)
        identity["chat"] = tpl.chat.record()
    sources: dict = {}
    verb: Verbalizer | None = None
    vocab_words: list[str] | None = None

    def read(path: str | Path, limit: int | None) -> list[Example]:
        if tpl.is_relational:
            facts = read_facts(path)
            if len(facts) != 1:
                raise AutopromptError(
                    f"{path}: holds facts of {len(facts)} relations; search one relation at a "
                    "time (give one .jsonl file)"
                )
            examples = next(iter(facts.values()))
        else:
            examples = read_examples(path, label_field, columns)
        return examples[:limit] if limit is not None else examples

    train_examples = read(train, train_limit)
    identity["train"] = {"sha256": file_sha256(train), "limit": train_limit}
    sources["train"] = str(train)
    if dev is not None:
        dev_examples = read(dev, dev_limit)
        identity["dev"] = {"sha256": file_sha256(dev), "limit": dev_limit}
        sources["dev"] = str(dev)
    else:
        train_examples, dev_examples = split_off_dev(train_examples, dev_fraction, seed, str(train))
        identity["dev"] = {"split_of_train": dev_fraction, "seed": seed}
        sources["dev"] = f"{dev_fraction:g} of {train} (seed {seed})"
    check_fields(train_examples, tpl.fields, tpl.source)
    check_fields(dev_examples, tpl.fields, tpl.source)

    verb, vocab_words = read_answers(
        tpl, verbalizer, vocab, (train_examples, str(train)), [(dev_examples, sources["dev"])]
    )
    if tpl.is_relational:
        relation = relation or template_relation or relation_id(train)
        if vocab is not None:
            identity["vocab"] = {"sha256": file_sha256(vocab)}
            sources["vocab"] = str(vocab)
    else:
        assert verb is not None
        identity["verbalizer"] = verb.words
        identity["aggregation"] = aggregation
        identity["label_field"] = label_field
        identity["columns"] = list(columns) if columns else None
    identity["relation"] = relation
    return SearchTask(
        tpl,
        train_examples,
        dev_examples,
        verb,
        aggregation,
        relation,
        vocab_words,
        identity,
        sources,
    )


def split_off_dev(
    examples: list[Example], fraction: float, seed: int, source: str
) -> tuple[list[Example], list[Example]]:
    """``--dev-fraction`` of ``examples`` held out (``data.split_dev``): (train, dev)."""
    if not 0 < fraction < 1:
        raise AutopromptError(f"--dev-fraction {fraction}: give a fraction between 0 and 1")
    n_dev = int(round(fraction * len(examples)))
    if n_dev < 1 or n_dev >= len(examples):
        raise AutopromptError(
            f"{source}: {len(examples)} examples are too few to split off a dev set of "
            f"{fraction:g}; give --dev or more training examples"
        )
    dev, rest = split_dev(len(examples), n_dev, seed)
    return [examples[i] for i in rest], [examples[i] for i in dev]


def read_answers(
    tpl: Template,
    verbalizer: str | Verbalizer | None,
    vocab: str | Path | None,
    train: tuple[list[Example], str],
    others: Sequence[tuple[list[Example], str]] = (),
) -> tuple[Verbalizer | None, list[str] | None]:
    """What a task's answers are (shared by ``search`` and ``tune``): a relation template
    predicts the object token itself (among the ``vocab`` words, if given); a classification
    template needs a verbalizer that covers the labels of ``train`` and of every other split
    ((rows, source name) pairs). Returns (verbalizer, vocabulary words)."""
    if tpl.is_relational:
        if verbalizer is not None:
            raise AutopromptError(
                "--verbalizer is for classification templates; a relation template ([X] … [Y]) "
                "predicts the object token itself"
            )
        return None, read_vocab(vocab) if vocab is not None else None
    if verbalizer is None:
        raise AutopromptError(
            "a classification template needs --verbalizer (label → words, e.g. sst2 or "
            '\'{"0": ["terrible"], "1": ["great"]}\'); relation templates use [X] and [Y]'
        )
    verb = verbalizer if isinstance(verbalizer, Verbalizer) else load_verbalizer(verbalizer)
    verb.check_labels(labels_of(train[0]), train[1])
    for rows, source in others:
        unknown = [lab for lab in labels_of(rows) if lab not in verb.words]
        if unknown:
            raise AutopromptError(
                f"{source}: labels {', '.join(map(repr, unknown))} are not in "
                f"{verb.source} (its labels: {', '.join(map(repr, verb.words))}); add them to "
                "the verbalizer or check --label-field"
            )
    return verb, None


def relation_id(path: str | Path) -> str:
    """LAMA's relation id from a fact file: ``P19.jsonl`` or ``P19/train.jsonl`` → ``P19``."""
    path = Path(path)
    for name in (path.stem, path.parent.name):
        if re.fullmatch(r"P\d+", name):
            return name
    return path.stem
