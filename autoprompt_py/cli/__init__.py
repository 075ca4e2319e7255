"""The ``autoprompt`` command: a thin layer over the Python API, one module per command."""

from __future__ import annotations

import click

from autoprompt_py._version import __version__
from autoprompt_py.cli.common import AutopromptGroup
from autoprompt_py.cli.info import version_message


@click.group(cls=AutopromptGroup)
@click.version_option(__version__, prog_name="autoprompt", message=version_message())
def main() -> None:
    """Discrete prompts for masked language models: score, probe, search, label search, export.

    Without --model, commands use the small BERT bundled in the package (autoprompt info).
    """


def _register() -> None:
    from autoprompt_py.cli import export, info, plot, score, search, tune

    for module in (score, export, search, tune, plot, info):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
