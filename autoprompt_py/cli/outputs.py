"""What a command may write: its output claimed before any work (fresh, resumed, replaced with
``--force``, or refused) and locked until the command ends. The ``--output``, ``--force``,
``--resume`` and ``--quiet`` options are declared in ``cli/options.py``."""

from __future__ import annotations

from typing import Any

import click


def claim_and_lock(path: Any, option: str = "--output", **kwargs: Any):
    """``results.claim_output`` (fresh, resume, replace or refuse; under torchrun rank 0
    decides for every rank), then the output locked until the command ends."""
    from autoprompt_py.results import claim_output

    decided = claim_output(path, option, **kwargs)
    lock_output(decided.target)
    return decided


def lock_output(*paths: Any) -> None:
    """Hold ``<path>.lock`` until the command ends: a second run on the same output is refused
    with this one's pid (``results.output_lock``)."""
    from autoprompt_py.results import output_lock

    click.get_current_context().with_resource(output_lock(*paths))
