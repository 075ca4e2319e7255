"""The transfer table of ``score`` and ``probe`` over several models: one row per prompt, one
column per model (each metric with its 95% bootstrap interval), ranked by the mean over the
models; and its JSON."""

from __future__ import annotations

from collections.abc import Sequence

import click
import numpy as np

from autoprompt_py.cli.tables import table


def _cell(value: float, interval: Sequence[float] | None) -> str:
    return f"{value:.4f}" + ("" if interval is None else " ({:.3f}-{:.3f})".format(*interval))


def transfer_table(
    names: Sequence[str], rows: Sequence[tuple[str, str, list[dict]]], metric: str, ci: str
) -> None:
    """``rows``: (label, template text, each model's metrics); printed best mean first, each
    cell the metric and its interval (``ci``: the key of the interval in the metrics)."""
    for i, name in enumerate(names, 1):
        click.echo(f"model {i}: {name}")
    ranked = sorted(rows, key=lambda r: -np.mean([m[metric] for m in r[2]]))
    body = []
    for rank, (label, text, per_model) in enumerate(ranked, 1):
        mean = float(np.mean([m[metric] for m in per_model]))
        cells = [_cell(m[metric], m.get(ci)) for m in per_model]
        body.append([str(rank), *cells, f"{mean:.4f}", label if text == label else text])
    header = ["rank", *[f"model {i} {metric} (95% CI)" for i in range(1, len(names) + 1)]]
    table([*header, "mean", "prompt"], body)


def score_transfer(names: Sequence[str], reports: Sequence, metric: str, examples) -> dict:
    """Print the transfer table of ``score`` (every model's report) and return its JSON:
    ``templates`` (and ``ensemble``) with each model's figures and their mean."""
    members = list(zip(*[r.members for r in reports]))
    ensembles = [r.ensemble for r in reports]
    rows = [(m[0].name, m[0].template, [x.metrics for x in m]) for m in members]
    if ensembles[0] is not None:
        rows.append(("ensemble", "ensemble", [e.metrics for e in ensembles]))
    transfer_table(names, rows, metric, f"{metric}_ci95")

    def entry(scores) -> dict:
        return {
            "name": scores[0].name,
            "template": scores[0].template,
            "mean": {metric: float(np.mean([s.metrics[metric] for s in scores]))},
            "models": [{"model": n, **s.to_json(examples)} for n, s in zip(names, scores)],
        }

    templates = sorted((entry(m) for m in members), key=lambda e: -e["mean"][metric])
    return {
        "templates": templates,
        "ensemble": entry(ensembles) if ensembles[0] is not None else None,
    }


def probe_transfer(names: Sequence[str], runs: Sequence[list], bootstrap_seed: int) -> list:
    """Print the transfer table of ``probe`` (every model's relation probes, in the same
    order) and return its JSON: per relation, each template's P@1, P@10 and MRR on every
    model (P@1 with its bootstrap interval) and the mean P@1."""
    from autoprompt_py.metrics import bootstrap_interval

    def figures(p, m) -> dict:
        hits = (m.ranks[p.test] == 1).astype(float)
        interval = bootstrap_interval(hits, 1000, bootstrap_seed) if len(hits) else None
        return {**p.metrics(m.ranks), "p@1_ci95": None if interval is None else list(interval)}

    rows, relations = [], []
    for per_model in zip(*runs):
        first = per_model[0]
        templates = []
        for i, m in enumerate(first.members + ([first.ensemble] if first.ensemble else [])):
            member = [p.members[i] if i < len(p.members) else p.ensemble for p in per_model]
            each = [figures(p, x) for p, x in zip(per_model, member)]
            rows.append((f"{first.relation} {m.name}", f"{first.relation} {m.template}", each))
            mean = float(np.mean([f["p@1"] for f in each]))
            templates.append(
                {
                    "name": m.name,
                    "template": m.template,
                    "mean": {"p@1": mean},
                    "models": [{"model": n, **f} for n, f in zip(names, each)],
                }
            )
        relations.append({"relation": first.relation, "templates": templates})
    transfer_table(names, rows, "p@1", "p@1_ci95")
    return relations
