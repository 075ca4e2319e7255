"""A found prompt seeds the prompt that trains: the ``soft`` start from a search
result is the discrete prompt itself, ``prompt`` starts as the found tokens' embeddings and
``prefix`` as their keys and values in every layer; ties keep the later checkpoint; search
then tune in one run; bad input in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from optional import requires
from test_tune import SENTENCES, VERB, rows

from autoprompt_py.cli import main
from autoprompt_py.data import Example
from autoprompt_py.model import load_model
from autoprompt_py.scoring import classify
from autoprompt_py.search import SearchConfig, load_task, run_search
from autoprompt_py.tune import TuneConfig, load_tune_task, tune
from autoprompt_py.tune.methods import build_part
from autoprompt_py.tune.run import make_objective

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "{sentence} [T] [T] It was [P] ."
SEARCH = dict(method="gcg", iters=2, search_width=4, topk=4, batch_size=3, accumulation_steps=1)


def write_rows(path: Path, n: int = 6) -> Path:
    path.write_text(
        "sentence\tlabel\n" + "".join(f"{s}\t{lab}\n" for s, lab in SENTENCES[:n]), "utf-8"
    )
    return path


def verbalizer_file(tmp_path: Path) -> Path:
    path = tmp_path / "verb.json"
    path.write_text(json.dumps({"0": ["terrible", "bad"], "1": ["great"]}), "utf-8")
    return path


@pytest.fixture
def searched(tiny_model_dirs, tmp_path):
    """A real search result of the tiny BERT (2 iterations), its model and data files."""
    lm = load_model(tiny_model_dirs["bert"], device="cpu")
    data = write_rows(tmp_path / "rows.tsv")
    verb = verbalizer_file(tmp_path)
    task = load_task(TEMPLATE, data, data, str(verb))
    out = tmp_path / "s.json"
    run_search(lm, task, SearchConfig(**SEARCH), output=out, progress=False)
    return lm, out, data, verb


def test_soft_from_a_search_result_is_the_discrete_prompt(searched):
    lm, result_file, data, verb = searched
    result = json.loads(result_file.read_text())
    task = load_tune_task(str(result_file), data, data, verbalizer=str(verb))
    assert task.found.origin == "search" and list(task.found.token_ids) == result["trigger"]["ids"]
    config = TuneConfig(steps=2, eval_every=1, batch_size=3)  # default init: auto
    objective = make_objective(lm, task, config)
    part = build_part(lm, task, config, objective)
    ids = torch.tensor(result["trigger"]["ids"])
    assert torch.equal(part.vectors.detach(), lm.embeddings.detach()[ids].float())
    # the start scores every example exactly as the discrete prompt does
    encoded = objective.encode(task.dev, part.template)
    part.train_mode(False)
    with torch.no_grad():
        got = objective.scores(part.logits(encoded.batch(range(len(encoded)), lm.device)))
    want = classify(lm, task.template, task.dev, task.verbalizer.resolve(lm.tokenizer))
    torch.testing.assert_close(got, torch.as_tensor(want.scores).float(), atol=1e-5, rtol=1e-5)
    out = tune(lm, task, config, progress=False)
    m = out.result["metric"]
    assert out.result["init"] == "found" and out.result["seed"]["kind"] == "search"
    assert abs(out.result["start"][m] - result["dev"][m]) <= 1e-6  # step 0 = where search ended
    assert out.result["dev"][m] >= result["dev"][m]
    assert out.result["select"]["rule"] == "best-dev"  # auto, from a found start: never below it


@requires("peft")
def test_prompt_starts_as_the_found_tokens_and_prefix_as_their_keys_and_values(searched):
    lm, result_file, data, verb = searched
    ids = json.loads(result_file.read_text())["trigger"]["ids"]
    task = load_tune_task(str(result_file), data, data, verbalizer=str(verb))
    config = TuneConfig(method="prompt")
    part = build_part(lm, task, config, make_objective(lm, task, config))
    want = lm.embeddings.detach()[torch.tensor(ids)].float()
    with torch.no_grad():
        torch.testing.assert_close(part.prompts(1)[0], want, rtol=0, atol=0)
    # prefix: a fresh model (PEFT wraps it), keys and values from a direct forward of the tokens
    lm = load_model(lm.name, device="cpu")
    config = TuneConfig(method="prefix")
    part = build_part(lm, task, config, make_objective(lm, task, config))
    base = part.peft_model.get_base_model().base_model
    with torch.no_grad():
        hidden = base(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        cache = part.peft_model.get_prompt(1)
    heads = lm.model.config.num_attention_heads
    for i, (layer, h) in enumerate(zip(base.encoder.layer, hidden)):
        attention = layer.attention.self
        for got, proj in ((cache.layers[i].keys, attention.key),
                          (cache.layers[i].values, attention.value)):  # fmt: skip
            direct = proj(h[0]).view(len(ids), heads, -1).transpose(0, 1)  # [heads, n, d]
            torch.testing.assert_close(got[0], direct, atol=1e-5, rtol=1e-5)
    assert part.start_ids == ids


def test_a_tie_keeps_the_later_checkpoint(tiny_model_dirs, monkeypatch):
    lm = load_model(tiny_model_dirs["bert"], device="cpu")
    task = load_tune_task(TEMPLATE, rows(), rows(), verbalizer=VERB)
    # a step too small to move any prediction: every evaluation ties with the start
    config = TuneConfig(init="vocab", lr=1e-12, steps=4, eval_every=2, batch_size=3,
                        select="best-dev")  # fmt: skip
    out = tune(lm, task, config, progress=False)
    devs = [p["dev"] for p in out.result["curve"]]
    assert len(set(devs)) == 1 and out.result["best_step"] == 4
    assert all(isinstance(p["dev_loss"], float) for p in out.result["curve"])
    assert out.result["dev"]["step_size"] == pytest.approx(1 / 6) and out.result["dev"]["small"]
    # the start is kept only when strictly better; a later tie with the best wins
    import autoprompt_py.tune.loop as loop

    for values, best in (([0.5, 0.5, 0.4], 2), ([0.6, 0.5, 0.6], 4), ([0.6, 0.5, 0.5], 0)):
        it = iter(values + [0.0] * 4)  # the rest: the projection and test scores
        monkeypatch.setattr(loop, "evaluate_with_loss", lambda *a, it=it: (next(it), None, 0.1))
        out = tune(load_model(tiny_model_dirs["bert"], device="cpu"), task, config, progress=False)
        assert out.result["best_step"] == best, values


def test_dev_loss_is_the_training_loss_on_dev(tiny_model_dirs):
    path = tiny_model_dirs["roberta"]
    task = load_tune_task(TEMPLATE, rows(), rows(), verbalizer=VERB)
    config = TuneConfig(init="vocab", steps=1, eval_every=1, batch_size=3)
    out = tune(load_model(path, device="cpu"), task, config, progress=False)
    # step 0 from the same seeded start: the cross-entropy over the labels' scores on dev
    lm = load_model(path, device="cpu")
    objective = make_objective(lm, task, config)
    part = build_part(lm, task, config, objective)
    dev = objective.encode(task.dev, part.template)
    part.train_mode(False)
    with torch.no_grad():
        scores = objective.scores(part.logits(dev.batch(range(len(dev)), lm.device)))
    want = torch.nn.functional.cross_entropy(scores, dev.gold).item()
    assert out.result["curve"][0]["dev_loss"] == pytest.approx(want, rel=1e-5)
    assert out.result["start"]["dev_loss"] == out.result["curve"][0]["dev_loss"]


def test_shots_without_dev_draws_dev_apart_from_training():
    ex = [Example({"sentence": f"s{i}"}, str(i % 2), f"m:{i}") for i in range(40)]
    task = load_tune_task("{sentence} It was [P] .", ex, verbalizer=VERB, shots=4, data_seed=3)
    assert sorted(e.label for e in task.dev) == ["0"] * 4 + ["1"] * 4
    assert not {e.source for e in task.dev} & {e.source for e in task.train}
    assert task.identity["dev_shots"] == 4 and "apart from training" in task.sources["dev"]


@requires("peft")
def test_exported_prompt_and_tuned_folder_seed_the_start(searched, tmp_path):
    lm, result_file, data, verb = searched
    from autoprompt_py.export import export_prompt
    from autoprompt_py.prompt import FoundPrompt

    ids = json.loads(result_file.read_text())["trigger"]["ids"]
    exported = export_prompt(FoundPrompt.from_result(result_file, lm.tokenizer), lm,
                             "embeddings", tmp_path / "e.safetensors")  # fmt: skip
    task = load_tune_task(str(exported), data, data, verbalizer=str(verb))
    assert task.found.origin == "export" and list(task.found.token_ids) == ids
    assert task.template.trigger_ids == ids
    for fmt in ("peft", "optiprompt"):  # the folders export writes seed the same tokens
        folder = export_prompt(FoundPrompt.from_result(result_file, lm.tokenizer), lm, fmt,
                               tmp_path / fmt)  # fmt: skip
        other = load_tune_task(str(folder), data, data, verbalizer=str(verb))
        assert other.found.origin == "export" and other.template.trigger_ids == ids, fmt
    first = tune(lm, task, TuneConfig(steps=2, eval_every=1, batch_size=3, lr=0.1),
                 output=tmp_path / "t", progress=False)  # fmt: skip
    # the tuned soft folder: the next run continues from its trained vectors
    again = load_tune_task(str(tmp_path / "t"), data, data, verbalizer=str(verb))
    assert again.found.origin == "tuned" and again.found.method == "soft"
    config = TuneConfig(steps=1, eval_every=1, batch_size=3)
    part = build_part(lm, again, config, make_objective(lm, again, config))
    torch.testing.assert_close(part.vectors.detach(), first.part.vectors.detach().cpu())


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_search_then_tune_in_one_run(tiny_model_dirs, tmp_path):
    data = write_rows(tmp_path / "rows.tsv")
    verb = verbalizer_file(tmp_path)
    args = ["tune", "--model", tiny_model_dirs["bert"], "--template", TEMPLATE, "--verbalizer",
            verb, "--train", data, "--dev", data, "--eval-every", "1",
            "--batch-size", "3", "--search-budget", "30", "--search-iters", "2",
            "--search-option", "search_width=4", "--search-option", "topk=4",
            "--search-option", "accumulation_steps=1", "--quiet", "--output", tmp_path / "t"]  # fmt: skip
    r = _cli(*args, "--steps", "3")
    assert r.exit_code == 0, r.output
    search = json.loads((tmp_path / "t.search.json").read_text())
    result = json.loads((tmp_path / "t" / "result.json").read_text())
    m = result["metric"]
    assert search["iterations"] == 2 and search["config"]["topk"] == 4
    assert result["stages"]["search"]["file"] == str(tmp_path / "t.search.json")
    assert result["stages"]["search"]["seconds"] > 0 and result["stages"]["tune"]["seconds"] > 0
    assert result["trigger_ids"] == search["trigger"]["ids"] and result["init"] == "found"
    assert abs(result["curve"][0]["dev"] - search["dev"][m]) <= 1e-6
    assert result["dev"][m] >= search["dev"][m]
    assert "dev has 6 examples" in r.output
    # again without --force: refused; with --resume: the search result is reused (and the
    # finished training stays as it was)
    before = (tmp_path / "t.search.json").read_text()
    r = _cli(*args, "--steps", "3")
    assert r.exit_code == 2 and "already exists" in r.output, r.output
    r = _cli(*args, "--steps", "3", "--resume")
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "t" / "result.json").read_text())
    assert result["stages"]["search"]["reused"] and result["steps"] == 3
    assert (tmp_path / "t.search.json").read_text() == before


@pytest.mark.parametrize(
    "args, says",
    [
        pytest.param(
            ["--template", "{sentence} It was [P] .", "--init", "found", "--method", "prompt"],
            "pass a search result",
            marks=requires("peft"),
        ),  # fmt: skip
        (["--template", "{sentence} It was [P] .", "--search-budget", "5"], "no trigger slot"),
        (["--template", TEMPLATE, "--search-budget", "5", "--search-option", "x=1"], "KEY=VALUE"),
        (["--template", "SEARCHED", "--search-budget", "5"], "no open [T]"),
        (["--template", "SEARCHED", "--model", "ROBERTA"], "--model"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_written(searched, tiny_model_dirs, tmp_path, args,
                                                     says):  # fmt: skip
    _, result_file, data, verb = searched
    subs = {"SEARCHED": result_file, "ROBERTA": tiny_model_dirs["roberta"]}
    args = [subs.get(a, a) for a in args]
    if "--model" not in args:
        args += ["--model", tiny_model_dirs["bert"]]
    r = _cli("tune", "--train", data, "--verbalizer", verb, *args, "--output", tmp_path / "new")
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.lower().startswith("error:")]
    assert len(errors) == 1 and says in errors[0], r.output
    if says == "--model":  # another model than the search's: both named
        assert str(tiny_model_dirs["bert"]) in errors[0], errors[0]
        assert str(tiny_model_dirs["roberta"]) in errors[0], errors[0]
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.search.json").exists()


def test_bundled_model_search_then_tune_never_below_the_search(tmp_path):
    """Search then tune as a user chains them: search 5 iterations, tune 20 steps from its
    result with default flags."""
    train, dev = REPO / "examples/sentiment/train.tsv", REPO / "examples/sentiment/dev.tsv"
    common = ["--verbalizer", "sst2", "--train", train, "--dev", dev, "--quiet"]
    r = _cli("search", "--template", "{sentence} [T] [T] [T] It was [MASK] .", "--iters", "5",
             "--search-width", "8", "--accumulation-steps", "2", "--train-eval-limit", "32", *common, "--output", tmp_path / "s.json")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = _cli("tune", "--template", tmp_path / "s.json", "--steps", "20", *common,
             "--output", tmp_path / "t")  # fmt: skip
    assert r.exit_code == 0, r.output
    search = json.loads((tmp_path / "s.json").read_text())
    result = json.loads((tmp_path / "t" / "result.json").read_text())
    m = result["metric"]
    assert abs(result["curve"][0]["dev"] - search["dev"][m]) <= 1e-6
    assert result["dev"][m] >= search["dev"][m]


@requires("peft")
def test_compare_seeds_quick_runs(capsys, tmp_path):
    """scripts/compare_seeds.py end to end on its reduced setting (bundled model and data)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "compare_seeds", REPO / "scripts/compare_seeds.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--output", str(tmp_path / "runs.json")])
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith("| sentiment |")]
    assert len(rows) == 4 + 1  # soft and prefix × found and text, and the equal-seconds row
    runs = json.loads((tmp_path / "runs.json").read_text())
    found = next(r for r in runs["runs"] if (r["method"], r["start"]) == ("soft", "found"))
    assert found["points"][0]["dev"] == pytest.approx(found["search_dev"], abs=1e-6)
    assert runs["equal_seconds"][0]["alone_steps"] >= 4
    (tmp_path / "log.jsonl").write_text(err, encoding="utf-8")
    plot = ["--plot", str(tmp_path / "c.png")] if importlib.util.find_spec("matplotlib") else []
    module.main(["--report", str(tmp_path / "log.jsonl"), "--points", "0,2,4", *plot])
    assert capsys.readouterr().out.count("| sentiment |") == 5
    assert not plot or (tmp_path / "c.png").stat().st_size > 0


def test_an_existing_search_result_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    import autoprompt_py.model as model

    monkeypatch.setattr(model, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    (tmp_path / "t.search.json").write_text("{}", "utf-8")
    r = _cli("tune", "--template", "{sentence} [T] [T] It was [MASK] .", "--verbalizer", "sst2",
             "--train", REPO / "examples/sentiment/train.tsv", "--search-budget", "5",
             "--output", tmp_path / "t")  # fmt: skip
    assert r.exit_code == 2 and "already exists" in r.output, r.output
    assert (tmp_path / "t.search.json").read_text() == "{}" and not (tmp_path / "t").exists()
