"""``predict``: label every row of a file with a prompt (or an ensemble), in a stream.

The input is read in windows of ``window`` rows; each window is cut into length-sorted
batches under ``max_batch_tokens`` (``prompts.BatchPlan``), scored with the same functions
``score`` and ``probe`` use (verbalizer word scores, ``log_normalise``, ``calibrate``,
``ensemble.combine``), and written back in input order, so memory stays bounded however long
the file is. Under torchrun every process reads the input and scores its share of each
window's batches; the shares are summed and rank 0 writes, so the file is the one a single
process writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from autoprompt_py import distributed
from autoprompt_py.calibration import (
    calibrate,
    check_content_free,
    content_free_examples,
    mean_distribution,
)
from autoprompt_py.data import Example
from autoprompt_py.encoding import EncodedDataset
from autoprompt_py.ensemble import Combined, EnsembleAccumulator, combine, log_normalise
from autoprompt_py.errors import AutopromptError
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.prediction.config import PredictConfig
from autoprompt_py.prediction.prompts import BatchPlan, Prompt, load_prompts
from autoprompt_py.prediction.reader import InputRow, RowReader
from autoprompt_py.probing import ranks_of
from autoprompt_py.resources import load_verbalizer
from autoprompt_py.slot_scores import candidate_scores, label_scores
from autoprompt_py.template import Chat
from autoprompt_py.vocab import read_vocab, single_token_id, vocab_token_ids

RELATION_CELLS = 1 << 24  # candidate scores held per member and window in relation mode
DIGITS = 6  # probabilities are written rounded, so that files compare byte for byte


@dataclass
class _Member:
    prompt: Prompt
    verbalizer: object = None  # ResolvedVerbalizer (classification)
    order: list[int] = field(default_factory=list)
    p_cf: np.ndarray | None = None


class Predictor:
    """The loaded prompts of a config on one model; ``window(rows)`` → output rows."""

    def __init__(self, config: PredictConfig, lm: LanguageModel) -> None:
        self.config = config
        self.lm = lm
        tokens = config.max_batch_tokens
        if tokens == "auto":
            from autoprompt_py.memory import auto_max_batch_tokens

            tokens = distributed.agree_min(auto_max_batch_tokens(lm))
        self.plan = BatchPlan(
            config.batch_size, int(tokens), distributed.rank(), distributed.world_size()
        )
        prompts = select_prompts(config)
        for p in prompts:
            p.check(lm)
        self.relational = prompts[0].is_relational
        self.members: list[_Member] = []
        if self.relational:
            self._setup_relation(prompts)
        else:
            self._setup_classification(prompts)
        if len(self.members) > 1 and not config.ensemble:
            raise AutopromptError(
                f"{len(self.members)} prompt members (templates × verbalizers); add --ensemble "
                "to combine them, or give one --template and one --verbalizer"
            )
        n = len(self.members)
        if config.weights is not None and len(config.weights) != n:
            raise AutopromptError(
                f"--weights gives {len(config.weights)} weights for {n} members (every "
                "--template × every --verbalizer, in that order); give one weight per member"
            )
        self.cf_texts = check_content_free(config.content_free) if config.calibrate else None
        if self.cf_texts is not None:
            for m in self.members:
                cf = content_free_examples(m.prompt, self.cf_texts, lm.mask_token)
                p_cf = mean_distribution(self._member_scores(m, cf))
                m.p_cf = p_cf if self.relational else p_cf[m.order]

    # -- setup ----------------------------------------------------------------------------

    def _setup_classification(self, prompts: list[Prompt]) -> None:
        verbs = [load_verbalizer(v) for v in self.config.verbalizers]
        if not verbs:
            raise AutopromptError(
                "--verbalizer: a classification template needs one (label → words), e.g. "
                "--verbalizer sst2; relation templates ([X] ... [Y]) need none"
            )
        self.labels = verbs[0].labels
        for v in verbs[1:]:
            if set(v.labels) != set(self.labels):
                raise AutopromptError(
                    f"--verbalizer {v.source}: labels {v.labels} differ from "
                    f"{verbs[0].source}'s {self.labels}; every verbalizer needs the same labels"
                )
        resolved: dict = {}
        for p in prompts:
            for vi, v in enumerate(verbs):
                key = (vi, p.space_before)
                if key not in resolved:
                    resolved[key] = v.resolve(self.lm.tokenizer, self.config.aggregation, key[1])
                r = resolved[key]
                self.members.append(_Member(p, r, [r.labels.index(lab) for lab in self.labels]))

    def _setup_relation(self, prompts: list[Prompt]) -> None:
        if self.config.verbalizers:
            raise AutopromptError(
                "--verbalizer is for classification; a relation template ([X] ... [Y]) "
                "predicts objects: drop --verbalizer"
            )
        tok = self.lm.tokenizer
        spaces = {p.space_before for p in prompts}
        if len(spaces) > 1:
            raise AutopromptError(
                "the templates disagree on the space before [Y], which changes the candidate "
                "tokens; predict with them in separate runs"
            )
        self.space = spaces.pop()
        words = read_vocab(self.config.vocab) if self.config.vocab else None
        cand = vocab_token_ids(tok, words, self.space) if words is not None else None
        if cand is not None and not cand:
            raise AutopromptError(
                f"--vocab {self.config.vocab}: no word of it is one token of this model"
            )
        self.cand = cand
        self.cand_ids = np.arange(self.lm.vocab_size) if cand is None else np.array(cand)
        self.column = {int(c): i for i, c in enumerate(self.cand_ids)}
        width = len(self.cand_ids)
        self.relation_window = min(self.config.window, max(16, RELATION_CELLS // width))
        self.members = [_Member(p) for p in prompts]

    @property
    def window_rows(self) -> int:
        return self.relation_window if self.relational else self.config.window

    # -- scoring ----------------------------------------------------------------------------

    def masks_needed(self, m: _Member) -> list[int]:
        """The numbers of masks a member's rows are encoded with (one pass per number)."""
        return [1] if self.relational else m.verbalizer.piece_counts

    def prepare(self, examples: Sequence[Example]) -> dict[tuple[int, int], EncodedDataset]:
        """A window's examples encoded for every member and number of masks: (member, k) →
        encoded rows. No model work, so the next window's can run beside this one's."""
        return {
            (i, k): m.prompt.encode(self.lm, examples, k)
            for i, m in enumerate(self.members)
            for k in self.masks_needed(m)
        }

    def _member_scores(self, m: _Member, examples, encoded: dict | None = None) -> np.ndarray:
        """Relations: log-probabilities [rows, candidates], as ``probe``; classification: the
        aggregated label scores [rows, verbalizer labels], as ``classify``. ``encoded``: the
        member's rows by number of masks, from ``prepare``."""
        rows = m.prompt.rows(self.lm, examples, self.plan, encoded)
        if self.relational:
            return candidate_scores(rows, self.cand)
        # the window's label scores are normalised over the labels (``label_scores``)
        return label_scores(rows, m.verbalizer, over_labels=True).numpy()

    def window(self, rows: Sequence[InputRow], encoded: dict | None = None) -> list[dict]:
        """Output rows for a window of input rows, in their order (``encoded``: ``prepare``'s
        result for the window's examples, if made ahead)."""
        examples = [r.example for r in rows]
        if encoded is None:
            encoded = self.prepare(examples)
        if self.relational:
            return self.relation_rows(rows, examples, *self.relation_scores(examples, encoded))
        top, probs, _ = self.label_scores(examples, encoded)
        return self.label_rows(rows, top, probs)

    def label_scores(self, examples, encoded: dict) -> tuple[np.ndarray, np.ndarray, object]:
        """(predicted label per row, label probabilities [rows, labels]; vote: the shares,
        vote's tiebreak or None)."""
        parts = []
        for i, m in enumerate(self.members):
            mine = {k: encoded[(i, k)] for k in self.masks_needed(m)}
            lp = log_normalise(self._member_scores(m, examples, mine))[:, m.order]
            parts.append(calibrate(lp, m.p_cf) if m.p_cf is not None else lp)
        if len(parts) == 1:
            return parts[0].argmax(1), np.exp(parts[0]), None
        c = combine(parts, self.config.ensemble_rule, self.config.weights)
        return c.argmax(), np.exp(c.scores) if c.tiebreak is None else c.scores, c.tiebreak

    def label_rows(self, rows: Sequence[InputRow], top, probs: np.ndarray) -> list[dict]:
        ordered = np.sort(probs, 1)
        margin = ordered[:, -1] - (ordered[:, -2] if probs.shape[1] > 1 else 0.0)
        probs = _rounded(probs)
        margin = _rounded(margin)
        out = []
        for i, r in enumerate(rows):
            row = self._head(r)
            row["prediction"] = self.labels[top[i]]
            row["margin"] = margin[i]
            row.update({f"p_{lab}": p for lab, p in zip(self.labels, probs[i])})
            out.append(row)
        return out

    def relation_scores(self, examples, encoded: dict) -> tuple[np.ndarray, np.ndarray | None]:
        """(log-probabilities [rows, candidates]; vote: the shares, tiebreak) of the members."""
        rule = self.config.ensemble_rule
        acc = EnsembleAccumulator(rule) if len(self.members) > 1 else None
        for wi, m in enumerate(self.members):
            lp = self._member_scores(m, examples, {1: encoded[(wi, 1)]})
            if m.p_cf is not None:
                lp = calibrate(lp, m.p_cf).astype(np.float32)
            if acc is None:
                return lp, None
            acc.add(lp, 1.0 if self.config.weights is None else self.config.weights[wi])
            del lp
        c = acc.result()
        return (log_normalise(c.scores), None) if c.tiebreak is None else (c.scores, c.tiebreak)

    def relation_rows(self, rows, examples, scores, tiebreak) -> list[dict]:
        k = min(self.config.top_k, scores.shape[1])
        # ties broken by the mean log-probability for vote, as Combined.ranks does
        key = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float64))
        if tiebreak is not None:
            key = key + torch.from_numpy(np.exp(tiebreak)) * 1e-9
        top = key.topk(k, dim=1).indices.numpy()
        top_scores = np.take_along_axis(scores, top, 1)
        probs = top_scores if tiebreak is not None else np.exp(top_scores)
        probs = _rounded(probs)
        tokens = [self.lm.tokenizer.convert_ids_to_tokens(self.cand_ids[t].tolist()) for t in top]
        ranks = None
        if self.config.with_labels:
            gold = [single_token_id(self.lm.tokenizer, e.label, self.space) for e in examples]
            gold = np.array([self.column.get(-1 if g is None else g, -1) for g in gold])
            ok = gold >= 0
            ranks = np.zeros(len(gold), dtype=np.int64)
            if ok.any():
                if tiebreak is None:
                    ranks[ok] = ranks_of(scores[ok], gold[ok])
                else:
                    ranks[ok] = Combined(scores[ok], tiebreak[ok]).ranks(gold[ok])
        out = []
        for i, r in enumerate(rows):
            row = self._head(r)
            row["prediction"] = tokens[i][0]
            row["p"] = probs[i][0]
            if ranks is not None:
                row["rank"] = int(ranks[i]) if ranks[i] else None
            for j in range(k):
                row[f"top_{j + 1}"] = tokens[i][j]
                row[f"p_{j + 1}"] = probs[i][j]
            out.append(row)
        return out

    def _head(self, r: InputRow) -> dict:
        row = {"id": r.id}
        row.update(r.keep)
        if self.config.with_labels:
            row["gold"] = r.example.label
        return row

    def columns(self, keep: Sequence[str]) -> list[str]:
        """The output columns, in order."""
        head = ["id", *keep] + (["gold"] if self.config.with_labels else [])
        if not self.relational:
            return head + ["prediction", "margin"] + [f"p_{lab}" for lab in self.labels]
        k = min(self.config.top_k, len(self.cand_ids))
        rank = ["rank"] if self.config.with_labels else []
        tops = [c for j in range(1, k + 1) for c in (f"top_{j}", f"p_{j}")]
        return head + ["prediction", "p"] + rank + tops

    @property
    def truncated(self) -> int:
        """Inputs cut to the model's positions (each member's count, summed)."""
        return sum(m.prompt.truncated for m in self.members)

    def member_names(self) -> list[str]:
        return [m.prompt.text for m in self.members]


