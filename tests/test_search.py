"""The trigger search: gradients, batched candidate scores, evaluation, resume, results.

Tiny random models of every family check the mechanics exactly; one test on the shared real
model (skipped without ../shared) checks that the search finds triggers that help.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import FAMILIES

from autoprompt_py.data import read_examples
from autoprompt_py.errors import AutopromptError
from autoprompt_py.metrics import classification_metrics, rank_metrics
from autoprompt_py.model import load_model
from autoprompt_py.resources import RESULT_KIND, load_templates
from autoprompt_py.scoring import classify, probe_facts
from autoprompt_py.search import (
    SearchConfig,
    TriggerScorer,
    TriggerSearch,
    load_task,
    run_search,
    trigger_ids_from_words,
)
from autoprompt_py.search.scorer import write_triggers

SST = [
    ("the movie was great , really", 1),
    ("a waste of time", 0),
    ("boring and slow", 0),
    ("i loved it", 1),
    ("the plot is a mess", 0),
    ("a beautiful , charming film", 1),
    ("the acting is weak", 0),
    ("fun and lovely music", 1),
    ("the worst script ever", 0),
    ("a brilliant ending", 1),
    ("dull , long and poor", 0),
    ("we loved every minute", 1),
    ("nothing but a mess", 0),
    ("the best film of the year", 1),
    ("too slow", 0),
    ("a true story , well made", 1),
    ("never again", 0),
    ("so much fun", 1),
    ("a waste", 0),
    ("really nice", 1),
]
FACTS = [
    ("dante", "florence"),
    ("mozart", "salzburg"),
    ("einstein", "ulm"),
    ("galileo", "pisa"),
    ("goethe", "frankfurt"),
    ("bach", "berlin"),
    ("marx", "trier"),
    ("dickens", "london"),
    ("darwin", "fantastic"),
    ("france", "paris"),
    ("italy", "rome"),
    ("spain", "madrid"),
]
TEMPLATE = "{sentence} [T] [T] [T] [P] ."
RELATION_TEMPLATE = "[X] [T] [T] [Y] ."


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("search")
    files = {}
    files["train"] = root / "train.tsv"
    files["train"].write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in SST))
    files["dev"] = root / "dev.tsv"
    files["dev"].write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in SST[::2]))
    files["facts"] = root / "P19.jsonl"
    files["facts"].write_text(
        "".join(json.dumps({"sub_label": s, "obj_label": o}) + "\n" for s, o in FACTS)
    )
    files["vocab"] = root / "vocab.txt"
    files["vocab"].write_text("\n".join(o for _, o in FACTS[:-2]) + "\nitaly\ncity\n")
    return files


@pytest.fixture(scope="module")
def lms(tiny_model_dirs):
    return {f: load_model(str(p), "cpu") for f, p in tiny_model_dirs.items()}


def task_of(data, template=TEMPLATE, verbalizer="sst2", **kw):
    if "[X]" in template:
        return load_task(template, data["facts"], None, None, **kw)
    return load_task(template, data["train"], kw.pop("dev", data["dev"]), verbalizer, **kw)


def some_trigger(search: TriggerSearch, n: int = 3) -> torch.Tensor:
    ids = torch.nonzero(search.allowed).squeeze(1)
    return ids[torch.linspace(0, len(ids) - 1, n).long()]


def reference_loss(search, index, trigger, slot_embeds=None):
    """The mean loss by plain autograd over the whole input embeddings (leaf [rows, len, dim])."""
    lm, split = search.lm, search.train
    views = split.batch(index)
    logits, leaves = {}, {}
    for k, b in views.items():
        e = lm.word_embeddings(write_triggers(b, trigger)).detach().clone()
        if slot_embeds is not None:
            rows = torch.arange(len(e))[:, None]
            e[rows, b.trigger_positions] = slot_embeds[None].expand(len(e), -1, -1)
        e.requires_grad_(True)
        leaves[k] = (e, b)
        logits[k] = lm.mask_logits(
            b.mask_positions, b.attention_mask, inputs_embeds=e, token_type_ids=b.token_type_ids
        )
    loss = search.objective.loss(logits, split.gold[views[next(iter(views))].index]).mean()
    return loss, leaves


# --------------------------------------------------------------------------------------------
# gradient
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_equals_autograd_reference(family, lms, data):
    lm = lms[family]
    search = TriggerSearch(lm, task_of(data), SearchConfig(batch_size=4))
    trigger = some_trigger(search)
    batches = [np.array([0, 3, 5, 7]), np.array([1, 2, 11])]
    grad = search.scorer.gradient(search.train, batches, trigger)
    expected = torch.zeros_like(grad)
    for index in batches:
        loss, leaves = reference_loss(search, index, trigger)
        (loss / len(batches)).backward()
        for e, b in leaves.values():
            expected += e.grad[torch.arange(len(e))[:, None], b.trigger_positions].sum(0)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in lm.model.parameters())  # weights stay frozen


def test_gradient_with_multi_piece_words_and_relations(lms, data):
    lm = lms["bert"]
    for task in (
        task_of(data, verbalizer='{"0": ["bad", "unwatchable"], "1": "fantastic"}'),
        task_of(data, RELATION_TEMPLATE),
    ):
        search = TriggerSearch(lm, task, SearchConfig(batch_size=4))
        assert len(search.train.views) == (2 if task.mode == "classification" else 1)
        trigger = some_trigger(search, task.template.num_triggers)
        index = np.array([0, 1, 4, 6, 8])
        grad = search.scorer.gradient(search.train, [index], trigger)
        loss, leaves = reference_loss(search, index, trigger)
        loss.backward()
        expected = sum(
            e.grad[torch.arange(len(e))[:, None], b.trigger_positions].sum(0)
            for e, b in leaves.values()
        )
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)


def test_gradient_matches_finite_differences(lms, data):
    lm = lms["bert"]
    search = TriggerSearch(lm, task_of(data), SearchConfig())
    trigger = some_trigger(search)
    index = np.arange(8)
    grad = search.scorer.gradient(search.train, [index], trigger)
    base = lm.word_embeddings(trigger).detach()
    gen = torch.Generator().manual_seed(0)
    eps = 1e-2
    with torch.no_grad():
        for slot in range(3):
            direction = torch.randn(base.shape[1], generator=gen)
            direction /= direction.norm()
            up, down = base.clone(), base.clone()
            up[slot] += eps * direction
            down[slot] -= eps * direction
            numeric = (
                reference_loss(search, index, trigger, up)[0]
                - reference_loss(search, index, trigger, down)[0]
            ) / (2 * eps)
            analytic = grad[slot] @ direction
            assert float(numeric) == pytest.approx(float(analytic), rel=2e-2, abs=1e-4)


# --------------------------------------------------------------------------------------------
# candidates and evaluation
# --------------------------------------------------------------------------------------------


def one_by_one(search, index, trigger, positions, tokens):
    """Each variant's summed loss and hits from its own plain forward pass."""
    lm, split, objective = search.lm, search.train, search.objective
    out = []
    variants = [trigger] + [
        trigger.clone().index_fill_(0, p.view(1), t) for p, t in zip(positions, tokens)
    ]
    with torch.inference_mode():
        for v in variants:
            views = split.batch(index)
            logits = {
                k: lm.mask_logits(
                    b.mask_positions,
                    b.attention_mask,
                    input_ids=write_triggers(b, v),
                    token_type_ids=b.token_type_ids,
                )
                for k, b in views.items()
            }
            gold = split.gold[views[next(iter(views))].index]
            loss, outcome = objective.loss_and_outcome(logits, gold)
            out.append((float(loss.sum()), float(objective.hits(outcome, gold).sum())))
    return torch.tensor(out).T


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_candidates_equal_one_by_one(family, lms, data):
    search = TriggerSearch(lms[family], task_of(data), SearchConfig())
    trigger = some_trigger(search)
    positions = torch.tensor([0, 0, 1, 2, 2])
    tokens = some_trigger(search, 7)[[1, 2, 3, 4, 6]]
    index = np.array([5, 0, 9, 3, 17, 12, 1])
    expected = one_by_one(search, index, trigger, positions, tokens)
    got = search.scorer.candidate_losses(search.train, index, trigger, positions, tokens)
    torch.testing.assert_close(got, expected[0], rtol=1e-5, atol=1e-5)
    both = search.scorer.candidate_losses(
        search.train, index, trigger, positions, tokens, count_hits=True
    )
    torch.testing.assert_close(both, expected, rtol=1e-5, atol=1e-5)
    # a tiny memory budget cuts the rows into many chunks: the same numbers
    small = TriggerScorer(search.lm, search.objective, max_batch_tokens=40, max_rows=4)
    torch.testing.assert_close(
        small.candidate_losses(search.train, index, trigger, positions, tokens),
        expected[0],
        rtol=1e-5,
        atol=1e-5,
    )


