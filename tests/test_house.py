"""The house rules that a reviewer would otherwise check by hand: no module over 450 lines,
one command per CLI module, the module map in the docs, and each CLI default written once (on
the config dataclass the option reads it from)."""

from __future__ import annotations

import re
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


def _layout_names() -> set[str]:
    """The modules docs/development.md's layout names, as paths under autoprompt_py/: a name
    on an indented line belongs to the folder of the last unindented ``folder/`` line (and
    ``methods/`` inside ``tune/``)."""
    import re

    doc = (REPO_ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    block = doc.split("## Layout", 1)[1].split("```", 2)[1]
    names: set[str] = set()
    folders: list[tuple[int, str]] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        folders = [(i, f) for i, f in folders if i < indent]
        first = line.split()[0]
        prefix = "".join(f for _, f in folders)
        if first.endswith("/"):
            folders.append((indent, first))
        names.update(prefix + n for n in re.findall(r"([\w]+\.py)\b", line))
    return names


def test_the_layout_in_the_docs_is_the_tree():
    tree = {
        str(p.relative_to(REPO_ROOT / "autoprompt_py"))
        for p in (REPO_ROOT / "autoprompt_py").rglob("*.py")
        if p.name != "__init__.py"
    }
    named = _layout_names()
    assert not tree - named, f"modules docs/development.md's layout does not name: {tree - named}"
    assert not named - tree, f"docs/development.md's layout names what is not there: {named - tree}"


def test_only_the_model_modules_ask_the_kind():
    """Every question whose answer depends on the model's kind is a member of
    ``LanguageModel``; outside the model modules the kind is only recorded and compared
    (provenance), never branched on."""
    import re

    model_modules = {"model.py", "causal_model.py", "model_kind.py", "language_model.py"}
    branch = re.compile(
        r"[!=]= *CAUSAL\b|[!=]= *MASKED\b|\bCAUSAL *[!=]=|\bMASKED *[!=]="
        # "the tokenizer names no mask token, so a decoder": a decoder's tokenizer may name
        # one (Gemma's); the model says how it reads the slot (reads_next_token, mask_token)
        r"|\bmask_token(_id)? *(is|[!=]=) *(not +)?None\b|\bNone *(is|[!=]=) *[\w.]*mask_token"
        r"|\bif +(not +)?[\w.]*tok\w*\.mask_token|predicts_next_token"
    )
    found = [
        f"{p.relative_to(REPO_ROOT)}:{i}"
        for p in (REPO_ROOT / "autoprompt_py").rglob("*.py")
        if str(p.relative_to(REPO_ROOT / "autoprompt_py")) not in model_modules
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if branch.search(line)
    ]
    assert not found, f"a branch on the model's kind outside the model modules: {found}"


def test_the_tests_ask_for_an_extra_one_way():
    """An optional dependency is asked for with ``optional.requires`` only: no
    ``importorskip`` of an extra, and a test file that imports one marks its tests."""
    from optional import EXTRAS

    names = "|".join(EXTRAS)
    asked = re.compile(rf"importorskip\(\s*[\"']({names})[\"']")
    imported = re.compile(rf"^\s*(import|from) ({names})\b", re.M)
    wrong = []
    for path in sorted((REPO_ROOT / "tests").glob("*.py")):
        if path.name == "optional.py":
            continue
        text = path.read_text(encoding="utf-8")
        if asked.search(text):
            wrong.append(f"{path.name}: importorskip")
        for m in imported.finditer(text):
            if not re.search(rf"requires\([^)]*[\"']{m.group(2)}[\"']", text):
                wrong.append(f"{path.name}: imports {m.group(2)} without requires")
    assert not wrong, wrong


def test_a_wrapped_model_answers_every_member_of_the_interface():
    """``WrappedLM`` (a model read through a tuned part) is a whole ``LanguageModel``: a
    member added to the interface and not to the wrapper fails here, not in a tuned run."""
    from autoprompt_py.language_model import LanguageModel, WrappedLM

    assert not WrappedLM.__abstractmethods__
    interface = {n for n in vars(LanguageModel) if not n.startswith("__")}
    inherited = {n for n in interface if n not in vars(WrappedLM)}
    shared = {"device", "dtype", "embeddings", "vocab_size", "encoder", "shared_prefix_logits"}
    assert inherited <= shared, f"WrappedLM takes these from the base class: {inherited - shared}"


# every command with the config dataclasses its option defaults come from, and how: None
# matches each option to the field of its name; a dict names the (option: field) pairs, for a
# config whose other fields share names with the command's own options (tune's --method is
# TuneConfig's, --search-method SearchConfig's); the last item lists the options whose value
# the command converts before the config has it, so that their defaults differ in form only
CONFIG_DEFAULTS = [
    ("score", [], ()),
    ("probe", [], ()),
    ("labels", [], ()),
    ("export", [], ()),
    ("plot", [], ()),
    ("info", [], ()),
    ("search", [("autoprompt_py.search.config:SearchConfig", None)], ()),
    (
        "tune",
        [
            ("autoprompt_py.tune.config:TuneConfig", None),
            ("autoprompt_py.search.config:SearchConfig", {"search_method": "method"}),
        ],
        (),
    ),
    (
        "predict",
        [("autoprompt_py.prediction.config:PredictConfig", None)],
        # (): None, and None: () (a tuple of names, or "all")
        ("content_free", "keep_columns"),
    ),
]


def test_every_command_is_in_the_config_defaults_table():
    from autoprompt_py.cli import COMMANDS

    assert sorted(row[0] for row in CONFIG_DEFAULTS) == sorted(COMMANDS)


@pytest.mark.parametrize("name, configs, converted", CONFIG_DEFAULTS, ids=lambda v: str(v))
def test_each_option_named_after_a_config_field_has_its_default(name, configs, converted):
    """A default is written once, on the config dataclass; the click option reads it there."""
    import dataclasses
    import importlib

    import click

    from autoprompt_py.cli import main

    command = main.get_command(click.Context(main), name)
    options = {p.name for p in command.params if isinstance(p, click.Option)}
    # what the command receives when no option is given (after click's types and callbacks)
    received = command.make_context(name, [], resilient_parsing=True).params
    checked = []
    for spec, pairs in configs:
        module, cls = spec.split(":")
        config = getattr(importlib.import_module(module), cls)
        fields = {f.name: f for f in dataclasses.fields(config)}
        for option, field in (pairs or {n: n for n in options if n in fields}).items():
            if option in converted or fields[field].default is dataclasses.MISSING:
                continue
            assert received[option] == fields[field].default, f"{name} --{option}: {cls}.{field}"
            checked.append(option)
    assert bool(checked) == bool(configs), (name, checked)