def _rounded(x: np.ndarray) -> list:
    """Figures as written: float64 rounded (float32 would print 0.20973800122737885)."""
    return np.asarray(x, dtype=np.float64).round(DIGITS).tolist()


def select_prompts(config: PredictConfig) -> list[Prompt]:
    """The prompts of ``--template`` (for relation sets: those of ``--relation``)."""
    prompts = load_prompts(config.templates, Chat(config.system) if config.chat else None)
    if config.relation is not None:
        chosen = [p for p in prompts if p.relation in (config.relation, None)]
        if not chosen:
            have = sorted({p.relation for p in prompts if p.relation})
            raise AutopromptError(
                f"--relation {config.relation}: no template for it (relations: "
                f"{', '.join(have[:10])}{', ...' if len(have) > 10 else ''})"
            )
        prompts = chosen
    elif len({p.relation for p in prompts if p.relation}) > 1:
        raise AutopromptError(
            "--template holds templates of several relations; choose one with --relation "
            f"(e.g. --relation {next(p.relation for p in prompts if p.relation)})"
        )
    kinds = {p.is_relational for p in prompts}
    if len(kinds) > 1:
        raise AutopromptError(
            "--template mixes relation templates ([X] ... [Y]) and classification templates; "
            "predict with them in separate runs"
        )
    return prompts


def needed_fields(config: PredictConfig) -> list[str]:
    """The input fields the prompts read (checked on the input before the model loads)."""
    return list(dict.fromkeys(f for p in select_prompts(config) for f in p.fields))


def gold_field(config: PredictConfig, relational: bool) -> str | None:
    """The column of gold labels with --with-labels (LAMA facts hold them in obj_label)."""
    if not config.with_labels:
        return None
    return config.label_field or ("obj_label" if relational else "label")


def open_reader(config: PredictConfig, data: str) -> RowReader:
    relational = select_prompts(config)[0].is_relational
    return RowReader(
        data,
        needed_fields(config),
        gold_field(config, relational),
        config.keep_columns,
        config.columns,
        config.input_format,
        config.on_error,
        config.limit,
    )
