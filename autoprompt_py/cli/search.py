"""``autoprompt search``: trigger tokens for a template's [T] slots (``search.run_search``);
the token filter options are shared with ``autoprompt labels``."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from autoprompt_py.cli.common import model_options, parse_columns, quiet_transformers
from autoprompt_py.results import output_lock, refuse_overwrite


def filter_options(f: Callable) -> Callable:
    options = [
        click.option(
            "--filter-subwords/--no-filter-subwords",
            default=True,
            show_default=True,
            help="Exclude word-continuation pieces (##ing, BPE/SentencePiece pieces "
            "without a word-start marker).",
        ),
        click.option(
            "--filter-non-alpha/--no-filter-non-alpha",
            default=True,
            show_default=True,
            help="Exclude tokens that are not all ASCII letters.",
        ),
        click.option(
            "--filter-capitalized/--no-filter-capitalized",
            default=True,
            show_default=True,
            help="Exclude capitalized tokens (AutoPrompt's cheap proper-noun filter).",
        ),
        click.option(
            "--stop-list",
            type=click.Path(dir_okay=False),
            default=None,
            help="File of words (one a line) never to use.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def token_filters(
    label_words: bool, subwords: bool, non_alpha: bool, capitalized: bool, stop_list: str | None
):
    from autoprompt_py.search import TokenFilters, read_stop_list

    return TokenFilters(
        label_words,
        subwords,
        non_alpha,
        capitalized,
        read_stop_list(stop_list) if stop_list else frozenset(),
    )


class BatchTokens(click.ParamType):
    """A positive number of tokens, or ``auto``."""

    name = "tokens|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            tokens = int(value)
        except ValueError:
            tokens = 0
        if tokens < 1:
            self.fail(f"{value!r}: give a positive number of tokens, or auto", param, ctx)
        return tokens


def require_rows(rows: list, source: str) -> None:
    """Under torchrun: at least one row per process."""
    from autoprompt_py import distributed

    distributed.require_rows(len(rows), source)


class _MethodChoice(click.Choice):
    """The registered search methods (``search.method.METHODS``), read when needed: the
    registry imports torch, which ``autoprompt --help`` must not wait for."""

    def __init__(self) -> None:
        super().__init__([])

    @property
    def choices(self):  # noqa: D102
        from autoprompt_py.search.method import METHODS

        return list(METHODS)

    @choices.setter
    def choices(self, value) -> None:
        pass


class _MethodOption(click.Option):
    """--method, its help written from the registry when help is shown."""

    def get_help_record(self, ctx):
        from autoprompt_py.search.method import METHODS

        self.help = "; ".join(f"{m.name}: {m.help}" for m in METHODS.values()) + "."
        return super().get_help_record(ctx)


def _config_options(f: Callable) -> Callable:
    """The options that become the SearchConfig (collected as ``**settings``)."""
    options = [
        click.option(
            "--method", cls=_MethodOption, type=_MethodChoice(), default="gcg", show_default=True
        ),
        click.option(
            "--iters",
            type=click.IntRange(min=0),
            default=100,
            show_default=True,
            help="Iterations per restart (a budget may stop it sooner).",
        ),
        click.option(
            "--time-budget",
            type=float,
            default=None,
            help="Seconds of search; checked after every model chunk (see budget_overshoot).",
        ),
        click.option(
            "--max-forward-passes",
            type=int,
            default=None,
            help="Budget in sequences run through the model (load-independent).",
        ),
        click.option(
            "--restarts",
            type=int,
            default=1,
            show_default=True,
            help="Independent searches sharing the budget; the best on dev is kept.",
        ),
        click.option(
            "--search-width",
            type=int,
            default=32,
            show_default=True,
            help="gcg: candidate triggers scored per step.",
        ),
        click.option(
            "--n-replace",
            type=int,
            default=1,
            show_default=True,
            help="gcg: slots each candidate changes.",
        ),
        click.option(
            "--topk",
            type=int,
            default=32,
            show_default=True,
            help="gcg: gradient top-k tokens per slot to draw from.",
        ),
        click.option(
            "--buffer-size",
            type=int,
            default=0,
            show_default=True,
            help="gcg: keep the B best triggers seen and step from the best (0: off).",
        ),
        click.option(
            "--num-cand",
            type=int,
            default=10,
            show_default=True,
            help="autoprompt: HotFlip candidates per trigger slot and iteration.",
        ),
        click.option(
            "--accumulation-steps",
            type=int,
            default=None,
            help="Batches for the gradient, and as many fresh ones for scoring the "
            "candidates [default: gcg 6, or 2 on relations; autoprompt 10, as the original].",
        ),
        click.option(
            "--position",
            type=click.Choice(["random", "sweep", "all"]),
            default="random",
            show_default=True,
            help="autoprompt: which slot to flip: a random one (AutoPrompt), each in "
            "turn, or the best flip over all slots.",
        ),
        click.option(
            "--select",
            type=click.Choice(["loss", "metric"]),
            default="loss",
            show_default=True,
            help="Rank candidates by loss, or by correct answers (ties to the loss; the "
            "original's rule for classification).",
        ),
        click.option(
            "--objective",
            type=click.Choice(["labels", "vocab"]),
            default="labels",
            show_default=True,
            help="Classification loss: the gold label word's log-probability over the "
            "vocabulary (AutoPrompt), or the cross-entropy over the labels only.",
        ),
        click.option(
            "--initial",
            type=click.Choice(["random", "mask"]),
            default="random",
            show_default=True,
            help="Start without --initial-trigger: random allowed tokens, or the mask token "
            "(the original AutoPrompt).",
        ),
        click.option(
            "--calibrate",
            is_flag=True,
            default=False,
            help="Choose the best trigger on calibrated dev probabilities (contextual "
            "calibration with 'N/A', '' and the mask token).",
        ),
        click.option(
            "--fluency",
            type=float,
            default=0.0,
            show_default=True,
            help="Weight W of the trigger's pseudo-log-likelihood in the selection score.",
        ),
        click.option(
            "--patience",
            type=int,
            default=None,
            help="End a restart after N iterations without a better dev metric.",
        ),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option(
            "--max-batch-tokens",
            type=BatchTokens(),
            default=65536,
            show_default=True,
            help="Padded tokens per forward pass (memory budget); auto: from the free GPU memory.",
        ),
        click.option(
            "--train-eval-limit",
            type=int,
            default=2000,
            show_default=True,
            help="Train metrics of the result use at most N examples.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.command("search")
@model_options
@click.option(
    "--train",
    required=True,
    help="Training examples (.tsv/.csv/.jsonl), or LAMA "
    "facts (.jsonl) for a relation template with [X].",
)
@click.option("--dev", default=None, help="Dev examples; default: --dev-fraction of --train.")
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
@_config_options
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
@click.option("--output", required=True, help="Result JSON file.")
@click.option(
    "--checkpoint", default=None, help="State file, saved every iteration [default: <output>.ckpt]."
)
@click.option("--resume", is_flag=True, help="Continue the run saved in the checkpoint.")
@click.option("--force", is_flag=True, help="Replace an existing result and checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def search(
    model_name: str,
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
    output: str,
    checkpoint: str | None,
    resume: bool,
    force: bool,
    quiet: bool,
    **settings,
) -> None:
    """Search trigger tokens for the [T] slots of a template (GCG or AutoPrompt)."""
    from autoprompt_py.cli.common import load_model
    from autoprompt_py.errors import AutopromptError
    from autoprompt_py.search import SearchConfig, load_task, run_search
    from autoprompt_py.search.run import default_checkpoint

    quiet_transformers()
    ckpt = default_checkpoint(output, checkpoint)
    # a finished search is hours of work: never replaced without --resume or --force
    keep = force or resume
    target = refuse_overwrite(output, "--output", keep, True)
    if refuse_overwrite(ckpt, "--checkpoint", keep, True) == target:
        raise AutopromptError(f"--checkpoint {ckpt} is the --output file; give another name")
    # locked before the model loads (run_search holds the same locks, re-entrantly)
    click.get_current_context().with_resource(output_lock(output, ckpt))
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
    )
    require_rows(task.train, train)
    require_rows(task.dev, dev or f"{train} (dev share)")
    config.check_slots(task.template.num_triggers)
    # float32 weights; --dtype runs the passes under autocast
    lm = load_model(model_name, device, "float32")
    record = {
        "model": model_name,
        "device": str(lm.device),
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
    }
    outcome = run_search(
        lm,
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
    if outcome.interrupted:
        click.echo("interrupted: wrote the best trigger so far; continue with --resume", err=True)
        sys.exit(130)


COMMANDS = [search]
