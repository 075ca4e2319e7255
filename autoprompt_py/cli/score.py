"""``autoprompt score``: hand-written or found templates, evaluated on a labeled dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from autoprompt_py.cli.evaluation_options import (
    check_ensemble_options,
    evaluation_options,
    shipped,
)
from autoprompt_py.cli.options import (
    data_options,
    model_options,
    output_options,
    template_options,
)
from autoprompt_py.cli.outputs import claim_and_lock
from autoprompt_py.cli.tables import notes, score_row, table

if TYPE_CHECKING:
    from autoprompt_py.template import Chat


@click.command("score")
@data_options("data")
@template_options(
    f"Template text, a shipped set ({shipped('templates')}), a .jsonl/.txt file or a search "
    "result; repeat to score several in one run.",
    several=True,
    verbalizer=f"Label → words JSON file, a shipped name ({shipped('verbalizers')}) or inline "
    "JSON; repeat to score every template with each.",
    verbalizer_required=True,
)
@click.option(
    "--metric",
    type=click.Choice(["accuracy", "macro_f1"]),
    default="accuracy",
    show_default=True,
    help="What the table is ranked by.",
)
@evaluation_options()
@output_options(
    "Write the results as JSON.",
    required=False,
    predictions="Put per-example predictions in the JSON.",
)
@model_options(
    several="a transfer table, one column per model (each metric with its interval), ranked "
    "by the mean over the models."
)
def score_command(
    data: str, label_field: str, columns: list[str] | None, limit: int | None,
    templates: tuple[str, ...], verbalizers: tuple[str, ...], aggregation: str, metric: str,
    bootstrap: int, seed: int, ensemble: bool, ensemble_rule: str, weights: str | None,
    calibrate: bool, content_free: tuple[str, ...], output: str | None, force: bool,
    predictions: bool, model_names: tuple[str, ...], device: str, dtype: str, batch_size: int,
    chat: Chat | None,
) -> None:  # fmt: skip
    """Score templates with a verbalizer on a labeled dataset; ensembles and calibration."""
    from autoprompt_py.cli.models import prompted_models
    from autoprompt_py.cli.transfer import score_transfer
    from autoprompt_py.data import check_fields, read_examples
    from autoprompt_py.distributed import require_rows
    from autoprompt_py.ensemble import parse_weights
    from autoprompt_py.evaluation import check_verbalizers, score_prompts
    from autoprompt_py.resources import (
        load_verbalizer,
        with_chat,
    )
    from autoprompt_py.template import chat_settings
    from autoprompt_py.tune.folder import load_templates_or_tuned

    claim_and_lock(output, force=force)  # before any work; locked until the command ends
    named = with_chat(
        [t for spec in templates for t in load_templates_or_tuned(spec, kept=True)], chat
    )
    verbs = [(spec, load_verbalizer(spec)) for spec in verbalizers]
    n_members = len(named) * len(verbs)
    rule, cf_texts = check_ensemble_options(
        ensemble, ensemble_rule, weights, calibrate, content_free
    )
    member_weights = parse_weights(weights, n_members)
    examples = read_examples(data, label_field, columns, limit)
    require_rows(len(examples), f"--data {data}")
    for t in named:  # before the model loads: a template with no field, or a missing field
        check_fields(examples, t.template.fields, t.template.source)
    check_verbalizers(verbs, examples)
    if ensemble and n_members == 1:
        click.echo(
            f"warning: --ensemble with one member ({named[0].name}); reporting that member",
            err=True,
        )
    reports = []
    lms, prompted = prompted_models(templates, model_names, device, dtype)
    for lm in prompted:
        report = score_prompts(
            lm,
            named,
            examples,
            verbs,
            aggregation=aggregation,
            batch_size=batch_size,
            bootstrap=bootstrap,
            seed=seed,
            calibrate_with=cf_texts,
            ensemble_rule=rule if ensemble else None,
            weights=member_weights,
        )
        reports.append(report)
    report = reports[0]
    results = sorted(report.members, key=lambda r: -r.metrics[metric])

    notes(results, lm.max_length)
    shown_examples = examples if predictions else None
    if len(reports) > 1:
        click.echo(f"{len(examples)} examples from {data}; {len(reports)} models")
        scored = score_transfer(model_names, reports, metric, shown_examples)
    else:
        click.echo(
            f"{len(examples)} examples from {data}; model {model_names[0]}; ranked by {metric}"
        )
        scored = _table(report, results, metric, calibrate, shown_examples)
    if output is not None:
        _write(output, scored, {
            "data": str(data), "templates": list(templates), "verbalizer": verbalizers[0],
            "verbalizers": list(verbalizers), "aggregation": aggregation,
            "label_field": label_field, "limit": limit, "model": model_names[0],
            **({"models": list(model_names)} if len(model_names) > 1 else {}),
            "model_kind": lm.kind, "device": str(lm.device), "dtype": dtype,
            "batch_size": batch_size, "bootstrap": bootstrap, "seed": seed,
            "ensemble": ensemble, "ensemble_rule": rule, "weights": member_weights,
            "calibrate": calibrate, "content_free": list(cf_texts) if cf_texts else None,
            **chat_settings(chat),
        }, len(examples), verbs, metric, lms)  # fmt: skip


def _table(report, results, metric: str, calibrate: bool, examples) -> dict:
    """One model's table, ranked by ``metric``; returns the JSON of its rows."""
    labels = report.labels
    header = ["rank", "n", "accuracy", "95% CI", "macro-F1"] + [f"R[{lab}]" for lab in labels]
    if calibrate:
        header += ["cal acc", "cal 95% CI", "cal F1"]
    shown = [(str(i), r) for i, r in enumerate(results, 1)]
    if report.ensemble is not None:
        shown.append(("ens", report.ensemble))
    rows = [score_row(rank, r, labels) for rank, r in shown]
    table(header + ["template"], rows)
    return {
        "templates": [r.to_json(examples) for r in results],
        "ensemble": report.ensemble.to_json(examples) if report.ensemble is not None else None,
    }


def _write(output, scored: dict, config: dict, n: int, verbs, metric: str, lms) -> None:
    from autoprompt_py.prompt import model_record
    from autoprompt_py.results import provenance, write_json
    from autoprompt_py.several import models_record

    write_json(
        output,
        {
            **provenance("score", config),
            "n": n,
            "verbalizer": verbs[0][1].words,
            "verbalizers": {name: v.words for name, v in verbs},
            "ranked_by": metric,
            "label_scores": "log-softmax over the labels of the aggregated word scores",
            "model": model_record(lms[0]),
            **models_record(lms),
            **scored,
        },
    )
    click.echo(f"wrote {output}")


COMMANDS = [score_command]
