"""``autoprompt export``: each format from a result file or a template; user errors as one line,
exit code 2 and nothing written."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from optional import requires
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM

from autoprompt_py.cli import main
from autoprompt_py.encoding import tokenize_piece
from autoprompt_py.model import load_model
from autoprompt_py.prompt import model_record

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


@pytest.fixture(scope="module")
def results(tiny_model_dirs, tmp_path_factory):
    """family -> a hand-written search result file of the tiny model of that family."""
    root = tmp_path_factory.mktemp("results")
    out = {}
    for family in ("bert", "roberta", "albert"):
        lm = load_model(tiny_model_dirs[family], device="cpu")
        ids = [tokenize_piece(lm.tokenizer, w, True)[0] for w in ("city", "capital", "of")]
        path = root / f"{family}.json"
        path.write_text(
            json.dumps(
                {
                    "kind": "autoprompt-search",
                    "template": "[X] [T] [T] [T] [Y] .",
                    "prompt": "[X] city capital of [Y] .",
                    "trigger": {
                        "ids": ids,
                        "tokens": lm.tokenizer.convert_ids_to_tokens(ids),
                        "words": ["city", "capital", "of"],
                    },
                    "mode": "relation",
                    "relation": "P36",
                    "verbalizer": None,
                    "model": model_record(lm),
                    "config": {},
                    "versions": {},
                }
            )
        )
        out[family] = path
    return out


def run(*args):
    result = CliRunner().invoke(main, ["export", *map(str, args)])
    return result


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""


def rows(model_dir, ids):
    return (
        AutoModelForMaskedLM.from_pretrained(model_dir).get_input_embeddings().weight.detach()[ids]
    )


@pytest.mark.parametrize("family", ["bert", "roberta", "albert"])
@requires("peft")
def test_every_format_from_a_result_file(family, results, tiny_model_dirs, tmp_path):
    from peft import PeftModel

    result_file = results[family]
    ids = json.loads(result_file.read_text())["trigger"]["ids"]
    expected = rows(tiny_model_dirs[family], ids)

    # --model defaults to the model the result names
    r = run(result_file, "--format", "embeddings", "--out", tmp_path / "seed.safetensors")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("wrote embeddings seed of 3 trigger tokens")
    assert torch.equal(load_file(tmp_path / "seed.safetensors")["embeddings"], expected)

    r = run(
        result_file,
        "--model",
        tiny_model_dirs[family],
        "--format",
        "optiprompt",
        "--out",
        tmp_path / "opti",
    )
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.load(tmp_path / "opti" / "vectors.npy"), expected.numpy())
    assert (tmp_path / "opti" / "template.txt").read_text().strip() == "[X] [V1] [V2] [V3] [Y] ."

    r = run(result_file, "--format", "peft", "--out", tmp_path / "peft")
    assert r.exit_code == 0, r.output
    base = AutoModelForMaskedLM.from_pretrained(tiny_model_dirs[family])
    model = PeftModel.from_pretrained(base, tmp_path / "peft")
    assert torch.equal(model.get_prompt_embedding_to_save("default"), expected)


def test_template_with_tokens_all(tiny_model_dirs, tmp_path):
    out = tmp_path / "seed.safetensors"
    r = run(
        "--template",
        "{sentence} It was [MASK] .",
        "--model",
        tiny_model_dirs["bert"],
        "--format",
        "embeddings",
        "--out",
        out,
    )
    assert r.exit_code == 0, r.output
    tensors = load_file(out)
    assert tensors["embeddings"].shape == (3, 32)
    assert "'it was .'" in r.stdout


def test_mismatched_model_is_refused_and_nothing_written(results, tiny_model_dirs, tmp_path):
    out = tmp_path / "adapter"
    r = run(
        results["bert"],
        "--model",
        tiny_model_dirs["roberta"],
        "--format",
        "optiprompt",
        "--out",
        out,
    )
    assert_user_error(r, "bert.json", str(tiny_model_dirs["roberta"]), str(tiny_model_dirs["bert"]))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(results, tmp_path):
    out = tmp_path / "opti"
    out.mkdir()
    r = run(results["bert"], "--format", "optiprompt", "--out", out)
    assert_user_error(r, "already exists", "--force")
    assert list(out.iterdir()) == []
    r = run(results["bert"], "--format", "optiprompt", "--out", out, "--force")
    assert r.exit_code == 0, r.output
    assert (out / "vectors.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opti"]


def test_peft_missing(results, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    r = run(results["bert"], "--format", "peft", "--out", tmp_path / "adapter")
    assert_user_error(r, "pip install autoprompt-py[peft]")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, fragments",
    [
        ([], ["nothing to export", "--template"]),
        # without --model: the bundled default model, which gets as far as the template
        (["--template", "{sentence} [MASK]"], ["no trigger or literal tokens"]),
        (["--template", "sst2", "--model", "MODEL"], ["templates (it-was", "one at a time"]),
        (["--template", "{sentence} [MASK]", "--model", "MODEL"], ["no trigger or literal tokens"]),
        (["--template", "{sentence} [T] [MASK]", "--model", "MODEL"], ["open trigger slots"]),
        (
            [
                "--template",
                "{sentence} It was [MASK] .",
                "--model",
                "MODEL",
                "--tokens",
                "triggers",
            ],
            ["--tokens all"],
        ),
        (["RESULT", "--template", "{sentence} [MASK]"], ["not both"]),
        (["NOTJSON"], ["not valid JSON"]),
        (["MISSING"], ["no such search result file"]),
    ],
)
def test_user_errors(args, fragments, results, tiny_model_dirs, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    subst = {
        "MODEL": tiny_model_dirs["bert"],
        "RESULT": results["bert"],
        "NOTJSON": bad,
        "MISSING": tmp_path / "missing.json",
    }
    out = tmp_path / "out.safetensors"
    r = run(*[subst.get(a, a) for a in args], "--format", "embeddings", "--out", out)
    assert_user_error(r, *fragments)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_missing_out_folder(results, tmp_path):
    r = run(results["bert"], "--format", "embeddings", "--out", tmp_path / "no" / "e.safetensors")
    assert_user_error(r, "does not exist")


@pytest.mark.slow
@requires("peft")
def test_shared_model_manual_prompt_seed(shared_model, tmp_path):
    """The README's example on the real model: the words of a hand-written prompt as a seed."""
    from peft import PeftModel

    r = run(
        "--template",
        "{sentence} It was [MASK] .",
        "--model",
        shared_model,
        "--format",
        "peft",
        "--out",
        tmp_path / "manual-peft",
    )
    assert r.exit_code == 0, r.output
    base = AutoModelForMaskedLM.from_pretrained(shared_model)
    model = PeftModel.from_pretrained(base, tmp_path / "manual-peft")
    ids = [2009, 2001, 1012]  # it was . in the uncased BERT vocabulary
    assert model.peft_config["default"].num_virtual_tokens == 3
    assert torch.equal(
        model.get_prompt_embedding_to_save("default"),
        base.get_input_embeddings().weight.detach()[ids],
    )
