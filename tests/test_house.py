"""The house rules that a reviewer would otherwise check by hand: no module over 450 lines,
one command per CLI module."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450


def _modules() -> list[Path]:
    return sorted(
        [*(REPO_ROOT / "autoprompt_py").rglob("*.py"), *(REPO_ROOT / "scripts").glob("*.py")]
    )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_module_over_450_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, (
        f"{path.relative_to(REPO_ROOT)} has {lines} lines: split it by concept"
    )


def test_one_command_per_cli_module():
    from autoprompt_py.cli import COMMANDS

    modules = [module for module, _ in COMMANDS.values()]
    shared = {m for m in modules if modules.count(m) > 1}
    assert not shared, f"several commands in one module: {sorted(shared)}"
