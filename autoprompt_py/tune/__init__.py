"""``autoprompt tune``: prompt-based fine-tuning and soft prompts, started from found prompts.

``config.py`` the settings, ``task.py`` the data (few-shot sampling), ``objective.py`` the
label scores and loss (``verbalizer.py``'s), ``methods/`` what trains (one module each, one
registry), ``loop.py`` the training loop and checkpoint, ``folder.py`` the output folder,
``run.py`` the whole run (``tune``).
"""

from autoprompt_py.tune.config import TuneConfig
from autoprompt_py.tune.run import TuneOutcome, tune
from autoprompt_py.tune.task import TuneTask, load_tune_task

__all__ = ["TuneConfig", "TuneOutcome", "TuneTask", "load_tune_task", "tune"]
