"""Every file that a fixed-seed run of each command writes (search, score, probe, labels, tune,
predict, export), on the bundled model and on tiny random models built in code, is the same as
the golden file recorded for it: the behaviour a refactor must keep.

What "the same" means, per file (``file_digest``):

* JSON (results, run records, checkpoints, configs): equal after dropping what differs from run
  to run (timings, creation time, library versions); numbers within ``TOL`` (the last bits of
  a sum depend on the summation order: the thread count, a batch's shape).
* Predictions (``.csv``, ``.tsv``, ``.jsonl``): byte for byte (they are rounded when written).
* Tensors (``.safetensors``, ``.pt``, ``.npy``): shape and dtype; small ones value by value,
  large ones by their sum, sum of squares, a random projection and values at fixed places (a
  golden file of a whole model would be megabytes), all within ``TENSOR_TOL``.
* Other text: exactly, with the run's folders written as placeholders; the tokenizer files
  that a folder copies from the model, and binary files, by their SHA-256.

Each case runs once into a folder of its own; a case may read another's folder (``<name>`` in
its arguments: ``predict`` from a tuned folder, ``export`` of a search result), which then runs
first, once for the module.

The goldens are recorded and compared on one thread (conftest.py runs every test module so),
where two runs give the same bytes. On 2 threads the JSON and the tensors still hold, but a
prediction file may differ in a last digit: a probability rounded at a boundary, or (more
often) one from weights tuned on 2 threads, which differ from run to run in their last bits.

Regenerate (only when a change of results is intended, and say why in the commit):
``python tests/test_goldens.py [case ...]``; ``--check`` compares instead of writing, and
``--threads N`` runs on N threads.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from optional import requires

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "golden"
TOL = 1e-6  # absolute, and relative above 1: what the refactor's check asks of metrics
# A weight whose gradient is zero but for float noise (a key bias: softmax ignores a shift)
# moves by about the learning rate at each Adam step, in a direction that the summation
# order decides: at 2 threads instead of 1, tune_full's key biases differ by 2e-6.
TENSOR_TOL = 1e-5

# --- the cases ---------------------------------------------------------------------------------
# <out> is the case's own folder; <gpt2>, <llama>, <roberta> the tiny models' folders (MODELS);
# <case> another case's folder. Small limits and few steps keep the module near a minute.
SENT = ["--train", "examples/sentiment/train.tsv", "--dev", "examples/sentiment/dev.tsv"]
SEARCH = [*SENT, "--train-limit", "32", "--dev-limit", "24", "--verbalizer", "sst2", "--quiet"]
# few-shot data (8 per class) and 4 steps: enough to move every trained weight
TUNE = [*SENT, "--shots", "8", "--dev-shots", "8", "--steps", "4", "--eval-every", "2"]
TUNE += ["--verbalizer", "sst2", "--quiet", "--output", "<out>/tuned"]
DEV = ["--data", "examples/sentiment/dev.tsv", "--limit", "24"]
CLASSIFY = "{sentence} It was [P] ."  # text after the slot: a continuation on a decoder
CLASSIFY_LAST = "{sentence} It was [P]"  # the slot last: the next token on a decoder
TRIGGERS = "{sentence} [T] [T] [P] ."
BORN = "[X] was born in [Y] ."

CASES: dict[str, list[str]] = {
    # restarts, GCG's buffer (method state), fluency
    "search_gcg": ["search", *SEARCH, "--template", TRIGGERS, "--iters", "2"]
    + ["--restarts", "2", "--buffer-size", "2", "--fluency", "0.5", "--seed", "1"]
    + ["--output", "<out>/result.json"],
    # AutoPrompt's step, selection by hits, calibrated dev, the mask start
    "search_autoprompt": ["search", *SEARCH, "--template", "[T] {sentence} [T] [P] ."]
    + ["--method", "autoprompt", "--iters", "3", "--select", "metric", "--calibrate"]
    + ["--initial", "mask", "--position", "sweep", "--num-cand", "5"]
    + ["--output", "<out>/result.json"],
    # relation mode, dev split from the training facts
    "search_relation": ["search", "--train", "examples/lama_mini/P19.jsonl", "--quiet"]
    + ["--template", "[X] [T] [T] [Y] .", "--iters", "2", "--dev-fraction", "0.4"]
    + ["--output", "<out>/result.json"],
    "score": ["score", *DEV, "--template", "sst2", "--verbalizer", "sst2"]
    + ["--output", "<out>/result.json"],
    "probe": ["probe", "--facts", "examples/lama_mini", "--template", BORN]
    + ["--output", "<out>/result.json"],
    # label-word search: the logistic regression over the vocabulary
    "labels": ["labels", "--train", "examples/sentiment/train.tsv", "--template", CLASSIFY]
    + ["--train-limit", "32", "--output", "<out>/verbalizer.json"],
    # each way of tuning; the folders (and their .ckpt beside) are the result
    "tune_soft": ["tune", *TUNE, "--template", TRIGGERS, "--method", "soft"],
    "tune_full": ["tune", *TUNE, "--template", CLASSIFY, "--method", "full"],
    "tune_lora": ["tune", *TUNE, "--template", CLASSIFY, "--method", "lora"],
    "tune_head": ["tune", *TUNE, "--template", CLASSIFY, "--method", "head"],
    "tune_prompt": ["tune", *TUNE, "--template", CLASSIFY, "--method", "prompt"],
    # a written template and verbalizer, with the gold labels: the metrics in the run record
    "predict": ["predict", *DEV, "--template", CLASSIFY, "--verbalizer", "sst2"]
    + ["--with-labels", "--output", "<out>/predictions.csv"],
    "predict_relation": ["predict", "--data", "examples/lama_mini/P19.jsonl", "--top-k", "3"]
    + ["--template", BORN, "--with-labels", "--output", "<out>/predictions.jsonl"],
    "predict_ensemble": ["predict", *DEV, "--template", CLASSIFY, "--template", "sst2"]
    + ["--verbalizer", "sst2", "--ensemble", "--with-labels"]
    + ["--output", "<out>/predictions.jsonl"],
    # tuned folders as the prompt (soft vectors, a PEFT adapter) and as the model (full)
    "predict_tuned_soft": ["predict", *DEV, "--template", "<tune_soft>/tuned"]
    + ["--verbalizer", "sst2", "--output", "<out>/predictions.jsonl"],
    "predict_tuned_lora": ["predict", *DEV, "--template", "<tune_lora>/tuned"]
    + ["--verbalizer", "sst2", "--output", "<out>/predictions.tsv"],
    "predict_tuned_full": ["predict", *DEV, "--model", "<tune_full>/tuned"]
    + ["--template", CLASSIFY, "--verbalizer", "sst2", "--output", "<out>/predictions.jsonl"],
    # a search result in each format, and a written template's every token
    "export_peft": ["export", "<search_gcg>/result.json", "--format", "peft"]
    + ["--out", "<out>/peft"],
    "export_optiprompt": ["export", "<search_gcg>/result.json", "--format", "optiprompt"]
    + ["--out", "<out>/optiprompt"],
    "export_embeddings": ["export", "<search_gcg>/result.json", "--format", "embeddings"]
    + ["--out", "<out>/prompt.safetensors"],
    "export_template": ["export", "--template", CLASSIFY, "--tokens", "all"]
    + ["--format", "embeddings", "--out", "<out>/prompt.safetensors"],
}
# The tiny models: a decoder reads the answer at the last token (the slot last) or scores the
# text after the slot too (a continuation); RoBERTa is a masked model with a BPE vocabulary.
MODELS = ("gpt2", "llama", "roberta")


def tiny_cases(m: str) -> dict[str, list[str]]:
    model = ["--model", f"<{m}>"]
    predictions = ["--output", "<out>/predictions.jsonl"]
    return {
        f"{m}_search": ["search", *model, *SEARCH, "--template", "{sentence} [T] [T] It was [P]"]
        + ["--iters", "2", "--search-width", "8", "--topk", "8", "--seed", "1"]
        + ["--output", "<out>/result.json"],
        f"{m}_score": ["score", *model, *DEV, "--template", CLASSIFY, "--template", CLASSIFY_LAST]
        + ["--verbalizer", "sst2", "--predictions", "--ensemble", "--calibrate"]
        + ["--output", "<out>/result.json"],
        # [Y] before text: a decoder scores each --vocab word as a continuation
        f"{m}_probe": ["probe", *model, "--facts", "examples/lama_mini", "--template", BORN]
        + ["--vocab", "examples/lama_vocab.txt", "--predictions"]
        + ["--output", "<out>/result.json"],
        f"{m}_predict": ["predict", *model, *DEV, "--template", CLASSIFY, "--verbalizer", "sst2"]
        + predictions,
        f"{m}_predict_relation": ["predict", *model, "--data", "examples/lama_mini/P19.jsonl"]
        + ["--template", "[X] was born in [Y]", "--top-k", "3", *predictions],
        f"{m}_tune_soft": ["tune", *model, *TUNE, "--template", TRIGGERS, "--method", "soft"],
        f"{m}_tune_lora": ["tune", *model, *TUNE, "--template", CLASSIFY_LAST, "--method", "lora"],
        f"{m}_predict_tuned": ["predict", *model, *DEV, "--template", f"<{m}_tune_soft>/tuned"]
        + ["--verbalizer", "sst2", *predictions],
    }


for _m in MODELS:
    CASES.update(tiny_cases(_m))
# not a command: the tiny models themselves, so that a changed builder shows as such
CASES["tiny_models"] = []

# --- what a file's golden holds ----------------------------------------------------------------
# run-dependent fields: timings, creation time, versions (PEFT's too)
DROP = {"elapsed_s", "created", "versions", "seconds", "train_seconds", "budget_overshoot"}
DROP |= {"autoprompt_py", "peft_version"}
# lists that PEFT writes from a set, in the order of the process's string hashes
SETS = {"target_modules"}
SKIP = {"README.md"}  # PEFT's model card: its version and boilerplate, nothing of ours
# the model's tokenizer, copied into a tuned folder: its hash (the text is hundreds of kB)
HASHED = {"tokenizer.json", "vocab.txt", "vocab.json", "merges.txt"}
PREDICTIONS = {".csv", ".tsv", ".jsonl"}
SMALL = 256  # tensors up to this many values are kept whole (a soft prompt, an export)
SAMPLES = 16  # values kept of a larger tensor, at fixed positions


def normalized(data: Any, places: dict[str, str]) -> Any:
    if isinstance(data, dict):
        out = {k: normalized(v, places) for k, v in data.items() if k not in DROP}
        for key in SETS & out.keys():
            if isinstance(out[key], list):
                out[key] = sorted(out[key])
        curve = out.get("curve")  # a search's [seconds, forward passes, best dev]
        if isinstance(curve, list) and curve and isinstance(curve[0], list):
            out["curve"] = [point[1:] for point in curve]
        return out
    if isinstance(data, (list, tuple)):
        return [normalized(v, places) for v in data]
    if isinstance(data, str):
        for path, name in places.items():
            data = data.replace(path, name)
        return data
    return data


def short(values) -> list[float]:
    """Float32 values as their shortest decimals (9 digits at most): the same float32s."""
    return [float(str(v)) for v in values.float().numpy()]


@functools.cache
def probes(n: int):
    """Fixed random weights and places for a tensor of ``n`` values (the same in every run)."""
    import torch

    seeded = torch.Generator().manual_seed(0)
    weights = torch.randn(n, generator=seeded, dtype=torch.float64)
    return weights, torch.randperm(n, generator=seeded)[:SAMPLES].clone()


def tensor_digest(tensor) -> dict:
    import torch

    flat = tensor.detach().reshape(-1)
    out: dict[str, Any] = {"dtype": str(tensor.dtype), "shape": list(tensor.shape)}
    if not tensor.is_floating_point():  # token ids, RNG states: exact
        out["sha256"] = hashlib.sha256(flat.numpy().tobytes()).hexdigest()
    elif flat.numel() <= SMALL:
        out["values"] = short(flat)
    else:  # sums, a random projection (moves with any one value) and values at fixed places
        wide = flat.to(torch.float64)
        weights, where = probes(len(wide))
        out["sum"] = wide.sum().item()
        out["sum_squares"] = wide.dot(wide).item()
        out["projection"] = wide.dot(weights).item()
        out["samples"] = short(flat[where])
    return out


def tree_digest(data: Any, places: dict[str, str]) -> Any:
    import torch

    if torch.is_tensor(data):
        return tensor_digest(data)
    if isinstance(data, dict):
        return {str(k): tree_digest(v, places) for k, v in data.items() if k not in DROP}
    if isinstance(data, (list, tuple)):
        return [tree_digest(v, places) for v in data]
    return normalized(data, places)


def file_digest(path: Path, places: dict[str, str]) -> Any:
    if path.suffix in PREDICTIONS:
        return path.read_text(encoding="utf-8").split("\n")  # compared exactly
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            return tree_digest({"metadata": f.metadata(), "tensors": tensors}, places)
    if path.suffix == ".pt":
        import torch

        return tree_digest(torch.load(path, weights_only=True, mmap=True), places)
    if path.suffix == ".npy":
        import numpy as np
        import torch

        return tensor_digest(torch.from_numpy(np.load(path)))
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return {"sha256": hashlib.sha256(data).hexdigest()}  # a binary file: its bytes
    if path.name in HASHED:
        return {"sha256": hashlib.sha256(normalized(text, places).encode()).hexdigest()}
    try:
        return normalized(json.loads(text), places)
    except json.JSONDecodeError:
        return normalized(text, places).split("\n")  # another text (a template): exactly


def folder_digest(folder: Path, places: dict[str, str]) -> dict:
    """Relative path -> digest of every file under ``folder``: a file that appears or goes
    missing fails the comparison too."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in SKIP)
    return {p.relative_to(folder).as_posix(): file_digest(p, places) for p in files}


