"""``autoprompt score`` and ``autoprompt probe``: hand-written or found templates, evaluated."""

from __future__ import annotations

import click

from autoprompt_py.cli.common import model_options, parse_columns, quiet_transformers
from autoprompt_py.data import read_examples, read_facts
from autoprompt_py.distributed import require_rows
from autoprompt_py.evaluation import probe_relations, score_templates
from autoprompt_py.model import load_model
from autoprompt_py.resources import load_templates, load_verbalizer
from autoprompt_py.results import check_output_path, provenance, write_json
from autoprompt_py.verbalizer import AGGREGATIONS
from autoprompt_py.vocab import read_vocab


@click.command()
@click.option(
    "--data",
    required=True,
    type=click.Path(dir_okay=False),
    help="Labeled examples: .tsv/.csv (header row, or --columns) or .jsonl.",
)
@click.option(
    "--template",
    "templates",
    multiple=True,
    required=True,
    help="Template text, a shipped set (sst2, agnews), a .jsonl/.txt file or a search "
    "result; repeat to score several in one run.",
)
@click.option(
    "--verbalizer",
    required=True,
    help="Label → words JSON file, a shipped name (sst2, agnews) or inline JSON.",
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
@click.option("--output", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option("--predictions", is_flag=True, help="Put per-example predictions in the JSON.")
@model_options
def score(
    data,
    templates,
    verbalizer,
    aggregation,
    label_field,
    columns,
    limit,
    metric,
    bootstrap,
    seed,
    output,
    predictions,
    model_name,
    device,
    dtype,
    batch_size,
) -> None:
    """Score templates with a verbalizer on a labeled dataset."""
    check_output_path(output)
    named = [t for spec in templates for t in load_templates(spec)]
    verb = load_verbalizer(verbalizer)
    examples = read_examples(data, label_field, parse_columns(columns), limit)
    require_rows(len(examples), f"--data {data}")
    quiet_transformers()
    lm = load_model(model_name, device, dtype)
    results = score_templates(lm, named, examples, verb, aggregation, batch_size, bootstrap, seed)
    results.sort(key=lambda r: -r.metrics[metric])

    _notes(results, lm.max_length)
    click.echo(f"{len(examples)} examples from {data}; model {model_name}; ranked by {metric}")
    labels = verb.labels
    header = ["rank", "n", "accuracy", "95% CI", "macro-F1"] + [f"R[{lab}]" for lab in labels]
    rows = [
        [
            str(i),
            str(r.metrics["n"]),
            f"{r.metrics['accuracy']:.4f}",
            "{:.3f}-{:.3f}".format(*r.metrics["accuracy_ci95"]),
            f"{r.metrics['macro_f1']:.4f}",
        ]
        + [f"{r.metrics['recall'][lab]:.3f}" for lab in labels]
        + [r.name]
        for i, r in enumerate(results, 1)
    ]
    _table(header + ["template"], rows)
    if output:
        write_json(
            output,
            {
                **provenance(
                    "score",
                    {
                        "data": str(data),
                        "templates": list(templates),
                        "verbalizer": verbalizer,
                        "aggregation": aggregation,
                        "label_field": label_field,
                        "limit": limit,
                        "model": model_name,
                        "device": str(lm.device),
                        "dtype": dtype,
                        "batch_size": batch_size,
                        "bootstrap": bootstrap,
                        "seed": seed,
                    },
                ),
                "n": len(examples),
                "verbalizer": verb.words,
                "ranked_by": metric,
                "templates": [r.to_json(examples if predictions else None) for r in results],
            },
        )
        click.echo(f"wrote {output}")


@click.command()
@click.option(
    "--facts",
    required=True,
    type=click.Path(),
    help="A LAMA facts .jsonl (sub_label, obj_label) or a folder of P*.jsonl.",
)
@click.option(
    "--relations",
    "relation_templates",
    multiple=True,
    help="Templates per relation: a .jsonl with relation and template (default: the "
    "shipped lama_trex set), or a search result; repeatable.",
)
@click.option("--template", help="One template for every relation, e.g. '[X] is in [Y] .'.")
@click.option(
    "--vocab",
    type=click.Path(dir_okay=False),
    help="Restrict predictions to these words (one per line), as LAMA does.",
)
@click.option("--output", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option("--predictions", is_flag=True, help="Put per-fact ranks and top-10 in the JSON.")
@model_options
def probe(
    facts,
    relation_templates,
    template,
    vocab,
    output,
    predictions,
    model_name,
    device,
    dtype,
    batch_size,
) -> None:
    """Probe relational knowledge: P@1, P@10 and MRR per relation."""
    check_output_path(output)
    named = [t for spec in relation_templates for t in load_templates(spec)]
    if template:
        named += [t.__class__(t.name, t.template, None) for t in load_templates(template)]
    if not named:
        named = load_templates("lama_trex")
    fact_sets = read_facts(facts)
    words = read_vocab(vocab) if vocab else None
    require_rows(sum(len(f) for f in fact_sets.values()), f"--facts {facts}")
    quiet_transformers()
    lm = load_model(model_name, device, dtype)
    scores, averages = probe_relations(
        lm, named, fact_sets, words, batch_size, keep_predictions=predictions
    )
    skipped_rel = [r for r in fact_sets if r not in {s.relation for s in scores}]
    if skipped_rel:
        click.echo(f"note: no template for {', '.join(skipped_rel)}; not probed", err=True)
    _notes(scores, lm.max_length)
    rows = [
        [
            s.relation,
            str(s.facts - s.skipped),
            str(s.skipped),
            f"{s.metrics['p@1']:.4f}",
            f"{s.metrics['p@10']:.4f}",
            f"{s.metrics['mrr']:.4f}",
            s.template,
        ]
        for s in scores
    ]
    for kind in ("micro", "macro"):
        a = averages[kind]
        n = str(a.get("n", a.get("relations")))
        rows.append([kind, n, "", f"{a['p@1']:.4f}", f"{a['p@10']:.4f}", f"{a['mrr']:.4f}", ""])
    _table(["relation", "facts", "skipped", "P@1", "P@10", "MRR", "template"], rows)
    if output:
        write_json(
            output,
            {
                **provenance(
                    "probe",
                    {
                        "facts": str(facts),
                        "relations": list(relation_templates),
                        "template": template,
                        "vocab": vocab,
                        "model": model_name,
                        "device": str(lm.device),
                        "dtype": dtype,
                        "batch_size": batch_size,
                    },
                ),
                "relations": [
                    {
                        "relation": s.relation,
                        "template": s.template,
                        "facts": s.facts,
                        "skipped": s.skipped,
                        **s.metrics,
                        "truncated": s.truncated,
                        **({"predictions": s.examples} if s.examples is not None else {}),
                    }
                    for s in scores
                ],
                **averages,
            },
        )
        click.echo(f"wrote {output}")


def _notes(results, max_length: int) -> None:
    """Say once what was cut or split, so that nobody misreads the figures."""
    for r in results:
        if r.truncated:
            name = getattr(r, "name", None) or getattr(r, "relation", "")
            click.echo(
                f"note: {name}: {r.truncated} inputs longer than {max_length} tokens "
                "were cut from their shortenable field",
                err=True,
            )
    split = sorted({w for r in results for w in getattr(r, "multi_piece_words", [])})
    if split:
        click.echo(
            "note: label words split into several tokens are scored with one mask per "
            f"piece: {', '.join(split)}",
            err=True,
        )


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    click.echo(fmt.format(*header))
    for row in rows:
        click.echo(fmt.format(*row))


COMMANDS = [score, probe]
