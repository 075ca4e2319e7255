"""``autoprompt search``: trigger tokens for a template's [T] slots (``search.run_search``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from autoprompt_py.cli.options import (
    VERBALIZER_HELP,
    data_options,
    model_options,
    output_options,
    template_options,
)
from autoprompt_py.cli.outputs import claim_and_lock, lock_output
from autoprompt_py.cli.search_options import config_options, filter_options
from autoprompt_py.results import check_output_path
from autoprompt_py.search.config import SearchConfig

if TYPE_CHECKING:
    from autoprompt_py.search.candidates import TokenFilters
    from autoprompt_py.template import Chat


@click.command("search")
@model_options(
    config=SearchConfig,
    several="one trigger for all of them (the loss and the dev metric over the models, "
    "see --across).",
)
@data_options("train", "dev", facts=True)
@template_options(
    "Template text with [T] trigger slots, a template file, or a search result.",
    verbalizer=VERBALIZER_HELP,
    vocab="Relation mode: vocabulary file restricting the dev P@1 (LAMA's common vocabulary).",
)
@click.option(
    "--relation",
    default=None,
    help="Relation id to record (default: from the file name, e.g. P19).",
)
@config_options
@click.option(
    "--initial-trigger",
    default=None,
    help="Starting trigger words, one per [T] (restart 0; default: see --initial).",
)
@filter_options(label_words=True)
@output_options("Result JSON file.", force="Replace an existing result and checkpoint.",
                resume="Continue the run saved in the checkpoint.", quiet=True)  # fmt: skip
@click.option(
    "--checkpoint", default=None, help="State file, saved every iteration [default: <output>.ckpt]."
)
def search_command(
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
    columns: list[str] | None,
    train_limit: int | None,
    dev_limit: int | None,
    initial_trigger: str | None,
    filters: TokenFilters,
    chat: Chat | None,
    output: str,
    checkpoint: str | None,
    resume: bool,
    force: bool,
    quiet: bool,
    **settings,
) -> None:
    """Search trigger tokens for the [T] slots of a template (GCG or AutoPrompt)."""
    from autoprompt_py.cli.models import models_from_option, quiet_transformers
    from autoprompt_py.distributed import require_rows
    from autoprompt_py.errors import AutopromptError
    from autoprompt_py.search import load_task, run_search
    from autoprompt_py.search.run import default_checkpoint
    from autoprompt_py.template import chat_settings

    quiet_transformers()
    ckpt = default_checkpoint(output, checkpoint)
    # a finished search is hours of work: never replaced without --resume or --force; its
    # checkpoint is what an interrupted run leaves (rank 0 decides under torchrun)
    target = check_output_path(output)
    if check_output_path(ckpt, "--checkpoint") == target:
        raise AutopromptError(f"--checkpoint {ckpt} is the --output file; give another name")
    claim_and_lock(
        output, force=force, resume=resume, partials=[ckpt], partial_option="--checkpoint"
    )
    lock_output(output, ckpt)  # before the model loads (run_search takes them re-entrantly)
    # the search settings: every option of config_options, checked before the model loads;
    # --max-batch-tokens auto is sized by run_search once the model is on its device
    config = SearchConfig(**settings, batch_size=batch_size, dtype=dtype)
    task = load_task(
        template,
        train,
        dev,
        verbalizer,
        aggregation=aggregation,
        vocab=vocab,
        relation=relation,
        label_field=label_field,
        columns=columns,
        train_limit=train_limit,
        dev_limit=dev_limit,
        dev_fraction=dev_fraction,
        seed=config.seed,
        chat=chat,
    )
    require_rows(len(task.train), train)  # under torchrun: a row for every process
    require_rows(len(task.dev), dev or f"{train} (dev share)")
    config.check_slots(task.template.num_triggers)
    # float32 weights; --dtype runs the passes under autocast
    lms = models_from_option(model_names, device, "float32")
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
        "columns": columns,
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
        filters=filters,
        output=output,
        checkpoint=checkpoint,
        resume=resume,
        initial_trigger=initial_trigger,
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
        raise outcome.stop  # exit 130 for Ctrl-C, 143 for SIGTERM (cli/group.py)


COMMANDS = [search_command]
