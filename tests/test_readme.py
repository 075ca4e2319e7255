"""The README's first bash block: two set-up commands for a fresh machine, the first of which
runs a short search offline without --model. Its search is run here as written (parsed from
README.md, so the two cannot drift), in a clean folder with the hub disabled."""

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
