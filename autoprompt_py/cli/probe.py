"""``autoprompt probe``: relational knowledge (LAMA), P@1, P@10 and MRR per relation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from autoprompt_py.cli.evaluation_options import check_ensemble_options, evaluation_options
from autoprompt_py.cli.options import model_options, output_options, seed_option, template_options
from autoprompt_py.cli.outputs import claim_and_lock
from autoprompt_py.cli.paths import InputFile
from autoprompt_py.cli.tables import probe_table
from autoprompt_py.errors import AutopromptError

if TYPE_CHECKING:
    from autoprompt_py.template import Chat


@click.command("probe")
@click.option(
    "--facts",
    required=True,
    type=InputFile("fact file or folder", folder=True),
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
@template_options(
    "One template for every relation, e.g. '[X] is in [Y] .'.",
    required=False,
    aggregation=False,
    vocab="Restrict predictions to these words (one per line), as LAMA does.",
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
@seed_option(help="Seeds the dev split.")
@output_options(
    "Write the results as JSON.",
    required=False,
    predictions="Put per-fact ranks and top-10 in the JSON.",
)
@evaluation_options(bootstrap=False, weights=False)
@model_options(
    several="a transfer table, one column per model (P@1 with its interval), ranked by the "
    "mean over the models."
)
def probe_command(
    facts: str, relation_templates: tuple[str, ...], template: str | None, vocab: str | None,
    templates_per_relation: str, select_on: str, dev_fraction: float, seed: int,
    output: str | None, force: bool, predictions: bool, ensemble: bool, ensemble_rule: str,
    calibrate: bool, content_free: tuple[str, ...], model_names: tuple[str, ...],
    device: str, dtype: str, batch_size: int, chat: Chat | None,
) -> None:  # fmt: skip
    """Probe relational knowledge: P@1, P@10 and MRR per relation and template."""
    from autoprompt_py.cli.models import prompted_models
    from autoprompt_py.cli.transfer import probe_transfer
    from autoprompt_py.data import read_facts
    from autoprompt_py.distributed import require_rows
    from autoprompt_py.probing import (
        probe_record,
        probe_templates,
        reported_kind,
        summary_of,
        templates_by_relation,
    )
    from autoprompt_py.prompt import model_record
    from autoprompt_py.resources import load_templates, with_chat
    from autoprompt_py.results import provenance, write_json
    from autoprompt_py.several import models_record
    from autoprompt_py.template import chat_settings
    from autoprompt_py.tune.folder import load_templates_or_tuned
    from autoprompt_py.vocab import read_vocab

    claim_and_lock(output, force=force)  # before any work; locked until the command ends
    per_relation = _per_relation(templates_per_relation)
    rule, cf_texts = check_ensemble_options(ensemble, ensemble_rule, None, calibrate, content_free)
    named = [t for spec in relation_templates for t in load_templates_or_tuned(spec, "--relations")]
    if template:
        named += [
            t.__class__(t.name, t.template, None)
            for t in load_templates_or_tuned(template, kept=True)
        ]
    if not named:
        named = load_templates("lama_trex")
    named = with_chat(named, chat)
    fact_sets = read_facts(facts)
    words = read_vocab(vocab) if vocab else None
    require_rows(sum(len(f) for f in fact_sets.values()), f"--facts {facts}")
    plan = templates_by_relation(named, list(fact_sets), per_relation)
    if ensemble and plan and all(len(ts) == 1 for ts in plan.values()):
        click.echo(
            "warning: --ensemble with one template per relation; reporting that template",
            err=True,
        )
    specs = [*relation_templates, *([template] if template else [])]
    runs = []
    lms, prompted = prompted_models(specs, model_names, device, dtype)
    for lm in prompted:
        probes = probe_templates(
            lm,
            named,
            fact_sets,
            vocab=words,
            batch_size=batch_size,
            per_relation=per_relation,
            dev_fraction=dev_fraction if select_on == "dev" else None,
            seed=seed,
            ensemble_rule=rule if ensemble else None,
            calibrate_with=cf_texts,
        )
        runs.append(probes)
    probes = runs[0]
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
    if len(runs) > 1:
        relations = probe_transfer(model_names, runs, seed)
        summaries = [summary_of(run, calibrated=calibrate) for run in runs]
        reported = {"reported": primary, "relations": relations}
        reported["averages"] = dict(zip(model_names, summaries))
    else:
        probe_table(probes, calibrate)
        reported = probe_record(probes, calibrated=calibrate, predictions=predictions)
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
                        "model": model_names[0],
                        **({"models": list(model_names)} if len(model_names) > 1 else {}),
                        "model_kind": lm.kind,
                        "device": str(lm.device),
                        "dtype": dtype,
                        "batch_size": batch_size,
                        **chat_settings(chat),
                    },
                ),
                "model": model_record(lms[0]),
                "reported": primary,  # (its place in the file; the value is the record's)
                **models_record(lms),
                **reported,
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


COMMANDS = [probe_command]
