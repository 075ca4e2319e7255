r"""Every fenced ``bash`` and ``python`` block of README.md, run as written (issue 20).

The first block (install, then a short search) is run as a process in a clean folder by the
two tests after the block runner. Every other block is a test of its own, named
``<section>-<n>`` (the nearest heading, as a slug, and the block's number under it), run in
file order in one temporary folder that holds copies of ``examples/``, ``verbalizers/`` and
``templates/``, with the hub disabled: a later block may read what an earlier one wrote (the
export block exports the search block's results). ``autoprompt ...`` lines run in this
process through click (with bash's quoting, ``\`` continuations, ``#`` comments and ``*``
globs); ``python ...`` lines run as processes of this interpreter on this checkout;
``pip install`` lines are set-up and not run (the test environment has every extra); any
other command fails the test unless its block is marked. ``python`` blocks run with
``exec``.

Marker convention (for every section, including those other engineers add): a block that
cannot run offline from a checkout in seconds has, on the line right before its opening
fence, an HTML comment ``<!-- readme-test: skip (REASON) -->``, e.g.
``<!-- readme-test: skip (needs the hub: bert-base-cased) -->``. It is reported as skipped by
its name with that reason, never silently; a marker without a reason is a failure. Keep
runnable blocks short: small ``--iters`` / ``--max-forward-passes`` / ``--time-budget``
values, said in the prose, so that all blocks together stay well under a minute.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL = 'pip install torch==2.13.0 && pip install -e ".[dev]" && '


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


def test_the_first_command_runs_offline_in_a_clean_folder(tmp_path):
    argv = shlex.split(first_block()[0][len(INSTALL) :])
    assert argv[0] == "autoprompt"
    # a fresh clone's files that the command reads; nothing else
    shutil.copytree(REPO_ROOT / "examples", tmp_path / "examples")
    shutil.copytree(REPO_ROOT / "verbalizers", tmp_path / "verbalizers")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",  # were the hub asked, it would refuse
        "HF_HOME": str(tmp_path / "hf-home"),  # an empty cache
        "PYTHONPATH": str(REPO_ROOT),
    }
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "autoprompt_py", *argv[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    out = argv[argv.index("--output") + 1]
    result = json.loads((tmp_path / out).read_text(encoding="utf-8"))
    assert result["model"]["name"] == "bert-tiny-splade"
    prompt, score = proc.stdout.strip().splitlines()[-2:]
    # the found prompt: the template with its trigger words written in
    assert prompt == result["prompt"] and "[T]" not in prompt
    assert len(result["trigger"]["tokens"]) == 3
    assert re.fullmatch(
        r"dev accuracy 0\.\d{4} \(initial 0\.\d{4}\) after \d+ iterations.*; wrote .*", score
    )
    print(f"README first command: {took:.0f} s; {prompt} / {score}")


# ------------------------------------------------------------------------ every other block

_FENCE = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)
_MARK = re.compile(r"<!-- readme-test: skip(?: \((.*)\))? -->\s*$")
FIRST = "run as a process by test_the_first_command_runs_offline_in_a_clean_folder"


def readme_blocks() -> list[tuple[str, str, str, str | None]]:
    """(name, language, code, skip reason or None) for every fenced bash/python block."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks, counts = [], {}
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").splitlines()
        headings = [ln for ln in before if re.match(r"#{1,4} ", ln)]
        heading = headings[-1].lstrip("#").strip() if headings else "top"
        slug = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")
        counts[slug] = counts.get(slug, 0) + 1
        mark = _MARK.match(before[-1].strip()) if before else None
        reason = None
        if mark:
            reason = mark.group(1) or ""
        if not blocks:
            reason = FIRST
        blocks.append((f"{slug}-{counts[slug]}", m.group(1), m.group(2), reason))
    return blocks


BLOCKS = readme_blocks()


def test_every_skip_marker_gives_a_reason():
    assert all(reason != "" for *_, reason in BLOCKS), [b[0] for b in BLOCKS if b[3] == ""]
    names = [b[0] for b in BLOCKS]
    assert len(names) == len(set(names))


@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory):
    """A checkout's files the README reads; blocks run here in order."""
    folder = tmp_path_factory.mktemp("readme")
    for name in ("examples", "verbalizers", "templates"):
        shutil.copytree(REPO_ROOT / name, folder / name)
    return folder


def _commands(code: str) -> list[list[str]]:
    """bash lines → argv lists: continuations joined, comments dropped, globs expanded."""
    import glob

    out = []
    for line in code.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        expanded = []
        for arg in argv:
            matches = sorted(glob.glob(arg)) if any(c in arg for c in "*?") else []
            expanded += matches or [arg]
        out.append(expanded)
    return out


@pytest.mark.parametrize("name, language, code, reason", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_readme_block_runs_as_written(name, language, code, reason, readme_folder, monkeypatch):
    if reason is not None:
        pytest.skip(reason)
    from click.testing import CliRunner

    from autoprompt_py.cli import main

    monkeypatch.chdir(readme_folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # were the hub asked, it would refuse
    if language == "python":
        exec(compile(code, f"README.md block {name}", "exec"), {"__name__": "__readme__"})
        return
    for argv in _commands(code):
        if argv[:2] == ["pip", "install"]:
            continue  # set-up: the test environment has the extras
        if argv[0] == "python":  # a script or -c: a process of this interpreter, this checkout
            env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
            proc = subprocess.run(
                [sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=300
            )
            assert proc.returncode == 0, f"{name}: {shlex.join(argv)[:200]}\n{proc.stderr[-3000:]}"
            continue
        assert argv[0] == "autoprompt", (
            f"{name}: {shlex.join(argv)[:80]} is neither an autoprompt nor a python command; "
            "mark the block <!-- readme-test: skip (REASON) --> if it cannot run here"
        )
        r = CliRunner().invoke(main, argv[1:])
        assert r.exit_code == 0, f"{name}: {shlex.join(argv)[:200]}\n{r.output[-3000:]}"
        assert "Traceback" not in r.output
