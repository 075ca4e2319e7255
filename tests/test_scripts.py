"""The benchmark and demo scripts still run end to end (tiny budgets; figures not checked:
they belong to the scripts' output, not to assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from optional import requires

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run(args: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_compare_tuning_quick_runs(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_tuning", SCRIPTS / "compare_tuning.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    template = "{sentence} All in all , it was [MASK] ."
    module.main(["--quick", "--threads", "1", "--template", template, "--set", "warmup=0"])
    out, err = capsys.readouterr()
    table = [line for line in out.splitlines() if line.startswith("| quick")]
    assert len(table) == 1 + 2 * 4  # untrained; full and soft under each of the four rules
    runs = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert {r["method"] for r in runs} == {"untrained", "full", "soft:vocab"}
    assert {r["rule"] for r in runs} == {None, "best-dev", "last", "average", "cv"}
    assert all("held" in r and "test" in r for r in runs)  # the held-out split beside test
    assert all(r["template"] == template and r["set"] == "warmup=0" for r in runs)
    assert module.settings("weight_decay=0.01,dropout=false,dtype=bfloat16") == {
        "weight_decay": 0.01,
        "dropout": False,
        "dtype": "bfloat16",
    }
    with pytest.raises(SystemExit, match="'decay' is not a TuneConfig field"):
        module.settings("decay=0.01")
    with pytest.raises(SystemExit, match="seed is set per run"):
        module.settings("seed=3")
    cv = next(r for r in runs if r["rule"] == "cv")
    assert cv["kept_step"] == cv["cv"]["chosen"] == cv["steps"]


@pytest.mark.slow
def test_bench_score_runs(shared_model, shared_data):
    out = _run(
        [
            str(SCRIPTS / "bench_score.py"),
            "--model",
            str(shared_model),
            "--data",
            str(shared_data / "sst2" / "dev.tsv"),
            "--limit",
            "64",
            "--repeat",
            "1",
        ]
    )
    assert "speed-up over the pipeline" in out
    assert "predictions agreeing with the pipeline: 1.0000" in out


@pytest.mark.slow
def test_bench_search_runs(shared_model, shared_data):
    out = _run(
        [
            str(SCRIPTS / "bench_search.py"),
            "--model",
            str(shared_model),
            "--data",
            str(shared_data / "sst2"),
            "--iters",
            "2",
            "--warmup",
            "1",
            "--train-limit",
            "200",
            "--dev-limit",
            "40",
            "--threads",
            "1",
        ]
    )
    assert "ratio" in out


@pytest.mark.slow
@requires("peft")  # the demo trains a PEFT prompt-tuning adapter
def test_demo_prompt_tuning_runs(shared_model, shared_data):
    out = _run(
        [
            str(SCRIPTS / "demo_prompt_tuning.py"),
            "--model",
            str(shared_model),
            "--data",
            str(shared_data / "sst2"),
            "--steps",
            "2",
            "--train-size",
            "64",
            "--dev-size",
            "32",
            "--threads",
            "1",
        ]
    )
    assert "seed" in out


@pytest.mark.slow
def test_compare_triggers_runs(shared_model, shared_data, tmp_path):
    result = tmp_path / "trigger.json"
    _run(
        [
            "-m",
            "autoprompt_py",
            "search",
            "--model",
            str(shared_model),
            "--train",
            str(shared_data / "sst2" / "train.tsv"),
            "--train-limit",
            "200",
            "--dev",
            str(shared_data / "sst2" / "dev.tsv"),
            "--dev-limit",
            "40",
            "--template",
            "{sentence} [T] [T] [P] .",
            "--verbalizer",
            "sst2",
            "--iters",
            "1",
            "--accumulation-steps",
            "1",
            "--batch-size",
            "8",
            "--quiet",
            "--output",
            str(result),
        ]
    )
    out = _run(
        [
            str(SCRIPTS / "compare_triggers.py"),
            str(result),
            "--data",
            str(shared_data / "sst2" / "dev.tsv"),
            "--random",
            "2",
        ]
    )
    assert "[MASK]-filled trigger" in out and "random triggers" in out


@pytest.mark.slow
def test_compare_methods_runs(shared_model, shared_data, tmp_path):
    runs = tmp_path / "runs.json"
    out = _run(
        [
            str(SCRIPTS / "compare_methods.py"),
            "--quick",
            "--model",
            str(shared_model),
            "--data",
            str(shared_data),
            "--threads",
            "1",
            "--json",
            str(runs),
        ]
    )
    assert "| task | method |" in out
    written = json.loads(runs.read_text())["runs"]
    assert {r["task"] for r in written} == {"sst2", "P19"}
    assert {r["method"] for r in written} >= {"autoprompt-loss", "gcg", "gcg-restarts"}
    assert all(r["cost"]["forward_passes"] > 0 for r in written)


def test_compare_methods_fit_test_searches_on_the_test_split(shared_model, shared_data, tmp_path):
    # --fit-test: the ceiling run selects on the test rows, so its dev figure is its test figure
    runs = tmp_path / "runs.json"
    _run(
        [
            str(SCRIPTS / "compare_methods.py"),
            "--quick",
            "--fit-test",
            "--model",
            str(shared_model),
            "--data",
            str(shared_data),
            "--methods",
            "default",
            "--threads",
            "1",
            "--json",
            str(runs),
        ]
    )
    written = json.loads(runs.read_text())["runs"]
    assert {r["task"] for r in written} == {"sst2", "P19"}
    assert all(r["dev"] == pytest.approx(r["test"]) for r in written)
    assert json.loads(runs.read_text())["args"]["fit_test"] is True


@pytest.mark.slow
def test_compare_methods_scores_a_given_trigger(shared_model, shared_data, tmp_path):
    # --iters 0 with --initial-trigger scores a published trigger on the script's own splits
    runs = tmp_path / "runs.json"
    _run(
        [
            str(SCRIPTS / "compare_methods.py"),
            "--model",
            str(shared_model),
            "--data",
            str(shared_data),
            "--tasks",
            "sst2",
            "--seeds",
            "0",
            "--iters",
            "0",
            "--train-limit",
            "50",
            "--dev-limit",
            "60",
            "--methods",
            "default",
            "--initial-trigger",
            "##yat malmo tragic",
            "--json",
            str(runs),
        ]
    )
    [run] = json.loads(runs.read_text())["runs"]
    assert run["words"] == ["##yat", "malmo", "tragic"]
    assert run["iterations"] == 0 and run["cost"]["backward_passes"] == 0
    assert 0.0 <= run["test"] <= 1.0 and run["dev"] is not None


@pytest.mark.slow
def test_bench_predict_runs(shared_data):
    out = _run(
        [
            str(SCRIPTS / "bench_predict.py"),
            "--source",
            str(shared_data / "sst2" / "dev.tsv"),
            "--sizes",
            "300",
            "--rss-sizes",
            "",  # the memory runs are two more processes of the same worker
            "--pipeline-rows",
            "50",
            "--repeat",
            "1",
        ]
    )
    assert "rows/s over the pipeline's" in out and "time over the bare forward's" in out
    assert "predictions agreeing with the pipeline: 1.0000" in out


def test_bench_causal_runs():
    """On a tiny GPT-2 built by the script itself; nanoGCG raced when it is installed."""
    import importlib.util

    skip = [] if importlib.util.find_spec("nanogcg") else ["--skip-nanogcg"]
    out = _run(
        [
            str(SCRIPTS / "bench_causal.py"),
            "--iters",
            "1",
            "--search-width",
            "8",
            "--topk",
            "4",
            "--trigger-length",
            "3",
            "--copies",
            "1",
            "--repeat",
            "1",
            "--threads",
            "1",
            *skip,
        ]  # fmt: skip
    )
    assert "s/iter" in out and "plain loop" in out and "bare batched forward" in out
    diffs = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "max |ours" in line]
    assert len(diffs) == 2 and max(diffs) < 1e-4  # the same log-probabilities as the loop


def test_bench_models_runs():
    """The two-model iteration against its two single-model ones, on the bundled model and a
    perturbed copy of it (offline)."""
    out = _run(
        [
            str(SCRIPTS / "bench_models.py"),
            "--iters", "1", "--warmup", "0", "--train-limit", "16", "--dev-limit", "8",
            "--template", "{sentence} [T] [P] .", "--threads", "1",
        ]
    )  # fmt: skip
    assert "ratio (sum over rounds)" in out
