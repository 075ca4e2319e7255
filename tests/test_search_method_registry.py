"""A search method from outside the package: one class that follows ``method.Method``, one
``register`` call, then ``SearchConfig(method=...)`` and ``run_search`` run it end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_search import SST, TEMPLATE

from autoprompt_py.errors import AutopromptError
from autoprompt_py.model import load_model
from autoprompt_py.search import SearchConfig, load_task, run_search
from autoprompt_py.search.method import METHODS, register
from autoprompt_py.search.move import Move


class RandomFlips:
    """Each step writes a random allowed token into a random slot; keeps a step counter as
    its own state (in the checkpoint's ``method_state``)."""

    name = "random-flips"
    help = "a random allowed token in a random slot, kept whatever its loss"
    options = ("n_replace",)
    accumulation = {"classification": 1, "relation": 1}

    def check(self, config, slots: int) -> None:
        if config.n_replace != 1:
            raise AutopromptError("--n-replace: random-flips changes one slot")

    def prepare(self, search) -> None:
        pass

    def propose(self, search, state, rng: np.random.Generator) -> Move:
        pool = np.flatnonzero(search.allowed.cpu().numpy())
        trigger = list(state.trigger)
        trigger[int(rng.integers(len(trigger)))] = int(rng.choice(pool))
        grad_batches, rows = search.sample(rng)
        loss = search.scorer.trigger_losses(search.train, rows, search.ids(trigger)[None])
        steps = state.method_state.get("steps", 0) + 1
        return Move(trigger, True, float(loss[0]) / len(rows), {"flip": steps}, {"steps": steps})


@pytest.fixture
def toy():
    method = register(RandomFlips())
    yield method
    del METHODS[method.name]


def test_a_method_registered_from_outside_runs_end_to_end(toy, tmp_path, tiny_model_dirs):
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in SST))
    lm = load_model(str(tiny_model_dirs["bert"]), "cpu")
    task = load_task(TEMPLATE, train, train, "sst2")
    config = SearchConfig(method="random-flips", iters=3, batch_size=4, seed=2)
    out = tmp_path / "r.json"
    outcome = run_search(lm, task, config, output=out, progress=False)
    result = json.loads(out.read_text())
    assert result["method"] == "random-flips" and result["iterations"] == 3
    assert [h["flip"] for h in result["history"]] == [1, 2, 3]
    assert outcome.state.method_state == {"steps": 3}
    assert result["config"]["accumulation_steps"] == 1  # the method's default for the mode
    checkpoint = json.loads((tmp_path / "r.json.ckpt").read_text())
    assert checkpoint["state"]["method_state"] == {"steps": 3}
    assert checkpoint["identity"]["config"]["n_replace"] == 1  # the method's identity key
    with pytest.raises(AutopromptError, match="random-flips changes one slot"):
        SearchConfig(method="random-flips", n_replace=2).check_slots(2)


def test_an_unregistered_method_is_refused_with_the_registered_names():
    with pytest.raises(AutopromptError, match="use one of gcg, autoprompt"):
        SearchConfig(method="random-flips")


def test_run_search_sizes_auto_batches_and_locks_its_files(tmp_path, tiny_model_dirs):
    """What the CLI used to do itself is the API's: ``max_batch_tokens="auto"``, the
    checkpoint default and the output lock."""
    from autoprompt_py.memory import CPU_TOKENS
    from autoprompt_py.search.run import default_checkpoint

    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in SST))
    lm = load_model(str(tiny_model_dirs["bert"]), "cpu")
    task = load_task(TEMPLATE, train, train, "sst2")
    out = tmp_path / "r.json"
    assert default_checkpoint(out) == tmp_path / "r.json.ckpt"
    seen = []

    def look(state, entry):
        seen.append(sorted(p.name for p in tmp_path.glob("*.lock")))

    config = SearchConfig(iters=1, batch_size=4, search_width=4, max_batch_tokens="auto")
    result = run_search(lm, task, config, output=out, progress=False, on_iteration=look).result
    assert result["config"]["max_batch_tokens"] == CPU_TOKENS
    assert seen == [["r.json.ckpt.lock", "r.json.lock"]]
    assert not list(tmp_path.glob("*.lock"))  # released at the end
    with pytest.raises(AutopromptError, match="--max-batch-tokens 0"):
        SearchConfig(max_batch_tokens=0)
