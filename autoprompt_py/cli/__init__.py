"""The ``autoprompt`` command: a thin layer over the Python API, one module per command.

The commands are listed here by name, module and one-line help, and a module is imported only
when its command runs or shows its help: ``autoprompt --help``, ``--version`` and a mistyped
command answer without importing torch. A new command is one line of ``COMMANDS``; its module
holds a click command of that name (``COMMANDS`` of the module, or an attribute of that name;
the function is ``<name>_command``, so that it hides no API name). Options several commands
share are declared once, in groups (``cli/options.py``).
"""

from __future__ import annotations

import click

from autoprompt_py._version import __version__
from autoprompt_py.cli.group import AutopromptGroup
from autoprompt_py.cli.info import version_message

# name: (module, one-line help shown by `autoprompt --help`; tests/test_newcomer.py checks it
# against the command's own docstring)
COMMANDS: dict[str, tuple[str, str]] = {
    "score": (
        "autoprompt_py.cli.score",
        "Score templates with a verbalizer on a labeled dataset; ensembles and calibration.",
    ),
    "probe": (
        "autoprompt_py.cli.probe",
        "Probe relational knowledge: P@1, P@10 and MRR per relation and template.",
    ),
    "predict": (
        "autoprompt_py.cli.predict",
        "Label new data with a prompt: label probabilities, or top-k objects for relations.",
    ),
    "tune": (
        "autoprompt_py.cli.tune",
        "Train a prompt (soft vectors) or the model with it, on labeled data or facts.",
    ),
    "export": (
        "autoprompt_py.cli.export",
        "Export a search RESULT (or --template) as a soft-prompt initialization.",
    ),
    "search": (
        "autoprompt_py.cli.search",
        "Search trigger tokens for the [T] slots of a template (GCG or AutoPrompt).",
    ),
    "labels": (
        "autoprompt_py.cli.labels",
        "Find label words for each class (AutoPrompt's label search); write a verbalizer.",
    ),
    "plot": (
        "autoprompt_py.cli.plot",
        "Draw the best dev metric so far of search RESULTS (.json) against cost, one line a run.",
    ),
    "info": (
        "autoprompt_py.cli.info",
        "Show the version, the default model and where it lives, libraries and devices.",
    ),
}


@click.group(cls=AutopromptGroup, lazy_commands=COMMANDS)
@click.version_option(__version__, prog_name="autoprompt", message=version_message())
def main() -> None:
    """Prompts for masked LMs and decoders: score, probe, search, labels, tune, predict, export.

    Without --model, commands use the small BERT bundled in the package (autoprompt info).
    """
