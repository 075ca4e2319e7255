"""``autoprompt tune``: prompt-based fine-tuning and soft prompts, started from found prompts.

``config.py`` the settings, ``task.py`` the data (few-shot sampling), ``objective.py`` the
label scores and loss (``verbalizer.py``'s), ``methods/`` what trains (one module each, one
registry), ``loop.py`` the training loop and checkpoint, ``select.py`` which weights a run
ends with (``--select``), ``folder.py`` the output folder,
``run.py`` the whole run (``tune``), ``found.py`` what a ``--template`` found (the start of
``--init auto``), ``pipeline.py`` search then tune (``search_then_tune``).
"""

import sys
import types
from typing import Any

from autoprompt_py.lazy import lazy_exports

# names → their modules, imported on first use: ``TuneConfig`` and the method registry load
# without torch (the CLI's --help and option checks), the rest when a run needs it
_EXPORTS = {
    "TuneConfig": "autoprompt_py.tune.config",
    "TuneOutcome": "autoprompt_py.tune.run",
    "tune": "autoprompt_py.tune.run",
    "TuneTask": "autoprompt_py.tune.task",
    "load_tune_task": "autoprompt_py.tune.task",
    "search_then_tune": "autoprompt_py.tune.pipeline",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


class _CallablePackage(types.ModuleType):
    """``autoprompt_py.tune`` is both this package and the function ``tune``: once the package
    is imported, Python binds the name ``tune`` on ``autoprompt_py`` to the package, so
    ``from autoprompt_py import TuneConfig, tune`` would hand back a module. Calling the package
    calls the function, whichever of the two a user got."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__getattr__("tune")(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

__all__ = ["TuneConfig", "TuneOutcome", "TuneTask", "load_tune_task", "search_then_tune", "tune"]  # noqa: F822
