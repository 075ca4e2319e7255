"""The product's matrix, end to end through the CLI: every job (``score``, ``probe``,
``search`` each method, ``labels``, ``tune`` each method, ``predict``, ``export`` each format)
on every kind (a masked LM; decoders with learned positions without bos (GPT-2), rotary
positions with bos (Llama), learned positions with bos (OPT)) in both modes (classification,
relations), with the template shapes users write: the slot last, text after the slot,
label words of several tokens.

A cell either runs and writes a result whose figures are read back, or is refused by design:
exit code 2, one ``error:`` line, and docs/decoders.md's table row for that job says so
(``REFUSED``). A new job, method, kind or shape is a row here, not a new test file.

Tiny random models (``tiny_models.py``, ``tiny_decoders.py``), tiny data and one or two steps:
each cell runs every code path its job takes, not a useful prompt.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from optional import requires

from autoprompt_py.cli import main

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "decoders.md"

# kind -> (fixture that maps family -> folder, family)
KINDS = {
    "masked": ("tiny_model_dirs", "bert"),
    "gpt2": ("tiny_decoder_dirs", "gpt2"),  # learned positions, no bos
    "llama": ("tiny_decoder_dirs", "llama"),  # rotary positions, bos
    "opt": ("tiny_decoder_dirs", "opt"),  # learned positions, bos (</s>)
    # read through its chat template (--chat): Llama 3's headers, bos written by the template
    "llama-chat": ("tiny_chat_dirs", "llama-llama3"),
    # two masked LMs sharing one vocabulary, --model given twice
    "masked-pair": ("tiny_model_pair", None),
}
DECODERS = ("gpt2", "llama", "opt", "llama-chat")
CHAT = ("llama-chat",)
SEVERAL = ("masked-pair",)

# shape -> (template before the triggers are added, multi-token words?)
CLASSIFICATION = {
    "last": "{sentence} It was [P]",
    "after": "{sentence} It was [P] .",
    "multi": "{sentence} It was [P]",
}
RELATIONS = {"last": "[X] is located in [Y]", "after": "[X] is located in [Y] ."}
SHAPES = {"classification": tuple(CLASSIFICATION), "relations": tuple(RELATIONS)}
TUNE_METHODS = ("soft", "prompt", "ptuning", "prefix", "lora", "full", "head")
SEARCH_METHODS = ("gcg", "autoprompt")
EXPORT_FORMATS = ("peft", "optiprompt", "embeddings")

# (job, kind group, mode, shape) -> (what the error line says, what docs/decoders.md's row for
# the job says of it); kind group "decoder" is every decoder; "any" every kind
REFUSED = {
    ("labels", "decoder", "classification", "after"): ("'labels'", "slot last"),
    ("probe", "decoder", "relations", "after"): ("[Y]", "`[Y]` must be last"),
    ("predict", "decoder", "relations", "after"): ("[Y]", "as `score`"),
    ("search", "decoder", "relations", "after"): ("[Y]", "relations need `[Y]` last"),
    ("tune", "decoder", "relations", "after"): ("[Y]", "relations need `[Y]` last"),
    ("tune:head", "any", "relations", "last"): ("--method head", "no fixed set of labels"),
    ("tune:head", "any", "relations", "after"): ("--method head", "no fixed set of labels"),
    **{
        ("tune:head", "chat", "classification", shape): ("--chat", "refused: a classification head")
        for shape in CLASSIFICATION
    },
    **{
        (job, "several", mode, shape): ("--model given 2 times", "refused: one model")
        for job in ("tune", "export")
        for mode in SHAPES
        for shape in SHAPES[mode]
    },
}
DOC_ROWS = {"tune:head": "`tune` `head`", "tune": "`tune` `soft`", "search": "`search`",
            "labels": "`labels`", "probe": "`probe` over the whole vocabulary",
            "predict": "`predict`", "export": "`export`"}  # fmt: skip


def refusal(job: str, kind: str, mode: str, shape: str):
    groups = ("chat",) if kind in CHAT else ("several",) if kind in SEVERAL else ()
    for group in (*groups, "decoder" if kind in DECODERS else "masked", "any"):
        for key in (job, job.split(":")[0]):
            if (key, group, mode, shape) in REFUSED:
                return key, REFUSED[(key, group, mode, shape)]
    return None


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def model_of(request, kind: str) -> Path | list[Path]:
    fixture, family = KINDS[kind]
    models = request.getfixturevalue(fixture)
    return models if family is None else models[family]


def model_args(request, kind: str, model: Path | None = None, device: bool = True) -> list:
    """``--model`` (the kind's, each of several, or ``model``), on the CPU, and ``--chat``
    for a chat kind (``export`` takes neither: it reads the chat the result records)."""
    chat = ["--chat"] if kind in CHAT and device else []
    models = model_of(request, kind) if model is None else model
    models = models if isinstance(models, list) else [models]
    return [*(a for m in models for a in ("--model", m)), *(["--device", "cpu"] * device), *chat]


@pytest.fixture(scope="module")
def tiny_model_pair(tiny_model_dirs, tmp_path_factory) -> list[Path]:
    """The tiny BERT and a copy of it with other weights: one vocabulary, two models."""
    import shutil

    import torch
    from transformers import AutoModelForMaskedLM

    other = tmp_path_factory.mktemp("pair") / "bert-other"
    shutil.copytree(tiny_model_dirs["bert"], other)
    model = AutoModelForMaskedLM.from_pretrained(other)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(other)
    return [tiny_model_dirs["bert"], other]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Six training and four dev rows of each mode (both classes; one-token objects). One
    training and one dev row is longer than every model's positions, so that every cell
    truncates, with the room each method's virtual tokens take."""
    root = tmp_path_factory.mktemp("matrix-data")
    rows = (REPO / "examples" / "sentiment" / "train.tsv").read_text().splitlines()
    neg = [r for r in rows[1:] if r.endswith("\t0")]
    pos = [r for r in rows[1:] if r.endswith("\t1")]
    long = " ".join(["the film was good and the acting was bad"] * 20)
    (root / "train.tsv").write_text("\n".join([rows[0], *neg[:3], *pos[:2], long + "\t1"]) + "\n")
    (root / "dev.tsv").write_text("\n".join([rows[0], *neg[3:5], pos[3], long + "\t1"]) + "\n")
    facts = (REPO / "examples" / "P19" / "train.jsonl").read_text().splitlines()
    fact = json.loads(facts[0])
    long_fact = json.dumps({**fact, "sub_label": " ".join([fact["sub_label"]] * 150)})
    (root / "facts-train.jsonl").write_text("\n".join([*facts[1:6], long_fact]) + "\n")
    (root / "facts-dev.jsonl").write_text("\n".join([*facts[6:9], long_fact]) + "\n")
    # label words of several tokens in every tokenizer: two words each
    (root / "multi.json").write_text(json.dumps({"0": ["really bad"], "1": ["very good"]}))
    return root


def template_for(mode: str, shape: str, triggers: int = 0) -> str:
    base = CLASSIFICATION[shape] if mode == "classification" else RELATIONS[shape]
    if not triggers:
        return base
    slots = " ".join(["[T]"] * triggers)
    return base.replace("{sentence}", "{sentence} " + slots).replace("[X]", "[X] " + slots)


def task_args(data: dict | Path, mode: str, shape: str, *, train: bool = True) -> list:
    """The data and label options of a job in ``mode``."""
    root = Path(data)
    if mode == "classification":
        verbalizer = root / "multi.json" if shape == "multi" else "sst2"
        files = ["--train", root / "train.tsv", "--dev", root / "dev.tsv"] if train else []
        return [*files, "--verbalizer", verbalizer]
    return (
        ["--train", root / "facts-train.jsonl", "--dev", root / "facts-dev.jsonl"] if train else []
    )


def check_refused_or_ran(r, job: str, kind: str, mode: str, shape: str) -> bool:
    """True if the cell ran; a refused-by-design cell is checked here (False)."""
    refused = refusal(job, kind, mode, shape)
    if refused is None:
        assert r.exit_code == 0, (job, kind, mode, shape, r.output)
        assert "Traceback" not in r.output
        return True
    key, (says, documented) = refused
    assert r.exit_code == 2, (job, kind, mode, shape, r.exit_code, r.output)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.stderr
    assert says in errors[0], errors[0]
    row = next(ln for ln in DOCS.read_text().splitlines() if ln.startswith(f"| {DOC_ROWS[key]}"))
    assert documented in row, (row, documented)
    return False


def records_kind(record: dict, kind: str) -> None:
    """Every result and run record names the model and its kind."""
    assert record["model"]["kind"] == ("causal" if kind in DECODERS else "masked"), record["model"]


def per_model(row: dict) -> list[dict]:
    """A score row's figures on each model (several models: the transfer table's columns)."""
    return row["models"] if "models" in row else [row]


def mean_of(row: dict, metric: str) -> float:
    """A score row's figure: the model's own, or the mean over the models."""
    return row["mean"][metric] if "mean" in row else row[metric]


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and 0.0 <= x <= 1.0


# cells that run PEFT (its methods, its export format): skipped where it is not installed
NEEDS_PEFT = {"prompt", "ptuning", "prefix", "lora", "peft"}


def cells(job_shapes: dict[str, tuple[str, ...]], extra: tuple = ((),)) -> list:
    return [
        pytest.param(
            kind,
            mode,
            shape,
            *e,
            id="-".join([kind, mode, shape, *map(str, e)]),
            marks=requires("peft") if NEEDS_PEFT & set(e) else (),
        )  # fmt: skip
        for kind in KINDS
        for mode, shapes in job_shapes.items()
        for shape in shapes
        for e in extra
    ]


# -- score and probe ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind, mode, shape", cells({"classification": SHAPES["classification"]}))
def test_score(request, data, tmp_path, kind, mode, shape):
    out = tmp_path / "scores.json"
    r = invoke("score", *model_args(request, kind), "--data",
               data / "dev.tsv", "--template", template_for(mode, shape), "--bootstrap", "0",
               *task_args(data, mode, shape, train=False), "--output", out)  # fmt: skip
    if check_refused_or_ran(r, "score", kind, mode, shape):
        records_kind(json.loads(out.read_text()), kind)
        row = json.loads(out.read_text())["templates"][0]
        for figures in per_model(row):
            assert finite(figures["accuracy"]) and figures["n"] == 4


@pytest.mark.parametrize("kind, mode, shape", cells({"relations": SHAPES["relations"]}))
def test_probe(request, data, tmp_path, kind, mode, shape):
    out = tmp_path / "probe.json"
    r = invoke("probe", *model_args(request, kind), "--facts",
               data / "facts-dev.jsonl", "--template", template_for(mode, shape), "--output",
               out)  # fmt: skip
    if check_refused_or_ran(r, "probe", kind, mode, shape):
        records_kind(json.loads(out.read_text()), kind)
        record = json.loads(out.read_text())
        micros = (
            [record["micro"]]
            if "micro" in record
            else [v[record["reported"]]["micro"] for v in record["averages"].values()]
        )  # several models: each model's averages
        for micro in micros:
            assert finite(micro["p@1"]) and finite(micro["mrr"]) and micro["n"] >= 1


# -- search, then what uses its result (export, tune from it, score it again) ---------------------


def search(request, data, out: Path, kind, mode, shape, method="gcg"):
    return invoke("search", *model_args(request, kind), "--template",
                  template_for(mode, shape, triggers=2), *task_args(data, mode, shape),
                  "--method", method, "--iters", "1", "--seed", "0", "--output", out,
                  "--quiet")  # fmt: skip


@pytest.mark.parametrize(
    "kind, mode, shape, method", cells(SHAPES, extra=[(m,) for m in SEARCH_METHODS])
)
def test_search(request, data, tmp_path, kind, mode, shape, method):
    out = tmp_path / "found.json"
    r = search(request, data, out, kind, mode, shape, method)
    if not check_refused_or_ran(r, "search", kind, mode, shape):
        return
    found = json.loads(out.read_text())
    metric = found["metric"]
    records_kind(found, kind)
    # the found prompt, scored again from its result, gives the recorded dev metric
    if mode == "classification":
        again = tmp_path / "again.json"
        r = invoke("score", *model_args(request, kind), "--data",
                   data / "dev.tsv", "--template", out, "--bootstrap", "0", "--output", again,
                   *task_args(data, mode, shape, train=False))  # fmt: skip
        assert r.exit_code == 0, r.output
        value = mean_of(json.loads(again.read_text())["templates"][0], "accuracy")
        assert value == pytest.approx(found["dev"][metric], abs=1e-6)
    else:
        assert finite(found["dev"][metric])


@pytest.fixture(scope="module")
def found(request, data, tmp_path_factory):
    """kind, mode, shape -> a search result (one GCG iteration), made once."""
    made: dict = {}

    def get(kind, mode, shape):
        if (kind, mode, shape) not in made:
            out = tmp_path_factory.mktemp("found") / "found.json"
            r = search(request, data, out, kind, mode, shape)
            made[kind, mode, shape] = out if r.exit_code == 0 else None
        return made[kind, mode, shape]

    return get


@pytest.mark.parametrize("kind, mode, shape, fmt", cells(
    {"classification": ("last",)}, extra=[(f,) for f in EXPORT_FORMATS]))  # fmt: skip
def test_export(request, found, tmp_path, kind, mode, shape, fmt):
    out = tmp_path / ("found.safetensors" if fmt == "embeddings" else "exported")
    r = invoke("export", found(kind, mode, shape), *model_args(request, kind, device=False),
               "--format", fmt, "--out", out)  # fmt: skip
    if check_refused_or_ran(r, "export", kind, mode, shape):
        assert out.exists()


# -- labels ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, mode, shape", cells({"classification": ("last", "after")}))
def test_labels(request, data, tmp_path, kind, mode, shape):
    out = tmp_path / "words.json"
    r = invoke("labels", *model_args(request, kind), "--train",
               data / "train.tsv", "--template", template_for(mode, shape), "--per-class", "2",
               "--output", out)  # fmt: skip
    if check_refused_or_ran(r, "labels", kind, mode, shape):
        words = json.loads(out.read_text())
        assert sorted(words) == ["0", "1"] and all(len(w) == 2 for w in words.values())
        records_kind(json.loads(Path(f"{out}.run.json").read_text()), kind)


# -- tune, each method, then predict with what it wrote ------------------------------------------


@pytest.mark.parametrize(
    "kind, mode, shape, method", cells(SHAPES, extra=[(m,) for m in TUNE_METHODS])
)
def test_tune(request, data, found, tmp_path, kind, mode, shape, method):
    # soft starts from a search result (a found prompt seeds it); the others from the template
    seeded = method == "soft" and refusal("search", kind, mode, shape) is None
    template = found(kind, mode, shape) if seeded else template_for(mode, shape)
    if method == "soft" and not seeded:
        template = template_for(mode, shape, triggers=2)
    out = tmp_path / "tuned"
    r = invoke("tune", *model_args(request, kind), "--template",
               template, *task_args(data, mode, shape), "--method", method, "--steps", "2",
               "--eval-every", "1", "--batch-size", "3",
               "--output", out, "--quiet")  # fmt: skip
    if not check_refused_or_ran(r, f"tune:{method}", kind, mode, shape):
        return
    result = json.loads((out / "result.json").read_text())
    metric = result["metric"]
    assert result["steps"] == 2 and finite(result["dev"][metric])
    records_kind(result, kind)
    if seeded:  # step 0 is the found prompt: the search's dev metric
        searched = json.loads(Path(template).read_text())
        assert result["curve"][0]["dev"] == pytest.approx(searched["dev"][metric], abs=1e-6)
    if method == "head":
        return  # a classifier folder, read with --model (test_tune.py)
    # predict labels the dev file with the tuned folder (full: the folder is the model)
    rows = tmp_path / "labels.jsonl"
    data_file = data / ("dev.tsv" if mode == "classification" else "facts-dev.jsonl")
    model = out if method == "full" else model_of(request, kind)
    r = invoke("predict", *model_args(request, kind, model), "--data",
               data_file, "--template", out, *task_args(data, mode, shape, train=False),
               "--output", rows, "--with-labels", "--bootstrap", "0")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert len(rows.read_text().splitlines()) == 4


# -- predict with a written template ---------------------------------------------------------------


@pytest.mark.parametrize("kind, mode, shape", cells(SHAPES))
def test_predict(request, data, tmp_path, kind, mode, shape):
    rows = tmp_path / "labels.csv"
    data_file = data / ("dev.tsv" if mode == "classification" else "facts-dev.jsonl")
    r = invoke("predict", *model_args(request, kind), "--data",
               data_file, "--template", template_for(mode, shape),
               *task_args(data, mode, shape, train=False), "--output", rows, "--with-labels",
               "--bootstrap", "0")  # fmt: skip
    if check_refused_or_ran(r, "predict", kind, mode, shape):
        assert len(rows.read_text().splitlines()) == 5  # the header and four rows
        records_kind(json.loads(Path(f"{rows}.run.json").read_text()), kind)
        assert re.search(r"(accuracy|P@1|p@1)", r.output, re.I), r.output


# -- a stop at any stage of a long-running command, then --resume --------------------------------
# The stop is SIGTERM sent to the main thread at the n-th call of the stage's unit of work (a
# search iteration, a training step, a predict window), never after a delay. The stopped run
# exits 143 and keeps what it did; --resume ends equal to an uninterrupted run.

STAGES = {  # stage -> (class, method whose n-th call is stopped in, n)
    "search": ("autoprompt_py.search.engine:TriggerSearch", "step", 2),
    "tune": ("autoprompt_py.tune.loop:Trainer", "_loss", 2),
    "predict": ("autoprompt_py.prediction.run:Predictor", "window", 2),
}
LONG_RUNS = {  # command -> the stages it passes through
    "search": ("search",),
    "tune": ("tune",),
    "tune --search-budget": ("search", "tune"),
    "predict": ("predict",),
}


def stop_at(monkeypatch, stage: str) -> None:
    import importlib
    import signal
    import threading

    where, method, n = STAGES[stage]
    module, name = where.split(":")
    cls = getattr(importlib.import_module(module), name)
    original, calls = getattr(cls, method), [0]

    def stopped(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, stopped)


def long_run(command: str, model: Path, data: Path, out: Path) -> list:
    train = ["--train", data / "train.tsv", "--dev", data / "dev.tsv", "--verbalizer", "sst2"]
    triggers = "{sentence} [T] [T] It was [P]"
    if command == "search":
        return ["search", "--model", model, "--device", "cpu", "--template", triggers, *train,
                "--iters", "3", "--output", out, "--quiet"]  # fmt: skip
    if command.startswith("tune"):
        search = ["--search-budget", "600", "--search-iters", "3"] if "search" in command else []
        template = triggers if search else "{sentence} It was [P]"
        method = "soft" if search else "lora"
        return ["tune", "--model", model, "--device", "cpu", "--template", template, *train,
                "--method", method, "--steps", "4", "--eval-every", "1", "--batch-size", "2",
                *search, "--output", out, "--quiet"]  # fmt: skip
    return ["predict", "--model", model, "--device", "cpu", "--data", data / "dev.tsv",
            "--template", "{sentence} It was [P] .", "--verbalizer", "sst2", "--window", "1",
            "--output", f"{out}.jsonl"]  # fmt: skip


def outcome(command: str, out: Path):
    """What must equal between a stopped-and-resumed run and an uninterrupted one."""
    if command == "predict":
        return Path(f"{out}.jsonl").read_bytes()
    if command == "search":
        r = json.loads(out.read_text())
        return r["prompt"], r["dev"], [c[1:] for c in r["curve"]], r["stopped"]
    r = json.loads((out / "result.json").read_text())
    curve = [(c["step"], c["dev"], round(c["train_loss"] or 0, 5)) for c in r["curve"]]
    return r["template"], curve, r["dev"], r["interrupted"]


@pytest.mark.parametrize("kind", ["masked", "llama"])
@pytest.mark.parametrize(
    "command, stage",
    [
        # tune's long run trains lora
        pytest.param(c, s, marks=requires("peft") if c == "tune" else ())
        for c, stages in LONG_RUNS.items()
        for s in stages
    ],
    ids=lambda v: v.replace(" --", "+"),
)
def test_stop_and_resume(request, data, tmp_path, monkeypatch, kind, command, stage):
    model = model_of(request, kind)
    whole = tmp_path / "whole"
    r = invoke(*long_run(command, model, data, whole))
    assert r.exit_code == 0, r.output
    out = tmp_path / "stopped"
    stop_at(monkeypatch, stage)
    r = invoke(*long_run(command, model, data, out))
    assert r.exit_code == 143, (r.exit_code, r.output)
    assert "terminated (SIGTERM)" in r.stderr and "Traceback" not in r.output
    monkeypatch.undo()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("stopped"))
    assert left, "a stopped run keeps what it did"
    # the same command again is refused (it would lose the work), --resume continues it
    r = invoke(*long_run(command, model, data, out))
    assert r.exit_code == 2 and "--resume" in r.stderr, r.output
    r = invoke(*long_run(command, model, data, out), "--resume")
    assert r.exit_code == 0, (left, r.output)
    assert outcome(command, out) == outcome(command, whole)
