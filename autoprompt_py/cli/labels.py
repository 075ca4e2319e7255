"""``autoprompt labels``: label words for each class (AutoPrompt's label search,
``labels.search_labels``), written as a verbalizer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from autoprompt_py.cli.options import (
    data_options,
    model_options,
    output_options,
    seed_option,
    template_options,
)
from autoprompt_py.cli.outputs import claim_and_lock
from autoprompt_py.cli.search_options import filter_options
from autoprompt_py.results import provenance, run_record_path, write_json

if TYPE_CHECKING:
    from autoprompt_py.search.candidates import TokenFilters
    from autoprompt_py.template import Chat


@click.command("labels")
@model_options(
    several="one verbalizer for all of them (each model's classifier; a word's log-odds are "
    "the mean over the models)."
)
@data_options("train")
@template_options(
    "Template text with [P] (and [T] slots), a template file, or a search result.",
    aggregation=False,
)
@click.option(
    "--trigger", default=None, help="Words for the [T] slots, one each (default: the mask token)."
)
@click.option(
    "--per-class",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Label words to keep per class.",
)
@click.option(
    "--l2",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="L2 penalty of the logistic regression (stronger: steadier words).",
)
@seed_option()
@filter_options()
@output_options("Verbalizer JSON file to write.", force="Replace an existing --output file.")
def labels_command(
    model_names: tuple[str, ...],
    device: str,
    dtype: str,
    batch_size: int,
    train: str,
    template: str,
    trigger: str | None,
    label_field: str,
    columns: list[str] | None,
    train_limit: int | None,
    per_class: int,
    l2: float,
    seed: int,
    filters: TokenFilters,
    chat: Chat | None,
    output: str,
    force: bool,
) -> None:
    """Find label words for each class (AutoPrompt's label search); write a verbalizer."""
    from autoprompt_py.cli.models import models_from_option, quiet_transformers
    from autoprompt_py.data import check_fields, read_examples
    from autoprompt_py.distributed import require_rows
    from autoprompt_py.errors import AutopromptError
    from autoprompt_py.labels import search_labels
    from autoprompt_py.prompt import model_record
    from autoprompt_py.resources import load_templates, with_chat
    from autoprompt_py.search import trigger_ids_from_words
    from autoprompt_py.several import models_record
    from autoprompt_py.template import chat_settings

    quiet_transformers()
    claim_and_lock(output, force=force)  # before any work; locked until the command ends
    named = with_chat(load_templates(template), chat)
    if len(named) != 1:
        raise AutopromptError(f"--template {template}: holds {len(named)} templates; give one")
    tpl = named[0].template
    examples = read_examples(train, label_field, columns, train_limit)
    check_fields(examples, tpl.fields, tpl.source)
    require_rows(len(examples), train)  # under torchrun: a row for every process
    lms = models_from_option(model_names, device, dtype)
    lm = lms[0]
    if trigger is not None:
        tpl = tpl.with_triggers(trigger_ids_from_words(lm.tokenizer, tpl, trigger, "--trigger"))
    found = search_labels(
        lms,
        tpl,
        examples,
        per_class=per_class,
        filters=filters,
        batch_size=batch_size,
        l2=l2,
        seed=seed,
    )
    write_json(output, found.verbalizer)
    # the verbalizer holds words only (other commands read it); its provenance goes beside it
    config = {
        "model": model_names[0], "dtype": dtype, "train": train, "template": tpl.source,
        "trigger": trigger, "label_field": label_field, "train_limit": train_limit,
        "per_class": per_class, "l2": l2, "seed": seed, "filters": filters.describe(),
        **chat_settings(tpl.chat),
    }  # fmt: skip
    if len(model_names) > 1:
        config["models"] = list(model_names)
    record = {
        **provenance("labels", config),
        "model": model_record(lm),
        **models_record(lms),
        "scores": {label: dict(words) for label, words in found.scores.items()},
        "train_accuracy": found.train_accuracy,
        **({"model_accuracies": found.model_accuracies} if found.model_accuracies else {}),
        "examples": found.n,
    }
    write_json(run_record_path(output), record)
    for label, words in found.scores.items():
        click.echo(f"{label}: " + ", ".join(f"{w} ({s:+.3f})" for w, s in words))
    click.echo(
        f"classifier train accuracy {found.train_accuracy:.3f} on {found.n} examples; "
        f"wrote {output}"
    )


COMMANDS = [labels_command]
