"""``autoprompt info``: the version, the default model and where it lives, the libraries, the
devices and the hub's state: what a bug report needs."""

from __future__ import annotations

import platform
import sys

import click

from autoprompt_py._version import __version__
from autoprompt_py.default_model import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_SOURCE,
    check_default_model,
    default_model_dir,
)
from autoprompt_py.errors import AutopromptError


def info_lines() -> list[str]:
    import torch
    import transformers

    from autoprompt_py.hub import hub_disabled, hub_endpoint
    from autoprompt_py.model import available_devices

    try:
        where = str(check_default_model())
    except AutopromptError as e:
        where = f"MISSING: {e}"
    disabled_by = hub_disabled()
    hub = f"disabled ({disabled_by})" if disabled_by else f"enabled ({hub_endpoint()})"
    return [
        f"autoprompt {__version__}",
        f"default model: {DEFAULT_MODEL} (bundled; used when --model is left out)",
        f"  at {where}",
        f"  {DEFAULT_MODEL_SOURCE}",
        f"python {platform.python_version()} ({sys.executable})",
        f"torch {torch.__version__}, transformers {transformers.__version__}",
        f"devices: {', '.join(available_devices())}",
        f"hugging face hub: {hub}",
    ]


@click.command("info")
def info_command() -> None:
    """Show the version, the default model and where it lives, libraries and devices."""
    click.echo("\n".join(info_lines()))


def version_message() -> str:
    """What ``autoprompt --version`` prints: the version and the default model's place."""
    return (
        f"%(prog)s {__version__}\ndefault model: {DEFAULT_MODEL} (bundled) at {default_model_dir()}"
    )


COMMANDS = [info_command]
