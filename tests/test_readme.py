r"""The README and the documentation pages, run as a user would run them from a fresh clone.

Every fenced ``bash`` and ``python`` block of ``README.md`` and of every tracked page under
``docs/`` is a test of its own, named ``<page>:<section>-<n>`` (the nearest heading, as a
slug, and the block's number under it). The blocks of a page run in file order in one
temporary folder that holds exactly the files ``git ls-files`` lists (what a fresh clone
has: nothing built, nothing untracked), with the hub disabled; a later block may read what an
earlier one of the same page wrote, never what another page wrote. ``autoprompt ...`` lines
run in this process through click (with bash's quoting, ``\`` continuations, ``#`` comments,
``*`` globs and ``> file``); ``python ...`` and ``torchrun ...`` lines, and a few file tools
(``printf``, ``cat``, ``head``, ``ls``, ``wc``), run as processes in that folder, importing
the package from it; ``pip install`` lines are set-up and not run (the test environment has
every extra). Any other command fails unless its block is marked. ``python`` blocks run with
``exec`` in that folder. The README's first line (install, then a search) runs as a whole
process with an empty Hugging Face cache.

Marker convention (for every page, including those other engineers add): a block that
cannot run offline from a fresh clone in seconds has, on the line right before its opening
fence, an HTML comment ``<!-- readme-test: skip (REASON) -->``, e.g.
``<!-- readme-test: skip (needs the hub: bert-base-cased) -->``. It is reported as skipped by
its name with that reason, never silently; a marker without a reason is a failure. Skipped
blocks are still read: every ``autoprompt`` line in them must name a real command and real
options, its repository paths must exist, and an output that is a tracked file needs
``--force``. Keep runnable blocks short (small ``--iters`` / ``--steps`` values, said in the
prose): every page's blocks together stay well under two minutes on 2 cores.

The site built from these pages is checked in ``test_docs_site.py``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import NamedTuple

import pytest
from optional import have

from autoprompt_py.cli import COMMANDS

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL = 'pip install torch==2.13.0 && pip install -e ".[dev]" && '
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_ENDPOINT": "http://127.0.0.1:9",  # were the hub asked, it would refuse
}
FILE_TOOLS = {"printf", "cat", "head", "ls", "wc"}


@cache
def tracked_files() -> tuple[str, ...]:
    """The files a fresh clone has: ``git ls-files`` (present in this checkout)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the pages run from the files git tracks")
    return tuple(f for f in out.split("\0") if f and (REPO_ROOT / f).is_file())


def pages() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "docs/*.md"], cwd=REPO_ROOT, capture_output=True, check=True
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return ["README.md"]
    return ["README.md", *sorted(p for p in out.splitlines() if p)]


# ------------------------------------------------------------------------ the blocks

_FENCE = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)
_MARK = re.compile(r"<!-- readme-test: skip(?: \((.*)\))? -->\s*$")


class Block(NamedTuple):
    page: str
    name: str
    language: str
    code: str
    reason: str | None  # None: runs; "": a marker without a reason


def page_blocks(page: str) -> list[Block]:
    text = (REPO_ROOT / page).read_text(encoding="utf-8")
    stem = page.removesuffix(".md")
    blocks, counts = [], {}
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").splitlines()
        headings = [ln for ln in before if re.match(r"#{1,4} ", ln)]
        heading = headings[-1].lstrip("#").strip() if headings else "top"
        slug = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")
        counts[slug] = counts.get(slug, 0) + 1
        mark = _MARK.match(before[-1].strip()) if before else None
        reason = (mark.group(1) or "") if mark else None
        blocks.append(Block(page, f"{stem}:{slug}-{counts[slug]}", m.group(1), m.group(2), reason))
    return blocks


BLOCKS = [b for page in pages() for b in page_blocks(page)]


