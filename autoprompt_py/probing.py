"""Probing relations with several templates each (Jiang et al. 2020): every template alone, the
best one chosen on held-out dev facts, and their ensemble; raw and calibrated.

Each template gives, per fact, log-probabilities over the candidates (the ``--vocab`` words that
are one token, or the whole vocabulary); the gold object's rank among them gives P@1, P@10 and
MRR. Calibration divides by the distribution the template gives with ``[X]`` filled by
content-free texts. With a dev split, every figure is on the remaining (reported) facts.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from autoprompt_py.calibration import calibrate, content_free_examples, mean_distribution
from autoprompt_py.data import Example, split_dev
from autoprompt_py.ensemble import EnsembleAccumulator, log_normalise
from autoprompt_py.errors import AutopromptError
from autoprompt_py.evaluation import require_closed
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.metrics import rank_metrics
from autoprompt_py.resources import NamedTemplate
from autoprompt_py.slot_scores import candidate_scores, template_rows
from autoprompt_py.template import Template
from autoprompt_py.vocab import single_token_id, vocab_token_ids

KINDS = ("first", "best-dev", "ensemble")


def candidate_log_probs(
    lm: LanguageModel,
    template: Template,
    facts: Sequence[Example],
    candidates: Sequence[int] | None,
    batch_size: int = 64,
    desc: str | None = None,
) -> tuple[np.ndarray, int]:
    """Log-softmax over the candidates (default: the whole vocabulary) at the prediction slot,
    [facts, candidates] float32, and the number of truncated inputs."""
    rows = template_rows(lm, template, facts, batch_size=batch_size, desc=desc)
    return candidate_scores(rows, candidates), rows.truncated


def ranks_of(log_probs: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """1-based rank of the gold column in each row (strictly higher ones + 1), as LAMA."""
    target = log_probs[np.arange(len(gold)), gold][:, None]
    return (log_probs > target).sum(1) + 1


@dataclass
class MemberProbe:
    """One template (or the ensemble) on one relation: ranks per scored fact."""

    name: str
    template: str
    ranks: np.ndarray
    top: list[list[str]] = field(default_factory=list, repr=False)
    cal_ranks: np.ndarray | None = None
    p_cf_top: list[tuple[str, float]] | None = None  # the content-free distribution's top 5


@dataclass
class RelationProbe:
    relation: str
    facts: list[Example] = field(repr=False)
    scored: np.ndarray  # bool per fact
    dev: np.ndarray  # positions (within the scored facts) used to choose the best template
    test: np.ndarray  # positions reported
    members: list[MemberProbe]
    ensemble: MemberProbe | None
    truncated: int
    best: int | None = None  # index of the best member on dev (raw)
    best_cal: int | None = None

    @property
    def skipped(self) -> int:
        return int((~self.scored).sum())

    def metrics(self, ranks: np.ndarray, on: str = "test") -> dict:
        return rank_metrics(ranks[self.dev if on == "dev" else self.test])

    def kind(self, kind: str, calibrated: bool = False) -> MemberProbe | None:
        """The member reported as ``first``, ``best-dev`` or ``ensemble``."""
        if kind == "first":
            return self.members[0]
        if kind == "best-dev":
            i = self.best_cal if calibrated else self.best
            return None if i is None else self.members[i]
        return self.ensemble

    def kind_ranks(self, kind: str, calibrated: bool = False) -> np.ndarray | None:
        m = self.kind(kind, calibrated)
        if m is None:
            return None
        return m.cal_ranks if calibrated else m.ranks

    def to_json(self, reported: str, predictions: bool = False) -> dict:
        """The relation as the probe result file records it: the ``reported`` member's
        metrics (``kind``), every template's, and with ``predictions`` each fact's rank."""
        p = self

        def member(m) -> dict:
            out = {"name": m.name, "template": m.template, **p.metrics(m.ranks)}
            if len(p.dev):
                out["dev"] = p.metrics(m.ranks, "dev")
            if m.cal_ranks is not None:
                out["calibrated"] = p.metrics(m.cal_ranks)
                if len(p.dev):
                    out["calibrated"]["dev"] = p.metrics(m.cal_ranks, "dev")
            if m.p_cf_top is not None:
                out["p_cf_top5"] = m.p_cf_top
            return out

        main = p.kind(reported) or p.members[0]
        out = {
            "relation": p.relation,
            "template": main.template,
            "reported": main.name,
            "facts": len(p.facts),
            "skipped": p.skipped,
            "dev": len(p.dev),
            **p.metrics(main.ranks),
            "truncated": p.truncated,
            "templates": [member(m) for m in p.members],
        }
        if main.cal_ranks is not None:
            out["calibrated"] = p.metrics(main.cal_ranks)
        if len(p.dev):
            out["best"] = p.members[p.best].name
            if p.best_cal is not None:
                out["best_calibrated"] = p.members[p.best_cal].name
        if p.ensemble is not None:
            out["ensemble"] = member(p.ensemble)
        if predictions:
            position = np.cumsum(p.scored) - 1
            dev = set(p.dev.tolist())
            out["predictions"] = [
                {
                    "sub_label": f.fields.get("sub_label"),
                    "obj_label": f.label,
                    "rank": int(main.ranks[position[i]]) if s else None,
                    "split": ("dev" if position[i] in dev else "test") if s else None,
                    "top": main.top[position[i]] if s else [],
                }
                for i, (f, s) in enumerate(zip(p.facts, p.scored))
            ]
        return out


def reported_kind(probes: Sequence[RelationProbe]) -> str:
    """Which member a probe reports: the ensemble when there is one, else the best on dev
    when relations were split, else the first template."""
    if any(p.ensemble for p in probes):
        return "ensemble"
    return "best-dev" if any(len(p.dev) for p in probes) else "first"


def templates_by_relation(
    templates: Sequence[NamedTemplate], relations: Sequence[str], per_relation: int | None
) -> dict[str, list[NamedTemplate]]:
    """Relation → its templates (in file order, the first ``per_relation``); a template without
    a relation applies to every relation that has none of its own."""
    own: dict[str, list[NamedTemplate]] = {}
    for t in templates:
        if t.relation:
            own.setdefault(t.relation, []).append(t)
    default = [t for t in templates if not t.relation]
    out = {}
    for rel in relations:
        chosen = own.get(rel, default)[:per_relation]
        if chosen:
            out[rel] = chosen
    return out


def relation_split(
    n: int, fraction: float, seed: int, relation: str
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded dev/test split of n facts (``data.split_dev``); the seed mixes in the relation
    id, so adding a relation does not move the split of another."""
    n_dev = min(max(1, round(fraction * n)), n - 1) if n >= 2 else 0
    dev, test = split_dev(n, n_dev, [seed, zlib.crc32(relation.encode())])
    return np.asarray(dev, dtype=np.int64), np.asarray(test, dtype=np.int64)


