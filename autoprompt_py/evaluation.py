"""Scoring many templates on a labeled dataset, and probing relations: the API under
``autoprompt score`` and ``autoprompt probe``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from autoprompt_py.data import Example, labels_of
from autoprompt_py.errors import AutopromptError, shown
from autoprompt_py.metrics import classification_metrics, rank_metrics
from autoprompt_py.model import MaskedLM
from autoprompt_py.resources import NamedTemplate
from autoprompt_py.scoring import classify, probe_facts
from autoprompt_py.template import Template
from autoprompt_py.verbalizer import ResolvedVerbalizer, Verbalizer
from autoprompt_py.vocab import vocab_token_ids


def require_closed(template: Template, name: str) -> None:
    """Scoring needs every trigger slot filled: an open [T] has no token to score with."""
    open_slots = sum(t is None for t in template.trigger_ids)
    if open_slots:
        raise AutopromptError(
            f"template {shown(name)} has {open_slots} open trigger slots [T]; score the result file "
            "of 'autoprompt search' instead, or write words in their place"
        )


@dataclass
class TemplateScore:
    name: str
    template: str
    metrics: dict
    truncated: int
    multi_piece_words: list[str]
    scores: np.ndarray | None = field(default=None, repr=False)
    predictions: list[str] | None = field(default=None, repr=False)

    def to_json(self, examples: Sequence[Example] | None = None) -> dict:
        out = {
            "name": self.name,
            "template": self.template,
            **self.metrics,
            "truncated": self.truncated,
            "multi_piece_words": self.multi_piece_words,
        }
        if examples is not None and self.predictions is not None:
            out["predictions"] = [
                {"source": e.source, "gold": e.label, "predicted": p, "scores": s}
                for e, p, s in zip(examples, self.predictions, self.scores.round(5).tolist())
            ]
        return out


def score_templates(
    lm: MaskedLM,
    templates: Sequence[NamedTemplate],
    examples: Sequence[Example],
    verbalizer: Verbalizer,
    aggregation: str = "sum",
    batch_size: int = 32,
    bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> list[TemplateScore]:
    """Score each template on the examples; the model is loaded once for all of them."""
    gold = [e.label for e in examples]
    verbalizer.check_labels(labels_of(examples), examples[0].source.rsplit(":", 1)[0])
    results = []
    resolved: dict[bool, ResolvedVerbalizer] = {}
    for named in templates:
        require_closed(named.template, named.name)
        space = named.template.predict.space_before
        if space not in resolved:
            resolved[space] = verbalizer.resolve(lm.tokenizer, aggregation, space)
        verb = resolved[space]
        out = classify(
            lm, named.template, examples, verb, batch_size, desc=named.name if progress else None
        )
        predictions = out.predictions
        metrics = classification_metrics(gold, predictions, verb.labels, bootstrap, seed)
        results.append(
            TemplateScore(
                named.name,
                named.template.render("token"),
                metrics,
                out.truncated,
                verb.multi_piece_words,
                out.scores,
                predictions,
            )
        )
    return results


@dataclass
class RelationScore:
    relation: str
    template: str
    facts: int
    skipped: int
    metrics: dict
    truncated: int
    examples: list[dict] | None = field(default=None, repr=False)


def probe_relations(
    lm: MaskedLM,
    templates: Sequence[NamedTemplate],
    facts: Mapping[str, Sequence[Example]],
    vocab: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool = True,
    keep_predictions: bool = False,
) -> tuple[list[RelationScore], dict]:
    """P@1, P@10 and MRR per relation, and their micro and macro averages.

    A template applies to the relation it names; a template without one applies to every
    relation that has no template of its own.
    """
    by_relation = {t.relation: t for t in templates if t.relation}
    default = next((t for t in templates if not t.relation), None)
    scored: list[RelationScore] = []
    all_ranks = []
    for relation, rel_facts in facts.items():
        named = by_relation.get(relation, default)
        if named is None:
            continue
        require_closed(named.template, named.name)
        if not named.template.is_relational:
            raise AutopromptError(
                f"template {named.name!r} has no subject slot [X] (or {{sub_label}}); a LAMA "
                "template reads like '[X] was born in [Y] .'"
            )
        vocab_ids = (
            vocab_token_ids(lm.tokenizer, list(vocab), named.template.predict.space_before)
            if vocab is not None
            else None
        )
        probe = probe_facts(
            lm,
            named.template,
            rel_facts,
            vocab_ids,
            batch_size,
            desc=relation if progress else None,
        )
        ranks = probe.ranks[probe.scored]
        all_ranks.append(ranks)
        examples = None
        if keep_predictions:
            examples = [
                {
                    "sub_label": f.fields.get("sub_label"),
                    "obj_label": f.label,
                    "rank": int(r) if s else None,
                    "top": t,
                }
                for f, r, s, t in zip(rel_facts, probe.ranks, probe.scored, probe.top)
            ]
        scored.append(
            RelationScore(
                relation,
                named.template.render("token"),
                len(rel_facts),
                probe.num_skipped,
                rank_metrics(ranks),
                probe.truncated,
                examples,
            )
        )
    if not scored:
        raise AutopromptError(
            "no relation of the facts has a template: give --relations with templates for "
            f"{', '.join(list(facts)[:5])}, or one --template for all"
        )
    micro = rank_metrics(np.concatenate(all_ranks))
    macro = {k: float(np.mean([s.metrics[k] for s in scored])) for k in ("p@1", "p@10", "mrr")}
    macro["relations"] = len(scored)
    return scored, {"micro": micro, "macro": macro}
