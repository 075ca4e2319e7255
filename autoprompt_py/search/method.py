"""The one registry of search methods (the ``Method`` protocol is in ``move.py``).

A new method is one module beside ``gcg.py`` with a class that has the attributes and methods
of ``Method`` (its ``propose`` reads the engine through ``move.SearchView`` and returns a
``move.Move``), and one ``register(...)`` line in ``_builtins`` below; from outside the package,
``register(MyMethod())`` before building the ``SearchConfig``. ``SearchConfig``, the CLI's
``--method`` choices and help read the names from ``METHODS``.
"""

from __future__ import annotations

from autoprompt_py.search.move import Method, Move, SearchView

__all__ = ["METHODS", "Method", "Move", "SearchView", "register"]


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