def test_batched_candidates_multi_piece_and_relations(lms, data):
    for task in (
        task_of(
            data,
            verbalizer='{"0": ["bad", "unwatchable"], "1": "fantastic"}',
            aggregation="mean-logit",
        ),
        task_of(data, RELATION_TEMPLATE, vocab=data["vocab"]),
    ):
        search = TriggerSearch(lms["roberta"], task, SearchConfig())
        n = task.template.num_triggers
        trigger = some_trigger(search, n)
        positions = torch.tensor([0, n - 1, n - 1])
        tokens = some_trigger(search, 5)[[1, 2, 3]]
        index = np.arange(min(6, len(search.train)))
        expected = one_by_one(search, index, trigger, positions, tokens)
        got = search.scorer.candidate_losses(
            search.train, index, trigger, positions, tokens, count_hits=True
        )
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "albert", "deberta-v2"])
def test_dev_metrics_equal_the_scoring_module(family, lms, data):
    lm = lms[family]
    task = task_of(data, verbalizer='{"0": ["bad", "unwatchable"], "1": "great"}')
    search = TriggerSearch(lm, task, SearchConfig())
    ids = some_trigger(search).tolist()
    got = search.metrics(search.dev, ids)
    resolved = task.verbalizer.resolve(lm.tokenizer)
    expected = classify(lm, task.template.with_triggers(ids), task.dev, resolved)
    gold = [e.label for e in task.dev]
    ref = classification_metrics(gold, expected.predictions, resolved.labels)
    assert got["accuracy"] == ref["accuracy"] and got["macro_f1"] == ref["macro_f1"]
    assert search.evaluate(search.dev, ids).metric == ref["accuracy"]


