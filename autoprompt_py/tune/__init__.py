"""``autoprompt tune``: prompt-based fine-tuning and soft prompts, started from found prompts.

``config.py`` the settings, ``task.py`` the data (few-shot sampling), ``objective.py`` the
label scores and loss (``verbalizer.py``'s), ``methods/`` what trains (one module each, one
registry), ``loop.py`` the training loop and checkpoint, ``folder.py`` the output folder,
``run.py`` the whole run (``tune``).
"""

# names → their modules, imported on first use: ``TuneConfig`` and the method registry load
# without torch (the CLI's --help and option checks), the rest when a run needs it
_EXPORTS = {
    "TuneConfig": "autoprompt_py.tune.config",
    "TuneOutcome": "autoprompt_py.tune.run",
    "tune": "autoprompt_py.tune.run",
    "TuneTask": "autoprompt_py.tune.task",
    "load_tune_task": "autoprompt_py.tune.task",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autoprompt_py.tune' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["TuneConfig", "TuneOutcome", "TuneTask", "load_tune_task", "tune"]  # noqa: F822
