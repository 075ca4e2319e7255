"""The search methods over the shared engine: GCG's moves, restarts, special tokens, budgets,
cost records and the settings' checks (tiny models; the mechanics, not the quality)."""

from __future__ import annotations

import dataclasses
import json
import time

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_search import FACTS, SST, TEMPLATE

from autoprompt_py.cli import main
from autoprompt_py.cli.search import search_command
from autoprompt_py.errors import AutopromptError
from autoprompt_py.model import load_model
from autoprompt_py.search import (
    SearchConfig,
    TriggerScorer,
    TriggerSearch,
    load_task,
    record,
    run_search,
)
from autoprompt_py.search.fluency import TriggerFluency
from autoprompt_py.search.gcg import sample_candidates

GCG = dict(method="gcg", iters=4, search_width=8, topk=4, batch_size=4, accumulation_steps=2)
AUTOPROMPT = dict(method="autoprompt", iters=4, num_cand=4, batch_size=4, accumulation_steps=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    train, dev, facts = root / "train.tsv", root / "dev.tsv", root / "P19.jsonl"
    train.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in SST))
    dev.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in SST[::2]))
    facts.write_text("".join(json.dumps({"sub_label": s, "obj_label": o}) + "\n" for s, o in FACTS))
    return {"train": train, "dev": dev, "facts": facts}


@pytest.fixture(scope="module")
def lm(tiny_model_dirs):
    return load_model(str(tiny_model_dirs["bert"]), "cpu")


@pytest.fixture(scope="module")
def task(data):
    return load_task(TEMPLATE, data["train"], data["dev"], "sst2")


def mask_ids(lm, n=3):
    return [lm.tokenizer.mask_token_id] * n


# --------------------------------------------------------------------------------------------
# GCG
# --------------------------------------------------------------------------------------------


def test_candidates_change_n_replace_slots_and_are_distinct():
    rng = np.random.default_rng(0)
    current = np.array([1, 2, 3, 4])
    top = np.arange(100, 140).reshape(4, 10)
    for n_replace in (1, 2, 4):
        cands = sample_candidates(current, top, 64, n_replace, rng)
        assert len(np.unique(cands, axis=0)) == len(cands) > 0
        changed = (cands != current).sum(1)
        assert (changed == n_replace).all()
        for slot in range(4):  # a changed slot holds one of its own top-k
            moved = cands[:, slot] != current[slot]
            assert np.isin(cands[moved, slot], top[slot]).all()
    forced = sample_candidates(current, top, 16, 1, rng, always=[0, 2])
    assert (forced[:, 0] != 1).all() and (forced[:, 2] != 3).all()


def test_gcg_moves_to_a_worse_candidate_and_keeps_the_best(lm, task, monkeypatch):
    """All candidates lose to the current trigger on the candidate rows, and every dev metric
    after the start is lower: GCG still moves, and the best so far stays the start."""
    search = TriggerSearch(lm, task, SearchConfig(**GCG))
    state = search.start()
    start, start_dev = list(state.trigger), state.best_dev

    def worse(self, split, index, triggers, count_hits=False):
        losses = torch.full((len(triggers),), 10.0 * len(index))
        losses[0] = 1.0  # the current trigger (row 0) is the best by far
        return losses

    original = TriggerSearch.evaluate
    calls = {"n": 0}

    def lower_dev(self, split, trigger, index=None):
        calls["n"] += 1
        scored = original(self, split, trigger, index)
        return dataclasses.replace(scored, metric=start_dev - 0.1 * calls["n"])

    monkeypatch.setattr(TriggerScorer, "trigger_losses", worse)
    monkeypatch.setattr(TriggerSearch, "evaluate", lower_dev)
    for _ in range(3):
        before = list(state.trigger)
        entry = search.step(state)
        assert entry["worse"] and entry["moved"] and state.trigger != before
        assert entry["train_loss"] == pytest.approx(10.0)
    assert state.best_trigger == start and state.best_dev == start_dev
    assert [p[2] for p in state.curve] == [start_dev] * 4


def test_gcg_buffer_steps_from_the_best_seen(lm, task, monkeypatch):
    search = TriggerSearch(lm, task, SearchConfig(**{**GCG, "buffer_size": 2}))
    state = search.start()
    start = list(state.trigger)

    def worse(self, split, index, triggers, count_hits=False):
        losses = torch.full((len(triggers),), 10.0 * len(index))
        losses[0] = 1.0
        return losses

    monkeypatch.setattr(TriggerScorer, "trigger_losses", worse)
    for _ in range(3):
        search.step(state)
        # the buffer's best is still the start, so every step starts from it
        assert state.trigger == start and state.method_state["buffer"][0][1] == start
        assert len(state.method_state["buffer"]) == 2


