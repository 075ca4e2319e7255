"""``search --keep N`` (the N best distinct triggers on dev) and the visited set (a trigger
evaluated on dev once is never evaluated again): neither changes a plain search's result
(the golden files check that byte for byte); the kept triggers re-score to their figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_search import SST, TEMPLATE
from test_search_cli import files, invoke, search_args  # noqa: F401 (the fixture)

from autoprompt_py.errors import AutopromptError
from autoprompt_py.model import load_model
from autoprompt_py.search import SearchConfig, TriggerSearch, load_task
from autoprompt_py.search.gcg import sample_candidates
from autoprompt_py.search.method import METHODS, register
from autoprompt_py.search.move import Move


def test_keep_3_gives_3_distinct_triggers_by_dev_metric_each_rescoring_to_its_figure(
    files,  # noqa: F811
    tmp_path,
):
    out = tmp_path / "kept.json"
    r = invoke(*search_args(files, out, "--keep", "3", "--method", "gcg", "--seed", "3"))
    assert r.exit_code == 0, r.stderr
    result = json.loads(out.read_text())
    kept = result["kept"]
    assert len(kept) == 3 and result["config"]["keep"] == 3
    ids = [tuple(k["trigger"]["ids"]) for k in kept]
    assert len(set(ids)) == 3
    assert kept[0]["trigger"] == result["trigger"] and kept[0]["dev"] == result["dev"]
    order = [(-k["dev"]["accuracy"], k["dev"]["loss"]) for k in kept]
    assert order == sorted(order)
    assert all(k["prompt"].startswith("{sentence} ") for k in kept)
    scored = tmp_path / "score.json"
    r = invoke(
        "score",
        "--model",
        files["bert"],
        "--device",
        "cpu",
        "--data",
        files["dev.tsv"],
        "--template",
        out,
        "--verbalizer",
        "sst2",
        "--bootstrap",
        "10",
        "--output",
        scored,
    )
    assert r.exit_code == 0, r.stderr
    rows = {t["name"]: t for t in json.loads(scored.read_text())["templates"]}
    assert sorted(rows) == ["kept:1", "kept:2", "kept:3"]
    for rank, k in enumerate(kept, 1):
        assert rows[f"kept:{rank}"]["accuracy"] == pytest.approx(k["dev"]["accuracy"])


def test_keep_1_writes_no_kept_list_and_other_commands_take_the_best(files, tmp_path):  # noqa: F811
    out = tmp_path / "one.json"
    assert invoke(*search_args(files, out)).exit_code == 0
    assert "kept" not in json.loads(out.read_text())
    from autoprompt_py.resources import load_templates

    assert [t.name for t in load_templates(str(out), kept=True)] == ["one"]
    several = tmp_path / "several.json"
    assert invoke(*search_args(files, several, "--keep", "2")).exit_code == 0
    best = load_templates(str(several))  # search, tune, predict, labels: the best
    assert [t.name for t in best] == ["several"]
    assert best[0].template.trigger_ids == json.loads(several.read_text())["trigger"]["ids"]


def test_keep_must_be_a_whole_number_from_1():
    with pytest.raises(AutopromptError, match="--keep 0"):
        SearchConfig(keep=0)


class BackAndForth:
    """Flips slot 0 between two tokens: every trigger after the second is one seen before."""

    name = "back-and-forth"
    help = "slot 0 between two tokens"
    options = ()
    accumulation = {"classification": 1, "relation": 1}

    def check(self, config, slots: int) -> None:
        pass

    def prepare(self, search) -> None:
        pass

    def propose(self, search, state, rng: np.random.Generator) -> Move:
        pool = np.flatnonzero(search.allowed.cpu().numpy())
        first = state.method_state.get("first", state.trigger[0])
        trigger = list(state.trigger)
        other = int(pool[0]) if int(pool[0]) != first else int(pool[1])
        trigger[0] = other if trigger[0] == first else first
        return Move(trigger, True, 0.0, {}, {"first": first})


@pytest.fixture
def back_and_forth():
    method = register(BackAndForth())
    yield method
    del METHODS[method.name]


def _run(lm, task, visited: bool, monkeypatch) -> tuple[dict, int]:
    search = TriggerSearch(lm, task, SearchConfig(method="back-and-forth", iters=6, seed=1))
    if not visited:
        monkeypatch.setattr(search.best, "known", lambda state, trigger, evaluate: None)
    calls = []
    evaluate = search.evaluate
    monkeypatch.setattr(
        search, "evaluate", lambda split, *a, **k: calls.append(split) or evaluate(split, *a, **k)
    )
    state = search.run(search.start())
    return state, sum(split is search.dev for split in calls)


def test_the_visited_set_skips_dev_evaluations_and_changes_nothing_else(
    back_and_forth, tmp_path, tiny_model_dirs, monkeypatch
):
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in SST))
    lm = load_model(str(tiny_model_dirs["bert"]), "cpu")
    task = load_task(TEMPLATE, train, train, "sst2")
    with_set, evaluations = _run(lm, task, True, monkeypatch)
    without, all_evaluations = _run(lm, task, False, monkeypatch)
    # without: the initial trigger and 6 moves; with: 2 triggers (and a re-evaluation where a
    # visited trigger ties the best but for the rounding of the mean loss)
    assert evaluations < all_evaluations == 7
    assert len(with_set.visited) == 2
    for field in ("best_trigger", "best_dev", "best_dev_metrics", "history", "restarts"):
        assert getattr(with_set, field) == getattr(without, field), field
    assert [p[2] for p in with_set.curve] == [p[2] for p in without.curve]
    passes = with_set.cost["forward_passes"], without.cost["forward_passes"]
    assert passes[0] < passes[1]


def test_duplicate_candidates_of_a_step_are_scored_once():
    rng = np.random.default_rng(0)
    top = np.array([[5, 6], [7, 8]])  # 2 slots × 2 tokens: at most 4 distinct flips
    out = sample_candidates(np.array([1, 2]), top, 64, 1, rng)
    assert len(out) == len({tuple(c) for c in out}) == 4
    assert not any((c == [1, 2]).all() for c in out)  # nor the current trigger
