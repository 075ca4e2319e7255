"""AutoPrompt trigger search: HotFlip candidates, batched candidate scoring, the search loop.

    from autoprompt_py.model import load_model
    from autoprompt_py.search import SearchConfig, load_task, run_search

    lm = load_model("bert-base-cased")
    task = load_task("{sentence} [T] [T] [T] [P] .", "train.tsv", "dev.tsv", "sst2")
    outcome = run_search(lm, task, SearchConfig(iters=100, seed=0), output="trigger.json")
    outcome.result["prompt"], outcome.result["dev"]["accuracy"]

Modules: ``task`` (reading and checking the problem), ``tensors`` (a split as tensors),
``encoded`` (the task's objective and splits, each row encoded once),
``scorer`` (losses and the model passes), ``candidates`` (HotFlip and token filters),
``config`` (the settings), ``state`` (the search state and checkpoints), ``budget`` (clock,
cost, stopping rules), ``move`` (the method boundary) and ``method`` (the registry), the
methods ``gcg`` and ``autoprompt``, ``engine`` (evaluation, best so far, restarts, the loop),
``best`` (the best so far, the kept triggers, the visited set), ``member`` (one model's
part) and ``joint`` (several models at once), ``record`` (identity, warnings, the result),
``run`` (a whole run: locks, resume, checkpoints, progress bar, the result file).
"""

from autoprompt_py.lazy import lazy_exports

# imported on first use (PEP 562), as the top-level package: the method registry and
# SearchConfig (the CLI's --method help) load without the engine, and so without torch
_EXPORTS = {
    "TokenFilters": "autoprompt_py.search.candidates",
    "VocabStrings": "autoprompt_py.search.candidates",
    "allowed_tokens": "autoprompt_py.search.candidates",
    "hotflip_candidates": "autoprompt_py.search.candidates",
    "read_stop_list": "autoprompt_py.search.candidates",
    "SearchConfig": "autoprompt_py.search.config",
    "TriggerSearch": "autoprompt_py.search.engine",
    "METHODS": "autoprompt_py.search.method",
    "register": "autoprompt_py.search.method",
    "Method": "autoprompt_py.search.move",
    "Move": "autoprompt_py.search.move",
    "SearchOutcome": "autoprompt_py.search.run",
    "run_search": "autoprompt_py.search.run",
    "trigger_ids_from_words": "autoprompt_py.search.run",
    "ClassificationObjective": "autoprompt_py.search.scorer",
    "Objective": "autoprompt_py.search.scorer",
    "RelationObjective": "autoprompt_py.search.scorer",
    "TriggerScorer": "autoprompt_py.search.scorer",
    "SearchState": "autoprompt_py.search.state",
    "load_checkpoint": "autoprompt_py.search.state",
    "save_checkpoint": "autoprompt_py.search.state",
    "SearchTask": "autoprompt_py.search.task",
    "load_task": "autoprompt_py.search.task",
    "SplitTensors": "autoprompt_py.search.tensors",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


__all__ = [  # noqa: F822 (resolved lazily by __getattr__)
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