def test_gcg_search_runs_and_records_its_cost(lm, task, tmp_path):
    out = tmp_path / "gcg.json"
    result = run_search(lm, task, SearchConfig(**GCG), output=out, progress=False).result
    assert result["method"] == "gcg" and result["config"]["method"] == "gcg"
    cost = result["cost"]
    for key in ("seconds", "forward_passes", "forward_calls", "backward_passes"):
        assert cost[key] > 0, key
    n_train, n_dev = len(SST), len(SST[::2])
    # per iteration: 8 rows of gradient, ≤ 1 + 8 candidates on 8 rows, then dev
    assert cost["backward_passes"] == 4 * 8
    assert cost["candidate_evaluations"] <= 4 * 9
    assert cost["forward_passes"] == (
        n_dev + 4 * (8 + n_dev) + 8 * cost["candidate_evaluations"]
    ), n_train
    curve = result["curve"]
    assert len(curve) == 5 and curve[0][1] == n_dev
    assert [p[1] for p in curve] == sorted(p[1] for p in curve)
    assert curve[-1][2] == result["dev"]["accuracy"]
    assert result["restarts"] == [
        {
            "restart": 0,
            "initial": result["initial"]["trigger"]["words"],
            "trigger": result["trigger"],
            "dev": result["dev"]["accuracy"],
            "iterations": 4,
        }
    ]
    assert result["unreplaced_slots"] == [] and result["warnings"] == []


# --------------------------------------------------------------------------------------------
# restarts, special tokens, budgets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [GCG, AUTOPROMPT], ids=["gcg", "autoprompt"])
def test_restarts_keep_the_best(lm, task, settings):
    config = SearchConfig(**{**settings, "iters": 2, "restarts": 3})
    result = run_search(lm, task, config, progress=False).result
    restarts = result["restarts"]
    assert [r["restart"] for r in restarts] == [0, 1, 2]
    assert all(r["iterations"] == 2 for r in restarts) and result["iterations"] == 6
    assert len({tuple(r["initial"]) for r in restarts}) == 3
    best = max(restarts, key=lambda r: r["dev"])
    assert result["dev"]["accuracy"] == best["dev"]
    winners = [r["trigger"] for r in restarts if r["dev"] == best["dev"]]
    assert result["trigger"] in winners
    assert [h["restart"] for h in result["history"]] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("settings", [GCG, AUTOPROMPT], ids=["gcg", "autoprompt"])
@pytest.mark.parametrize("mode", ["classification", "relation"])
def test_no_special_token_survives(lm, data, settings, mode):
    if mode == "relation":
        task = load_task("[X] [T] [T] [T] [Y] .", data["facts"], None, None)
    else:
        task = load_task(TEMPLATE, data["train"], data["dev"], "sst2")
    search = TriggerSearch(lm, task, SearchConfig(**{**settings, "iters": 3}))
    state = search.run(search.start(mask_ids(lm)))
    assert search.special_slots(state.best_trigger) == []
    assert all(search.allowed[i] for i in state.best_trigger)
    assert state.curve[0][2] is None  # the [MASK] start is never a best
    result = record.result(search, state, {}, train=False)
    assert result["unreplaced_slots"] == [] and "[MASK]" not in result["prompt"]


def test_accumulation_default_depends_on_method_and_mode(lm, data, task):
    relation = load_task("[X] [T] [T] [T] [Y] .", data["facts"], None, None)
    assert SearchConfig().accumulation_steps is None  # filled in once the task is known
    for method, on_sst2, on_facts in (("gcg", 6, 2), ("autoprompt", 10, 10)):
        config = SearchConfig(method=method)
        assert TriggerSearch(lm, task, config).config.accumulation_steps == on_sst2
        assert TriggerSearch(lm, relation, config).config.accumulation_steps == on_facts
        # reconfigure fills it in too, and a value given is kept in both modes
        assert TriggerSearch(lm, task).reconfigure(config).config.accumulation_steps == on_sst2
        given = SearchConfig(method=method, accumulation_steps=3)
        assert TriggerSearch(lm, relation, given).config.accumulation_steps == 3
    # the checkpoint identity and the result record the filled-in value
    outcome = run_search(lm, relation, SearchConfig(iters=1, batch_size=2), progress=False)
    assert outcome.result["config"]["accumulation_steps"] == 2


