"""The search's encoded splits: train rows are encoded when a step first asks for them, and a
lazily encoded split gives exactly the batches of one encoded at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_search import SST, TEMPLATE, data, lms, task_of  # noqa: F401  (fixtures)
from tiny_models import FAMILIES

from autoprompt_py.data import Example
from autoprompt_py.errors import AutopromptError
from autoprompt_py.search import SearchConfig, TriggerSearch, run_search
from autoprompt_py.search.tensors import SplitTensors
from autoprompt_py.template import parse_template

LONG = [Example({"sentence": " ".join(["word"] * n)}, "1") for n in (1, 40, 3, 90, 7, 2)]


def _split(lm, template: str, lazy: bool) -> SplitTensors:
    return SplitTensors(parse_template(template), lm, LONG, [1] * len(LONG), [1, 2], lazy, 64)


@pytest.mark.parametrize("family", FAMILIES)
def test_lazy_rows_give_the_batches_of_eager_ones(family, lms):  # noqa: F811
    lm = lms[family]
    eager, lazy = _split(lm, TEMPLATE, False), _split(lm, TEMPLATE, True)
    assert lazy.encoded == 0 and eager.encoded == len(LONG)
    # short rows first, so that the storage widens (and keeps its rows) when row 3 arrives
    for index in ([0, 4], [2, 0], [3, 1, 5], [5, 4, 3, 2, 1, 0]):
        a, b = eager.batch(np.array(index)), lazy.batch(np.array(index))
        assert a.keys() == b.keys() == {1, 2}
        for k in a:
            for field in ("input_ids", "attention_mask", "token_type_ids", "trigger_positions"):
                assert torch.equal(getattr(a[k], field), getattr(b[k], field)), (index, field)
            assert torch.equal(a[k].mask_positions, b[k].mask_positions)
    assert lazy.encoded == len(LONG)
    assert np.array_equal(lazy.lengths, eager.lengths)
    assert lazy.truncated == eager.truncated >= 1  # the 90-word row at least, cut to 64


def test_a_fixed_field_is_encoded_at_once(lms):  # noqa: F811
    # a {field:fixed} row may not fit whatever is cut: that error must come at the start
    lm = lms[FAMILIES[0]]
    with pytest.raises(AutopromptError, match="even with its shortenable fields emptied"):
        _split(lm, "{sentence:fixed} [T] [P] .", True)
    short = SplitTensors(
        parse_template("{sentence:fixed} [T] [P] ."), lm, LONG[:1], [1], [1], lazy=True,
        max_length=64,
    )  # fmt: skip
    assert short.encoded == 1


def test_rows_asked_for_inside_inference_mode_stay_usable_for_gradients(lms, data):  # noqa: F811
    lm = lms[FAMILIES[0]]
    search = TriggerSearch(lm, task_of(data), SearchConfig(batch_size=4))
    trigger = torch.tensor([5, 6, 7])
    search.scorer.trigger_losses(search.train, np.array([0, 1]), trigger[None])  # inference
    grad = search.scorer.gradient(search.train, [np.array([0, 1, 2])], trigger)
    assert grad.shape[0] == 3 and torch.isfinite(grad).all()


def test_a_search_encodes_only_the_rows_it_samples(lms, data, tmp_path):  # noqa: F811
    lm = lms[FAMILIES[0]]
    task = task_of(data)
    config = SearchConfig(iters=0, train_eval_limit=5, seed=0)
    search = TriggerSearch(lm, task, config)
    assert search.train.encoded == 0 and search.dev.encoded == len(search.dev)
    result = run_search(lm, task, config, output=tmp_path / "r.json", progress=False).result
    assert result["data"]["train"] == {
        "source": str(data["train"]),
        "n": len(SST),
        "truncated": 0,
        "encoded": 5,  # the train metrics' sample, nothing else
    }
    assert "encoded" not in result["data"]["dev"]  # dev is encoded whole
