"""The model a command's ``--model`` names, loaded: refused where it is a tuned prompt folder or
needs code that ``--trust-remote-code`` did not allow, checked to share one vocabulary where
several are given. The options themselves are declared in ``cli/options.py``."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import click

from autoprompt_py.errors import AutopromptError

# the command's --trust-remote-code, read by model_from_option below (commands keep their
# signatures: the model group's wrapper sets it around the command)
_TRUST: contextvars.ContextVar[bool] = contextvars.ContextVar("trust_remote_code", default=False)


@contextlib.contextmanager
def trusting(trust_remote_code: bool, *model_names: str | None) -> Iterator[None]:
    """Within it ``model_from_option`` passes ``trust_remote_code``; without it, each of
    ``model_names`` (None: none) is checked first: a model that needs its own code stops the
    command at once."""
    from autoprompt_py.remote_code import check_remote_code

    for model_name in model_names:
        if model_name is not None:
            check_remote_code(model_name, trust_remote_code)
    token = _TRUST.set(bool(trust_remote_code))
    try:
        yield
    finally:
        _TRUST.reset(token)


def check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Refuse a device this machine lacks while the options are parsed: before any work."""
    if value in ("auto", "cpu"):  # always valid: no torch import while arguments are parsed
        return value
    from autoprompt_py.model import resolve_device

    resolve_device(value)
    return value


def one_model(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> str:
    """A command that reads one model: ``--model`` given twice is refused (click would keep
    the last one without a word)."""
    if len(value) > 1:
        raise AutopromptError(
            f"--model given {len(value)} times; '{ctx.info_name}' reads one model (several "
            "models sharing a vocabulary: search, labels, score, probe and predict); give one"
        )
    return value[0]


def model_from_option(name: str | None, device: str = "auto", dtype: str = "float32"):
    """``model.load_model`` for ``--model``, which may name a folder of ``autoprompt tune``:
    a ``full`` folder is a model; a prompt or a head folder is refused with where it goes."""
    from autoprompt_py.model import load_model
    from autoprompt_py.tune.folder import check_model_folder

    check_model_folder(name)
    return load_model(name, device, dtype, trust_remote_code=_TRUST.get())


def models_from_option(names: Sequence[str], device: str = "auto", dtype: str = "float32") -> list:
    """``model_from_option`` for each ``--model`` (each once), checked to share one vocabulary."""
    from autoprompt_py.several import check_distinct, check_shared_vocabulary

    check_distinct(names)
    lms = [model_from_option(name, device, dtype) for name in names]
    check_shared_vocabulary(lms)
    return lms


def prompted_models(specs: Sequence[str], names: Sequence[str], device: str, dtype: str):
    """Each ``--model`` loaded (sharing one vocabulary), and each with the tuned prompts of the
    ``--template`` specs attached (``tune.folder.prompted_model``): what score and probe run.
    Returns (the loaded models, the prompted ones)."""
    from autoprompt_py.tune.folder import prompted_model

    refuse_tuned(specs, names)
    quiet_transformers()
    lms = models_from_option(names, device, dtype)
    return lms, [prompted_model(base, specs, name) for name, base in zip(names, lms)]


def refuse_tuned(specs: Sequence[str], names: Sequence[str]) -> None:
    """A tuned folder's prompt belongs to its model: scored on one model at a time."""
    from autoprompt_py.tune.folder import read_tuned

    if len(names) > 1:
        for spec in specs:
            if read_tuned(spec) is not None:
                raise AutopromptError(
                    f"--template {spec}: a tuned prompt belongs to the model it was trained "
                    "on; score it with one --model"
                )


def quiet_transformers() -> None:
    """Keep transformers' own load bars and advisories out of the command's output."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
