"""The one rule for the optional dependencies in tests.

A test that needs an extra (PEFT, matplotlib, pyarrow, the docs tools) says so with
``@requires("peft")`` (or ``pytestmark = requires(...)`` for a whole file); where the extra
is absent the test is skipped with the ``pip install`` that brings it, and no test fails
for it. ``.[dev]`` installs every extra, so the README's test command runs them all.
``tests/test_house.py`` checks that no test file asks for an extra another way.
"""

from __future__ import annotations

import importlib

import pytest

# module → the extra of pyproject.toml that installs it
EXTRAS = {
    "peft": "peft",
    "matplotlib": "plot",
    "pyarrow": "parquet",
    "mkdocs": "docs",
    "mkdocs_click": "docs",
    "mkdocstrings": "docs",
}


def have(module: str) -> bool:
    """Whether ``module`` imports here (an import, not a spec: a blocked module counts as
    absent)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def requires(*modules: str) -> pytest.MarkDecorator:
    """Skip unless every one of ``modules`` (keys of ``EXTRAS``) imports."""
    missing = [m for m in modules if not have(m)]
    extras = sorted({EXTRAS[m] for m in missing})
    return pytest.mark.skipif(
        bool(missing),
        reason=f"needs {', '.join(missing)}: pip install -e '.[{','.join(extras)}]' (or .[dev])",
    )
