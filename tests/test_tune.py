"""autoprompt tune: forwards equal a direct computation, only the trainable part moves, resume
equals an uninterrupted run (for every selection rule), each rule ends with the weights it
names, the saved folder scores as the run measured, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from optional import have, requires

from autoprompt_py.cli import main
from autoprompt_py.data import Example
from autoprompt_py.model import load_model
from autoprompt_py.scoring import classify, probe_facts
from autoprompt_py.template import parse_template
from autoprompt_py.tune import TuneConfig, load_tune_task, tune
from autoprompt_py.tune.config import SMALL_DEV_RULE
from autoprompt_py.tune.folder import attach_tuned, tuned_templates
from autoprompt_py.tune.loop import Trainer
from autoprompt_py.tune.methods import build_part
from autoprompt_py.tune.run import make_objective
from autoprompt_py.verbalizer import Verbalizer

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("bert", "roberta", "albert", "deberta-v2")
VERB = Verbalizer.from_dict({"0": ["terrible", "bad"], "1": ["great"]})
SENTENCES = [
    ("the movie was a waste of time", "0"),
    ("a great film with a lovely cast", "1"),
    ("boring and slow", "0"),
    ("funny and charming", "1"),
    ("the worst script ever", "0"),
    ("the best music and a fine ending", "1"),
]


def rows(n: int = 6) -> list[Example]:
    return [Example({"sentence": s}, lab, f"mem:{i}") for i, (s, lab) in enumerate(SENTENCES[:n])]


def fixed_trigger_template(lm, words=("the", "movie")):
    ids = [lm.tokenizer.convert_tokens_to_ids(lm.tokenizer.tokenize(" " + w))[0] for w in words]
    return parse_template("{sentence} [T] [T] It was [P] .").with_triggers(ids)


def make(lm, template, method, **kw):
    task = load_tune_task(template, rows(), rows(), verbalizer=VERB)
    config = TuneConfig(method=method, steps=kw.pop("steps", 4), eval_every=2, batch_size=3, **kw)
    objective = make_objective(lm, task, config)
    return task, config, objective, build_part(lm, task, config, objective)


@pytest.mark.parametrize("family", FAMILIES)
def test_forwards_equal_a_direct_computation(tiny_model_dirs, family):
    from transformers import AutoModelForMaskedLM

    lm = load_model(tiny_model_dirs[family], device="cpu")
    template = fixed_trigger_template(lm)
    direct = AutoModelForMaskedLM.from_pretrained(tiny_model_dirs[family]).eval()
    enc = lm.encoder(template).encode_all(rows())
    b = enc.collate(range(len(enc)))
    kwargs = {"input_ids": b.input_ids, "attention_mask": b.attention_mask}
    if lm.uses_token_type_ids:
        kwargs["token_type_ids"] = b.token_type_ids
    with torch.no_grad():
        want = direct(**kwargs).logits
        want = want[torch.arange(len(b.index))[:, None], b.mask_positions]
        for method in ("soft", "full"):  # soft from the triggers' own embeddings
            _, _, objective, part = make(lm, template, method, init="found")
            data = objective.encode(rows(), part.template)
            part.train_mode(False)
            got = part.logits(data.batch(range(len(data)), lm.device))[1]
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        _, _, objective, part = make(lm, template, "head")
        data = objective.encode(rows(), part.template)
        part.train_mode(False)
        got = part.logits(data.batch(range(len(data)), lm.device))[0]
        fields = lm.encoder(parse_template("{sentence} [P]"), max_length=64)
        fb = fields.encode_all(rows()).collate(range(6))  # [P] dropped below: ids up to it
        ids = data.datasets[0].collate(range(6))
        head_kwargs = {"input_ids": ids.input_ids, "attention_mask": ids.attention_mask}
        if lm.uses_token_type_ids:
            head_kwargs["token_type_ids"] = ids.token_type_ids
        torch.testing.assert_close(got, part.model(**head_kwargs).logits)
        assert fb.input_ids.shape[1] == ids.input_ids.shape[1] + 1  # the head read no prompt


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_trainable_part_moves(tiny_model_dirs, family):
    lm = load_model(tiny_model_dirs[family], device="cpu")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    out = tune(lm, load_tune_task(fixed_trigger_template(lm), rows(), rows(), verbalizer=VERB),
               TuneConfig(method="soft", init="vocab", steps=3, eval_every=1, lr=0.1,
                          batch_size=3), progress=False)  # fmt: skip
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the base is bit-identical
    start = out.part.start_ids
    emb = lm.embeddings[torch.tensor(start)]
    assert not torch.equal(out.part.vectors.detach(), emb) or out.result["best_step"] == 0
    assert out.result["trainable_parameters"] == 2 * lm.embeddings.shape[1]


@pytest.mark.parametrize(
    "method, rule, stop",
    [
        ("soft", "best-dev", 4),
        ("soft", "last", 2),  # from the checkpoint of step 0
        ("full", "best-dev", 4),
        ("full", "average", 4),
        ("soft", "cv", 8),  # inside the second fold: the run stops with nothing written
        ("full", "cv", 14),  # inside the training on all rows, after the folds
    ],
)
def test_resume_equals_an_uninterrupted_run(tiny_model_dirs, tmp_path, monkeypatch, method, rule,
                                            stop):  # fmt: skip
    path = tiny_model_dirs["bert"]
    kw = dict(init="vocab", lr=0.05 if method == "soft" else 1e-3, steps=6, select=rule)
    kw |= dict(average_last=2, cv_folds=2)

    def run(output, resume=False):
        lm = load_model(path, device="cpu")
        task, config, objective, _ = make(lm, fixed_trigger_template(lm), method, **kw)
        return tune(lm, task, config, output=output, resume=resume, force=True, progress=False)

    whole = run(tmp_path / "whole")
    original, calls = Trainer.step, [0]

    def stop_once(self):  # the stop-th optimizer step of the run, whichever phase it is in
        calls[0] += 1
        if calls[0] == stop:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "step", stop_once)
    try:
        cut = run(tmp_path / "cut")
        assert cut.interrupted and cut.result["steps"] == (stop - 1 if rule != "cv" else 1)
    except KeyboardInterrupt:
        assert rule == "cv" and not (tmp_path / "cut").exists()  # no weights on all rows yet
    monkeypatch.setattr(Trainer, "step", original)
    resumed = run(tmp_path / "cut", resume=True)
    assert [p["dev"] for p in resumed.result["curve"]] == [p["dev"] for p in whole.result["curve"]]
    assert [p["train_loss"] or 0 for p in resumed.result["curve"]] == pytest.approx(
        [p["train_loss"] or 0 for p in whole.result["curve"]], rel=1e-6
    )
    assert resumed.result["select"] == whole.result["select"]
    assert resumed.result["dev"] == whole.result["dev"]
    for k, v in whole.part.state().items():
        torch.testing.assert_close(resumed.part.state()[k], v, rtol=0, atol=0)


@pytest.mark.parametrize(
    "method, rule, keep, kept",
    [("full", "last", 3, [6]), ("soft", "last", 1, [6]), ("full", "average", 2, [4, 6]),
     ("soft", "average", 9, [2, 4, 6])],  # the start is averaged only while nothing trained
)  # fmt: skip
def test_last_and_average_end_at_the_kept_checkpoints(tiny_model_dirs, method, rule, keep, kept):
    lm = load_model(tiny_model_dirs["bert"], device="cpu")
    lr = 0.05 if method == "soft" else 1e-3
    task, config, _, _ = make(lm, fixed_trigger_template(lm), method, init="vocab", lr=lr,
                              steps=6, select=rule, average_last=keep)  # fmt: skip
    seen: dict = {}  # every evaluated checkpoint's trainable weights, as the run went
    out = tune(lm, task, config, progress=False,
               watch=lambda step, part: seen.update({step: part.state()}))  # fmt: skip
    assert sorted(seen) == [0, 2, 4, 6]
    assert out.result["select"]["kept_steps"] == kept and out.result["best_step"] == 6
    assert out.result["select"]["rule"] == rule == out.result["config"]["select"]
    assert not torch.equal(seen[4][next(iter(seen[4]))], seen[6][next(iter(seen[6]))])
    got = out.part.state()
    for k, v in got.items():
        if v.is_floating_point():  # the mean in float64, independently of the run's own
            want = torch.stack([seen[s][k].double() for s in kept]).mean(0).to(v.dtype)
            torch.testing.assert_close(v, want, rtol=0, atol=1e-7)
        else:
            assert torch.equal(v, seen[6][k])
    if rule == "last" or len(kept) == 1:
        assert out.result["dev"]["accuracy"] == out.result["curve"][-1]["dev"]


def test_cv_chooses_the_steps_on_folds_and_trains_on_all_rows(tiny_model_dirs):
    path = tiny_model_dirs["bert"]

    def run(**kw):
        lm = load_model(path, device="cpu")
        task, config, _, _ = make(lm, fixed_trigger_template(lm), "full", init="vocab", lr=1e-3,
                                  **kw)  # fmt: skip
        return task, tune(lm, task, config, progress=False)

    task, out = run(steps=6, select="cv", cv_folds=3)
    cv = out.result["select"]["cv"]
    assert cv["steps"] == [2, 4, 6] and cv["fold_sizes"] == [2, 2, 2]  # a class each
    assert len(cv["metric"]) == len(cv["loss"]) == 3
    best = max(range(3), key=lambda i: (cv["metric"][i], -cv["loss"][i], cv["steps"][i]))
    assert cv["chosen"] == cv["steps"][best] == out.result["total_steps"] == out.result["steps"]
    assert out.result["data"]["n_train"] == len(task.train) == 6
    # the weights: a run on all rows for the chosen number of steps, its last step kept
    _, plain = run(steps=cv["chosen"], select="last")
    assert [p["dev"] for p in plain.result["curve"]] == [p["dev"] for p in out.result["curve"]]
    for k, v in plain.part.state().items():
        torch.testing.assert_close(out.part.state()[k], v, rtol=0, atol=0)


def test_auto_resolves_by_the_dev_set_and_the_start():
    from autoprompt_py.tune.select import resolve_rule

    assert resolve_rule(TuneConfig(method="full"), 100, "vocab")[0] == "best-dev"
    assert resolve_rule(TuneConfig(method="full"), 99, "vocab")[0] == SMALL_DEV_RULE
    assert resolve_rule(TuneConfig(method="soft"), 32, "vocab")[0] == SMALL_DEV_RULE
    # vectors from a found prompt keep the best on dev: never below the found prompt there
    assert resolve_rule(TuneConfig(method="soft"), 32, "found")[0] == "best-dev"
    assert resolve_rule(TuneConfig(method="full", select="cv"), 500, "found")[0] == "cv"
    budget = resolve_rule(TuneConfig(method="full", time_budget=5), 32, "vocab")[0]
    assert budget == (SMALL_DEV_RULE if SMALL_DEV_RULE != "cv" else "last")


@pytest.mark.parametrize("rule", ["best-dev", "last", "average", "cv", "auto"])
def test_each_selection_rule_runs_through_the_cli(tiny_model_dirs, tmp_path, rule):
    out = tmp_path / "t"
    r = _cli("tune", "--model", tiny_model_dirs["bert"], "--device", "cpu",
             "--train", REPO / "examples/sst2_mini.tsv", "--template", "{sentence} It was [MASK] .",
             "--verbalizer", "sst2", "--method", "full", "--steps", "4", "--eval-every", "2",
             "--batch-size", "4", "--lr", "1e-3", "--select", rule, "--cv-folds", "2",
             "--quiet", "--output", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    result = json.loads((out / "result.json").read_text())
    want = SMALL_DEV_RULE if rule == "auto" else rule  # dev: 8 rows
    assert result["select"]["rule"] == want and result["select"]["asked"] == rule
    assert f"({want}" in r.output and result["config"]["select"] == rule
    assert (result["select"]["cv"] is not None) == (want == "cv")


def test_the_saved_folder_scores_as_the_run_measured(tiny_model_dirs, tmp_path):
    path = tiny_model_dirs["roberta"]
    lm = load_model(path, device="cpu")
    task = load_tune_task("{sentence} [T] [T] It was [P] .", rows(), rows(), verbalizer=VERB)
    out = tune(lm, task, TuneConfig(method="soft", init="random", steps=4, eval_every=2, lr=0.1),
               output=tmp_path / "soft", progress=False)  # fmt: skip
    named = tuned_templates(str(tmp_path / "soft"))
    scorer = attach_tuned(load_model(path, device="cpu"), [str(tmp_path / "soft")])
    res = classify(scorer, named[0].template, rows(), VERB.resolve(lm.tokenizer))
    acc = sum(p == e.label for p, e in zip(res.predictions, rows())) / 6
    assert acc == out.result["dev"]["accuracy"]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "soft" / "embeddings.safetensors"), "pt") as f:
        assert f.get_tensor("embeddings").shape == (2, lm.embeddings.shape[1])
        assert f.metadata()["template"] == "{sentence} [T] [T] It was [P] ."
    # full: the folder is a model
    full = tune(load_model(path, device="cpu"), task.__class__(**{**task.__dict__,
                "template": fixed_trigger_template(lm)}),
                TuneConfig(method="full", steps=4, eval_every=2, lr=1e-3),
                output=tmp_path / "full", progress=False)  # fmt: skip
    tuned = load_model(tmp_path / "full", device="cpu")
    res = classify(tuned, fixed_trigger_template(lm), rows(), VERB.resolve(lm.tokenizer))
    acc = sum(p == e.label for p, e in zip(res.predictions, rows())) / 6
    assert acc == full.result["dev"]["accuracy"]
    # another model is refused, in one line
    from autoprompt_py.errors import AutopromptError

    with pytest.raises(AutopromptError, match="tuned for --model"):
        attach_tuned(load_model(tiny_model_dirs["bert"], device="cpu"), [str(tmp_path / "soft")])
    # --model: a full folder is a model; a prompt folder or a head is told where it goes
    from click.testing import CliRunner

    from autoprompt_py.cli import main

    head = tune(load_model(path, device="cpu"), task.__class__(**{**task.__dict__,
                "template": fixed_trigger_template(lm)}),
                TuneConfig(method="head", steps=2, eval_every=2, lr=1e-3),
                output=tmp_path / "head", progress=False)  # fmt: skip
    assert head.result["method"] == "head"
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"sentence": e.fields["sentence"], "label": e.label})
                            + "\n" for e in rows()))  # fmt: skip
    args = ["--template", "{sentence} It was [MASK] .", "--verbalizer", "sst2", "--data", data]
    for folder, message in (("soft", "--template " + str(tmp_path / "soft")),
                            ("head", "AutoModelForSequenceClassification")):  # fmt: skip
        r = CliRunner().invoke(main, ["score", "--model", str(tmp_path / folder), *map(str, args)])
        assert r.exit_code == 2 and message in r.output and r.output.count("\n") == 1, r.output
    r = CliRunner().invoke(main, ["score", "--model", str(tmp_path / "full"), *map(str, args)])
    assert r.exit_code == 0, r.output


def test_relation_mode_trains_and_probe_reproduces(tiny_model_dirs, tmp_path):
    lm = load_model(tiny_model_dirs["bert"], device="cpu")
    facts = REPO / "examples/lama_mini/P19.jsonl"
    task = load_tune_task("[X] [T] [T] [Y] .", facts, facts)
    out = tune(lm, task, TuneConfig(method="soft", init="vocab", steps=6, eval_every=3, lr=0.1),
               output=tmp_path / "rel", progress=False)  # fmt: skip
    assert out.result["metric"] == "p@1" and out.result["relation"] == "P19"
    named = tuned_templates(str(tmp_path / "rel"))
    scorer = attach_tuned(lm, [str(tmp_path / "rel")])
    probe = probe_facts(scorer, named[0].template, task.dev)
    hits = (probe.ranks[probe.scored] == 1).mean()
    assert hits == pytest.approx(out.result["dev"]["p@1"])


def test_a_short_run_on_the_bundled_model_improves_dev(tmp_path):
    lm = load_model(device="cpu")
    task = load_tune_task(
        "{sentence} It was [MASK] .", REPO / "examples/sentiment/train.tsv",
        REPO / "examples/sentiment/dev.tsv", verbalizer="sst2",
    )  # fmt: skip
    out = tune(lm, task, TuneConfig(method="full", steps=10, eval_every=10, lr=1e-4, batch_size=16),
               progress=False)  # fmt: skip
    assert out.result["dev"]["accuracy"] > out.result["start"]["accuracy"]


def test_few_shot_sampling_is_seeded_and_per_class():
    ex = [Example({"sentence": f"s{i}"}, str(i % 2), f"m:{i}") for i in range(40)]
    a = load_tune_task("{sentence} It was [P] .", ex, ex, verbalizer=VERB, shots=5, data_seed=1)
    b = load_tune_task("{sentence} It was [P] .", ex, ex, verbalizer=VERB, shots=5, data_seed=1)
    c = load_tune_task("{sentence} It was [P] .", ex, ex, verbalizer=VERB, shots=5, data_seed=2)
    assert a.train == b.train != c.train
    assert sorted(e.label for e in a.train) == ["0"] * 5 + ["1"] * 5


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


BASE = ["tune", "--train", REPO / "examples/sentiment/train.tsv", "--verbalizer", "sst2"]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--template", "{sentence} It was [P] .", "--lr", "0"], "--lr 0"),
        (["--template", "{sentence} It was [P] .", "--steps", "0"], "--steps 0"),
        (["--template", "{sentence} It was [P] .", "--shots", "1000"], "has only"),
        (["--template", "{sentence} It was [P] .", "--batch-size", "0"], "--batch-size"),
        (["--template", "{sentence} [T] It was [P] .", "--init", "found"], "--init found"),
        (["--template", "{sentence} It was [P] .", "--method", "soft"], "has none"),
        (["--template", "[X] was born in [Y] .", "--method", "head"], "--method head"),
        (["--template", "{sentence} It was [P] .", "--method", "lora"], "PEFT"),
        (["--template", "{sentence} It was [P] .", "--output", "EXISTING"], "already exists"),
        (
            ["--template", "{sentence} It was [P] .", "--select", "cv", "--time-budget", "5"],
            "--select cv",
        ),
        (["--template", "{sentence} It was [P] .", "--cv-folds", "1"], "--cv-folds 1"),
        (["--template", "{sentence} It was [P] .", "--average-last", "0"], "--average-last"),
    ],
)
def test_bad_input_is_one_line_before_the_model_loads(tmp_path, monkeypatch, args, says):
    import autoprompt_py.model as model

    monkeypatch.setattr(model, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    if "[X]" in args[1]:
        args = ["--train", REPO / "examples/lama_mini/P19.jsonl", *args]
        base = ["tune"]
    else:
        base = BASE
    if "--method" in args and "lora" in args and have("peft"):
        pytest.skip("PEFT is installed here: the message is for its absence")
    (tmp_path / "EXISTING").mkdir()
    args = [tmp_path / "EXISTING" if a == "EXISTING" else a for a in args]
    if "--output" not in args:
        args += ["--output", tmp_path / "new"]
    r = _cli(*base, *args)
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.lower().startswith("error:")]
    assert len(errors) == 1 and says in errors[0], r.output  # one line, no traceback
    assert not (tmp_path / "new").exists()


@requires("matplotlib")
def test_plot_draws_a_tuning_curve(tiny_model_dirs, tmp_path):
    from autoprompt_py.plotting import plot_curves, read_curve

    lm = load_model(tiny_model_dirs["bert"], device="cpu")
    task = load_tune_task(fixed_trigger_template(lm), rows(), rows(), verbalizer=VERB)
    tune(lm, task, TuneConfig(method="soft", init="vocab", steps=4, eval_every=2),
         output=tmp_path / "t", progress=False)  # fmt: skip
    curve = read_curve(tmp_path / "t" / "result.json")
    assert [p[1] for p in curve.points] == [0, 2, 4] and curve.method == "tune soft"
    plot_curves([tmp_path / "t" / "result.json"], tmp_path / "c.png", x="passes")
    assert (tmp_path / "c.png").stat().st_size > 0


def test_two_torchrun_processes_equal_one(tiny_model_dirs, tmp_path):
    """Data parallel on distributed.py: the same global batch gives the same run."""
    from test_distributed import invoke, torchrun

    args = ["tune", "--model", tiny_model_dirs["bert"], "--train", REPO / "examples/sst2_mini.tsv",
            "--template", "{sentence} [T] [T] It was [MASK] .", "--verbalizer", "sst2",
            "--method", "soft", "--init", "vocab", "--steps", "4", "--eval-every", "2",
            "--batch-size", "8", "--lr", "0.1", "--no-dropout", "--quiet", "--device", "cpu"]  # fmt: skip
    r = invoke(*args, "--output", tmp_path / "one")
    assert r.exit_code == 0, r.output
    p = torchrun(*args, "--output", tmp_path / "two")
    assert p.returncode == 0, p.stderr[-2000:]
    one, two = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("one", "two"))
    assert two["world_size"] == 2
    assert [c["dev"] for c in one["curve"]] == [c["dev"] for c in two["curve"]]
    assert [c["train_loss"] or 0 for c in one["curve"]] == pytest.approx(
        [c["train_loss"] or 0 for c in two["curve"]], rel=1e-5
    )


def test_bench_tune_runs(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_tune", REPO / "scripts/bench_tune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--methods", "soft", "--steps", "2", "--evals", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| soft")]
    assert len(rows) == 1 and "×" in rows[0]


def test_predict_runs_a_tuned_folder_as_score_does(tiny_model_dirs, tmp_path):
    """predict --template TUNED_FOLDER: the folder's prompt source plugs into predict, and its
    predictions are those of the tuned prompt scored directly."""
    from autoprompt_py.prediction.models import predict
    from autoprompt_py.prediction.run import PredictConfig

    path = tiny_model_dirs["bert"]
    lm = load_model(path, device="cpu")
    task = load_tune_task("{sentence} [T] [T] It was [P] .", rows(), rows(), verbalizer=VERB)
    folder = tmp_path / "soft"
    tune(lm, task, TuneConfig(method="soft", init="random", steps=4, eval_every=2, lr=0.1),
         output=folder, progress=False)  # fmt: skip
    data = tmp_path / "new.tsv"
    data.write_text("sentence\n" + "".join(f"{s}\n" for s, _ in SENTENCES), encoding="utf-8")
    verbalizer = tmp_path / "v.json"
    verbalizer.write_text(json.dumps({"0": ["terrible", "bad"], "1": ["great"]}), "utf-8")
    config = PredictConfig(templates=(str(folder),), verbalizers=(str(verbalizer),))
    got = [r["prediction"] for r in predict(config, str(data), load_model(path, device="cpu"))]
    named = tuned_templates(str(folder))
    scorer = attach_tuned(load_model(path, device="cpu"), [str(folder)])
    want = classify(scorer, named[0].template, rows(), VERB.resolve(lm.tokenizer)).predictions
    assert got == list(want)
