"""Scoring many templates on a labeled dataset, on a masked LM or a decoder: the API under
``autoprompt score`` (relations: ``probing.py``, under ``autoprompt probe``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from autoprompt_py.calibration import calibrate, label_p_cf
from autoprompt_py.data import Example, labels_of
from autoprompt_py.ensemble import combine, log_normalise
from autoprompt_py.errors import AutopromptError, shown
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.metrics import classification_metrics
from autoprompt_py.resources import NamedTemplate
from autoprompt_py.scoring import classify
from autoprompt_py.template import Template
from autoprompt_py.verbalizer import ResolvedVerbalizer, Verbalizer


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
    """One scored prompt (a member: template × verbalizer) or the ensemble of several.

    ``scores`` are the label log-probabilities [examples, labels]; with calibration,
    ``calibrated`` holds the metrics, predictions and log-probabilities after dividing by
    ``p_cf``.
    """

    name: str
    template: str
    metrics: dict
    truncated: int
    multi_piece_words: list[str]
    scores: np.ndarray | None = field(default=None, repr=False)
    predictions: list[str] | None = field(default=None, repr=False)
    verbalizer: str | None = None
    weight: float | None = None
    chat: dict | None = None  # the template's chat (``Chat.record``), where read as one
    p_cf: dict[str, float] | None = None
    calibrated: TemplateScore | None = field(default=None, repr=False)

    def to_json(self, examples: Sequence[Example] | None = None) -> dict:
        out = {
            "name": self.name,
            "template": self.template,
            **self.metrics,
            "truncated": self.truncated,
            "multi_piece_words": self.multi_piece_words,
        }
        if self.verbalizer is not None:
            out["verbalizer"] = self.verbalizer
        if self.weight is not None:
            out["weight"] = self.weight
        if self.chat is not None:
            out["chat"] = self.chat
        if self.p_cf is not None:
            out["p_cf"] = self.p_cf
        if self.calibrated is not None:
            out["calibrated"] = {
                k: v
                for k, v in self.calibrated.to_json(examples).items()
                if k not in ("name", "template", "truncated", "multi_piece_words", "verbalizer")
            }
        if examples is not None and self.predictions is not None:
            out["predictions"] = [
                {"source": e.source, "gold": e.label, "predicted": p, "scores": s}
                for e, p, s in zip(examples, self.predictions, self.scores.round(5).tolist())
            ]
        return out


@dataclass
class ScoreReport:
    """Every member's score and, where asked for, their ensemble."""

    members: list[TemplateScore]
    ensemble: TemplateScore | None = None
    labels: list[str] = field(default_factory=list)


def _scored(name, template, log_probs, labels, gold, bootstrap, seed, **kw) -> TemplateScore:
    predictions = [labels[i] for i in log_probs.argmax(1)]
    metrics = classification_metrics(gold, predictions, labels, bootstrap, seed)
    return TemplateScore(
        name,
        template,
        metrics,
        kw.pop("truncated", 0),
        kw.pop("multi", []),
        log_probs,
        predictions,
        **kw,
    )


def check_verbalizers(
    verbalizers: Sequence[tuple[str, Verbalizer]], examples: Sequence[Example]
) -> None:
    """Every verbalizer covers exactly the data's labels (so all share one label set)."""
    source = examples[0].source.rsplit(":", 1)[0]
    for _, verb in verbalizers:
        verb.check_labels(labels_of(examples), source)


def score_prompts(
    lm: LanguageModel,
    templates: Sequence[NamedTemplate],
    examples: Sequence[Example],
    verbalizers: Sequence[tuple[str, Verbalizer]],
    *,
    aggregation: str = "sum",
    batch_size: int = 32,
    bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
    calibrate_with: Sequence[str] | None = None,
    ensemble_rule: str | None = None,
    weights: Sequence[float] | None = None,
) -> ScoreReport:
    """Score every member (each template × each verbalizer) on the examples, on one loaded
    model; with ``calibrate_with`` (content-free texts) also calibrated; with
    ``ensemble_rule`` also their ensemble (members calibrated first when calibrating).

    A member's label scores are log-softmax over the labels of its aggregated label-word
    scores, so that members with different verbalizers are comparable.
    """
    gold = [e.label for e in examples]
    check_verbalizers(verbalizers, examples)
    labels = verbalizers[0][1].labels
    n_members = len(templates) * len(verbalizers)
    if weights is not None and len(weights) != n_members:
        raise AutopromptError(f"{len(weights)} weights for {n_members} members")
    members: list[TemplateScore] = []
    resolved: dict[tuple[int, bool], ResolvedVerbalizer] = {}
    for named in templates:
        require_closed(named.template, named.name)
        space = named.template.answer_space
        for vi, (vname, verbalizer) in enumerate(verbalizers):
            key = (vi, space)
            if key not in resolved:
                resolved[key] = verbalizer.resolve(lm.tokenizer, aggregation, space)
            verb = resolved[key]
            name = named.name if len(verbalizers) == 1 else f"{named.name} | {vname}"
            desc = name if progress else None
            out = classify(lm, named.template, examples, verb, batch_size, desc=desc)
            order = [verb.labels.index(lab) for lab in labels]  # one label order for all
            log_probs = log_normalise(out.scores)[:, order]
            weight = None if weights is None else weights[len(members)]
            text = named.template.render("token")
            member = _scored(
                name,
                text,
                log_probs,
                labels,
                gold,
                bootstrap,
                seed,
                truncated=out.truncated,
                multi=verb.multi_piece_words,
                verbalizer=vname,
                weight=weight,
                chat=None if named.template.chat is None else named.template.chat.record(),
            )
            if calibrate_with is not None:
                p_cf = label_p_cf(lm, named.template, verb, calibrate_with, batch_size)[order]
                member.p_cf = {lab: float(p) for lab, p in zip(labels, p_cf)}
                member.calibrated = _scored(
                    name, text, calibrate(log_probs, p_cf), labels, gold, bootstrap, seed
                )
            members.append(member)
    ensemble = None
    if ensemble_rule is not None and len(members) > 1:
        ensemble = _ensemble(members, labels, gold, ensemble_rule, weights, bootstrap, seed)
    return ScoreReport(members, ensemble, labels)


def _ensemble(members, labels, gold, rule, weights, bootstrap, seed) -> TemplateScore:
    def one(parts: list[TemplateScore]) -> TemplateScore:
        combined = combine([m.scores for m in parts], rule, weights)
        predictions = [labels[i] for i in combined.argmax()]
        metrics = classification_metrics(gold, predictions, labels, bootstrap, seed)
        return TemplateScore(f"ensemble ({rule})", "", metrics, 0, [], combined.scores, predictions)

    out = one(members)
    out.truncated = max(m.truncated for m in members)
    if members[0].calibrated is not None:
        out.calibrated = one([m.calibrated for m in members])
    return out


def score_templates(
    lm: LanguageModel,
    templates: Sequence[NamedTemplate],
    examples: Sequence[Example],
    verbalizer: Verbalizer,
    *,
    aggregation: str = "sum",
    batch_size: int = 32,
    bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> list[TemplateScore]:
    """Score each template on the examples; the model is loaded once for all of them."""
    report = score_prompts(
        lm,
        templates,
        examples,
        [(verbalizer.source, verbalizer)],
        aggregation=aggregation,
        batch_size=batch_size,
        bootstrap=bootstrap,
        seed=seed,
        progress=progress,
    )
    return report.members
