"""``autoprompt score``: hand-written or found templates, evaluated on a labeled dataset."""

from __future__ import annotations

import click

from autoprompt_py.cli.common import (
    chat_options,
    claim_output,
    model_options,
    parse_columns,
    quiet_transformers,
)
from autoprompt_py.cli.evaluation_options import (
    AGGREGATIONS,
    check_ensemble_options,
    ensemble_options,
    shipped,
)
from autoprompt_py.cli.paths import DATA_FIX, InputFile
from autoprompt_py.cli.tables import notes, score_row, table


@click.command()
@click.option(
    "--data",
    required=True,
    type=InputFile("data file", fix=DATA_FIX),
    help="Labeled examples: .tsv/.csv (header row, or --columns) or .jsonl.",
)
@click.option(
    "--template",
    "templates",
    multiple=True,
    required=True,
    help=f"Template text, a shipped set ({shipped('templates')}), a .jsonl/.txt file or a "
    "search result; repeat to score several in one run.",
)
@click.option(
    "--verbalizer",
    "verbalizers",
    multiple=True,
    required=True,
    help=f"Label → words JSON file, a shipped name ({shipped('verbalizers')}) or inline JSON; "
    "repeat to score every template with each.",
)
@click.option(
    "--aggregation",
    type=click.Choice(AGGREGATIONS),
    default="sum",
    show_default=True,
    help="How several words of a label combine.",
)
@click.option("--label-field", default="label", show_default=True)
@click.option("--columns", help="Column names of a header-less .tsv/.csv, e.g. text,label.")
@click.option("--limit", type=click.IntRange(min=1), help="Score only the first N examples.")
@click.option(
    "--metric",
    type=click.Choice(["accuracy", "macro_f1"]),
    default="accuracy",
    show_default=True,
    help="What the table is ranked by.",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Bootstrap resamples for the accuracy interval.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", help="Write the results as JSON.")
@click.option("--force", is_flag=True, help="Replace --output if it exists.")
@click.option("--predictions", is_flag=True, help="Put per-example predictions in the JSON.")
@ensemble_options()
@chat_options
@model_options(
    several="a transfer table, one column per model (each metric with its interval), ranked "
    "by the mean over the models."
)
def score(
    data,
    templates,
    verbalizers,
    aggregation,
    label_field,
    columns,
    limit,
    metric,
    bootstrap,
    seed,
    output,
    force,
    predictions,
    ensemble,
    ensemble_rule,
    weights,
    calibrate,
    content_free,
    chat,
    model_names,
    device,
    dtype,
    batch_size,
) -> None:
    """Score templates with a verbalizer on a labeled dataset; ensembles and calibration."""
    from autoprompt_py.cli.common import load_models
    from autoprompt_py.cli.transfer import refuse_tuned, score_transfer
    from autoprompt_py.data import check_fields, read_examples
    from autoprompt_py.distributed import require_rows
    from autoprompt_py.ensemble import parse_weights
    from autoprompt_py.evaluation import check_verbalizers, score_prompts
    from autoprompt_py.resources import (
        load_verbalizer,
        with_chat,
    )
    from autoprompt_py.template import chat_settings
    from autoprompt_py.tune.folder import load_templates_or_tuned, prompted_model

    claim_output(output, force=force)  # before any work; locked until the command ends
    named = with_chat(
        [t for spec in templates for t in load_templates_or_tuned(spec, kept=True)], chat
    )
    verbs = [(spec, load_verbalizer(spec)) for spec in verbalizers]
    n_members = len(named) * len(verbs)
    rule, cf_texts = check_ensemble_options(
        ensemble, ensemble_rule, weights, calibrate, content_free
    )
    member_weights = parse_weights(weights, n_members)
    examples = read_examples(data, label_field, parse_columns(columns), limit)
    require_rows(len(examples), f"--data {data}")
    for t in named:  # before the model loads: a template with no field, or a missing field
        check_fields(examples, t.template.fields, t.template.source)
    check_verbalizers(verbs, examples)
    if ensemble and n_members == 1:
        click.echo(
            f"warning: --ensemble with one member ({named[0].name}); reporting that member",
            err=True,
        )
    refuse_tuned(templates, model_names)
    quiet_transformers()
    reports, lms = [], load_models(model_names, device, dtype)
    for model_name, base in zip(model_names, lms):
        lm = prompted_model(base, templates, model_name)
        report = score_prompts(
            lm,
            named,
            examples,
            verbs,
            aggregation,
            batch_size,
            bootstrap,
            seed,
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
        click.echo(f"{len(examples)} examples from {data}; model {model_name}; ranked by {metric}")
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


COMMANDS = [score]
