"""Several models at once (``--model`` repeated): a search over two models finds the trigger
that works on both, where a search over one finds a trigger that does not transfer (the
planted test bed of ``planted_models.py``); the summed token gradient; label search over two
models; and what is refused (vocabularies that differ, a model given twice)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from planted_models import KEYS, SHARED, build_planted

from autoprompt_py.cli import main
from autoprompt_py.errors import AutopromptError
from autoprompt_py.model import load_model
from autoprompt_py.search import SearchConfig, TriggerSearch, load_task
from autoprompt_py.search.candidates import hotflip_candidates
from autoprompt_py.several import check_shared_vocabulary

TEMPLATE = "{sentence} [T] [P] ."
METHODS = {
    "gcg": ["--method", "gcg", "--topk", "32", "--search-width", "32"],
    "autoprompt": ["--method", "autoprompt", "--num-cand", "32"],
}


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    return build_planted(tmp_path_factory.mktemp("planted"))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def search(bed, out, models, *extra):
    args = ["search", "--device", "cpu", "--train", bed["data"], "--dev", bed["data"]]
    for m in models:
        args += ["--model", bed[m]]
    args += ["--template", TEMPLATE, "--verbalizer", "sst2", "--iters", "4", "--seed", "0"]
    r = invoke(*args, *extra, "--quiet", "--output", out)
    assert r.exit_code == 0, r.stderr
    return json.loads(out.read_text())


def accuracy_on(bed, model, result_file, tmp_path) -> float:
    scored = tmp_path / f"score-{model}.json"
    r = invoke(
        "score", "--model", bed[model], "--device", "cpu", "--data", bed["data"],
        "--template", result_file, "--verbalizer", "sst2", "--bootstrap", "0", "--output", scored,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    return json.loads(scored.read_text())["templates"][0]["accuracy"]


@pytest.mark.parametrize("method", list(METHODS))
def test_one_model_finds_its_own_key_which_does_not_transfer(method, bed, tmp_path):
    out = tmp_path / "first.json"
    result = search(bed, out, ["first"], *METHODS[method])
    assert result["trigger"]["words"] == [KEYS["first"]]
    assert result["dev"]["accuracy"] == 1.0 and "models" not in result
    assert accuracy_on(bed, "second", out, tmp_path) == 0.5


@pytest.mark.parametrize("method", list(METHODS))
def test_two_models_find_the_trigger_that_unlocks_both(method, bed, tmp_path):
    out = tmp_path / "both.json"
    result = search(bed, out, ["first", "second"], *METHODS[method])
    assert result["trigger"]["words"] == [SHARED]
    dev = result["dev"]
    assert dev["accuracy"] == 1.0 and dev["across"] == "mean"
    assert [m["model"] for m in dev["models"]] == [str(bed["first"]), str(bed["second"])]
    assert [m["accuracy"] for m in dev["models"]] == [1.0, 1.0]
    assert dev["loss"] == pytest.approx(np.mean([m["loss"] for m in dev["models"]]))
    assert len(result["models"]) == 2 and result["model"] == result["models"][0]
    assert result["config"]["models"] == [str(bed["first"]), str(bed["second"])]
    assert [len(m) for m in result["train"]["models"]] == [len(dev["models"][0])] * 2
    for model in ("first", "second"):  # each model's figure re-scores
        assert accuracy_on(bed, model, out, tmp_path) == 1.0


def test_across_min_keeps_the_worst_models_metric(bed, tmp_path):
    """The initial trigger: 0.5 on both; its own key on the first model: 1.0 and 0.5."""
    lms = [load_model(str(bed[m]), "cpu") for m in ("first", "second")]
    task = load_task(TEMPLATE, bed["data"], bed["data"], "sst2")
    key = lms[0].tokenizer.get_vocab()[KEYS["first"]]
    for across, expected in (("mean", 0.75), ("min", 0.5)):
        searched = TriggerSearch(lms, task, SearchConfig(across=across, iters=0))
        scored = searched.evaluate(searched.dev, [key])
        assert scored.metric == expected and scored.full()["across"] == across
    with pytest.raises(AutopromptError, match="--across 'max': use one of mean, min"):
        SearchConfig(across="max")


def test_the_token_gradient_is_summed_over_the_models(bed):
    """HotFlip over the joint space ranks by Σ_m -(E_m · g_m): each model's own scores, summed
    (over the number of models: the gradient of the mean loss)."""
    lms = [load_model(str(bed[m]), "cpu") for m in ("first", "second")]
    task = load_task(TEMPLATE, bed["data"], bed["data"], "sst2")
    joint = TriggerSearch(lms, task, SearchConfig(iters=0))
    alone = [TriggerSearch(lm, task, SearchConfig(iters=0)) for lm in lms]
    trigger = joint.ids([lms[0].tokenizer.get_vocab()["movie"]])
    batches = [np.arange(len(joint.train))]
    grad = joint.scorer.gradient(joint.train, batches, trigger)
    summed = sum(
        -(s.scorer.gradient(s.train, batches, trigger) @ s.embeddings.T) / 2 for s in alone
    )
    assert torch.allclose(-(grad @ joint.embeddings.T), summed, atol=1e-6)
    top = hotflip_candidates(grad, joint.embeddings, joint.allowed, 5)
    expected = summed.masked_fill(~joint.allowed[None], float("-inf")).topk(5).indices
    assert top.tolist() == expected.tolist()
    # the candidate losses are the mean over the models, every candidate on every model
    triggers = torch.stack([trigger, joint.ids([lms[0].tokenizer.get_vocab()[SHARED]])])
    index = np.arange(len(joint.train))
    losses = joint.scorer.trigger_losses(joint.train, index, triggers)
    each = [s.scorer.trigger_losses(s.train, index, triggers) for s in alone]
    assert torch.allclose(losses, (each[0] + each[1]) / 2)


def test_labels_over_two_models(bed, tmp_path):
    out = tmp_path / "verbalizer.json"
    r = invoke(
        "labels", "--model", bed["first"], "--model", bed["second"], "--device", "cpu",
        "--train", bed["data"], "--template", TEMPLATE, "--trigger", SHARED,
        "--per-class", "2", "--output", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    words = json.loads(out.read_text())
    assert sorted(words) == ["0", "1"] and all(len(w) == 2 for w in words.values())
    record = json.loads((tmp_path / "verbalizer.json.run.json").read_text())
    assert len(record["models"]) == 2 and len(record["model_accuracies"]) == 2
    assert record["config"]["models"] == [str(bed["first"]), str(bed["second"])]


def test_models_that_do_not_share_a_vocabulary_are_refused(tiny_model_dirs, bed, tmp_path):
    out = tmp_path / "r.json"
    r = CliRunner().invoke(
        main,
        ["search", "--model", str(tiny_model_dirs["bert"]), "--model",
         str(tiny_model_dirs["roberta"]), "--device", "cpu", "--train", str(bed["data"]),
         "--template", TEMPLATE, "--verbalizer", "sst2", "--output", str(out)],
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert f"--model {tiny_model_dirs['roberta']}: its vocabulary differs" in lines[0]
    assert "token '" in lines[0] and "share one tokenizer" in lines[0]
    assert not out.exists()
    r = CliRunner().invoke(
        main,
        ["labels", "--model", str(bed["first"]), "--model", str(bed["first"]) + "/",
         "--device", "cpu", "--train", str(bed["data"]), "--template", TEMPLATE, "--output",
         str(tmp_path / "v.json")],
    )  # fmt: skip
    assert r.exit_code == 2 and "given twice" in r.stderr and "give each model once" in r.stderr


def _fake(vocab: dict, kind: str = "masked", mask: int = 0, name: str = "m"):
    tok = SimpleNamespace(get_vocab=lambda: dict(vocab), mask_token_id=mask)
    return SimpleNamespace(tokenizer=tok, kind=kind, name=name, mask_token_id=mask)


def test_the_vocabulary_check_names_the_first_difference():
    a = _fake({"[MASK]": 0, "the": 1, "cat": 2}, name="a")
    with pytest.raises(AutopromptError, match=r"token 'cat' is id 3 here and id 2 there"):
        check_shared_vocabulary([a, _fake({"[MASK]": 0, "the": 1, "cat": 3}, name="b")])
    with pytest.raises(AutopromptError, match=r"token 'dog' is id 3 here and absent there"):
        check_shared_vocabulary([a, _fake({"[MASK]": 0, "the": 1, "cat": 2, "dog": 3})])
    with pytest.raises(AutopromptError, match="mask token is id 1, --model a's id 0"):
        check_shared_vocabulary([a, _fake({"[MASK]": 0, "the": 1, "cat": 2}, mask=1)])
    with pytest.raises(AutopromptError, match="a causal model, but --model a is a masked one"):
        check_shared_vocabulary([a, _fake({"[MASK]": 0}, kind="causal")])
    check_shared_vocabulary([a, _fake({"cat": 2, "the": 1, "[MASK]": 0})])  # the same map


def test_resuming_with_other_models_is_refused(bed, tmp_path):
    out = tmp_path / "r.json"
    search(bed, out, ["first", "second"], "--iters", "1")
    args = ["search", "--model", bed["first"], "--device", "cpu", "--train", bed["data"]]
    args += ["--dev", bed["data"], "--template", TEMPLATE, "--verbalizer", "sst2"]
    r = CliRunner().invoke(main, [str(a) for a in [*args, "--resume", "--output", out]])
    assert r.exit_code == 2 and "was made for another set of models" in r.stderr, r.stderr


def test_score_over_two_models_prints_a_transfer_table(bed, tmp_path):
    out = tmp_path / "transfer.json"
    r = invoke(
        "score", "--model", bed["first"], "--model", bed["second"], "--device", "cpu",
        "--data", bed["data"], "--template", f"{{sentence}} {KEYS['first']} [P] .",
        "--template", f"{{sentence}} {SHARED} [P] .", "--verbalizer", "sst2",
        "--bootstrap", "100", "--output", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1:3] == [f"model 1: {bed['first']}", f"model 2: {bed['second']}"]
    assert "model 1 accuracy (95% CI)" in lines[3] and "mean" in lines[3]
    assert lines[4].split()[:2] == ["1", "1.0000"] and SHARED in lines[4]
    assert "0.5000 (" in lines[5] and KEYS["first"] in lines[5]
    data = json.loads(out.read_text())
    assert len(data["models"]) == 2
    assert data["config"]["models"] == [str(bed["first"]), str(bed["second"])]
    rows = data["templates"]
    assert [t["mean"]["accuracy"] for t in rows] == [1.0, 0.75]
    assert [[m["accuracy"] for m in t["models"]] for t in rows] == [[1.0, 1.0], [1.0, 0.5]]
    assert [m["model"] for m in rows[0]["models"]] == [str(bed["first"]), str(bed["second"])]


def test_probe_over_two_models_prints_a_transfer_table(bed, tmp_path):
    facts = tmp_path / "facts"
    facts.mkdir()
    rows = [("dante", "florence"), ("mozart", "salzburg"), ("goethe", "frankfurt")]
    (facts / "P19.jsonl").write_text(
        "".join(json.dumps({"sub_label": s, "obj_label": o}) + "\n" for s, o in rows)
    )
    out = tmp_path / "probe.json"
    r = invoke(
        "probe", "--model", bed["first"], "--model", bed["second"], "--device", "cpu",
        "--facts", facts, "--template", "[X] was born in [Y] .", "--output", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert f"model 2: {bed['second']}" in r.stdout and "model 2 p@1 (95% CI)" in r.stdout
    data = json.loads(out.read_text())
    [relation] = data["relations"]
    [template] = relation["templates"]
    assert [m["model"] for m in template["models"]] == [str(bed["first"]), str(bed["second"])]
    assert all({"p@1", "p@10", "mrr", "p@1_ci95"} <= set(m) for m in template["models"])
    assert sorted(data["averages"]) == sorted([str(bed["first"]), str(bed["second"])])
    assert len(data["models"]) == 2


# -- predict: the models' ensemble ------------------------------------------------------------


def predict_rows(bed, out, models, *args):
    r = invoke("predict", *(a for m in models for a in ("--model", bed[m])), "--device", "cpu",
               *args, "--output", out)  # fmt: skip
    assert r.exit_code == 0, r.stderr
    return [json.loads(line) for line in out.read_text().splitlines()], r


def test_predict_over_two_models_averages_each_models_probabilities(bed, tmp_path):
    """Independent check: each model's own predict run, averaged by hand."""
    args = ["--data", bed["data"], "--template", f"{{sentence}} {KEYS['first']} [P] .",
            "--template", f"{{sentence}} {SHARED} [P] .", "--ensemble", "--calibrate",
            "--verbalizer", "sst2", "--with-labels", "--bootstrap", "0"]  # fmt: skip
    alone = [predict_rows(bed, tmp_path / f"{m}.jsonl", [m], *args)[0] for m in ("first", "second")]
    both, r = predict_rows(bed, tmp_path / "both.jsonl", ["first", "second"], *args)
    assert len(both) == len(alone[0]) > 0
    for row, a, b in zip(both, *alone):
        for label in ("0", "1"):
            assert row[f"p_{label}"] == pytest.approx(
                (a[f"p_{label}"] + b[f"p_{label}"]) / 2, abs=2e-6
            )
        assert row["prediction"] == max(("0", "1"), key=lambda lab: row[f"p_{lab}"])
        assert row["margin"] == pytest.approx(abs(row["p_0"] - row["p_1"]), abs=2e-6)
    accuracy = np.mean([row["prediction"] == row["gold"] for row in both])
    assert f"accuracy {accuracy:.4f}" in r.stderr  # --with-labels: the averaged predictions
    record = json.loads((tmp_path / "both.jsonl.run.json").read_text())
    assert [m["name"] for m in record["models"]] == [str(bed["first"]), str(bed["second"])]
    assert record["model_ensemble"] == "mean-probability"
    assert record["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert "models" not in json.loads((tmp_path / "first.jsonl.run.json").read_text())


def test_predict_relations_over_two_models_averages_every_candidate(bed, tmp_path):
    words = ["florence", "tokyo", "spain", "greece", "russia", "dickens", "fun", "fine"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({"sub_label": s, "obj_label": o}) + "\n"
                             for s, o in [("dante", "tokyo"), ("mozart", "spain")]))  # fmt: skip
    args = ["--data", facts, "--template", "[X] was born in [Y] .", "--vocab", vocab,
            "--top-k", "8", "--with-labels"]  # fmt: skip
    alone = [predict_rows(bed, tmp_path / f"{m}.jsonl", [m], *args)[0] for m in ("first", "second")]
    both, _ = predict_rows(bed, tmp_path / "both.jsonl", ["first", "second"], *args)
    have = {w for w in words if w in both[0].values()}
    assert len(have) >= 2  # the words that are one token of the vocabulary: every candidate shown

    def probs(row):
        return {row[f"top_{j}"]: row[f"p_{j}"] for j in range(1, 9) if f"top_{j}" in row}

    for row, a, b in zip(both, *alone):
        pa, pb, mean = probs(a), probs(b), probs(row)
        assert set(mean) == set(pa) == set(pb)
        for word, p in mean.items():
            assert p == pytest.approx((pa[word] + pb[word]) / 2, abs=2e-6)
        assert row["prediction"] == row["top_1"] and row["p"] == max(mean.values())
        assert row["rank"] == 1 + sum(p > mean[row["gold"]] for p in mean.values())


