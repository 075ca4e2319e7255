"""What every command shares: user errors as one line and exit code 2, and model options."""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click

from autoprompt_py.default_model import DEFAULT_MODEL
from autoprompt_py.errors import (
    AutopromptError,
    AutopromptWarning,
    Terminated,
    clear_stops,
    note_stop,
    os_error,
)


class AutopromptGroup(click.Group):
    """Turns AutopromptError into one line on stderr and exit code 2; Ctrl-C into exit 130 and
    SIGTERM into exit 143, both after the command kept what it found; an AutopromptWarning
    into one ``warning:`` line.

    ``lazy_commands`` maps a command's name to (module, one-line help): the module is imported
    only when that command is run or asked for its help, so that ``--help`` stays fast."""

    def __init__(
        self, *args: Any, lazy_commands: dict[str, tuple[str, str]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            module = importlib.import_module(self.lazy_commands[cmd_name][0])
            found = {c.name: c for c in getattr(module, "COMMANDS", [])}
            command = found.get(cmd_name) or getattr(module, cmd_name.replace("-", "_"))
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the static one-line helps: no command module imported."""
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy_commands and name not in self.commands:
                rows.append((name, self.lazy_commands[name][1]))
            else:
                command = self.commands[name]
                if not command.hidden:
                    rows.append((name, command.get_short_help_str(formatter.width)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return self._invoke(ctx)
        except click.NoSuchOption as e:
            _suggest_closest(e)
            raise

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings(), _signals_as_interrupts():
                warnings.simplefilter("always", AutopromptWarning)
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except AutopromptError as e:
            _say_error(e)
            sys.exit(2)
        except OSError as e:  # a full disk, a permission: one line too (outputs are atomic)
            mapped = os_error(e)
            if mapped is None:
                raise
            _say_error(mapped)
            sys.exit(2)
        except Terminated:
            click.echo("terminated (SIGTERM)", err=True)
            sys.exit(143)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def _say_error(e: Exception) -> None:
    """One ``error:`` line. Under torchrun an error that reaches here was found while the
    options were read, alike on every rank: rank 0 alone says it (the others exit 2 quietly)."""
    if os.environ.get("RANK", "0") in ("", "0"):
        click.echo(f"error: {one_line(str(e))}", err=True)


class _signals_as_interrupts:
    """While a command runs, SIGTERM raises ``Terminated`` (a KeyboardInterrupt) in the main
    thread, so the code that keeps the best result on Ctrl-C keeps it on SIGTERM too. Both
    handlers also note the stop (``errors.note_stop``): the long loops raise it between steps
    where CPython dropped it (a signal that lands in a ``__del__``)."""

    def __enter__(self) -> None:
        self.previous: dict[int, Any] = {}
        clear_stops()
        if threading.current_thread() is threading.main_thread():
            self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_terminated)
            # Ctrl-C is left alone where the caller ignores or handles it (a notebook)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, _raise_interrupt)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        clear_stops()


def _raise_terminated(signum: int, frame: object) -> None:
    raise note_stop(Terminated())


def _raise_interrupt(signum: int, frame: object) -> None:
    raise note_stop(KeyboardInterrupt())


def _suggest_closest(error: click.NoSuchOption) -> None:
    """click suggests up to three options by similarity alone (``--iter``: --iters, --quiet,
    --train); suggest the options the typed one begins or ends, else the single closest."""
    typed = error.option_name
    command = error.ctx.command if error.ctx is not None else None
    if command is None or not typed.startswith("--"):
        return
    names = [o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    names.append("--help")
    prefix = [n for n in names if n.startswith(typed) or typed.startswith(n)]
    if typed.startswith("--no-"):
        prefix = [n for n in prefix if n.startswith("--no-")] or prefix
    best = prefix if 0 < len(prefix) <= 2 else difflib.get_close_matches(typed, names, 1, 0.75)
    error.possibilities = sorted(best, key=lambda n: abs(len(n) - len(typed)))


def one_line(message: str) -> str:
    """A message as one printable line: a newline or a lone surrogate read from a file
    would otherwise split the line or crash the print."""
    text = " ".join(message.split("\n"))
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, AutopromptWarning):
        click.echo(f"warning: {one_line(str(message))}", err=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


MODEL_HELP = (
    "Hub id or local folder (saved with save_pretrained) of a masked LM or a decoder "
    "(AutoModelForMaskedLM or AutoModelForCausalLM); the default "
    f"{DEFAULT_MODEL} is a small BERT bundled in the package, for trying the tool offline "
    "(see 'autoprompt info')."
)


def model_options(
    f: Callable | None = None, *, several: str | None = None, batch_size: int = 32
) -> Callable:
    """--model, --device, --dtype, --batch-size; --backend and --dist-timeout, and the command
    run in the torch.distributed process group when a launcher (torchrun) started it;
    --trust-remote-code (a model needing its own code is refused first without it).

    ``several``: --model may be repeated (the command gets ``model_names``, a tuple), and
    this sentence says what the command does with several models. ``batch_size``: another
    --batch-size default (tune: TuneConfig's)."""
    if f is None:
        return functools.partial(model_options, several=several, batch_size=batch_size)

    @functools.wraps(f)
    def in_process_group(
        *args: Any, backend: str, dist_timeout: float, trust_remote_code: bool, **kwargs: Any
    ) -> Any:
        from autoprompt_py import distributed

        def command() -> Any:
            # refused before the command writes or loads anything, on every rank
            names = kwargs.get("model_names", (kwargs.get("model_name"),))
            with trusting(trust_remote_code, *names):
                return f(*args, **kwargs)

        return distributed.run(command, backend, kwargs.get("device", "auto"), dist_timeout)

    model = (
        click.option(
            "--model",
            "model_name",
            multiple=True,  # given twice, refused by name: never the last one silently
            default=(DEFAULT_MODEL,),
            show_default=True,
            callback=one_model,
            help=MODEL_HELP,
        )
        if several is None
        else click.option(
            "--model",
            "model_names",
            multiple=True,
            default=(DEFAULT_MODEL,),
            show_default=True,
            help=f"{MODEL_HELP} Repeat for several models sharing one vocabulary: {several}",
        )
    )
    options = [
        model,
        click.option(
            "--device",
            default="auto",
            show_default=True,
            callback=check_device,
            help="auto, cpu, cuda, cuda:N or mps.",
        ),
        click.option(
            "--dtype",
            type=click.Choice(["float32", "bfloat16", "float16"]),
            default="float32",
            show_default=True,
        ),
        click.option(
            "--batch-size", type=click.IntRange(min=1), default=batch_size, show_default=True
        ),
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
    ]
    return functools.reduce(lambda acc, opt: opt(acc), reversed(options), in_process_group)


def chat_options(f: Callable) -> Callable:
    """--chat and --system, passed to the command as ``chat``: a ``template.Chat``, or None
    (each template as given; a result or tuned folder keeps the chat it records)."""

    @functools.wraps(f)
    def with_chat(*args: Any, chat: bool, system: str | None, **kwargs: Any) -> Any:
        from autoprompt_py.template import Chat

        if system is not None and not chat:
            raise AutopromptError("--system is the system message of --chat: add --chat")
        return f(*args, chat=Chat(system) if chat else None, **kwargs)

    options = [
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
    ]
    return functools.reduce(lambda acc, opt: opt(acc), reversed(options), with_chat)


TRUST_OPTION = click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Run the Python code a model folder or hub repository ships (auto_map in its "
    "config.json). Off: such a model is refused, and nothing is ever asked. Read the code "
    "first: it runs with your rights (see docs/security.md).",
)
# the command's --trust-remote-code, read by load_model below (commands keep their signatures)
_TRUST: contextvars.ContextVar[bool] = contextvars.ContextVar("trust_remote_code", default=False)


@contextlib.contextmanager
def trusting(trust_remote_code: bool, *model_names: str | None) -> Iterator[None]:
    """Within it ``load_model`` passes ``trust_remote_code``; without it, each of
    ``model_names`` (None: none) is checked first: a model that needs its own code stops the
    command at once."""
    from autoprompt_py.remote_code import check_remote_code

    for model_name in model_names:
        if model_name is not None:
            check_remote_code(model_name, trust_remote_code)
    token = _TRUST.set(bool(trust_remote_code))
    try:
        yield
    finally:
        _TRUST.reset(token)


def trust_option(f: Callable) -> Callable:
    """``--trust-remote-code`` for a command without ``model_options`` (export)."""

    @functools.wraps(f)
    def with_trust(*args: Any, trust_remote_code: bool, **kwargs: Any) -> Any:
        with trusting(trust_remote_code):
            return f(*args, **kwargs)

    return TRUST_OPTION(with_trust)


def check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Refuse a device this machine lacks while the options are parsed: before any work."""
    if value in ("auto", "cpu"):  # always valid: no torch import while arguments are parsed
        return value
    from autoprompt_py.model import resolve_device

    resolve_device(value)
    return value


def load_model(name: str | None, device: str = "auto", dtype: str = "float32"):
    """``model.load_model`` for ``--model``, which may name a folder of ``autoprompt tune``:
    a ``full`` folder is a model; a prompt or a head folder is refused with where it goes."""
    from autoprompt_py.model import load_model as load
    from autoprompt_py.tune.folder import check_model_folder

    check_model_folder(name)
    return load(name, device, dtype, trust_remote_code=_TRUST.get())


def one_model(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> str:
    """A command that reads one model: ``--model`` given twice is refused (click would keep
    the last one without a word)."""
    if len(value) > 1:
        raise AutopromptError(
            f"--model given {len(value)} times; '{ctx.info_name}' reads one model (several "
            "models sharing a vocabulary: search, labels, score, probe and predict); give one"
        )
    return value[0]


def load_models(names: Sequence[str], device: str = "auto", dtype: str = "float32") -> list:
    """``load_model`` for each ``--model`` (each once), checked to share one vocabulary."""
    from autoprompt_py.several import check_distinct, check_shared_vocabulary

    check_distinct(names)
    lms = [load_model(name, device, dtype) for name in names]
    check_shared_vocabulary(lms)
    return lms


def claim_output(path: Any, option: str = "--output", **kwargs: Any):
    """``results.claim_output`` (fresh, resume, replace or refuse; under torchrun rank 0
    decides for every rank), then the output locked until the command ends."""
    from autoprompt_py.results import claim_output as claim

    decided = claim(path, option, **kwargs)
    lock_output(decided.target)
    return decided


def lock_output(*paths: Any) -> None:
    """Hold ``<path>.lock`` until the command ends: a second run on the same output is refused
    with this one's pid (``results.output_lock``)."""
    from autoprompt_py.results import output_lock

    click.get_current_context().with_resource(output_lock(*paths))


def quiet_transformers() -> None:
    """Keep transformers' own load bars and advisories out of the command's output."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def parse_columns(value: str | None) -> list[str] | None:
    """``--columns text,label`` → ["text", "label"]."""
    return [c.strip() for c in value.split(",")] if value else None