def test_relation_mode_skips_multi_token_objects_and_matches_probe(lms, data):
    lm = lms["bert"]
    task = task_of(data, RELATION_TEMPLATE, vocab=data["vocab"], dev_fraction=0.5)
    assert task.mode == "relation" and task.relation == "P19"
    search = TriggerSearch(lm, task, SearchConfig())
    # "fantastic" is two tokens; objects outside --vocab do not count on dev
    skipped = search.encoded.counts["train"]["skipped"] + search.encoded.counts["dev"]["skipped"]
    assert skipped >= 1
    assert len(search.train) + len(search.dev) + skipped == len(FACTS)
    ids = some_trigger(search, 2).tolist()
    got = search.metrics(search.dev, ids)
    vocab_ids = search.objective.eval_ids.tolist()
    probe = probe_facts(lm, task.template.with_triggers(ids), task.dev, vocab_ids)
    ref = rank_metrics(probe.ranks[probe.scored])
    assert got["p@1"] == ref["p@1"] and got["mrr"] == pytest.approx(ref["mrr"])
    # the training objects are never trigger candidates
    assert not search.allowed[search.train.gold].any()


# --------------------------------------------------------------------------------------------
# the loop: results, resume, interrupts, settings
# --------------------------------------------------------------------------------------------

CONFIG = dict(method="autoprompt", iters=6, num_cand=4, batch_size=4, accumulation_steps=2, seed=3)
GCG = dict(
    method="gcg", iters=6, search_width=8, topk=4, batch_size=4, accumulation_steps=2, seed=3
)


def test_result_file_is_a_template(lms, data, tmp_path):
    out = tmp_path / "result.json"
    outcome = run_search(
        lms["bert"], task_of(data), SearchConfig(**CONFIG), output=out, progress=False
    )
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(outcome.result))
    for key in (
        "kind",
        "template",
        "prompt",
        "trigger",
        "mode",
        "relation",
        "verbalizer",
        "model",
        "train",
        "dev",
        "history",
        "command",
        "created",
        "config",
        "versions",
    ):
        assert key in result, key
    assert result["kind"] == RESULT_KIND and result["template"] == TEMPLATE
    assert result["config"]["seed"] == 3 and result["command"] == "search"
    trigger = result["trigger"]
    assert len(trigger["ids"]) == len(trigger["tokens"]) == len(trigger["words"]) == 3
    assert result["prompt"] == "{sentence} " + " ".join(trigger["words"]) + " [P] ."
    assert [h["iteration"] for h in result["history"]] == list(range(1, 7))
    assert result["dev"]["accuracy"] == max(
        [result["initial"]["dev"]["accuracy"]] + [h["dev"] for h in result["history"]]
    )
    assert result["train"]["n"] == len(SST) and result["dev"]["n"] == len(SST[::2])
    [named] = load_templates(str(out))
    assert named.template.trigger_ids == trigger["ids"]
    assert Path(str(out) + ".ckpt").is_file()


