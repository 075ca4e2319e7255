"""The options several commands share, each declared once, in groups a command applies as one
decorator: ``model_options`` (the model and how it runs, --chat), ``data_options`` (the files
and how they are read), ``template_options`` (the prompt and its answers), ``output_options``
(what is written, --force, --resume, --quiet); ``evaluation_options.py`` has the ensemble and
calibration group, ``search_options.py`` search's settings and the token filters.

A default is written once, on the command's config dataclass (``SearchConfig``,
``TuneConfig``, ``PredictConfig``): a group given ``config`` reads it there (``config_option``,
``config_default``); the defaults written here serve the commands with no such field.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import click

from autoprompt_py.cli.models import check_device, one_model, trusting
from autoprompt_py.cli.paths import DATA_FIX, InputFile
from autoprompt_py.default_model import DEFAULT_MODEL
from autoprompt_py.errors import AutopromptError

Decorator = Callable[[Callable], Callable]
# the model, data and scoring modules (torch, numpy) are imported inside the commands, so that
# --help and a mistyped option answer at once; tests/test_newcomer.py checks this copy
AGGREGATIONS = ("sum", "mean-logit", "mean-logprob")  # verbalizer.AGGREGATIONS


def options(*decorators: Decorator) -> Decorator:
    """One decorator applying ``decorators`` (click options, wrappers) so that ``--help`` lists
    the options in the order given."""

    def apply(f: Callable) -> Callable:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def config_default(config: type | None, name: str, fallback: Any = None) -> Any:
    """The default of ``config``'s field ``name`` (written once, in the dataclass); ``fallback``
    where there is no config or it has no such field."""
    for f in dataclasses.fields(config) if config is not None else ():
        if f.name == name and f.default is not dataclasses.MISSING:
            return f.default
    return fallback


def config_option(
    config: type | None,
    name: str,
    type: Any = None,
    help: str | None = None,
    *,
    option: str | None = None,
    fallback: Any = None,
    **attrs: Any,
) -> Decorator:
    """``--name`` (dashes for underscores; or ``option``, its declaration) whose default is
    ``config``'s field ``name`` (``fallback`` without one), shown in ``--help`` where there is
    one."""
    default = config_default(config, name, fallback)
    attrs.setdefault("show_default", default is not None)
    declared = option or f"--{name.replace('_', '-')}"
    return click.option(declared, type=type, default=default, help=help, **attrs)


class BatchTokens(click.ParamType):
    """A positive number of tokens, or ``auto``."""

    name = "tokens|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) or value == "auto":
            return value
        try:
            tokens = int(value)
        except ValueError:
            tokens = 0
        if tokens < 1:
            self.fail(f"{value!r}: give a positive number of tokens, or auto", param, ctx)
        return tokens


def max_batch_tokens_option(config: type, note: str = "") -> Decorator:
    """--max-batch-tokens, ``config``'s default; ``note`` says more of the budget."""
    return config_option(
        config,
        "max_batch_tokens",
        BatchTokens(),
        f"Padded tokens per forward pass (a memory budget{'; ' + note if note else ''}), or "
        "auto: from the free GPU memory.",
    )


def seed_option(config: type | None = None, help: str | None = None) -> Decorator:
    return config_option(config, "seed", int, help, fallback=0)


# ------------------------------------------------------------------------- the model group

MODEL_HELP = (
    "Hub id or local folder (saved with save_pretrained) of a masked LM or a decoder "
    "(AutoModelForMaskedLM or AutoModelForCausalLM); the default "
    f"{DEFAULT_MODEL} is a small BERT bundled in the package, for trying the tool offline "
    "(see 'autoprompt info')."
)
TRUST_OPTION = click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Run the Python code a model folder or hub repository ships (auto_map in its "
    "config.json). Off: such a model is refused, and nothing is ever asked. Read the code "
    "first: it runs with your rights (see docs/security.md).",
)


