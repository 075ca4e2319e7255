"""Demo: PEFT prompt tuning started from an exported seed, against random starts.

    python scripts/demo_prompt_tuning.py --model ../shared/models/bert-tiny-splade \
        --data ../shared/data/sst2

The frozen masked LM reads ``--template`` (``{sentence} It was [MASK] .``) with n virtual
tokens prepended by a PEFT prompt-tuning adapter (task type FEATURE_EXTRACTION, as
``autoprompt export --format peft`` writes it); the loss is the negative log-likelihood of the
gold label among the labels, from the verbalizer's label scores at the mask (cross-entropy, as
PET trains), and only the n virtual-token vectors train.
The arms differ only in where those vectors start:

* ``seed``: the adapter that ``export --format peft`` writes for ``--seed-prompt`` (default:
  the words of the hand-written prompt ``{sentence} It was [MASK] .``, ``--tokens all``),
  loaded with ``export.load_peft_seed``;
* ``random``: PEFT's own ``RANDOM`` init (``nn.Embedding``'s N(0, 1));
* ``vocab``: PEFT's ``SAMPLE_VOCAB`` init (embeddings of n random vocabulary tokens).

Every arm sees the same training examples in the same order (``--seed``) and is scored on the
same dev examples before and after training; the script prints what it measures and nothing
else. The template alone (no virtual tokens) is scored too, for reference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from peft import PromptTuningConfig, TaskType, get_peft_model
from transformers import AutoModelForMaskedLM

from autoprompt_py.cli.models import quiet_transformers
from autoprompt_py.data import read_examples
from autoprompt_py.encoding import EncodedDataset
from autoprompt_py.export import load_peft_seed, to_peft
from autoprompt_py.model import load_model
from autoprompt_py.prompt import FoundPrompt
from autoprompt_py.resources import load_verbalizer
from autoprompt_py.scoring import classify
from autoprompt_py.template import parse_template

SHARED = Path(__file__).resolve().parents[2] / "shared"


def found_prompt(spec: str, tokenizer, tokens: str) -> FoundPrompt:
    if spec.endswith(".json") and Path(spec).is_file():
        return FoundPrompt.from_result(spec, tokenizer, tokens)
    return FoundPrompt.from_template(spec, tokenizer, tokens)


class MaskGather:
    """A forward hook on the encoder that keeps only the hidden states at ``at`` ([batch, k]),
    so the MLM head (most of the cost of a small model) runs at the masks alone: the head is
    position-wise, so this is exact (``model.MaskedLM`` does the same)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.at: torch.Tensor | None = None
        model.base_model.register_forward_hook(self)

    def __call__(self, module, args, output):
        if self.at is None:
            return output
        hidden = output[0]
        gathered = hidden[torch.arange(hidden.shape[0])[:, None], self.at]
        if isinstance(output, tuple):
            return (gathered,) + tuple(output[1:])
        output.last_hidden_state = gathered
        return output


def build_arm(arm: str, args, seed_folder: Path, n: int, dim: int):
    base = AutoModelForMaskedLM.from_pretrained(args.model, trust_remote_code=False).eval()
    base.requires_grad_(False)
    gather = MaskGather(base)
    torch.manual_seed(args.seed)  # the random inits draw from here
    if arm == "seed":
        model = load_peft_seed(base, seed_folder)
    else:
        config = PromptTuningConfig(
            task_type=TaskType.FEATURE_EXTRACTION,
            num_virtual_tokens=n,
            token_dim=dim,
            num_transformer_submodules=1,
            prompt_tuning_init="RANDOM" if arm == "random" else "SAMPLE_VOCAB",
        )
        model = get_peft_model(base, config)
    model.eval()  # no dropout: the arms differ only in their start
    return model, gather


def label_scores(model, gather: MaskGather, batch, n: int, verbalizer) -> torch.Tensor:
    gather.at = batch.mask_positions + n  # the virtual tokens shift every position
    try:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    finally:
        gather.at = None
    return verbalizer.label_scores({logits.shape[1]: logits})


def accuracy(
    model, gather, dataset: EncodedDataset, gold: torch.Tensor, n: int, verbalizer, batch_size: int
) -> float:
    correct = 0
    with torch.inference_mode():
        for batch in dataset.batches(batch_size):
            pred = label_scores(model, gather, batch, n, verbalizer).argmax(1)
            correct += int((pred == gold[batch.index]).sum())
    return correct / len(dataset)


