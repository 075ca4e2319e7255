"""autoprompt_py: prompt search, scoring, tuning and prediction for masked LMs and decoders.

The Python API that the ``autoprompt`` command is a thin layer over::

    from autoprompt_py import load_model, load_templates, load_verbalizer, read_examples
    lm = load_model()  # the bundled bert-tiny-splade; or a hub id, or a local folder
    results = score_templates(lm, load_templates("sst2"), read_examples("dev.tsv"),
                              load_verbalizer("sst2"))
"""

import os

from autoprompt_py._version import __version__
from autoprompt_py.lazy import lazy_exports

if "WORLD_SIZE" in os.environ:
    # under a launcher (torchrun, srun): torch's C++ retry logs and stack traces would bury the
    # one-line error of a failed rank; set TORCH_CPP_LOG_LEVEL=INFO to see them
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")

# The public API, imported on first use (PEP 562): ``import autoprompt_py`` and the CLI's
# ``--help`` stay fast because torch and transformers load only when something needs them.
# One line per name: where it lives.
_EXPORTS = {
    "calibrate": "autoprompt_py.calibration",
    "Example": "autoprompt_py.data",
    "read_examples": "autoprompt_py.data",
    "read_facts": "autoprompt_py.data",
    "combine": "autoprompt_py.ensemble",
    "AutopromptError": "autoprompt_py.errors",
    "probe_relations": "autoprompt_py.probing",
    "score_prompts": "autoprompt_py.evaluation",
    "score_templates": "autoprompt_py.evaluation",
    "export_prompt": "autoprompt_py.export",
    "search_labels": "autoprompt_py.labels",
    "LanguageModel": "autoprompt_py.language_model",
    "MaskedLM": "autoprompt_py.model",
    "CausalLM": "autoprompt_py.causal_model",
    "load_model": "autoprompt_py.model",
    "PredictConfig": "autoprompt_py.prediction.config",
    "predict": "autoprompt_py.prediction.models",
    "write_predictions": "autoprompt_py.prediction.output",
    "probe_templates": "autoprompt_py.probing",
    "probe_record": "autoprompt_py.probing",
    "FoundPrompt": "autoprompt_py.prompt",
    "NamedTemplate": "autoprompt_py.resources",
    "load_templates": "autoprompt_py.resources",
    "load_verbalizer": "autoprompt_py.resources",
    "classify": "autoprompt_py.scoring",
    "probe_facts": "autoprompt_py.scoring",
    "SearchConfig": "autoprompt_py.search",
    "load_task": "autoprompt_py.search",
    "run_search": "autoprompt_py.search",
    "Template": "autoprompt_py.template",
    "Chat": "autoprompt_py.template",
    "TuneConfig": "autoprompt_py.tune",
    "load_tune_task": "autoprompt_py.tune",
    "tune": "autoprompt_py.tune",
    "parse_template": "autoprompt_py.template",
    "Verbalizer": "autoprompt_py.verbalizer",
    "read_vocab": "autoprompt_py.vocab",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


__all__ = [  # noqa: F822 (resolved lazily by __getattr__)
    "__version__",
    "AutopromptError",
    "CausalLM",
    "Chat",
    "Example",
    "FoundPrompt",
    "LanguageModel",
    "MaskedLM",
    "NamedTemplate",
    "PredictConfig",
    "SearchConfig",
    "Template",
    "TuneConfig",
    "Verbalizer",
    "calibrate",
    "classify",
    "combine",
    "export_prompt",
    "load_model",
    "load_task",
    "load_templates",
    "load_tune_task",
    "load_verbalizer",
    "parse_template",
    "predict",
    "probe_facts",
    "probe_record",
    "probe_relations",
    "probe_templates",
    "read_examples",
    "read_facts",
    "read_vocab",
    "run_search",
    "score_prompts",
    "score_templates",
    "search_labels",
    "tune",
    "write_predictions",
]