def model_options(*, config: type | None = None, several: str | None = None) -> Decorator:
    """--model, --device, --dtype, --batch-size (``config``'s defaults); --backend and
    --dist-timeout, and the command run in the torch.distributed process group when a
    launcher (torchrun) started it; --trust-remote-code (a model needing its own code is
    refused first without it); --chat and --system, passed on as ``chat`` (``_pass_chat``).

    ``several``: --model may be repeated (the command gets ``model_names``, a tuple), and
    this sentence says what the command does with several models; else ``model_name``."""
    model = click.option(
        "--model",
        "model_name" if several is None else "model_names",
        multiple=True,  # one model: given twice, refused by name, never the last one silently
        default=(DEFAULT_MODEL,),
        show_default=True,
        callback=one_model if several is None else None,
        help=MODEL_HELP
        if several is None
        else f"{MODEL_HELP} Repeat for several models sharing one vocabulary: {several}",
    )
    return options(
        model,
        click.option(
            "--device",
            default="auto",
            show_default=True,
            callback=check_device,
            help="auto, cpu, cuda, cuda:N or mps.",
        ),
        config_option(
            config, "dtype", click.Choice(["float32", "bfloat16", "float16"]), fallback="float32"
        ),
        config_option(config, "batch_size", click.IntRange(min=1), fallback=32),
        click.option(
            "--backend",
            type=click.Choice(["auto", "nccl", "gloo"]),
            default="auto",
            show_default=True,
            help="torch.distributed backend under torchrun: auto is nccl on GPUs, gloo on CPUs.",
        ),
        click.option(
            "--dist-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=300.0,
            show_default=True,
            help="Seconds a process waits for the others (rendezvous, each exchange) under "
            "torchrun before all stop with an error.",
        ),
        TRUST_OPTION,
        click.option(
            "--chat",
            is_flag=True,
            help="Decoders: read the template as a chat turn, rendered with the tokenizer's "
            "chat template: the text before the answer slot is the user's message, the slot "
            "opens the assistant's turn (docs/chat.md). Default: as the template or result.",
        ),
        click.option(
            "--system",
            default=None,
            help="With --chat: the system message [default: the chat template's own].",
        ),
        _pass_chat,  # the --system check first, then the process group
        _in_process_group,
    )


def _pass_chat(f: Callable) -> Callable:
    """--chat and --system passed on as ``chat``: a ``template.Chat``, or None (each template
    as given; a result or tuned folder keeps the chat it records)."""

    @functools.wraps(f)
    def wrapper(*args: Any, chat: bool, system: str | None, **kwargs: Any) -> Any:
        from autoprompt_py.template import Chat

        if system is not None and not chat:
            raise AutopromptError("--system is the system message of --chat: add --chat")
        return f(*args, chat=Chat(system) if chat else None, **kwargs)

    return wrapper


def _in_process_group(f: Callable) -> Callable:
    """The command run in torch.distributed's process group (--backend, --dist-timeout) under
    a launcher, with the model's own code allowed only by --trust-remote-code."""

    @functools.wraps(f)
    def wrapper(
        *args: Any, backend: str, dist_timeout: float, trust_remote_code: bool, **kwargs: Any
    ) -> Any:
        from autoprompt_py import distributed

        def command() -> Any:
            # refused before the command writes or loads anything, on every rank
            names = kwargs.get("model_names", (kwargs.get("model_name"),))
            with trusting(trust_remote_code, *names):
                return f(*args, **kwargs)

        return distributed.run(command, backend, kwargs.get("device", "auto"), dist_timeout)

    return wrapper


def trust_option(f: Callable) -> Callable:
    """``--trust-remote-code`` for a command without ``model_options`` (export)."""

    @functools.wraps(f)
    def with_trust(*args: Any, trust_remote_code: bool, **kwargs: Any) -> Any:
        with trusting(trust_remote_code):
            return f(*args, **kwargs)

    return TRUST_OPTION(with_trust)


# -------------------------------------------------------------------------- the data group

SPLIT_HELP = {
    "data": "Labeled examples: .tsv/.csv (header row, or --columns) or .jsonl.",
    "train": "Labeled training examples (.tsv/.csv/.jsonl).",
    "facts": "Training examples (.tsv/.csv/.jsonl), or LAMA facts (.jsonl) for a relation "
    "template with [X].",
    "dev": "Dev examples; default: --dev-fraction of --train.",
    "test": "Test examples, scored once with the best checkpoint.",
}
LIMIT_HELP = {
    "data": "Use only the first N rows.",
    "train": "Use only the first N training examples.",
    "dev": "Use only the first N dev examples.",
}