@pytest.mark.parametrize("CONFIG", [CONFIG, GCG], ids=["autoprompt", "gcg"])
def test_resume_continues_exactly(lms, data, tmp_path, CONFIG):
    lm, task = lms["bert"], task_of(data)
    full = run_search(
        lm, task, SearchConfig(**CONFIG), output=tmp_path / "full.json", progress=False
    ).result

    # stopped after 3 iterations, then resumed to 6
    out = tmp_path / "part.json"
    run_search(lm, task, SearchConfig(**{**CONFIG, "iters": 3}), output=out, progress=False)
    resumed = run_search(
        lm, task, SearchConfig(**CONFIG), output=out, resume=True, progress=False
    ).result
    assert resumed["history"] == full["history"]
    assert resumed["trigger"] == full["trigger"] and resumed["dev"] == full["dev"]

    # Ctrl-C after iteration 2: the best so far is written, then resume
    out = tmp_path / "stopped.json"

    def interrupt(state, entry):
        if state.iteration == 2:
            raise KeyboardInterrupt

    stopped = run_search(
        lm, task, SearchConfig(**CONFIG), output=out, progress=False, on_iteration=interrupt
    )
    assert stopped.interrupted
    written = json.loads(out.read_text())
    assert written["stopped"] == "interrupted" and written["iterations"] == 2
    assert written["history"] == full["history"][:2]
    resumed = run_search(
        lm, task, SearchConfig(**CONFIG), output=out, resume=True, progress=False
    ).result
    assert resumed["history"] == full["history"] and resumed["trigger"] == full["trigger"]


@pytest.mark.parametrize("CONFIG", [CONFIG, GCG], ids=["autoprompt", "gcg"])
def test_interrupt_inside_an_iteration_redoes_it(lms, data, tmp_path, monkeypatch, CONFIG):
    lm, task = lms["bert"], task_of(data)
    full = run_search(lm, task, SearchConfig(**CONFIG), progress=False).result
    calls = {"n": 0}
    name = "candidate_losses" if CONFIG["method"] == "autoprompt" else "trigger_losses"
    original = getattr(TriggerScorer, name)

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # inside iteration 4
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TriggerScorer, name, flaky)
    out = tmp_path / "r.json"
    stopped = run_search(lm, task, SearchConfig(**CONFIG), output=out, progress=False)
    assert stopped.interrupted and stopped.state.iteration == 3
    monkeypatch.setattr(TriggerScorer, name, original)
    resumed = run_search(
        lm, task, SearchConfig(**CONFIG), output=out, resume=True, progress=False
    ).result
    assert resumed["history"] == full["history"]


def test_resume_refuses_another_run(lms, data, tmp_path):
    out = tmp_path / "r.json"
    run_search(
        lms["bert"],
        task_of(data),
        SearchConfig(**{**CONFIG, "iters": 1}),
        output=out,
        progress=False,
    )
    cases = [
        (lms["bert"], task_of(data, "{sentence} [T] [T] [P] !"), CONFIG, "template"),
        (lms["bert"], task_of(data, dev=data["train"]), CONFIG, "dev data"),
        (lms["bert"], task_of(data, verbalizer='{"0": "bad", "1": "good"}'), CONFIG, "verbalizer"),
        (lms["bert"], task_of(data), {**CONFIG, "seed": 4}, "search settings"),
        (lms["distilbert"], task_of(data), CONFIG, "model"),
    ]
    for lm, task, config, what in cases:
        with pytest.raises(AutopromptError, match=f"was made for another {what}") as e:
            run_search(lm, task, SearchConfig(**config), output=out, resume=True, progress=False)
        assert "\n" not in str(e.value)
    with pytest.raises(AutopromptError, match="no checkpoint"):
        run_search(
            lms["bert"],
            task_of(data),
            SearchConfig(**CONFIG),
            output=tmp_path / "none.json",
            resume=True,
            progress=False,
        )