def test_predict_refuses_models_that_do_not_share_a_vocabulary(tiny_model_dirs, bed, tmp_path):
    out = tmp_path / "p.jsonl"
    r = CliRunner().invoke(
        main,
        ["predict", "--model", str(tiny_model_dirs["bert"]), "--model",
         str(tiny_model_dirs["roberta"]), "--device", "cpu", "--data", str(bed["data"]),
         "--template", TEMPLATE.replace(" [T]", ""), "--verbalizer", "sst2", "--output", str(out)],
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "its vocabulary differs" in lines[0] and "share one tokenizer" in lines[0]
    assert not list(tmp_path.iterdir())  # no output, partial or record
    r = invoke("predict", "--model", bed["first"], "--model", str(bed["first"]) + "/",
               "--device", "cpu", "--data", bed["data"], "--template", "{sentence} [P] .",
               "--verbalizer", "sst2", "--output", out)  # fmt: skip
    assert r.exit_code == 2 and "given twice" in r.stderr and not list(tmp_path.iterdir())


def test_predict_resumed_with_another_set_of_models_is_refused(bed, tmp_path):
    from autoprompt_py.prediction.output import write_predictions
    from autoprompt_py.prediction.run import PredictConfig

    config = PredictConfig(("{sentence} [P] .",), ("sst2",), window=2)
    lms = [load_model(str(bed[m]), "cpu") for m in ("first", "second")]
    names = [str(bed["first"]), str(bed["second"])]
    whole, part = tmp_path / "whole.csv", tmp_path / "part.csv"
    write_predictions(config, str(bed["data"]), str(whole), lms, names, progress=False)

    def stop(n: int) -> None:
        if n == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_predictions(config, str(bed["data"]), str(part), lms, names, progress=False,
                          on_window=stop)  # fmt: skip
    for other, other_names in (
        (lms[:1], names[:1]), (lms[::-1], names[::-1])
    ):  # fmt: skip
        with pytest.raises(AutopromptError, match="made from another model"):
            write_predictions(config, str(bed["data"]), str(part), other, other_names,
                              progress=False, resume=True)  # fmt: skip
    s = write_predictions(config, str(bed["data"]), str(part), lms, names, progress=False,
                          resume=True)  # fmt: skip
    assert s.resumed_from == 4 and part.read_bytes() == whole.read_bytes()
