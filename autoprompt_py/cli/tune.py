"""``autoprompt tune``: train soft prompts, or fine-tune the model with a prompt (thin layer over
``autoprompt_py.tune``)."""

from __future__ import annotations

import click

from autoprompt_py.cli.common import (
    chat_options,
    lock_output,
    model_options,
    parse_columns,
    quiet_transformers,
)
from autoprompt_py.cli.paths import DATA_FIX, InputFile
from autoprompt_py.cli.search_options import MethodChoice
from autoprompt_py.tune.config import INITS, METHODS, SELECTS, TuneConfig  # light: no torch

DEFAULTS = TuneConfig()  # the defaults are TuneConfig's: written once, read here


@click.command("tune")
@model_options(batch_size=DEFAULTS.batch_size)
@click.option(
    "--train",
    required=True,
    type=InputFile("data file", fix=DATA_FIX),
    help="Training examples (.tsv/.csv/.jsonl), or LAMA facts (.jsonl) for a relation template.",
)
@click.option(
    "--dev",
    default=None,
    type=InputFile("data file", fix=DATA_FIX),
    help="Dev examples; default: --dev-fraction of --train.",
)
@click.option("--dev-fraction", type=float, default=0.2, show_default=True)
@click.option(
    "--test",
    default=None,
    type=InputFile("data file", fix=DATA_FIX),
    help="Test examples, scored once with the best checkpoint.",
)
@click.option(
    "--template",
    required=True,
    help="Template text, a shipped set's one template, or a search result (.json).",
)
@click.option("--verbalizer", default=None, help="Label words: file, shipped name or inline JSON.")
@click.option(
    "--aggregation",
    type=click.Choice(["sum", "mean-logit", "mean-logprob"]),
    default="sum",
    show_default=True,
)
@click.option(
    "--vocab",
    default=None,
    type=InputFile("vocabulary file"),
    help="Relation mode: predict over these words only.",
)
@click.option("--label-field", default="label", show_default=True)
@click.option("--columns", default=None, help="Column names of a header-less .tsv/.csv.")
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default=DEFAULTS.method,
    show_default=True,
    help="What trains: soft ([T] slots as vectors), full (every weight, PET), head "
    "(classification head, no prompt); prompt, ptuning, prefix, lora need PEFT.",
)
@click.option(
    "--select",
    type=click.Choice(SELECTS),
    default=DEFAULTS.select,
    show_default=True,
    help="The weights the run ends with: best-dev (the best checkpoint on dev), last (the "
    "final step's), average (mean of the last --average-last checkpoints), cv (steps chosen "
    "by --cv-folds cross-validation on --train, then trained on all of it); auto: best-dev "
    "with 100 dev examples or more, else the rule measured best (docs/tuning.md).",
)
@click.option(
    "--average-last",
    type=int,
    default=DEFAULTS.average_last,
    show_default=True,
    help="--select average: how many evaluated checkpoints.",
)
@click.option(
    "--cv-folds",
    type=int,
    default=DEFAULTS.cv_folds,
    show_default=True,
    help="--select cv: folds of the training examples.",
)
@click.option(
    "--init",
    type=click.Choice(INITS),
    default=DEFAULTS.init,
    show_default=True,
    help="Where trained vectors start; auto: what --template found (a search result, an "
    "exported prompt or a tuned folder), else vocab (docs/seeding.md).",
)
@click.option("--init-text", default=None, help="Words the vectors start from (--init text).")
@click.option(
    "--lr",
    type=float,
    default=None,
    help="Learning rate [default: by method, and with --shots its few-shot default].",
)
@click.option(
    "--steps",
    type=int,
    default=None,
    help="Optimizer steps [default: 200; with --shots by method (docs/tuning.md)].",
)
@click.option(
    "--epochs", type=float, default=None, help="Passes over --train (instead of --steps)."
)
@click.option(
    "--warmup", type=float, default=DEFAULTS.warmup, show_default=True, help="Share of the steps."
)
@click.option("--weight-decay", type=float, default=DEFAULTS.weight_decay, show_default=True)
@click.option("--max-grad-norm", type=float, default=DEFAULTS.max_grad_norm, show_default=True)
@click.option("--eval-every", type=int, default=DEFAULTS.eval_every, show_default=True)
@click.option("--time-budget", type=float, default=None, help="Stop after this many seconds.")
@click.option("--shots", type=int, default=None, help="K training examples per class (facts: K).")
@click.option("--dev-shots", type=int, default=None, help="K dev examples per class.")
@click.option(
    "--data-seed", type=int, default=DEFAULTS.data_seed, show_default=True, help="Seeds --shots."
)
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True)
@click.option(
    "--dropout/--no-dropout",
    default=DEFAULTS.dropout,
    show_default=True,
    help="The model's own dropout while training (off: torchrun runs equal one process).",
)
@click.option("--output", required=True, help="Output folder (weights and result.json).")
@click.option("--force", is_flag=True, help="Replace an existing --output folder.")
@click.option("--resume", is_flag=True, help="Continue the run in <output>.ckpt.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--grad-accum",
    type=int,
    default=None,
    help="Micro-batches per process and step, gradients accumulated [default: 1, or as few "
    "as keep --batch-size rows each with --global-batch]; see docs/scaling.md.",
)
@click.option(
    "--global-batch",
    type=int,
    default=None,
    help="Rows per optimizer step over all processes [default: --batch-size × --grad-accum]; "
    "the run is the same for any number of processes.",
)
@click.option("--shard", is_flag=True, help="FSDP under torchrun (--method full or lora).")
@click.option(
    "--grad-checkpointing", is_flag=True, help="Recompute activations in the backward (memory)."
)
@click.option(
    "--search-budget",
    type=float,
    default=None,
    help="Search the template's [T] slots for this many seconds first (as 'search'), write "
    "<output>.search.json and tune from it.",
)
@click.option("--search-iters", type=int, default=None, help="Search iterations at most.")
@click.option(
    "--search-method",
    type=MethodChoice(),
    default="gcg",
    show_default=True,
    help="The search method (the registry of 'search --method').",
)
@click.option(
    "--search-option",
    multiple=True,
    help="Any other 'search' setting as KEY=VALUE (topk=64, objective=vocab); repeatable.",
)
@chat_options
def tune(
    model_name, device, dtype, batch_size, train, dev, dev_fraction, test, template, verbalizer,
    aggregation, vocab, label_field, columns, method, select, average_last, cv_folds, init,
    init_text, lr, steps, epochs, warmup,
    weight_decay, max_grad_norm, eval_every, time_budget, shots, dev_shots, data_seed, seed,
    dropout, output, force, resume, quiet, grad_accum=None, global_batch=None, shard=False,
    grad_checkpointing=False, search_budget=None,
    search_iters=None, search_method="gcg", search_option=(), chat=None,
) -> None:  # fmt: skip
    """Train a prompt (soft vectors) or the model with it, on labeled data or facts."""
    from dataclasses import replace

    from autoprompt_py.cli.common import load_model
    from autoprompt_py.tune import TuneConfig, load_tune_task
    from autoprompt_py.tune import tune as run_tune
    from autoprompt_py.tune.folder import check_output_folder

    config = TuneConfig(
        method=method, select=select, average_last=average_last, cv_folds=cv_folds, init=init,
        init_text=init_text, lr=lr, steps=steps, epochs=epochs,
        batch_size=batch_size, warmup=warmup, weight_decay=weight_decay,
        max_grad_norm=max_grad_norm, eval_every=eval_every, time_budget=time_budget, seed=seed,
        shots=shots, dev_shots=dev_shots, data_seed=data_seed, dtype=dtype, dropout=dropout,
    )  # fmt: skip
    config = replace(config, grad_accum=grad_accum, global_batch=global_batch, shard=shard,
                     grad_checkpointing=grad_checkpointing)  # fmt: skip
    from autoprompt_py.tune.parallel import layout

    layout(config)  # the global batch splits over the launch's processes: before any model
    searching = search_budget is not None or search_iters is not None
    # rank 0 sees the files and tells the others
    check_output_folder(output, force, resume, searching=searching)
    if config.method in ("prompt", "ptuning", "prefix", "lora"):
        from autoprompt_py.tune.methods.peft_methods import require_peft

        require_peft(config.method)
    task = load_tune_task(
        template, train, dev, test, verbalizer, aggregation, vocab, label_field,
        parse_columns(columns), dev_fraction, seed, shots, dev_shots, data_seed, chat,
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
        from autoprompt_py.tune.seed import check_init

        config.check_task(
            task.template.num_triggers, task.open_triggers, task.template.is_relational
        )
        check_init(config, task)
        lock_output(output)
    quiet_transformers()
    lm = load_model(model_name, device, dtype)
    if searching:
        from autoprompt_py.tune.pipeline import search_then_tune

        outcome = search_then_tune(lm, task, config, search_config, output, force, resume,
                                   progress=not quiet)  # fmt: skip
        s = outcome.result["stages"]["search"]
        click.echo(f"searched {s['prompt']} in {s['seconds']:.1f} s; wrote {s['file']}")
    else:
        outcome = run_tune(lm, task, config, output, force, resume, progress=not quiet)
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


COMMANDS = [tune]