def test_a_slot_never_replaced_is_reported(lm, task, caplog):
    search = TriggerSearch(lm, task, SearchConfig(**{**AUTOPROMPT, "iters": 2}))
    state = search.run(search.start(mask_ids(lm)))  # 2 flips for 3 masks
    result = record.result(search, state, {}, train=False)
    assert len(result["unreplaced_slots"]) == 1
    assert "still hold a special token" in result["warnings"][0]
    assert "still hold a special token" in caplog.text
    assert result["trigger"]["ids"] == state.trigger
    assert result["dev"] == search.metrics(search.dev, state.trigger)


def _record(into: list, what: str):
    def on_iteration(state, entry):
        into.append(state.seconds if what == "seconds" else state.cost["forward_passes"])

    return on_iteration


def test_time_budget_stops_within_one_iteration(lm, task, monkeypatch):
    original = TriggerScorer.gradient

    def slow(self, *args, **kwargs):
        time.sleep(0.15)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TriggerScorer, "gradient", slow)
    for settings in (GCG, AUTOPROMPT):
        config = SearchConfig(**{**settings, "iters": 1000, "time_budget": 0.6, "restarts": 2})
        search = TriggerSearch(lm, task, config)
        ends: list[float] = []
        state = search.run(search.start(), on_iteration=_record(ends, "seconds"))
        # the iteration running when the budget ran out was dropped inside it
        assert state.stopped == "budget" and state.seconds >= 0.6 > ends[-1]
        assert [r["restart"] for r in state.restarts] == [0, 1]
        first = state.restarts[0]["iterations"]
        assert first == 0 or ends[first - 1] < 0.3


def test_forward_pass_budget_and_too_small_a_budget(lm, task, tmp_path):
    config = SearchConfig(**{**GCG, "iters": 1000, "max_forward_passes": 200})
    search = TriggerSearch(lm, task, config)
    passes: list[int] = []
    state = search.run(search.start(), on_iteration=_record(passes, "passes"))
    assert passes[-1] < 200 <= state.cost["forward_passes"]

    out = tmp_path / "tiny.json"
    config = SearchConfig(**{**GCG, "time_budget": 1e-9})
    result = run_search(lm, task, config, output=out, progress=False).result
    assert result["iterations"] == 0 and result["stopped"] == "budget"
    assert result["warnings"] == [
        "the budget allowed no iteration; the result is the initial trigger"
    ]
    assert result["trigger"] == result["initial"]["trigger"]
    assert json.loads(out.read_text())["trigger"] == result["trigger"]


@pytest.mark.parametrize("settings", [GCG, AUTOPROMPT])
@pytest.mark.parametrize("budget", [150, 400, 700])
def test_a_forward_pass_budget_holds_within_one_model_chunk(lm, task, settings, budget):
    """Passes are deterministic: the overshoot is bounded by one chunk of rows (the candidate
    scoring's or the dev evaluation's), checked inside the iteration."""
    config = SearchConfig(
        **{**settings, "iters": 1000, "max_forward_passes": budget, "max_rows": 16}
    )
    outcome = run_search(lm, task, config, progress=False)
    result = outcome.result
    over = result["budget_overshoot"]
    assert result["stopped"] == "budget" and over["seconds"] is None
    assert over["forward_passes"] == result["cost"]["forward_passes"] - budget >= 0
    views = len(TriggerSearch(lm, task, config).train.views)
    assert over["forward_passes"] <= 16 * views  # one chunk: max_rows rows in every view
    history = result["history"]
    assert history and result["iterations"] == len(history)
    # the iteration after the last one recorded would have passed the budget
    without = SearchConfig(**{**settings, "iters": len(history) + 1, "max_rows": 16})
    longer = run_search(lm, task, without, progress=False).result
    assert longer["cost"]["forward_passes"] > budget
    assert longer["history"][: len(history)] == history  # the same search, cut earlier


