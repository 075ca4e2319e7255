"""autoprompt_py: discrete prompt search and scoring for masked language models.

The Python API that the ``autoprompt`` command is a thin layer over::

    from autoprompt_py import load_model, load_templates, load_verbalizer, read_examples
    lm = load_model()  # the bundled bert-tiny-splade; or a hub id, or a local folder
    results = score_templates(lm, load_templates("sst2"), read_examples("dev.tsv"),
                              load_verbalizer("sst2"))
"""

__version__ = "0.2.0"

import os  # noqa: E402

if "WORLD_SIZE" in os.environ:
    # under a launcher (torchrun, srun): torch's C++ retry logs and stack traces would bury the
    # one-line error of a failed rank; set TORCH_CPP_LOG_LEVEL=INFO to see them
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")

from autoprompt_py.calibration import calibrate  # noqa: E402
from autoprompt_py.data import Example, read_examples, read_facts  # noqa: E402
from autoprompt_py.ensemble import combine  # noqa: E402
from autoprompt_py.errors import AutopromptError  # noqa: E402
from autoprompt_py.evaluation import probe_relations, score_prompts, score_templates  # noqa: E402
from autoprompt_py.export import export_prompt  # noqa: E402
from autoprompt_py.labels import search_labels  # noqa: E402
from autoprompt_py.model import MaskedLM, load_model  # noqa: E402
from autoprompt_py.probing import probe_templates  # noqa: E402
from autoprompt_py.prompt import FoundPrompt  # noqa: E402
from autoprompt_py.resources import NamedTemplate, load_templates, load_verbalizer  # noqa: E402
from autoprompt_py.scoring import classify, probe_facts  # noqa: E402
from autoprompt_py.search import SearchConfig, load_task, run_search  # noqa: E402
from autoprompt_py.template import Template, parse_template  # noqa: E402
from autoprompt_py.verbalizer import Verbalizer  # noqa: E402
from autoprompt_py.vocab import read_vocab  # noqa: E402

__all__ = [
    "AutopromptError",
    "Example",
    "FoundPrompt",
    "MaskedLM",
    "NamedTemplate",
    "SearchConfig",
    "Template",
    "Verbalizer",
    "calibrate",
    "classify",
    "combine",
    "export_prompt",
    "load_model",
    "load_task",
    "load_templates",
    "load_verbalizer",
    "parse_template",
    "probe_facts",
    "probe_relations",
    "probe_templates",
    "read_examples",
    "read_facts",
    "read_vocab",
    "run_search",
    "score_prompts",
    "score_templates",
    "search_labels",
]
