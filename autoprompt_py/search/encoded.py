"""A search task as the model reads it, built once: the objective (label words or relation
objects), the train and dev splits as tensors, and what was counted on the way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autoprompt_py.continuation import check_aggregation, needs_continuation, require_next_token
from autoprompt_py.errors import AutopromptError
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.search.config import SearchConfig
from autoprompt_py.search.scorer import ClassificationObjective, Objective, RelationObjective
from autoprompt_py.search.task import SearchTask
from autoprompt_py.search.tensors import SplitTensors
from autoprompt_py.vocab import single_token_id, vocab_token_ids


@dataclass
class EncodedTask:
    """``objective`` judges outcomes; ``train``/``dev`` encode each row once (train rows when
    first sampled); ``label_ids`` are the tokens no trigger may be (label words, or every
    training object as AutoPrompt does); ``counts`` holds the facts skipped per split
    (``split_counts`` adds rows and truncations)."""

    lm: LanguageModel
    task: SearchTask
    objective: Objective
    train: SplitTensors
    dev: SplitTensors
    label_ids: list[int]
    counts: dict[str, dict]

    @classmethod
    def build(cls, lm: LanguageModel, task: SearchTask, config: SearchConfig) -> EncodedTask:
        counts: dict[str, dict] = {}
        if task.mode == "classification":
            assert task.verbalizer is not None
            resolved = task.verbalizer.resolve(
                lm.tokenizer, task.aggregation, task.template.answer_space
            )
            among = config.objective == "labels"
            objective: Objective = ClassificationObjective(resolved, among)
            if needs_continuation(lm, task.template, resolved.pieces):  # see continuation.py
                check_aggregation(task.aggregation, task.template.source)
                # its check: only words may follow the slot
                first = lm.encoder(task.template, answer_ids=resolved.pieces[0])
                objective = ClassificationObjective(resolved, among, first.after_slot_ids)
            index = {lab: i for i, lab in enumerate(resolved.labels)}
            train, dev = task.train, task.dev
            train_gold = [index[e.label] for e in train]
            dev_gold = [index[e.label] for e in dev]
            label_ids = list(resolved.token_ids)
        else:
            space = task.template.answer_space
            eval_ids = (
                vocab_token_ids(lm.tokenizer, task.vocab, space) if task.vocab is not None else None
            )
            objective = RelationObjective(eval_ids, lm.device)
            train, train_gold = single_token_facts(lm, task, task.train, "train", None, counts)
            dev, dev_gold = single_token_facts(lm, task, task.dev, "dev", eval_ids, counts)
            label_ids = sorted(set(train_gold))  # as AutoPrompt: no trigger may be an answer
        if task.mode != "classification":
            require_next_token(lm, task.template, objective.mask_counts, "search")
        tensors = [
            SplitTensors(task.template, lm, rows, gold, objective.mask_counts, lazy)
            # train rows are encoded as steps sample them; dev is evaluated whole at the start
            for rows, gold, lazy in ((train, train_gold, True), (dev, dev_gold, False))
        ]
        return cls(lm, task, objective, tensors[0], tensors[1], label_ids, counts)

    def split_counts(self) -> dict[str, dict]:
        """Rows, truncations and skipped facts per split, as of now: train rows are encoded as
        the search samples them, so its ``truncated`` counts the ``encoded`` rows only."""
        out = {}
        for name, split in (("train", self.train), ("dev", self.dev)):
            entry = {**self.counts.get(name, {}), "n": len(split), "truncated": split.truncated}
            if split.encoded < len(split):
                entry["encoded"] = split.encoded
            out[name] = entry
        return out

    def encode(self, examples: Sequence, objective: Objective | None = None) -> SplitTensors:
        """Another split (a test set), encoded and judged as dev is (``counts`` unchanged)."""
        objective = objective or self.objective
        if self.task.mode == "classification":
            labels = objective.verbalizer.labels
            gold = [labels.index(e.label) for e in examples]
        else:
            eval_ids = objective.eval_ids
            allowed = None if eval_ids is None else eval_ids.tolist()
            examples, gold = single_token_facts(self.lm, self.task, examples, "test", allowed, {})
        return SplitTensors(self.task.template, self.lm, examples, gold, objective.mask_counts)


def single_token_facts(
    lm: LanguageModel,
    task: SearchTask,
    facts: list,
    split: str,
    eval_ids: Sequence[int] | None,
    counts: dict[str, dict],
) -> tuple[list, list[int]]:
    """Facts whose object is one token (and in the evaluation vocabulary, for dev), with their
    object ids; the skipped are counted in ``counts[split]``."""
    space = task.template.answer_space
    allowed = set(eval_ids) if eval_ids is not None else None
    kept, gold = [], []
    for f in facts:
        token = single_token_id(lm.tokenizer, f.label, space)
        if token is not None and (allowed is None or token in allowed):
            kept.append(f)
            gold.append(token)
    counts[split] = {"skipped": len(facts) - len(kept)}
    if not kept:
        raise AutopromptError(
            f"{task.sources.get(split, split)}: none of its {len(facts)} facts has an "
            "object that is one token of this model's vocabulary"
            + (" and in --vocab" if allowed is not None else "")
            + "; relation search predicts single-token objects"
        )
    return kept, gold
