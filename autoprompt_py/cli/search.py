"""``autoprompt search``: trigger tokens for a template's [T] slots (``search.run_search``)."""

from __future__ import annotations

import click

from autoprompt_py.cli.common import (
    chat_options,
    claim_output,
    lock_output,
    model_options,
    parse_columns,
    quiet_transformers,
)
from autoprompt_py.cli.paths import DATA_FIX, InputFile
from autoprompt_py.cli.search_options import (
    config_options,
    filter_options,
    require_rows,
    token_filters,
)
from autoprompt_py.results import check_output_path


@click.command("search")
@model_options(
    several="one trigger for all of them (the loss and the dev metric over the models, "
    "see --across)."
)
@click.option(
    "--train",
    required=True,
    type=InputFile("data file", fix=DATA_FIX),
    help="Training examples (.tsv/.csv/.jsonl), or LAMA "
    "facts (.jsonl) for a relation template with [X].",
)
@click.option(
    "--dev",
    default=None,
    type=InputFile("data file", fix=DATA_FIX),
    help="Dev examples; default: --dev-fraction of --train.",
)
@click.option(
    "--dev-fraction",
    type=float,
    default=0.2,
    show_default=True,
    help="Share of --train held out as dev when --dev is not given (seeded).",
)
@click.option(
    "--template",
    required=True,
    help="Template text with [T] trigger slots, a template file, or a search result.",
)
@click.option(
    "--verbalizer",
    default=None,
    help="Label words: a JSON file, a shipped name (sst2) or inline JSON.",
)
@click.option(
    "--aggregation",
    type=click.Choice(["sum", "mean-logit", "mean-logprob"]),
    default="sum",
    show_default=True,
    help="How a label's words are combined.",
)
@click.option(
    "--vocab",
    default=None,
    type=InputFile("vocabulary file"),
    help="Relation mode: vocabulary file restricting the dev P@1 (LAMA's common vocabulary).",
)
@click.option(
    "--relation",
    default=None,
    help="Relation id to record (default: from the file name, e.g. P19).",
)
@click.option("--label-field", default="label", show_default=True)
@click.option(
    "--columns",
    default=None,
    help="Comma-separated column names for a delimited file without a header.",
)
@click.option(
    "--train-limit",
    type=click.IntRange(min=1),
    default=None,
    help="Use only the first N training examples.",
)
@click.option(
    "--dev-limit",
    type=click.IntRange(min=1),
    default=None,
    help="Use only the first N dev examples.",
)
@config_options
@click.option(
    "--initial-trigger",
    default=None,
    help="Starting trigger words, one per [T] (restart 0; default: see --initial).",
)
@click.option(
    "--filter-labels/--no-filter-labels",
    default=True,
    show_default=True,
    help="Exclude the label words (relation mode: the training objects).",
)
@filter_options
@chat_options
@click.option("--output", required=True, help="Result JSON file.")
@click.option(
    "--checkpoint", default=None, help="State file, saved every iteration [default: <output>.ckpt]."
)
@click.option("--resume", is_flag=True, help="Continue the run saved in the checkpoint.")
@click.option("--force", is_flag=True, help="Replace an existing result and checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def search(
    model_names: tuple[str, ...],
    device: str,
    dtype: str,
    batch_size: int,
    train: str,
    dev: str | None,
    dev_fraction: float,
    template: str,
    verbalizer: str | None,
    aggregation: str,
    vocab: str | None,
    relation: str | None,
    label_field: str,
    columns: str | None,
    train_limit: int | None,
    dev_limit: int | None,
    initial_trigger: str | None,
    filter_labels: bool,
    filter_subwords: bool,
    filter_non_alpha: bool,
    filter_capitalized: bool,
    stop_list: str | None,
    chat,
    output: str,
    checkpoint: str | None,
    resume: bool,
    force: bool,
    quiet: bool,
    **settings,
) -> None:
    """Search trigger tokens for the [T] slots of a template (GCG or AutoPrompt)."""
    from autoprompt_py.cli.common import load_models
    from autoprompt_py.errors import AutopromptError
    from autoprompt_py.search import SearchConfig, load_task, run_search
    from autoprompt_py.search.run import default_checkpoint
    from autoprompt_py.template import chat_settings

    quiet_transformers()
    ckpt = default_checkpoint(output, checkpoint)
    # a finished search is hours of work: never replaced without --resume or --force; its
    # checkpoint is what an interrupted run leaves (rank 0 decides under torchrun)
    target = check_output_path(output)
    if check_output_path(ckpt, "--checkpoint") == target:
        raise AutopromptError(f"--checkpoint {ckpt} is the --output file; give another name")
    claim_output(output, force=force, resume=resume, partials=[ckpt], partial_option="--checkpoint")
    lock_output(output, ckpt)  # before the model loads (run_search takes them re-entrantly)
    filters = token_filters(
        filter_labels, filter_subwords, filter_non_alpha, filter_capitalized, stop_list
    )
    # the search settings: every option of _config_options, checked before the model loads;
    # --max-batch-tokens auto is sized by run_search once the model is on its device
    config = SearchConfig(**settings, batch_size=batch_size, dtype=dtype)
    task = load_task(
        template,
        train,
        dev,
        verbalizer,
        aggregation,
        vocab,
        relation,
        label_field,
        parse_columns(columns),
        train_limit,
        dev_limit,
        dev_fraction,
        config.seed,
        chat,
    )
    require_rows(task.train, train)
    require_rows(task.dev, dev or f"{train} (dev share)")
    config.check_slots(task.template.num_triggers)
    # float32 weights; --dtype runs the passes under autocast
    lms = load_models(model_names, device, "float32")
    record = {
        "model": model_names[0],
        **({"models": list(model_names)} if len(model_names) > 1 else {}),
        "device": str(lms[0].device),
        "train": train,
        "dev": dev,
        "dev_fraction": None if dev else dev_fraction,
        "template": template,
        "verbalizer": verbalizer,
        "aggregation": aggregation,
        "vocab": vocab,
        "label_field": label_field,
        "columns": parse_columns(columns),
        "train_limit": train_limit,
        "dev_limit": dev_limit,
        "initial_trigger": initial_trigger,
        "resume": resume,
        "max_batch_tokens_option": config.max_batch_tokens,
        **chat_settings(chat),
    }
    outcome = run_search(
        lms if len(lms) > 1 else lms[0],
        task,
        config,
        filters,
        output,
        checkpoint,
        resume,
        initial_trigger,
        progress=not quiet,
        record=record,
    )
    r = outcome.result
    metric = r["metric"]
    for warning in r["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    cost = r["cost"]
    click.echo(
        f"{r['prompt']}\ndev {metric} {r['dev'][metric]:.4f} (initial "
        f"{r['initial']['dev'][metric]:.4f}) after {r['iterations']} iterations "
        f"({r['method']}, {cost['seconds']:.1f} s, {cost['forward_passes']:,} forward passes); "
        f"wrote {output}"
    )
    for m in r["dev"].get("models", []):  # several models: each one's figure
        click.echo(f"  {m['model']}: dev {metric} {m[metric]:.4f}")
    if outcome.interrupted:
        click.echo("stopped: wrote the best trigger so far; continue with --resume", err=True)
        raise outcome.stop  # exit 130 for Ctrl-C, 143 for SIGTERM (cli/common.py)


COMMANDS = [search]