def data_options(
    *splits: str,
    facts: bool = False,
    limits: bool = True,
    stdin: bool = False,
    config: type | None = None,
    data_help: str | None = None,
    label_help: str | None = None,
) -> Decorator:
    """The files a command reads (``splits``: data, train, dev (with --dev-fraction), test),
    then --label-field, --columns (passed on as a list of names, or None) and, with
    ``limits``, a --limit for each of data, train and dev. ``facts``: --train may hold LAMA
    facts; ``stdin``: --data may be ``-``."""
    chosen = []
    for split in splits:
        chosen.append(
            click.option(
                f"--{split}",
                required=split in ("data", "train"),
                type=InputFile("data file", stdin=stdin, fix=DATA_FIX),
                help=data_help
                if split == "data" and data_help
                else SPLIT_HELP["facts" if split == "train" and facts else split],
            )
        )
        if split == "dev":
            chosen.append(
                click.option(
                    "--dev-fraction",
                    type=float,
                    default=0.2,
                    show_default=True,
                    help="Share of --train held out as dev when --dev is not given (seeded).",
                )
            )
    chosen += [
        config_option(config, "label_field", help=label_help, fallback="label"),
        click.option(
            "--columns",
            callback=lambda ctx, param, value: parse_columns(value),
            help="Column names of a header-less .tsv/.csv, e.g. text,label.",
        ),
    ]
    for split in splits if limits else ():
        if split in LIMIT_HELP:
            name = "--limit" if split == "data" else f"--{split}-limit"
            chosen.append(click.option(name, type=click.IntRange(min=1), help=LIMIT_HELP[split]))
    return options(*chosen)


def parse_columns(value: str | None) -> list[str] | None:
    """``text,label`` → ["text", "label"]."""
    return [c.strip() for c in value.split(",")] if value else None


# ---------------------------------------------------------------------- the template group

VERBALIZER_HELP = "Label words: a JSON file, a shipped name (sst2) or inline JSON."


def template_options(
    help: str,
    *,
    several: bool = False,
    required: bool = True,
    verbalizer: str | None = None,
    verbalizer_required: bool = False,
    aggregation: bool = True,
    vocab: str | None = None,
    config: type | None = None,
) -> Decorator:
    """--template (``help``; ``several``: repeatable, passed on as ``templates``), then where
    a command reads answers: --verbalizer (``verbalizer``: its help, ``VERBALIZER_HELP`` for
    one verbalizer; repeatable with ``several``), --aggregation (``config``'s default),
    --vocab (``vocab``: its help)."""
    # with several, each is repeatable and passed on in the plural (templates, verbalizers)
    dest = {name: f"{name}s" if several else name for name in ("template", "verbalizer")}
    chosen = [click.option("--template", dest["template"], multiple=several, required=required,
                           help=help)]  # fmt: skip
    if verbalizer is not None:
        chosen.append(click.option("--verbalizer", dest["verbalizer"], multiple=several,
                                   required=verbalizer_required, help=verbalizer))  # fmt: skip
    if aggregation:
        chosen.append(
            config_option(
                config,
                "aggregation",
                click.Choice(AGGREGATIONS),
                "How several words of a label combine.",
                fallback="sum",
            )
        )
    if vocab is not None:
        chosen.append(click.option("--vocab", type=InputFile("vocabulary file"), help=vocab))
    return options(*chosen)


# ------------------------------------------------------------------------ the output group


def output_options(
    help: str,
    *output_decls: str,
    required: bool = True,
    force: str = "Replace --output if it exists.",
    resume: str | None = None,
    quiet: bool = False,
    predictions: str | None = None,
    **output_attrs: Any,
) -> Decorator:
    """--output (``help``; more names and click attributes after it), --force (its help);
    --resume, --predictions (where given their help); --quiet (no progress bar)."""
    chosen = [
        click.option("--output", *output_decls, required=required, help=help, **output_attrs),
        force_option(force),
    ]
    if resume is not None:
        chosen.append(click.option("--resume", is_flag=True, help=resume))
    if quiet:
        chosen.append(click.option("--quiet", is_flag=True, help="No progress bar."))
    if predictions is not None:
        chosen.append(click.option("--predictions", is_flag=True, help=predictions))
    return options(*chosen)


def force_option(help: str) -> Decorator:
    return click.option("--force", is_flag=True, help=help)
