"""Every file option of every command is checked before the model loads.

The options are read from the click definitions, so a new command or a new file option is
walked too: each gets a missing file, a folder, an unreadable file and an empty file, and
must answer exit code 2 with one line naming the option and the path, no traceback, no
model loaded and nothing written.
"""

from __future__ import annotations

import builtins
import io
import os
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from autoprompt_py.cli import main
from autoprompt_py.cli.paths import InputFile

REPO = Path(__file__).resolve().parents[1]
DATA = str(REPO / "examples" / "sst2_mini.tsv")
FACTS = str(REPO / "examples" / "P19" / "train.jsonl")
FAULTS = ("missing", "folder", "unreadable", "empty")

# options whose help speaks of files but which are not input files of one kind, and why
NOT_INPUT_FILES = {
    "--template": "text, a shipped set, a file or a tuned folder (checked as POLYMORPHIC)",
    "--verbalizer": "a file, a shipped name or inline JSON (checked as POLYMORPHIC)",
    "--relations": "a file or a shipped set (checked as POLYMORPHIC)",
    "--model": "a hub id or a folder: model.load_model says which it is not",
    "--output": "an output: results.check_output_path",
    "--out": "an output: results.check_output_path",
    "--checkpoint": "an output: results.check_output_path",
    "--columns": "column names",
    "--relation": "a relation id",
    "--format": "a format name",
    "--templates-per-relation": "a number",
    "--init": "a choice of start (its help speaks of what --template holds)",
    "--search-budget": "seconds (its help names the search result it writes)",
}
# text-or-file options: a value that names a file is read, and each fault is one line too
POLYMORPHIC = {"--template": ".jsonl", "--verbalizer": ".json", "--relations": ".jsonl"}


def base_args(out: Path) -> dict[str, list[str]]:
    """Each command with good arguments (a run that would go on to load the model)."""
    t = "{sentence} [T] It was [MASK] ."
    return {
        "score": ["--data", DATA, "--template", "{sentence} It was [MASK] .", "--verbalizer",
                  "sst2", "--output", str(out / "s.json")],
        "probe": ["--facts", FACTS, "--output", str(out / "p.json")],
        "predict": ["--data", DATA, "--template", "{sentence} It was [MASK] .", "--verbalizer",
                    "sst2", "--output", str(out / "p.jsonl")],
        "tune": ["--train", DATA, "--template", t, "--verbalizer", "sst2", "--steps", "1",
                 "--output", str(out / "t")],
        "search": ["--train", DATA, "--template", t, "--verbalizer", "sst2", "--iters", "1",
                   "--output", str(out / "r.json")],
        "labels": ["--train", DATA, "--template", "{sentence} [P] .", "--output",
                   str(out / "v.json")],
        "export": ["RESULT", "--format", "embeddings", "--out", str(out / "e.safetensors")],
        "plot": ["RESULT", "--output", str(out / "c.png")],
        "info": [],
    }  # fmt: skip


def commands() -> list[tuple[str, click.Command]]:
    ctx = click.Context(main)
    return [(name, main.get_command(ctx, name)) for name in main.list_commands(ctx)]


def file_options() -> list[tuple[str, str, str]]:
    """(command, option or argument name, fault) for every input file parameter."""
    out = []
    for name, command in commands():
        for p in command.params:
            opt = max(p.opts, key=len) if isinstance(p, click.Option) else p.name
            if isinstance(p.type, InputFile) or opt in POLYMORPHIC:
                out += [(name, opt, fault) for fault in FAULTS]
    return out


def test_every_option_that_reads_a_file_is_an_input_file():
    """A new option whose help speaks of a file must be typed InputFile, or say why not."""
    loose = []
    for name, command in commands():
        for p in command.params:
            text = getattr(p, "help", "") or ""
            speaks = re.search(r"\bfiles?\b|\bfolder\b|\.(tsv|csv|jsonl|json|txt)\b", text, re.I)
            opt = max(p.opts, key=len)
            if isinstance(p, click.Option) and p.is_flag:
                continue  # a flag names no file, whatever its help says
            if isinstance(p, click.Argument) and not isinstance(p.type, InputFile):
                loose.append(f"{name} {p.name}")  # every argument of ours is a file
            elif speaks and not isinstance(p.type, InputFile) and opt not in NOT_INPUT_FILES:
                loose.append(f"{name} {opt}")
    assert not loose, f"type these with cli.paths.InputFile (or list them above): {loose}"
    assert len(file_options()) >= 4 * 18  # the walk below does see the options


def make_fault(tmp_path: Path, fault: str, suffix: str, monkeypatch) -> Path:
    path = tmp_path / f"{fault}{suffix}"
    if fault == "folder":
        path.mkdir()
        (path / "inside.txt").write_text("x\n")
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "unreadable":
        path.write_text("sentence\tlabel\nfine\t1\n")
        path.chmod(0)
        try:
            open(path, "rb").close()
        except PermissionError:
            return path
        # root reads a mode-000 file: the refusal the OS gives everyone else, simulated
        real = builtins.open

        def guarded(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(path):
                raise PermissionError(13, "Permission denied", str(path))
            return real(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", guarded)
        monkeypatch.setattr(io, "open", guarded)
    return path


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the file options were checked")


@pytest.mark.parametrize("command, option, fault", file_options())
def test_a_bad_file_is_one_line_before_any_work(tmp_path, monkeypatch, command, option, fault):
    monkeypatch.setattr("autoprompt_py.model.load_model", _no_model)
    out = tmp_path / "out"
    out.mkdir()
    bad = make_fault(tmp_path, fault, POLYMORPHIC.get(option, ".tsv"), monkeypatch)
    args = base_args(out)[command]
    if option.startswith("-"):
        if "RESULT" in args:  # export: --template instead of a result
            args.remove("RESULT")
        if option in args:
            args[args.index(option) + 1] = str(bad)
        else:
            args += [option, str(bad)]
    else:  # the argument (RESULT): the placeholder
        args[args.index("RESULT")] = str(bad)
    r = CliRunner().invoke(main, [command, *args], catch_exceptions=False)
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output and str(bad) in lines[0], lines[0]
    # a folder is welcome where the option takes one (--facts): its own reader names it
    params = {
        max(p.opts, key=len): p for p in main.get_command(click.Context(main), command).params
    }
    takes_folder = getattr(getattr(params.get(option), "type", None), "folder", False)
    folder_ok = takes_folder and fault == "folder"
    if option.startswith("-") and option not in POLYMORPHIC and not folder_ok:
        assert lines[0].startswith(f"error: {option} {bad}"), lines[0]
    assert not list(out.iterdir()), list(out.iterdir())  # nothing written, no lock left
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["out"] + ([bad.name] if fault != "missing" else [])), left