def differences(actual: Any, golden: Any, where: str = "", tol: float = TOL) -> list[str]:
    """Where ``actual`` differs from ``golden``: numbers beyond ``tol`` (a tensor's beyond
    ``TENSOR_TOL``), anything else at all."""
    if isinstance(golden, float) or isinstance(actual, float):
        if isinstance(actual, (int, float)) and isinstance(golden, (int, float)):
            if math.isclose(actual, golden, rel_tol=tol, abs_tol=tol):
                return []
        return [f"{where}: {actual!r} != golden {golden!r}"]
    if isinstance(golden, dict) and isinstance(actual, dict):
        tol = TENSOR_TOL if {"dtype", "shape"} <= golden.keys() else tol
        out = [f"{where}/{k}: missing" for k in golden if k not in actual]
        out += [f"{where}/{k}: not in the golden file" for k in actual if k not in golden]
        for k in (k for k in golden if k in actual):
            out += differences(actual[k], golden[k], f"{where}/{k}", tol)
        return out
    if isinstance(golden, list) and isinstance(actual, list):
        pairs = enumerate(zip(actual, golden))
        out = [d for i, (a, g) in pairs for d in differences(a, g, f"{where}[{i}]", tol)]
        if len(actual) != len(golden):
            out.insert(0, f"{where}: {len(actual)} items != golden {len(golden)}")
        return out
    if actual == golden:
        return []
    return [f"{where}: {actual!r} != golden {golden!r}{rounding(actual, golden)}"]


