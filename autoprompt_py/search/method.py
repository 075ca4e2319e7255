"""The search methods: the ``Method`` protocol and the one registry of methods.

A new method is one module beside ``gcg.py`` with a class that has the attributes and methods
of ``Method`` (its ``propose`` reads the engine through ``move.SearchView`` and returns a
``move.Move``), and one ``register(...)`` line in ``_builtins`` below; from outside the package,
``register(MyMethod())`` before building the ``SearchConfig``. ``SearchConfig``, the CLI's
``--method`` choices and help read the names from ``METHODS``.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from autoprompt_py.search.move import Move, SearchView
from autoprompt_py.search.state import SearchState


class Method(Protocol):
    """One search method: its name, its options, and its step."""

    name: str  # the --method value
    help: str  # one sentence for --method's help
    options: tuple[str, ...]  # SearchConfig fields only this method reads: its identity keys
    accumulation: dict[str, int]  # default accumulation_steps by mode (classification, relation)

    def check(self, config: Any, slots: int) -> None:
        """Refuse settings this method cannot run with ``slots`` trigger slots
        (``AutopromptError``); runs before any model loads."""

    def prepare(self, search: SearchView) -> None:
        """Once the task is encoded: warn about settings the data makes moot."""

    def propose(self, search: SearchView, state: SearchState, rng: np.random.Generator) -> Move:
        """One step from ``state``; ``state.method_state`` holds what the method keeps."""


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make ``method`` available as ``SearchConfig(method=method.name)`` (and to the CLI's
    ``--method`` when registered before the CLI is built)."""
    METHODS[method.name] = method
    return method


def _builtins() -> None:
    from autoprompt_py.search.autoprompt import AutoPrompt
    from autoprompt_py.search.gcg import GCG

    register(GCG())
    register(AutoPrompt())


_builtins()