def probe_templates(
    lm: LanguageModel,
    templates: Sequence[NamedTemplate],
    facts: Mapping[str, Sequence[Example]],
    *,
    vocab: Sequence[str] | None = None,
    batch_size: int = 64,
    per_relation: int | None = None,
    dev_fraction: float | None = None,
    seed: int = 0,
    ensemble_rule: str | None = None,
    calibrate_with: Sequence[str] | None = None,
    progress: bool = True,
    top_k: int = 10,
) -> list[RelationProbe]:
    """Probe every relation that has templates: each template, with ``dev_fraction`` the best
    one on a seeded dev split (all figures then on the rest), with ``ensemble_rule`` the
    ensemble of the relation's templates, with ``calibrate_with`` all of it calibrated too."""
    plan = templates_by_relation(templates, list(facts), per_relation)
    if not plan:
        raise AutopromptError(
            "no relation of the facts has a template: give --relations with templates for "
            f"{', '.join(list(facts)[:5])}, or one --template for all"
        )
    for named in {id(t): t for ts in plan.values() for t in ts}.values():
        require_closed(named.template, named.name)
        if not named.template.is_relational:
            raise AutopromptError(
                f"template {named.name!r} has no subject slot [X] (or {{sub_label}}); a LAMA "
                "template reads like '[X] was born in [Y] .'"
            )
    split = dev_fraction is not None and any(len(ts) > 1 for ts in plan.values())
    out = []
    for relation, members in plan.items():
        out.append(
            _probe_relation(
                lm, relation, members, list(facts[relation]), vocab, batch_size,
                dev_fraction if split else None, seed, ensemble_rule, calibrate_with,
                progress, top_k,
            )
        )  # fmt: skip
    if not any(p.scored.any() for p in out):
        where = "in --vocab and " if vocab is not None else ""
        raise AutopromptError(
            f"no fact of {', '.join(p.relation for p in out)[:200]} has an object {where}that is "
            "one token of this model's vocabulary, so nothing can be scored; check --vocab (one "
            "word a line) and the facts' obj_label"
        )
    return out