def rounding(actual: Any, golden: Any) -> str:
    """A note when two texts differ only in numbers' last written digits: what another
    summation order (another thread count) gives, not a change of behaviour."""
    number = r"-?\d+\.?\d*(?:e-?\d+)?"
    if not (isinstance(actual, str) and isinstance(golden, str)):
        return ""
    if re.split(number, actual) != re.split(number, golden):
        return ""
    pairs = zip(re.findall(number, actual), re.findall(number, golden))
    if all(abs(float(a) - float(g)) <= 2.5e-6 for a, g in pairs):
        return " (numbers differ in their last digits only: another summation order?)"
    return ""


def dumps(data: Any) -> str:
    """JSON with one line for each list of numbers (a tensor's values), for short files."""
    text = json.dumps(data, indent=1, ensure_ascii=False)
    number = r"-?[0-9][0-9.eE+-]*"
    flat = re.compile(rf"\[\s*({number}(?:,\s*{number})*)\s*\]")
    return flat.sub(lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text) + "\n"


# --- running the cases -------------------------------------------------------------------------
class Runs:
    """Runs each case once into ``root/<case>`` (the cases it reads first) and keeps the digest
    taken right after it ran, before another case reads its folder."""

    def __init__(self, root: Path):
        self.root = root
        self.digests: dict[str, dict] = {}
        self.models = root / "models"
        import autoprompt_py

        package = Path(autoprompt_py.__file__).parent  # the bundled model's folder is in it
        self.places = {str(package): "<package>", str(REPO): "<repo>", str(root): "<tmp>"}

    def model(self, family: str) -> Path:
        folder = self.models / family
        if not folder.exists():  # tests/ is on the path (conftest.py; the script's folder)
            from tiny_decoders import FAMILIES as DECODERS
            from tiny_decoders import build_tiny_decoder
            from tiny_models import build_tiny_model
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            build = build_tiny_decoder if family in DECODERS else build_tiny_model
            build(family, folder)  # seeded: the same bytes on every build
        return folder

    def folder(self, name: str) -> Path:
        if name not in self.digests:
            self.digests[name] = self.run(name)
        return self.root / name

    def run(self, name: str) -> dict:
        from click.testing import CliRunner

        from autoprompt_py.cli import main

        if name == "tiny_models":
            return {m: folder_digest(self.model(m), self.places) for m in MODELS}

        def place(match: re.Match) -> str:
            key = match.group(1)
            if key == "out":
                return str(self.root / name)
            if key in MODELS:
                return str(self.model(key))
            return str(self.folder(key)) if key in CASES else match.group(0)

        args = [re.sub(r"<(\w+)>", place, a) for a in CASES[name]]
        (self.root / name).mkdir(parents=True, exist_ok=True)
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        return folder_digest(self.root / name, self.places)

    def digest(self, name: str) -> dict:
        self.folder(name)
        return self.digests[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("goldens"))