def commands(code: str) -> list[list[str]]:
    """bash lines → argv lists: continuations joined, comments dropped (globs not expanded)."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            out.append(argv)
    return out


# ------------------------------------------------------------------------ the first block


def first_block() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_first_block_is_install_and_run_then_install_and_test():
    lines = first_block()
    assert len(lines) == 2, lines
    assert all(line.startswith(INSTALL) for line in lines), lines
    assert lines[1] == INSTALL + "python -m pytest -q"
    command = lines[0][len(INSTALL) :]
    assert command.startswith("autoprompt search ") and "&&" not in command
    assert "--model" not in command  # the bundled default model, offline


def test_the_test_line_installs_what_every_test_needs():
    """The README's test line installs ``.[dev]``: it must hold every other extra (the docs
    site build runs in the suite), or the tests needing them skip for its users."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads pyproject.toml")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = project["project"]["optional-dependencies"]
    dev = set(extras["dev"])
    missing = {name: sorted(set(deps) - dev) for name, deps in extras.items()}
    assert not {name: m for name, m in missing.items() if m}, "add these to the dev extra"
    assert re.search(r'pip install "\.\[dev\]"', (REPO_ROOT / ".ci" / "run").read_text())


def run_first_command(folder: Path) -> None:
    """The README's first line after its install, as a whole process with an empty cache."""
    argv = shlex.split(first_block()[0][len(INSTALL) :])
    env = {**os.environ, **OFFLINE, "HF_HOME": str(folder / ".hf-home"), "PYTHONPATH": str(folder)}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "autoprompt_py", *argv[1:]],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    out = argv[argv.index("--output") + 1]
    result = json.loads((folder / out).read_text(encoding="utf-8"))
    assert result["model"]["name"] == "bert-tiny-splade"
    prompt, score = proc.stdout.strip().splitlines()[-2:]
    # the found prompt: the template with its trigger words written in
    assert prompt == result["prompt"] and "[T]" not in prompt
    assert len(result["trigger"]["tokens"]) == 3
    assert re.fullmatch(
        r"dev accuracy 0\.\d{4} \(initial 0\.\d{4}\) after \d+ iterations.*; wrote .*", score
    )
    print(f"README first command: {took:.0f} s; {prompt} / {score}")


# ------------------------------------------------------------------------ checks on every block


def test_every_skip_marker_gives_a_reason_and_sits_on_a_fence():
    assert all(b.reason != "" for b in BLOCKS), [b.name for b in BLOCKS if b.reason == ""]
    names = [b.name for b in BLOCKS]
    assert len(names) == len(set(names))
    for page in pages():
        lines = (REPO_ROOT / page).read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("<!-- readme-test"):
                assert _MARK.match(line.strip()), f"{page}:{i + 1}: {line.strip()}"
                nxt = lines[i + 1] if i + 1 < len(lines) else ""
                assert nxt.startswith(("```bash", "```python")), (
                    f"{page}:{i + 1}: the marker must be the line right before a block's fence"
                )


_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def split_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``VAR=value ... command args`` → ({VAR: value}, [command, args])."""
    env = {}
    while argv and _ASSIGNMENT.match(argv[0]):
        key, value = argv[0].split("=", 1)
        env[key], argv = value, argv[1:]
    return env, argv


def _autoprompt_argv(argv: list[str]) -> list[str] | None:
    """The ``autoprompt`` part of a command line (directly, or launched by torchrun)."""
    argv = split_env(argv)[1]
    if argv[0] == "autoprompt":
        return argv
    if "-m" in argv:
        i = argv.index("-m")
        if i + 1 < len(argv) and argv[i + 1] == "autoprompt_py":
            return ["autoprompt", *argv[i + 2 :]]
    return None


@cache
def _options(name: str) -> frozenset[str]:
    import click

    from autoprompt_py.cli import main

    command = main.get_command(click.Context(main), name)
    assert command is not None, name
    opts = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    return frozenset(opts | {"--help"})


_REPO_DIRS = ("examples/", "templates/", "verbalizers/", "scripts/", "docs/", "tests/")
_OUTPUTS = {"--output", "--out", "--checkpoint"}


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language == "bash"], ids=lambda b: b.name)
def test_every_command_line_names_real_commands_options_and_files(block):
    """Also in skipped blocks: a renamed option or a moved file shows here, not at a user's."""
    tracked = set(tracked_files())
    tracked_dirs = {str(Path(f).parent) + "/" for f in tracked}
    for argv in commands(block.code):
        for i, arg in enumerate(argv):
            if arg.startswith(_REPO_DIRS) and not any(c in arg for c in "*?"):
                is_output = i > 0 and argv[i - 1] in _OUTPUTS
                if is_output:
                    if arg in tracked:
                        assert "--force" in argv, (
                            f"{block.name}: {arg} is a tracked file: writing it needs --force"
                        )
                else:
                    assert arg in tracked or arg.rstrip("/") + "/" in tracked_dirs, (
                        f"{block.name}: {arg} is not in the repository"
                    )
        cli = _autoprompt_argv(argv)
        if cli is None:
            continue
        if len(cli) < 2 or cli[1].startswith("-"):
            continue  # autoprompt --help / --version
        assert cli[1] in COMMANDS, f"{block.name}: no command {cli[1]!r}"
        known = _options(cli[1])
        for arg in cli[2:]:
            if arg.startswith("--"):
                assert arg.split("=")[0] in known, f"{block.name}: {cli[1]} has no {arg}"


