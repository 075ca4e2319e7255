"""``autoprompt score`` and ``autoprompt probe``: hand-written or found templates, evaluated."""

from __future__ import annotations

import click

from autoprompt_py.cli.common import model_options, parse_columns, quiet_transformers
from autoprompt_py.errors import AutopromptError
from autoprompt_py.resources import shipped_names

# the model, data and scoring modules (torch, numpy) are imported inside the commands, so that
# --help and a mistyped option answer at once; tests/test_newcomer.py checks these copies
AGGREGATIONS = ("sum", "mean-logit", "mean-logprob")  # verbalizer.AGGREGATIONS
RULES = ("mean-logprob", "mean-prob", "vote")  # ensemble.RULES


def _shipped(kind: str) -> str:
    """The shipped sets' names for a --help text: the same list the errors name."""
    return ", ".join(shipped_names(kind)) or "none"


def ensemble_options(weights: bool = True):
    """--ensemble, --ensemble-rule, --weights (score only), --calibrate, --content-free."""
    options = [
        click.option(
            "--ensemble",
            is_flag=True,
            help="Also report the ensemble of all members (score: every template × every "
            "verbalizer; probe: the templates of each relation).",
        ),
        click.option(
            "--ensemble-rule",
            default="mean-logprob",
            show_default=True,
            help=f"How members combine: {', '.join(RULES)}.",
        ),
    ]
    if weights:
        options.append(
            click.option(
                "--weights",
                help="One weight per member, comma-separated, in the order template × verbalizer.",
            )
        )
    options += [
        click.option(
            "--calibrate",
            is_flag=True,
            help="Also report contextually calibrated metrics (Zhao et al. 2021).",
        ),
        click.option(
            "--content-free",
            multiple=True,
            help="A content-free text for --calibrate (repeatable; default: 'N/A', '' and "
            "'[MASK]', the model's mask token).",
        ),
    ]

    def apply(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return apply


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
    help=f"Template text, a shipped set ({_shipped('templates')}), a .jsonl/.txt file or a "
    "search result; repeat to score several in one run.",
)
@click.option(
    "--verbalizer",
    "verbalizers",
    multiple=True,
    required=True,
    help=f"Label → words JSON file, a shipped name ({_shipped('verbalizers')}) or inline JSON; "
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
@model_options
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
    model_name,
    device,
    dtype,
    batch_size,
) -> None:
    """Score templates with a verbalizer on a labeled dataset; ensembles and calibration."""
    from autoprompt_py.cli.common import load_model
    from autoprompt_py.data import check_fields, read_examples
    from autoprompt_py.distributed import require_rows
    from autoprompt_py.ensemble import parse_weights
    from autoprompt_py.evaluation import check_verbalizers, score_prompts
    from autoprompt_py.resources import check_trigger_ids, load_templates, load_verbalizer
    from autoprompt_py.results import provenance, refuse_overwrite, write_json
    from autoprompt_py.tune.folder import attach_tuned, load_templates_or_tuned, read_tuned

    refuse_overwrite(output, "--output", force)
    named = [t for spec in templates for t in load_templates_or_tuned(spec)]
    verbs = [(spec, load_verbalizer(spec)) for spec in verbalizers]
    n_members = len(named) * len(verbs)
    rule, cf_texts = _check_ensemble_options(
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
    quiet_transformers()
    base = load_model(model_name, device, dtype)
    check_trigger_ids(
        [t for spec in templates if read_tuned(spec) is None for t in load_templates(spec)],
        base.vocab_size,
        model_name,
    )  # a tuned soft prompt's slots are ids past the vocabulary, on purpose
    lm = attach_tuned(base, templates)
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
    results = sorted(report.members, key=lambda r: -r.metrics[metric])

    _notes(results, lm.max_length)
    click.echo(f"{len(examples)} examples from {data}; model {model_name}; ranked by {metric}")
    labels = report.labels
    header = ["rank", "n", "accuracy", "95% CI", "macro-F1"] + [f"R[{lab}]" for lab in labels]
    if calibrate:
        header += ["cal acc", "cal 95% CI", "cal F1"]
    shown = [(str(i), r) for i, r in enumerate(results, 1)]
    if report.ensemble is not None:
        shown.append(("ens", report.ensemble))
    rows = [_score_row(rank, r, labels) for rank, r in shown]
    _table(header + ["template"], rows)
    if output is not None:
        write_json(
            output,
            {
                **provenance(
                    "score",
                    {
                        "data": str(data),
                        "templates": list(templates),
                        "verbalizer": verbalizers[0],
                        "verbalizers": list(verbalizers),
                        "aggregation": aggregation,
                        "label_field": label_field,
                        "limit": limit,
                        "model": model_name,
                        "device": str(lm.device),
                        "dtype": dtype,
                        "batch_size": batch_size,
                        "bootstrap": bootstrap,
                        "seed": seed,
                        "ensemble": ensemble,
                        "ensemble_rule": rule,
                        "weights": member_weights,
                        "calibrate": calibrate,
                        "content_free": list(cf_texts) if cf_texts else None,
                    },
                ),
                "n": len(examples),
                "verbalizer": verbs[0][1].words,
                "verbalizers": {name: v.words for name, v in verbs},
                "ranked_by": metric,
                "label_scores": "log-softmax over the labels of the aggregated word scores",
                "templates": [r.to_json(examples if predictions else None) for r in results],
                "ensemble": report.ensemble.to_json(examples if predictions else None)
                if report.ensemble is not None
                else None,
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
    "shipped lama_trex set), or a search result; repeatable. A relation may have several "
    'templates (several lines, or a list under "template").',
)
@click.option("--template", help="One template for every relation, e.g. '[X] is in [Y] .'.")
@click.option(
    "--vocab",
    type=click.Path(dir_okay=False),
    help="Restrict predictions to these words (one per line), as LAMA does.",
)
@click.option(
    "--templates-per-relation",
    default="all",
    show_default=True,
    help="How many templates of each relation to probe, in file order: all or N.",
)
@click.option(
    "--select-on",
    type=click.Choice(["dev", "none"]),
    default="dev",
    show_default=True,
    help="Where several templates: choose the best on a seeded dev split of each relation's "
    "facts and report every figure on the other facts (none: no split, no choice).",
)
@click.option(
    "--dev-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of each relation's facts in the dev split.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the dev split.")
@click.option("--output", help="Write the results as JSON.")
@click.option("--force", is_flag=True, help="Replace --output if it exists.")
@click.option("--predictions", is_flag=True, help="Put per-fact ranks and top-10 in the JSON.")
@ensemble_options(weights=False)
@model_options
def probe(
    facts,
    relation_templates,
    template,
    vocab,
    templates_per_relation,
    select_on,
    dev_fraction,
    seed,
    output,
    force,
    predictions,
    ensemble,
    ensemble_rule,
    calibrate,
    content_free,
    model_name,
    device,
    dtype,
    batch_size,
) -> None:
    """Probe relational knowledge: P@1, P@10 and MRR per relation and template."""
    from autoprompt_py.cli.common import load_model
    from autoprompt_py.data import read_facts
    from autoprompt_py.distributed import require_rows
    from autoprompt_py.probing import (
        KINDS,
        averages,
        probe_templates,
        reported_kind,
        templates_by_relation,
    )
    from autoprompt_py.resources import check_trigger_ids, load_templates
    from autoprompt_py.results import provenance, refuse_overwrite, write_json
    from autoprompt_py.tune.folder import attach_tuned, load_templates_or_tuned, read_tuned
    from autoprompt_py.vocab import read_vocab

    refuse_overwrite(output, "--output", force)
    per_relation = _per_relation(templates_per_relation)
    rule, cf_texts = _check_ensemble_options(ensemble, ensemble_rule, None, calibrate, content_free)
    named = [t for spec in relation_templates for t in load_templates_or_tuned(spec, "--relations")]
    if template:
        named += [t.__class__(t.name, t.template, None) for t in load_templates_or_tuned(template)]
    if not named:
        named = load_templates("lama_trex")
    fact_sets = read_facts(facts)
    words = read_vocab(vocab) if vocab else None
    require_rows(sum(len(f) for f in fact_sets.values()), f"--facts {facts}")
    plan = templates_by_relation(named, list(fact_sets), per_relation)
    if ensemble and plan and all(len(ts) == 1 for ts in plan.values()):
        click.echo(
            "warning: --ensemble with one template per relation; reporting that template",
            err=True,
        )
    quiet_transformers()
    base = load_model(model_name, device, dtype)
    specs = [*relation_templates, *([template] if template else [])]
    check_trigger_ids(
        [t for spec in specs if read_tuned(spec) is None for t in load_templates(spec)],
        base.vocab_size,
        model_name,
    )
    lm = attach_tuned(base, specs)
    probes = probe_templates(
        lm,
        named,
        fact_sets,
        words,
        batch_size,
        per_relation,
        dev_fraction if select_on == "dev" else None,
        seed,
        rule if ensemble else None,
        cf_texts,
    )
    skipped_rel = [r for r in fact_sets if r not in {p.relation for p in probes}]
    if skipped_rel:
        click.echo(f"note: no template for {', '.join(skipped_rel)}; not probed", err=True)
    for p in probes:
        if p.truncated:
            click.echo(
                f"note: {p.relation}: {p.truncated} inputs longer than {lm.max_length} tokens "
                "were cut from their shortenable field",
                err=True,
            )
    for p in probes:
        if not p.scored.any():
            click.echo(
                f"note: {p.relation}: none of its {len(p.facts)} facts has an object that is one "
                f"token of the model{' and in --vocab' if vocab else ''}; reported, left out of "
                "the averages",
                err=True,
            )
    primary = reported_kind(probes)
    split = any(len(p.dev) for p in probes)
    if split:
        click.echo(
            f"figures on the facts outside a seeded dev split ({dev_fraction:.0%} of each "
            f"relation, seed {seed}); best template chosen on dev P@1"
        )
    _probe_table(probes, calibrate)
    summary = {
        kind: averages(probes, kind)
        for kind in KINDS
        if (kind != "best-dev" or split) and averages(probes, kind) is not None
    }
    if calibrate:
        summary.update(
            {
                f"{kind}:calibrated": averages(probes, kind, True)
                for kind in KINDS
                if (kind != "best-dev" or split) and averages(probes, kind, True) is not None
            }
        )
    if output is not None:
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
                        "templates_per_relation": templates_per_relation,
                        "select_on": select_on,
                        "dev_fraction": dev_fraction if split else None,
                        "seed": seed,
                        "ensemble": ensemble,
                        "ensemble_rule": rule,
                        "calibrate": calibrate,
                        "content_free": list(cf_texts) if cf_texts else None,
                        "model": model_name,
                        "device": str(lm.device),
                        "dtype": dtype,
                        "batch_size": batch_size,
                    },
                ),
                "reported": primary,
                "relations": [p.to_json(primary, predictions) for p in probes],
                **summary[primary],
                "averages": summary,
            },
        )
        click.echo(f"wrote {output}")