def test_ctrl_c_in_the_first_iteration_is_an_interrupt_not_a_budget_stop(lm, task, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(TriggerScorer, "gradient", interrupted)
    config = SearchConfig(**{**GCG, "time_budget": 60.0})
    outcome = run_search(lm, task, config, progress=False)
    result = outcome.result
    assert outcome.interrupted and result["stopped"] == "interrupted"
    assert result["iterations"] == 0
    assert result["warnings"] == [
        "interrupted before the first iteration ended; the result is the initial trigger"
    ]


def test_resume_refuses_another_method_and_extends_a_finished_run(lm, task, tmp_path):
    out = tmp_path / "r.json"
    run_search(lm, task, SearchConfig(**{**GCG, "iters": 2}), output=out, progress=False)
    for other in ({**GCG, "method": "autoprompt"}, {**GCG, "search_width": 4}):
        with pytest.raises(AutopromptError, match="another search settings"):
            run_search(lm, task, SearchConfig(**other), output=out, resume=True, progress=False)
    full = run_search(lm, task, SearchConfig(**GCG), progress=False).result
    resumed = run_search(
        lm, task, SearchConfig(**GCG), output=out, resume=True, progress=False
    ).result
    assert resumed["history"] == full["history"] and resumed["trigger"] == full["trigger"]
    assert resumed["cost"]["forward_passes"] == full["cost"]["forward_passes"]
    assert resumed["restarts"] == full["restarts"]


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings,fragment",
    [
        (dict(search_width=0), "--search-width 0: must be a whole number ≥ 1"),
        (dict(topk=-1), "--topk -1: must be a whole number ≥ 1"),
        (dict(n_replace=0), "--n-replace 0: must be a whole number ≥ 1"),
        (dict(restarts=0), "--restarts 0: must be a whole number ≥ 1"),
        (dict(buffer_size=-2), "--buffer-size -2: must be a whole number ≥ 0"),
        (dict(time_budget=0), "--time-budget 0: must be a number of seconds > 0"),
        (dict(time_budget=-5.0), "--time-budget -5.0"),
        (dict(max_forward_passes=0), "--max-forward-passes 0"),
        (dict(fluency=-0.5), "--fluency -0.5: must be a weight ≥ 0"),
        (dict(method="beam"), "--method 'beam': use one of gcg, autoprompt"),
    ],
)
def test_config_errors(settings, fragment):
    with pytest.raises(AutopromptError) as e:
        SearchConfig(**settings)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_n_replace_beyond_the_slots():
    with pytest.raises(AutopromptError, match=r"--n-replace 4: must be between 1 and the number"):
        SearchConfig(n_replace=4).check_slots(3)
    SearchConfig(n_replace=3).check_slots(3)
    SearchConfig(method="autoprompt", n_replace=4).check_slots(3)  # autoprompt ignores it


def test_cli_defaults_are_the_config_defaults():
    defaults = SearchConfig()
    params = {p.name: p for p in search_command.params if isinstance(p, click.Option)}
    for f in dataclasses.fields(SearchConfig):
        if f.name in params and f.name not in ("accumulation_steps", "batch_size"):
            assert params[f.name].default == getattr(defaults, f.name), f.name
    assert params["accumulation_steps"].default is None
    # every setting is a search option (max_rows only in the API)
    assert {f.name for f in dataclasses.fields(SearchConfig)} - set(params) == {"max_rows"}


@pytest.mark.parametrize(
    "option,value,fragment",
    [
        ("--search-width", "0", "--search-width 0: must be"),
        ("--n-replace", "-1", "--n-replace -1: must be"),
        (
            "--n-replace",
            "5",
            "--n-replace 5: must be between 1 and the number of trigger slots (3)",
        ),
        ("--topk", "0", "--topk 0"),
        ("--restarts", "0", "--restarts 0"),
        ("--buffer-size", "-1", "--buffer-size -1"),
        ("--time-budget", "0", "--time-budget 0"),
        ("--time-budget", "-3", "--time-budget -3"),
        ("--max-forward-passes", "0", "--max-forward-passes 0"),
        ("--fluency", "-1", "--fluency -1"),
    ],
)
def test_cli_option_errors_come_before_the_model(data, tmp_path, option, value, fragment):
    out = tmp_path / "r.json"
    args = ["search", "--model", str(tmp_path / "no-such-model"), "--train", data["train"]]
    args += ["--dev", data["dev"], "--template", TEMPLATE, "--verbalizer", "sst2"]
    args += ["--output", out, "--quiet", option, value]
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert not out.exists() and not (tmp_path / "r.json.ckpt").exists()