# ------------------------------------------------------------------------ running the blocks


def fresh_copy(folder: Path) -> Path:
    """The files a fresh clone holds, copied into ``folder``."""
    for name in tracked_files():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    return folder


@pytest.fixture(scope="module")
def clones(tmp_path_factory):
    """One fresh copy per page, made when the page's first block runs."""
    made: dict[str, Path] = {}

    def get(page: str) -> Path:
        if page not in made:
            made[page] = fresh_copy(tmp_path_factory.mktemp(page.replace("/", "-")))
        return made[page]

    return get


def run_line(name: str, argv: list[str], folder: Path) -> None:
    from click.testing import CliRunner

    from autoprompt_py.cli import main

    expanded = []
    for arg in argv:
        matches = sorted(glob.glob(arg)) if any(c in arg for c in "*?") else []
        expanded += matches or [arg]
    assigned, argv = split_env(expanded)
    stdout_to = None
    if ">" in argv:
        i = argv.index(">")
        argv, stdout_to = argv[:i], folder / argv[i + 1]
    if argv[:2] == ["pip", "install"]:
        return  # set-up: the test environment has the extras
    line = shlex.join(argv)[:200]
    if argv[0] == "autoprompt":
        r = CliRunner(env=assigned).invoke(main, argv[1:])
        assert r.exit_code == 0, f"{name}: {line}\n{r.output[-3000:]}"
        assert "Traceback" not in r.output
        if stdout_to is not None:
            stdout_to.write_text(r.stdout, encoding="utf-8")
        return
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    elif argv[0] == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    else:
        assert argv[0] in FILE_TOOLS, (
            f"{name}: {line[:80]} is not an autoprompt, python, torchrun or file command; "
            "mark the block <!-- readme-test: skip (REASON) --> if it cannot run here"
        )
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(folder), **assigned}
    proc = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name}: {line}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    if stdout_to is not None:
        stdout_to.write_text(proc.stdout, encoding="utf-8")


# a block that runs PEFT (its methods, its export format) needs the optional extra
PEFT_RUNS = re.compile(r"--method[ =](prompt|ptuning|prefix|lora)\b|--format[ =]peft\b")


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_block_runs_as_written_in_a_fresh_clone(block, clones, monkeypatch):
    if block.reason is not None:
        pytest.skip(block.reason)
    # without PEFT: a Python block that runs it is skipped, in a shell block only its lines
    no_peft = not have("peft")
    if no_peft and block.language == "python" and PEFT_RUNS.search(block.code):
        pytest.skip("needs peft: pip install -e '.[peft]' (or .[dev])")
    folder = clones(block.page)
    monkeypatch.chdir(folder)
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    if block.language == "python":
        exec(
            compile(block.code, f"{block.page} block {block.name}", "exec"), {"__name__": "__doc__"}
        )
        return
    if block.page == "README.md" and block == page_blocks("README.md")[0]:
        run_first_command(folder)  # the second line is the whole test suite: this run
        return
    lines = commands(block.code)
    ran = [argv for argv in lines if not (no_peft and PEFT_RUNS.search(" ".join(argv)))]
    for argv in ran:
        run_line(block.name, argv, folder)
    if len(ran) < len(lines):
        pytest.skip("ran all but the lines that need peft: pip install -e '.[peft]'")


_JOB_ROW = re.compile(r"^\|[^|]*\|\s*`(autoprompt [^`]*)`\s*\|", re.M)


def test_the_readme_jobs_table_has_every_command_and_each_line_runs(tmp_path, monkeypatch):
    lines = _JOB_ROW.findall((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    named = [shlex.split(line)[1] for line in lines]
    assert sorted(named) == sorted(COMMANDS), f"the README's jobs table lists {named}"
    folder = fresh_copy(tmp_path)
    monkeypatch.chdir(folder)
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    for line in lines:
        run_line("README jobs table", shlex.split(line), folder)