def _per_relation(value: str) -> int | None:
    if value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise AutopromptError(
            f"--templates-per-relation {value!r}: give 'all' or a whole number of at least 1"
        )
    return n


def _probe_table(probes, calibrate: bool) -> None:
    from autoprompt_py.probing import KINDS, averages

    header = ["relation", "template", "facts", "skipped", "P@1", "P@10", "MRR"]
    if calibrate:
        header += ["cal P@1", "cal P@10", "cal MRR"]

    def cells(m: dict | None) -> list[str]:
        if m is None:
            return ["", "", ""]
        return [f"{m['p@1']:.4f}", f"{m['p@10']:.4f}", f"{m['mrr']:.4f}"]

    rows = []
    for p in probes:
        shown = [(m.name, m) for m in p.members]
        if len(p.dev) and p.best is not None:
            best = p.members[p.best].name
            if calibrate and p.best_cal is not None and p.best_cal != p.best:
                best += f" (cal: {p.members[p.best_cal].name})"
            shown.append((f"best on dev: {best}", None))
        if p.ensemble is not None:
            shown.append((p.ensemble.name, p.ensemble))
        for label, m in shown:
            if m is None:  # the best row: raw and calibrated choices may differ
                raw = p.metrics(p.kind_ranks("best-dev"))
                cal = p.kind_ranks("best-dev", True)
                cal = p.metrics(cal) if cal is not None else None
                text = ""
            else:
                raw = p.metrics(m.ranks)
                cal = p.metrics(m.cal_ranks) if m.cal_ranks is not None else None
                text = "" if m.template == m.name else m.template
            row = [p.relation, label, str(len(p.test)), str(p.skipped)] + cells(raw)
            if calibrate:
                row += cells(cal)
            rows.append(row + [text])
    kinds = [k for k in KINDS if any(p.kind(k) is not None for p in probes)]
    if not any(len(p.dev) for p in probes):
        kinds = [k for k in kinds if k != "best-dev"]
    multi = any(len(p.members) > 1 for p in probes)
    for kind in kinds:
        raw, cal = averages(probes, kind), averages(probes, kind, True) if calibrate else None
        for avg in ("micro", "macro"):
            a = raw[avg]
            label = f"{avg} ({kind})" if multi else avg
            n = str(a.get("n", a.get("relations")))
            row = [label, "", n, ""] + cells(a)
            if calibrate:
                row += cells(cal[avg] if cal else None)
            rows.append(row + [""])
    _table(header + ["template text"], rows)