def test_cli_gcg_with_restarts_and_budget(data, tiny_model_dirs, tmp_path):
    out = tmp_path / "r.json"
    args = ["search", "--model", tiny_model_dirs["bert"], "--device", "cpu"]
    args += ["--train", data["train"], "--dev", data["dev"], "--template", TEMPLATE]
    args += ["--verbalizer", "sst2", "--output", out, "--quiet", "--batch-size", "4"]
    args += ["--search-width", "8", "--topk", "4", "--n-replace", "2", "--restarts", "2"]
    args += ["--iters", "2", "--buffer-size", "2", "--max-forward-passes", "100000"]
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["method"] == "gcg" and len(result["restarts"]) == 2
    assert result["config"]["n_replace"] == 2 and result["config"]["buffer_size"] == 2
    assert result["config"]["accumulation_steps"] == 6
    assert "gcg" in r.stdout and "forward passes" in r.stdout


@pytest.mark.parametrize("settings", [GCG, AUTOPROMPT], ids=["gcg", "autoprompt"])
def test_fluency_weight_steers_the_selection_and_counts_its_passes(lm, task, settings):
    plain = run_search(lm, task, SearchConfig(**settings), progress=False).result
    fluent = run_search(lm, task, SearchConfig(**settings, fluency=1.0), progress=False).result
    search = TriggerSearch(lm, task, SearchConfig(**settings))
    for result in (plain, fluent):
        ids = result["trigger"]["ids"]
        assert result["pseudo_perplexity"] == pytest.approx(search.fluency.perplexity(ids))
    # the fluency rows are counted: L = 3 rows per candidate scored, in extra model calls
    assert fluent["cost"]["forward_passes"] - plain["cost"]["forward_passes"] != 0
    assert fluent["cost"]["forward_calls"] > plain["cost"]["forward_calls"]


def test_fluency_weight_trades_loss_for_the_pll(lm, task, monkeypatch):
    """With a PLL that prefers low token ids, a large weight picks low-id candidates."""

    def low_ids(self, triggers):
        self.forward_passes += triggers.numel()
        return -torch.as_tensor(triggers).float().sum(-1)

    monkeypatch.setattr(TriggerFluency, "pll", low_ids)
    plain = run_search(lm, task, SearchConfig(**GCG), progress=False).result
    fluent = run_search(lm, task, SearchConfig(**GCG, fluency=10.0), progress=False).result
    mean_id = [np.mean([h["trigger"] for h in r["history"]]) for r in (plain, fluent)]
    assert mean_id[1] < mean_id[0]


def test_objective_among_labels_is_the_cross_entropy_over_label_scores(lm, task):
    vocab = TriggerSearch(lm, task, SearchConfig(**GCG, objective="vocab"))
    labels = TriggerSearch(lm, task, SearchConfig(**GCG, objective="labels"))
    trigger = [int(i) for i in torch.nonzero(vocab.allowed).squeeze(1)[:3]]
    a, b = vocab.evaluate(vocab.dev, trigger), labels.evaluate(labels.dev, trigger)
    assert a.metric == b.metric and torch.equal(a.outcome, b.outcome)
    # two labels: -log softmax(label log-probs)[gold] = vocab loss + logsumexp(label
    # log-probs), smaller (the labels' probabilities sum below 1), below log 2 iff right
    assert (b.loss < a.loss).all() and (b.loss > 0).all()
    assert torch.equal(b.loss < np.log(2), a.outcome == a.gold)
    # the same search reconfigured (as compare_methods.py does) scores as a fresh one
    again = vocab.reconfigure(SearchConfig(**GCG, objective="labels"))
    assert torch.equal(again.evaluate(again.dev, trigger).loss, b.loss)
    assert torch.equal(vocab.evaluate(vocab.dev, trigger).loss, a.loss)


def test_resume_across_restarts(lm, task, tmp_path):
    config = SearchConfig(**{**GCG, "iters": 2, "restarts": 3})
    full = run_search(lm, task, config, progress=False).result
    out = tmp_path / "r.json"

    def stop(state, entry):
        if state.iteration == 3:  # inside restart 1
            raise KeyboardInterrupt

    stopped = run_search(lm, task, config, output=out, progress=False, on_iteration=stop)
    assert stopped.interrupted and len(stopped.result["restarts"]) == 2
    resumed = run_search(lm, task, config, output=out, resume=True, progress=False).result
    assert resumed["history"] == full["history"] and resumed["restarts"] == full["restarts"]
    assert resumed["trigger"] == full["trigger"]
    assert [p[1:] for p in resumed["curve"]] == [p[1:] for p in full["curve"]]