def _probe_relation(
    lm, relation, members, rel_facts, vocab, batch_size, dev_fraction, seed, rule, cf_texts,
    progress, top_k,
) -> RelationProbe:  # fmt: skip
    tok = lm.tokenizer
    # candidates and gold ids per template; an ensemble needs the same for all of them
    spaces = {t.template.answer_space for t in members}
    layouts = []
    for space in sorted(spaces):
        cand = vocab_token_ids(tok, list(vocab), space) if vocab is not None else None
        gold = [single_token_id(tok, f.label, space) for f in rel_facts]
        layouts.append((cand, gold))
    if len(layouts) > 1 and layouts[0] != layouts[1]:
        raise AutopromptError(
            f"templates of {relation} disagree on the space before [Y], which changes the "
            "candidate tokens of this tokenizer; probe them in separate runs"
        )
    cand, gold_ids = layouts[0]
    gold = np.array([-1 if g is None else g for g in gold_ids], dtype=np.int64)
    if cand is not None:
        column = {c: i for i, c in enumerate(cand)}
        gold = np.array([column.get(int(g), -1) for g in gold], dtype=np.int64)
    scored = gold >= 0
    keep = [f for f, s in zip(rel_facts, scored) if s]
    gold = gold[scored]
    n = len(keep)
    if dev_fraction is None:
        dev, test = np.array([], dtype=np.int64), np.arange(n)
    else:
        dev, test = relation_split(n, dev_fraction, seed, relation)
    names = _unique_names(relation, members)
    results: list[MemberProbe] = []
    raw_acc = EnsembleAccumulator(rule) if rule and len(members) > 1 else None
    cal_acc = EnsembleAccumulator(rule) if raw_acc is not None and cf_texts else None
    truncated = 0
    cand_ids = np.arange(lm.vocab_size) if cand is None else np.array(cand)
    for name, named in zip(names, members):
        template = named.template
        if n:
            desc = f"{relation} {name}" if progress else None
            lp, trunc = candidate_log_probs(lm, template, keep, cand, batch_size, desc)
        else:
            lp, trunc = np.zeros((0, len(cand_ids)), np.float32), 0
        truncated = max(truncated, trunc)
        member = MemberProbe(name, template.render("token"), ranks_of(lp, gold))
        member.top = _top_tokens(tok, lp, cand_ids, top_k)
        if raw_acc is not None:
            raw_acc.add(lp)
        if cf_texts is not None:
            cf = content_free_examples(template, cf_texts, lm.mask_token)
            p_cf = mean_distribution(candidate_log_probs(lm, template, cf, cand, batch_size)[0])
            cal = calibrate(lp, p_cf).astype(np.float32)
            member.cal_ranks = ranks_of(cal, gold)
            top = np.argsort(-p_cf)[:5]
            ids = tok.convert_ids_to_tokens(cand_ids[top].tolist())
            member.p_cf_top = [(t, round(float(p_cf[i]), 5)) for t, i in zip(ids, top)]
            if cal_acc is not None:
                cal_acc.add(cal)
            del cal
        del lp
        results.append(member)
    ensemble = None
    if raw_acc is not None:
        combined = raw_acc.result()
        ensemble = MemberProbe(f"ensemble ({rule})", "", combined.ranks(gold))
        ensemble.top = _top_tokens(
            tok, log_normalise(combined.scores) if combined.tiebreak is None else combined.scores,
            cand_ids, top_k,
        )  # fmt: skip
        if cal_acc is not None:
            ensemble.cal_ranks = cal_acc.result().ranks(gold)
    probe = RelationProbe(relation, rel_facts, scored, dev, test, results, ensemble, truncated)
    if len(dev):
        probe.best = _best(probe, [m.ranks for m in results])
        if cf_texts is not None:
            probe.best_cal = _best(probe, [m.cal_ranks for m in results])
    elif len(results) == 1:
        probe.best = probe.best_cal = 0
    return probe


def _best(probe: RelationProbe, ranks: list[np.ndarray]) -> int:
    """The member with the highest dev P@1, ties broken by dev MRR, then file order."""
    keys = [(-probe.metrics(r, "dev")["p@1"], -probe.metrics(r, "dev")["mrr"]) for r in ranks]
    return min(range(len(keys)), key=lambda i: keys[i])


