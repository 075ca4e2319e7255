"""The ``autoprompt`` click group: commands imported when used, and how a command ends.

A user error is one ``error:`` line and exit code 2; Ctrl-C exits 130 and SIGTERM 143, both
after the command kept what it found; an ``AutopromptWarning`` is one ``warning:`` line.
"""

from __future__ import annotations

import difflib
import importlib
import os
import signal
import sys
import threading
import warnings
from typing import Any

import click

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