def test_patience_positions_and_selection(lms, data):
    lm = lms["bert"]
    search = TriggerSearch(
        lm, task_of(data), SearchConfig(**{**CONFIG, "iters": 50, "patience": 3})
    )
    state = search.run(search.start())
    assert state.stopped == "patience" and state.iteration < 50
    assert state.since_best == 3 and state.iteration - state.best_iteration == 3

    sweep = TriggerSearch(lm, task_of(data), SearchConfig(**{**CONFIG, "position": "sweep"}))
    state = sweep.run(sweep.start())
    assert [h["position"] for h in state.history if not h["accepted"]] == [
        (h["iteration"] - 1) % 3 for h in state.history if not h["accepted"]
    ]

    for position, select in (("all", "loss"), ("random", "metric")):
        s = TriggerSearch(
            lm, task_of(data), SearchConfig(**{**CONFIG, "position": position, "select": select})
        )
        state = s.run(s.start())
        assert state.iteration == 6
        assert any(h["accepted"] for h in state.history) or select == "metric"
        assert all(h["train_loss"] > 0 for h in state.history)


def test_accepted_flips_lower_the_loss_on_their_batches(lms, data):
    search = TriggerSearch(lms["bert"], task_of(data), SearchConfig(**CONFIG))
    state = search.start()
    for _ in range(6):
        before = list(state.trigger)
        entry = search.step(state)
        changed = [i for i, (a, b) in enumerate(zip(before, state.trigger)) if a != b]
        assert len(changed) == (1 if entry["accepted"] else 0)
        if entry["accepted"]:
            assert search.allowed[state.trigger[changed[0]]]
            assert changed[0] == entry["position"]


def test_initial_trigger_words_and_dev_split(lms, data):
    lm = lms["roberta"]
    task = task_of(data, dev=None, dev_fraction=0.25, seed=1)
    assert len(task.dev) == 5 and len(task.train) == 15
    again = task_of(data, dev=None, dev_fraction=0.25, seed=1)
    assert [e.source for e in again.dev] == [e.source for e in task.dev]
    assert "split_of_train" in task.identity["dev"]
    ids = trigger_ids_from_words(lm.tokenizer, task.template, "movie Ġfilm great")
    assert lm.tokenizer.convert_ids_to_tokens(ids) == ["Ġmovie", "Ġfilm", "Ġgreat"]
    state = TriggerSearch(lm, task, SearchConfig()).start(ids)
    assert state.trigger == ids and state.initial["trigger"]["words"] == ["movie", "film", "great"]
    with pytest.raises(AutopromptError, match="not one token"):
        trigger_ids_from_words(lm.tokenizer, task.template, "movie fantastic great")
    with pytest.raises(AutopromptError, match="2 tokens for the 3 trigger slots"):
        trigger_ids_from_words(lm.tokenizer, task.template, "movie film")


# --------------------------------------------------------------------------------------------
# the real model: searched triggers beat [MASK] and random ones
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_search_beats_mask_and_random_triggers_on_sst2(
    shared_model, shared_data, tmp_path, all_threads
):
    lm = load_model(str(shared_model), "cpu")
    sst2 = shared_data / "sst2"
    task = load_task(
        "{sentence} [T] [T] [T] [P] .",
        sst2 / "train.tsv",
        sst2 / "dev.tsv",
        '{"0": ["bad"], "1": ["good"]}',
        aggregation="mean-logit",
        train_limit=1000,
        dev_limit=200,
    )
    config = SearchConfig(iters=15, accumulation_steps=4, seed=0)
    outcome = run_search(lm, task, config, output=tmp_path / "sst2.json", progress=False)
    result = outcome.result
    searched = result["dev"]["accuracy"]
    search = TriggerSearch(lm, task, config)
    masked = search.evaluate(search.dev, [lm.tokenizer.mask_token_id] * 3).metric
    allowed = torch.nonzero(search.allowed).squeeze(1)
    rng = np.random.default_rng(0)
    random = [
        search.evaluate(search.dev, allowed[rng.integers(len(allowed), size=3)].tolist()).metric
        for _ in range(5)
    ]
    assert searched >= masked + 0.03, (searched, masked)
    assert searched >= max(random) + 0.02, (searched, random)
    # the result is a template: scoring it anew gives the same dev accuracy
    [named] = load_templates(str(tmp_path / "sst2.json"))
    dev = read_examples(sst2 / "dev.tsv", limit=200)
    scores = classify(lm, named.template, dev, task.verbalizer.resolve(lm.tokenizer, "mean-logit"))
    gold = [e.label for e in dev]
    assert np.mean([p == g for p, g in zip(scores.predictions, gold)]) == searched