def _score_row(rank: str, r, labels: list[str]) -> list[str]:
    m = r.metrics
    row = [
        rank,
        str(m["n"]),
        f"{m['accuracy']:.4f}",
        _interval(m["accuracy_ci95"]),
        f"{m['macro_f1']:.4f}",
    ] + [f"{m['recall'][lab]:.3f}" for lab in labels]
    if r.calibrated is not None:
        c = r.calibrated.metrics
        row += [
            f"{c['accuracy']:.4f}",
            _interval(c["accuracy_ci95"]),
            f"{c['macro_f1']:.4f}",
        ]
    return row + [r.name]


def _interval(ci: list[float] | None) -> str:
    """``--bootstrap 0`` computes no interval: the column says so rather than 0.000-0.000."""
    return "-" if ci is None else "{:.3f}-{:.3f}".format(*ci)


def _check_ensemble_options(
    ensemble: bool,
    rule: str,
    weights: str | None,
    calibrate: bool,
    content_free: tuple[str, ...],
) -> tuple[str, tuple[str, ...] | None]:
    """Options that only make sense together, checked before the model loads."""
    from autoprompt_py.calibration import check_content_free
    from autoprompt_py.ensemble import check_rule

    rule = check_rule(rule)
    if weights is not None and not ensemble:
        raise AutopromptError("--weights weighs ensemble members: add --ensemble, or drop it")
    if content_free and not calibrate:
        raise AutopromptError(
            "--content-free texts are used by --calibrate: add --calibrate, or drop them"
        )
    return rule, (check_content_free(content_free) if calibrate else None)


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