def train(
    model, gather, dataset: EncodedDataset, gold: torch.Tensor, n: int, verbalizer, args
) -> float:
    weight = model.prompt_encoder["default"].embedding.weight
    optimizer = torch.optim.AdamW([weight], lr=args.lr, weight_decay=0.0)
    order = (
        np.random.default_rng(args.seed)
        .permutation(np.resize(np.arange(len(dataset)), args.steps * args.batch_size))
        .reshape(args.steps, args.batch_size)
    )
    losses = []
    for indices in order:
        batch = dataset.collate(indices.tolist())
        scores = label_scores(model, gather, batch, n, verbalizer)
        loss = F.cross_entropy(scores, gold[batch.index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses[-50:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(SHARED / "models" / "bert-tiny-splade"))
    p.add_argument(
        "--data",
        default=str(SHARED / "data" / "sst2"),
        help="A folder with train.tsv and dev.tsv (sentence, label).",
    )
    p.add_argument(
        "--template",
        default="{sentence} It was [MASK] .",
        help="What the frozen model reads after the virtual tokens.",
    )
    p.add_argument("--verbalizer", default="sst2", help="Shipped name, file or inline JSON.")
    p.add_argument(
        "--seed-prompt",
        default="{sentence} It was [MASK] .",
        help="The prompt whose export seeds the 'seed' arm: template text or a "
        "search result .json.",
    )
    p.add_argument("--tokens", default="auto", choices=["auto", "triggers", "all"])
    p.add_argument("--arms", default="seed,random,vocab")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW (OptiPrompt's default).")
    p.add_argument(
        "--train-size",
        type=int,
        default=4800,
        help="Training examples, drawn from train.tsv with --seed.",
    )
    p.add_argument("--dev-size", type=int, default=0, help="First N dev examples; 0: all.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's choice.")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    quiet_transformers()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    start = time.perf_counter()

    lm = load_model(args.model, device="cpu")
    tok = lm.tokenizer
    verbalizer = load_verbalizer(args.verbalizer).resolve(tok)
    labels = verbalizer.labels
    train_all = read_examples(Path(args.data) / "train.tsv")
    pick = np.random.default_rng(args.seed).permutation(len(train_all))[: args.train_size]
    train_set = [train_all[i] for i in sorted(pick)]
    dev_set = read_examples(Path(args.data) / "dev.tsv", limit=args.dev_size or None)

    prompt = found_prompt(args.seed_prompt, tok, args.tokens)
    prompt.check_model(lm)
    n, dim = len(prompt), lm.embeddings.shape[1]
    template = parse_template(args.template)
    encoder = lm.encoder(template, max_length=lm.max_length - n)
    train_data, dev_data = encoder.encode_all(train_set), encoder.encode_all(dev_set)
    train_gold = torch.tensor([labels.index(e.label) for e in train_set])
    dev_gold = torch.tensor([labels.index(e.label) for e in dev_set])

    base_acc = float(
        np.mean(
            np.array(classify(lm, template, dev_set, verbalizer).predictions)
            == np.array([e.label for e in dev_set])
        )
    )
    print(
        f"model {args.model}; template {args.template!r}; verbalizer "
        f"{dict(zip(labels, verbalizer.words))}"
    )
    print(f"seed: {prompt.text!r} = {n} tokens {list(prompt.tokens)} from {args.seed_prompt!r}")
    print(
        f"train {len(train_set)} of {len(train_all)} examples; {args.steps} steps x batch "
        f"{args.batch_size}, AdamW lr {args.lr}; dev {len(dev_set)} examples; seed {args.seed}"
    )
    print(f"dev accuracy of the template alone (no virtual tokens): {base_acc:.4f}")
    print()
    print(
        f"{'init':8} {'dev acc before':>15} {'dev acc after':>14} {'train loss':>11} {'seconds':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        seed_folder = to_peft(prompt, lm, Path(tmp) / "seed")
        for arm in args.arms.split(","):
            t0 = time.perf_counter()
            model, gather = build_arm(arm, args, seed_folder, n, dim)
            before = accuracy(model, gather, dev_data, dev_gold, n, verbalizer, 64)
            loss = train(model, gather, train_data, train_gold, n, verbalizer, args)
            after = accuracy(model, gather, dev_data, dev_gold, n, verbalizer, 64)
            print(
                f"{arm:8} {before:15.4f} {after:14.4f} {loss:11.4f} "
                f"{time.perf_counter() - t0:8.1f}",
                flush=True,
            )
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