def needs_peft(name: str) -> bool:
    """A case that runs PEFT (its methods, its export format), or reads one that does."""
    args = " ".join(map(str, CASES[name]))
    if re.search(r"--method (prompt|ptuning|prefix|lora)\b|--format peft\b", args):
        return True
    return any(needs_peft(dep) for dep in re.findall(r"<(\w+)>", args) if dep in CASES)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=requires("peft") if needs_peft(n) else ()) for n in CASES]
)
def test_same_files_as_the_golden_ones(name, runs, monkeypatch):
    monkeypatch.chdir(REPO)  # the data paths are relative to the repository
    golden = json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))
    found = differences(runs.digest(name), golden)
    assert not found, f"{len(found)} differences:\n" + "\n".join(found[:30])


def main(argv: list[str]) -> int:
    import argparse
    import os
    import tempfile

    import torch

    parser = argparse.ArgumentParser(description="Write (or --check) the golden files.")
    parser.add_argument("cases", nargs="*", help=f"default: all of {', '.join(CASES)}")
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tests: 1)")
    options = parser.parse_args(argv)
    unknown = set(options.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    torch.set_num_threads(options.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.chdir(REPO)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        runs = Runs(Path(tmp))
        for case in options.cases or CASES:
            data = runs.digest(case)
            path = GOLDEN / f"{case}.json"
            if options.check:
                found = differences(data, json.loads(path.read_text(encoding="utf-8")))
                failed += bool(found)
                print(case, "same" if not found else "\n  ".join(["DIFFERS", *found[:30]]))
            else:
                path.write_text(dumps(data), encoding="utf-8")
                print("wrote", case)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
