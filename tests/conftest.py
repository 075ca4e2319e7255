"""Shared pytest fixtures.

Tiny models
    ``tiny_model_dirs``  session-scoped dict family -> folder, every family of
                         ``tiny_models.FAMILIES`` built once per session (a few seconds).
    ``tiny_model_dir``   the folder of one family: parametrize ``family`` in the test
                         (``@pytest.mark.parametrize("family", FAMILIES)``) or let the
                         ``family`` fixture below run the test once per family.
    ``tiny_mlm``         ``(model, tokenizer)`` freshly loaded from ``tiny_model_dir``.

Shared resources (the real model and data sets beside the repository)
    ``shared_dir``       ``$AUTOPROMPT_SHARED`` if set, else ``<repo root>/../shared`` (may not exist).
    ``shared_model``     ``<shared>/models/bert-tiny-splade``; skips the test when absent.
    ``shared_data``      ``<shared>/data``; skips the test when absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the test suite may reach the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_models import FAMILIES, build_tiny_model  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ENV = "AUTOPROMPT_SHARED"


def pytest_configure(config: pytest.Config) -> None:
    # also declared in pyproject.toml; repeated here so the marker is known however pytest is run
    config.addinivalue_line("markers", "slow: tests that run the real shared model (../shared)")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run many times faster on one thread, above all on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def all_threads():
    """Every core for one test: the real shared model's matrices are large enough to gain."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# tiny random models
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family -> folder holding a saved tiny masked LM and its tokenizer (built once)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_model(family, root / family) for family in FAMILIES}


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    """Each tiny-model family in turn; a test's own ``parametrize("family", ...)`` overrides it."""
    return request.param


@pytest.fixture
def tiny_model_dir(tiny_model_dirs: dict[str, Path], family: str) -> Path:
    """Folder of the tiny model of ``family``."""
    return tiny_model_dirs[family]


@pytest.fixture
def tiny_mlm(tiny_model_dir: Path):
    """``(model, tokenizer)`` of ``family``, freshly loaded (safe to modify)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_decoder_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family -> folder of a tiny random decoder with a tokenizer trained in the session
    (``tiny_decoders.py``: gpt2, llama, qwen2, gpt-neox, opt), built once."""
    from tiny_decoders import FAMILIES as DECODERS
    from tiny_decoders import build_tiny_decoder
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("tiny-decoders")
    return {family: build_tiny_decoder(family, root / family) for family in DECODERS}


CHAT_DECODERS = ("qwen2-chatml", "opt-llama3", "gpt2-llama3", "llama-llama3")


@pytest.fixture(scope="session")
def tiny_chat_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ "family-style" -> folder of a tiny decoder with a real chat template
    (``tiny_decoders.build_chat_decoder``): Qwen2's ChatML, Llama 3's headers (on OPT, whose
    tokenizer adds the bos that the template writes too; on GPT-2, whose does not; on the
    SentencePiece-like llama), built once."""
    from tiny_decoders import build_chat_decoder
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("tiny-chat-decoders")
    out = {}
    for name in CHAT_DECODERS:
        family, style = name.split("-")
        out[name] = build_chat_decoder(family, style, root / name)
    return out


# --------------------------------------------------------------------------------------------
# shared resources
# --------------------------------------------------------------------------------------------


def shared_root() -> Path:
    """``$AUTOPROMPT_SHARED`` if set, else ``<repo root>/../shared``."""
    env = os.environ.get(SHARED_ENV)
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared"


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(
            f"{what} not found at {path}: set {SHARED_ENV} to the folder holding "
            "models/bert-tiny-splade and data/"
        )
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared resources folder (not checked for existence)."""
    return shared_root()


@pytest.fixture(scope="session")
def shared_model(shared_dir: Path) -> Path:
    """The real pretrained BERT-tiny (SPLADE) masked LM folder; skips when absent."""
    return _require(shared_dir / "models" / "bert-tiny-splade", "shared model")


@pytest.fixture(scope="session")
def shared_data(shared_dir: Path) -> Path:
    """The shared data folder (sst2/, lama/, agnews/); skips when absent."""
    return _require(shared_dir / "data", "shared data")
