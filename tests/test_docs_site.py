"""The documentation site: ``mkdocs build --strict`` of ``docs/`` (broken links, anchors and
references fail), the CLI reference generated from the same click commands that print
``--help`` (checked option by option against ``--help``), an API entry for every public name,
and the README's links to the pages. The pages' blocks run in ``test_readme.py``."""

from __future__ import annotations

import html
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from optional import requires

from autoprompt_py.cli import COMMANDS

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """``mkdocs build --strict`` of this checkout, into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


@requires("mkdocs", "mkdocs_click", "mkdocstrings")
def test_mkdocs_builds_strict(site):
    assert (site / "index.html").is_file()
    assert (site / "benchmarks" / "index.html").is_file()


def _text(html_text: str) -> str:
    """An HTML page's text with all whitespace removed (wrapping cannot differ then)."""
    return re.sub(r"\s+", "", html.unescape(re.sub(r"<[^>]+>", "", html_text)))


@pytest.mark.parametrize("name", sorted(COMMANDS))
@requires("mkdocs", "mkdocs_click", "mkdocstrings")
def test_the_cli_reference_is_the_help_of_every_command(site, name):
    from click.testing import CliRunner

    from autoprompt_py.cli import main

    page = (site / "cli" / "index.html").read_text(encoding="utf-8")
    start = page.index(f'id="autoprompt-{name}"')
    end = page.find('id="autoprompt-', start + 10)
    section = _text(page[start : end if end > 0 else len(page)])
    helped = CliRunner().invoke(main, [name, "--help"])
    assert helped.exit_code == 0
    options = helped.output[helped.output.index("Options:") :]
    assert re.sub(r"\s+", "", options) in section, f"docs/cli.md's {name} differs from --help"


@requires("mkdocs", "mkdocs_click", "mkdocstrings")
def test_the_api_reference_documents_every_public_name(site):
    import autoprompt_py

    api = (REPO_ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    built = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name, module in autoprompt_py._EXPORTS.items():
        obj = getattr(importlib.import_module(module), name)
        path = f"{obj.__module__}.{name}"
        assert f"::: {path}\n" in api, f"docs/api.md has no '::: {path}'"
        assert f'id="{path}"' in built, f"the built API page has no entry for {path}"


def test_the_readme_links_reach_their_pages_and_headings():
    """mkdocs checks the links between pages; the README is read on its own (and on GitHub)."""
    from markdown.extensions.toc import slugify  # mkdocs' own heading ids

    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?:docs/)?[^)#\s]+\.md)(?:#([^)\s]+))?\)", text)
    assert links
    for path, anchor in links:
        assert (REPO_ROOT / path).is_file(), f"README.md links to {path}, which is missing"
        if anchor:
            page = (REPO_ROOT / path).read_text(encoding="utf-8")
            headings = re.findall(r"^#{1,6} (.+?)\s*$", page, re.M)
            slugs = {slugify(re.sub(r"[`*]", "", h), "-") for h in headings}
            assert anchor in slugs, f"README.md links to {path}#{anchor}: no such heading"