def _top_tokens(tokenizer, scores: np.ndarray, cand_ids: np.ndarray, k: int) -> list[list[str]]:
    if not len(scores):
        return []
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, 1).argsort(1)[:, ::-1]
    top = np.take_along_axis(top, order, 1)
    return [tokenizer.convert_ids_to_tokens(cand_ids[row].tolist()) for row in top]


def _unique_names(relation: str, members: Sequence[NamedTemplate]) -> list[str]:
    names = [m.name for m in members]
    if len(set(names)) == len(names):
        return names
    return [f"{relation}#{i + 1}" for i in range(len(members))]


def averages(probes: Sequence[RelationProbe], kind: str, calibrated: bool = False) -> dict | None:
    """Micro (over reported facts) and macro (over relations) P@1, P@10, MRR of one kind."""
    per = [(p, p.kind_ranks(kind, calibrated)) for p in probes]
    # a relation with no scorable fact has no figures: it is reported, not averaged
    per = [(p, r) for p, r in per if r is not None and len(p.test)]
    if not per:
        return None
    micro = rank_metrics(np.concatenate([r[p.test] for p, r in per]))
    metrics = [p.metrics(r) for p, r in per]
    macro = {k: float(np.mean([m[k] for m in metrics])) for k in ("p@1", "p@10", "mrr")}
    macro["relations"] = len(per)
    return {"micro": micro, "macro": macro}


def probe_record(
    probes: Sequence[RelationProbe], *, calibrated: bool = False, predictions: bool = False
) -> dict:
    """What ``autoprompt probe`` writes of ``probe_templates``' result: the reported kind,
    each relation's record, its figures and the ``averages`` of every kind (``calibrated``:
    of the calibrated ranks too); ``predictions``: each fact's rank and top tokens."""
    primary = reported_kind(probes)
    summary = summary_of(probes, calibrated=calibrated)
    relations = [p.to_json(primary, predictions) for p in probes]
    return {"reported": primary, "relations": relations, **summary[primary], "averages": summary}


def summary_of(probes: Sequence[RelationProbe], *, calibrated: bool = False) -> dict:
    """The micro and macro averages of each kind of member (best-dev with a dev split)."""
    split = any(len(p.dev) for p in probes)
    kinds = [k for k in KINDS if k != "best-dev" or split]
    out = {k: a for k in kinds if (a := averages(probes, k)) is not None}
    if calibrated:
        out.update({f"{k}:calibrated": a for k in kinds if (a := averages(probes, k, True))})
    return out


@dataclass
class RelationScore:
    """One relation probed with one template (``probe_relations``)."""

    relation: str
    template: str
    facts: int
    skipped: int
    metrics: dict
    truncated: int
    examples: list[dict] | None = field(default=None, repr=False)


def probe_relations(
    lm: LanguageModel,
    templates: Sequence[NamedTemplate],
    facts: Mapping[str, Sequence[Example]],
    vocab: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool = True,
    keep_predictions: bool = False,
) -> tuple[list[RelationScore], dict]:
    """P@1, P@10 and MRR per relation with its first template, and their micro and macro
    averages: ``probe_templates`` with one template per relation, in a flat record.

    A template applies to the relation it names; a template without one applies to every
    relation that has no template of its own.
    """
    probes = probe_templates(
        lm, templates, facts, vocab=vocab, batch_size=batch_size, per_relation=1, progress=progress
    )
    scored = []
    for p in probes:
        main = p.members[0]
        examples = None
        if keep_predictions:
            position = np.cumsum(p.scored) - 1
            examples = [
                {
                    "sub_label": f.fields.get("sub_label"),
                    "obj_label": f.label,
                    "rank": int(main.ranks[position[i]]) if s else None,
                    "top": main.top[position[i]] if s else [],
                }
                for i, (f, s) in enumerate(zip(p.facts, p.scored))
            ]
        metrics = p.metrics(main.ranks)
        scored.append(
            RelationScore(
                p.relation, main.template, len(p.facts), p.skipped, metrics, p.truncated, examples
            )
        )
    micro = rank_metrics(np.concatenate([p.members[0].ranks[p.test] for p in probes]))
    macro = {k: float(np.mean([s.metrics[k] for s in scored])) for k in ("p@1", "p@10", "mrr")}
    macro["relations"] = len(scored)
    return scored, {"micro": micro, "macro": macro}
