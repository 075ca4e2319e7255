"""AutoPrompt trigger search: HotFlip candidates, batched candidate scoring, the search loop.

    from autoprompt_py.model import load_model
    from autoprompt_py.search import SearchConfig, load_task, run_search

    lm = load_model("bert-base-cased")
    task = load_task("{sentence} [T] [T] [T] [P] .", "train.tsv", "dev.tsv", "sst2")
    outcome = run_search(lm, task, SearchConfig(iters=100, seed=0), output="trigger.json")
    outcome.result["prompt"], outcome.result["dev"]["accuracy"]

Modules: ``task`` (reading and checking the problem), ``tensors`` (the data encoded once),
``scorer`` (losses and the model passes), ``candidates`` (HotFlip and token filters),
``config`` (the settings), ``state`` (the search state and checkpoints), ``budget`` (clock,
cost, stopping rules), ``move`` (the method boundary) and ``method`` (the registry), the
methods ``gcg`` and ``autoprompt``, ``engine`` (evaluation, best so far, restarts, the loop),
``record`` (identity, warnings, the result), ``run`` (a whole run: locks, resume,
checkpoints, progress bar, the result file).
"""

from autoprompt_py.search.candidates import (
    TokenFilters,
    VocabStrings,
    allowed_tokens,
    hotflip_candidates,
    read_stop_list,
)
from autoprompt_py.search.config import SearchConfig
from autoprompt_py.search.engine import TriggerSearch
from autoprompt_py.search.method import METHODS, register
from autoprompt_py.search.move import Method, Move
from autoprompt_py.search.run import SearchOutcome, run_search, trigger_ids_from_words
from autoprompt_py.search.scorer import (
    ClassificationObjective,
    Objective,
    RelationObjective,
    TriggerScorer,
)
from autoprompt_py.search.state import SearchState, load_checkpoint, save_checkpoint
from autoprompt_py.search.task import SearchTask, load_task
from autoprompt_py.search.tensors import SplitTensors

__all__ = [
    "METHODS",
    "ClassificationObjective",
    "Method",
    "Move",
    "Objective",
    "RelationObjective",
    "SearchConfig",
    "SearchOutcome",
    "SearchState",
    "SearchTask",
    "SplitTensors",
    "TokenFilters",
    "TriggerScorer",
    "TriggerSearch",
    "VocabStrings",
    "allowed_tokens",
    "hotflip_candidates",
    "load_checkpoint",
    "load_task",
    "read_stop_list",
    "register",
    "run_search",
    "save_checkpoint",
    "trigger_ids_from_words",
]
