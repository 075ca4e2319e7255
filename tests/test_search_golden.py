"""Fixed-seed searches, a score and a probe run give the same JSON as the golden files made
before the search package was split into methods, engine and state, minus what differs from run to run: timings,
creation time and library versions.

Regenerate (only when a change of results is intended, and say why in the commit):
``python tests/test_search_golden.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "golden"
SENT = ["--train", "examples/sentiment/train.tsv", "--dev", "examples/sentiment/dev.tsv"]
SENT += ["--train-limit", "32", "--dev-limit", "24", "--verbalizer", "sst2", "--quiet"]
CASES = {
    # restarts, GCG's buffer (method state), fluency
    "search_gcg": ["search", *SENT, "--template", "{sentence} [T] [T] [P] .", "--iters", "2"]
    + ["--restarts", "2", "--buffer-size", "2", "--fluency", "0.5", "--seed", "1"],
    # AutoPrompt's step, selection by hits, calibrated dev, the mask start
    "search_autoprompt": ["search", *SENT, "--template", "[T] {sentence} [T] [P] ."]
    + ["--method", "autoprompt", "--iters", "3", "--select", "metric", "--calibrate"]
    + ["--initial", "mask", "--position", "sweep", "--num-cand", "5"],
    # relation mode, dev split from the training facts
    "search_relation": ["search", "--train", "examples/lama_mini/P19.jsonl", "--quiet"]
    + ["--template", "[X] [T] [T] [Y] .", "--iters", "2", "--dev-fraction", "0.4"],
    "score": ["score", "--data", "examples/sentiment/dev.tsv", "--template", "sst2"]
    + ["--verbalizer", "sst2", "--limit", "24"],
    "probe": ["probe", "--facts", "examples/lama_mini", "--template", "[X] was born in [Y] ."],
}
# run-dependent fields; ``budget_overshoot`` came after the golden files and is absent from them
DROP = {"elapsed_s", "created", "versions", "seconds", "budget_overshoot"}
# search settings added since the golden files were made, whose defaults leave a search as it
# was (the N best kept: the best only; one model): a search records them at these defaults,
# and the rest of its JSON must equal the golden file
NEW_SETTINGS = {"keep": 1, "across": "mean"}


def normalized(data):
    if isinstance(data, dict):
        out = {k: normalized(v) for k, v in data.items() if k not in DROP}
        if "curve" in out:  # [seconds, forward passes, best dev]
            out["curve"] = [point[1:] for point in out["curve"]]
        return out
    if isinstance(data, list):
        return [normalized(v) for v in data]
    if isinstance(data, float):
        return float(f"{data:.5g}")  # the last bits of a sum vary with the thread count
    return data


def run_case(name: str, out_dir: Path) -> dict:
    from click.testing import CliRunner

    from autoprompt_py.cli import main

    output = out_dir / f"{name}.json"
    result = CliRunner().invoke(main, [*CASES[name], "--output", str(output)])
    assert result.exit_code == 0, result.output
    data = json.loads(output.read_text(encoding="utf-8"))
    if name.startswith("search"):
        for key, default in NEW_SETTINGS.items():
            assert data["config"].pop(key) == default, key
    else:  # score and probe results now record the model as every result does
        assert data.pop("model")["kind"] == data["config"]["model_kind"]
    return normalized(data)


@pytest.mark.parametrize("name", list(CASES))
def test_same_json_as_before_the_redesign(name, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    golden = json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))
    assert run_case(name, tmp_path) == golden


if __name__ == "__main__":
    import os
    import tempfile

    os.chdir(REPO)
    with tempfile.TemporaryDirectory() as tmp:
        for case in sys.argv[1:] or CASES:
            data = run_case(case, Path(tmp))
            text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
            (GOLDEN / f"{case}.json").write_text(text, encoding="utf-8")
            print("wrote", case)
