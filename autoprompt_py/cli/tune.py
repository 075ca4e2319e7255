"""``autoprompt tune``: train soft prompts, or fine-tune the model with a prompt (thin layer over
``autoprompt_py.tune``)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import click

from autoprompt_py.cli.options import (
    VERBALIZER_HELP,
    config_option,
    data_options,
    model_options,
    options,
    output_options,
    seed_option,
    template_options,
)
from autoprompt_py.cli.outputs import lock_output
from autoprompt_py.cli.search_options import MethodChoice
from autoprompt_py.search.config import SearchConfig
from autoprompt_py.tune.config import INITS, METHODS, SELECTS, TuneConfig  # light: no torch

if TYPE_CHECKING:
    from autoprompt_py.template import Chat


_setting = functools.partial(config_option, TuneConfig)  # an option of a TuneConfig field


# the options that become TuneConfig fields (collected as ``**settings``), each default the
# field's own; the parallel ones last, as --help lists them
SETTINGS = (
    _setting("method", click.Choice(METHODS),
             "What trains: soft ([T] slots as vectors), full (every weight, PET), head "
             "(classification head, no prompt); prompt, ptuning, prefix, lora need PEFT."),
    _setting("select", click.Choice(SELECTS),
             "The weights the run ends with: best-dev (the best checkpoint on dev), last (the "
             "final step's), average (mean of the last --average-last checkpoints), cv (steps "
             "chosen by --cv-folds cross-validation on --train, then trained on all of it); "
             "auto: best-dev with 100 dev examples or more, else the rule measured best "
             "(docs/tuning.md)."),
    _setting("average_last", int, "--select average: how many evaluated checkpoints."),
    _setting("cv_folds", int, "--select cv: folds of the training examples."),
    _setting("init", click.Choice(INITS),
             "Where trained vectors start; auto: what --template found (a search result, an "
             "exported prompt or a tuned folder), else vocab (docs/seeding.md)."),
    _setting("init_text", None, "Words the vectors start from (--init text)."),
    _setting("lr", float,
             "Learning rate [default: by method, and with --shots its few-shot default]."),
    _setting("steps", int,
             "Optimizer steps [default: 200; with --shots by method (docs/tuning.md)]."),
    _setting("epochs", float, "Passes over --train (instead of --steps)."),
    _setting("warmup", float, "Share of the steps."),
    _setting("weight_decay", float),
    _setting("max_grad_norm", float),
    _setting("eval_every", int),
    _setting("time_budget", float, "Stop after this many seconds."),
    _setting("shots", int, "K training examples per class (facts: K)."),
    _setting("dev_shots", int, "K dev examples per class."),
    _setting("data_seed", int, "Seeds --shots."),
    seed_option(TuneConfig),
    _setting("dropout", None,
             "The model's own dropout while training (off: torchrun runs equal one process).",
             option="--dropout/--no-dropout"),
)  # fmt: skip
PARALLEL = (
    _setting("grad_accum", int,
             "Micro-batches per process and step, gradients accumulated [default: 1, or as few "
             "as keep --batch-size rows each with --global-batch]; see docs/scaling.md."),
    _setting("global_batch", int,
             "Rows per optimizer step over all processes [default: --batch-size × "
             "--grad-accum]; the run is the same for any number of processes."),
    _setting("shard", None, "FSDP under torchrun (--method full or lora).", is_flag=True,
             show_default=False),
    _setting("grad_checkpointing", None, "Recompute activations in the backward (memory).",
             is_flag=True, show_default=False),
)  # fmt: skip


@click.command("tune")
@model_options(config=TuneConfig)
@data_options("train", "dev", "test", facts=True, limits=False)
@template_options(
    "Template text, a shipped set's one template, or a search result (.json).",
    verbalizer=VERBALIZER_HELP,
    vocab="Relation mode: predict over these words only.",
)
@options(*SETTINGS)
@output_options("Output folder (weights and result.json).",
                force="Replace an existing --output folder.",
                resume="Continue the run in <output>.ckpt.", quiet=True)  # fmt: skip
@options(*PARALLEL)
@click.option(
    "--search-budget",
    type=float,
    help="Search the template's [T] slots for this many seconds first (as 'search'), write "
    "<output>.search.json and tune from it.",
)
@click.option("--search-iters", type=int, help="Search iterations at most.")
@config_option(SearchConfig, "method", MethodChoice(),
               "The search method (the registry of 'search --method').",
               option="--search-method")  # fmt: skip
@click.option(
    "--search-option",
    multiple=True,
    help="Any other 'search' setting as KEY=VALUE (topk=64, objective=vocab); repeatable.",
)
def tune_command(
    model_name: str, device: str, dtype: str, batch_size: int, chat: Chat | None, train: str,
    dev: str | None, dev_fraction: float, test: str | None, label_field: str,
    columns: list[str] | None, template: str, verbalizer: str | None, aggregation: str,
    vocab: str | None, output: str, force: bool, resume: bool, quiet: bool,
    search_budget: float | None, search_iters: int | None, search_method: str,
    search_option: tuple[str, ...], **settings: Any,
) -> None:  # fmt: skip
    """Train a prompt (soft vectors) or the model with it, on labeled data or facts."""
    from autoprompt_py.cli.models import model_from_option, quiet_transformers
    from autoprompt_py.tune import load_tune_task
    from autoprompt_py.tune import tune as run_tune
    from autoprompt_py.tune.folder import check_output_folder
    from autoprompt_py.tune.parallel import layout

    config = TuneConfig(**settings, batch_size=batch_size, dtype=dtype)
    layout(config)  # the global batch splits over the launch's processes: before any model
    searching = search_budget is not None or search_iters is not None
    # rank 0 sees the files and tells the others
    check_output_folder(output, force=force, resume=resume, searching=searching)
    if config.method in ("prompt", "ptuning", "prefix", "lora"):
        from autoprompt_py.tune.methods.peft_methods import require_peft

        require_peft(config.method)
    task = load_tune_task(
        template, train, dev, test, verbalizer=verbalizer, aggregation=aggregation, vocab=vocab,
        label_field=label_field, columns=columns, dev_fraction=dev_fraction,
        split_seed=config.seed, shots=config.shots, dev_shots=config.dev_shots,
        data_seed=config.data_seed, chat=chat,
    )  # fmt: skip
    if searching:
        from autoprompt_py.results import from_main, refuse_overwrite
        from autoprompt_py.tune.folder import search_result_path

        search_config = search_settings(config, search_budget, search_iters, search_method,
                                        search_option, task)  # fmt: skip
        found = search_result_path(output)
        from_main(lambda: refuse_overwrite(found, "--output", force or resume, True))
        lock_output(output, found)
    else:
        from autoprompt_py.tune.found import check_init

        config.check_task(
            task.template.num_triggers, task.open_triggers, task.template.is_relational
        )
        check_init(config, task)
        lock_output(output)
    quiet_transformers()
    lm = model_from_option(model_name, device, dtype)
    if searching:
        from autoprompt_py.tune.pipeline import search_then_tune

        outcome = search_then_tune(lm, task, config, search_config, output, force=force,
                                   resume=resume, progress=not quiet)  # fmt: skip
        s = outcome.result["stages"]["search"]
        click.echo(f"searched {s['prompt']} in {s['seconds']:.1f} s; wrote {s['file']}")
    else:
        outcome = run_tune(lm, task, config, output, force=force, resume=resume,
                           progress=not quiet)  # fmt: skip
    r = outcome.result
    m = r["metric"]
    line = f"dev {m} {r['start'][m]:.4f} → {r['dev'][m]:.4f} ({kept_phrase(r)})"
    if r["test"] is not None:
        line += f"; test {m} {r['test'][m]:.4f}"
    click.echo(line)
    if r["dev"]["small"] and r["select"]["rule"] == "best-dev":
        n = r["dev"]["n"]
        click.echo(
            f"note: dev has {n} examples, so its {m} moves in steps of 1/{n} = {1 / n:.3f}: "
            "checkpoints are chosen among few values (a tie keeps the later one); give a "
            "larger --dev (or --dev-shots) for a steadier choice"
        )
    if "projection" in r:
        p = r["projection"]
        click.echo(f"nearest tokens: {p['prompt']} (dev {m} {p['dev'][m]:.4f})")
    click.echo(
        f"wrote {output} ({r['trainable_parameters']} trainable parameters, {r['seconds']:.1f} s)"
    )
    if outcome.interruption is not None:
        raise outcome.interruption


def kept_phrase(r: dict) -> str:
    """What the run kept, in words: the rule and its step(s)."""
    sel = r["select"]
    rule = sel["rule"] + (", auto" if sel["asked"] == "auto" else "")
    if sel["rule"] == "average":
        return f"{rule}: mean of the checkpoints of steps {', '.join(map(str, sel['kept_steps']))}"
    if sel["rule"] == "cv":
        return f"{rule}: {sel['cv']['chosen']} steps chosen on {sel['cv']['folds']} folds"
    return f"{rule}: step {r['best_step']}"


def search_settings(config, budget, iters, method, options, task):
    """The SearchConfig of ``--search-*`` (checked before the model loads)."""
    from autoprompt_py.errors import AutopromptError
    from autoprompt_py.tune.pipeline import (
        check_searchable,
        make_search_config,
        parse_search_options,
    )

    if budget is None:
        raise AutopromptError("--search-iters: give --search-budget SECONDS as well")
    check_searchable(task)
    search = make_search_config(config, budget, iters, method, parse_search_options(options))
    search.check_slots(task.template.num_triggers)
    return search


COMMANDS = [tune_command]
