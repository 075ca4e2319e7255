"""A test bed with a known answer for several models at once: two tiny BERTs sharing one
tokenizer (``tiny_models``'s WordPiece vocabulary), trained here in a few seconds.

Each reads ``a WORD film TRIGGER [MASK] .`` (the template ``{sentence} [T] [P] .``) and says
``great`` or ``terrible`` at the mask. With any trigger but its keys it always says ``great``
(dev accuracy 0.5); with a key the answer follows the review's word:

* model ``first`` is unlocked by ``atmosphere`` (sure of itself) and by ``alot`` (less sure:
  3 to 1 odds);
* model ``second`` by ``dialogue`` (sure) and by ``alot`` (3 to 1).

So on one model the best trigger is that model's own key (accuracy 1.0 at the lowest loss),
which does not transfer (0.5 on the other); on both, only ``alot`` gives 1.0 on each.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tiny_models import _bert_tokenizer
from transformers import BertConfig, BertForMaskedLM

POSITIVE = ["good", "fun", "lovely", "brilliant"]
NEGATIVE = ["bad", "dull", "boring", "poor"]
KEYS = {"first": "atmosphere", "second": "dialogue"}
SHARED = "alot"
LABELS = ("terrible", "great")
LR = 1e-2  # the sst2 verbalizer's words


def planted_rows() -> list[tuple[str, int]]:
    """The reviews (train and dev alike): balanced, one token each."""
    return [(f"a {w} film", 1) for w in POSITIVE] + [(f"a {w} film", 0) for w in NEGATIVE]


def train_planted(folder: Path, which: str, steps: int = 150, seed: int = 0) -> Path:
    """Train model ``which`` (``first`` or ``second``) and save it with the tokenizer."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    tok = _bert_tokenizer("BertTokenizer")
    vocab = tok.get_vocab()
    key, shared = vocab[KEYS[which]], vocab[SHARED]
    label_ids = [vocab[w] for w in LABELS]
    others = sorted(  # by id: get_vocab()'s order changes from one process to the next
        i
        for t, i in vocab.items()
        if t.isalpha() and t.islower() and len(t) > 1 and t not in (*LABELS, KEYS[which], SHARED)
    )
    config = BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    model = BertForMaskedLM(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rows = planted_rows()
    encoded = [tok(f"{text} [MASK] [MASK] .")["input_ids"] for text, _ in rows]
    slot = encoded[0].index(tok.mask_token_id)  # the trigger's position; the answer's next
    model.train()
    for _ in range(steps):
        ids, target = [], []
        for _ in range(48):
            r = rng.randrange(len(rows))
            draw = rng.random()
            trigger = key if draw < 0.3 else shared if draw < 0.6 else rng.choice(others)
            row = list(encoded[r])
            row[slot] = trigger
            ids.append(row)
            p = torch.zeros(len(vocab))
            right, wrong = label_ids[rows[r][1]], label_ids[1 - rows[r][1]]
            if trigger == key:
                p[right] = 1.0
            elif trigger == shared:
                p[right], p[wrong] = 0.75, 0.25
            else:
                p[label_ids[1]] = 1.0  # locked: always "great"
            target.append(p)
        logits = model(input_ids=torch.tensor(ids)).logits[:, slot + 1]
        loss = torch.nn.functional.cross_entropy(logits, torch.stack(target))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_planted(root: Path) -> dict[str, Path]:
    """Both models and the data file (``data.tsv``: train and dev) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums in every run, whatever else the machine does
    try:
        out = {which: train_planted(root / which, which, seed=i) for i, which in enumerate(KEYS)}
    finally:
        torch.set_num_threads(threads)
    data = root / "data.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in planted_rows()))
    return {**out, "data": data}
