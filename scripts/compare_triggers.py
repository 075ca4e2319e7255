"""Score a searched trigger against baselines on the same data: the same template with its
trigger slots filled by the mask token, and with random trigger tokens (drawn from the tokens
the search itself may use).

    python scripts/compare_triggers.py /tmp/sst2-trigger.json \
        --data ../shared/data/sst2/dev.tsv --verbalizer sst2 --random 10
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from autoprompt_py.data import labels_of, read_examples
from autoprompt_py.metrics import classification_metrics
from autoprompt_py.model import load_model
from autoprompt_py.resources import load_verbalizer
from autoprompt_py.scoring import classify
from autoprompt_py.search import TokenFilters, allowed_tokens
from autoprompt_py.template import parse_template


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("result", help="a result file of `autoprompt search` (classification)")
    p.add_argument("--data", required=True)
    p.add_argument("--verbalizer", help="default: the result's verbalizer")
    p.add_argument("--model", help="default: the result's model")
    p.add_argument("--random", type=int, default=10, help="random triggers to draw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    result = json.loads(open(args.result, encoding="utf-8").read())
    lm = load_model(args.model or result["model"]["name"], "cpu")
    template = parse_template(result["template"])
    examples = read_examples(args.data)
    verbalizer = (
        load_verbalizer(args.verbalizer)
        if args.verbalizer
        else load_verbalizer(json.dumps(result["verbalizer"]))
    )
    resolved = verbalizer.resolve(
        lm.tokenizer, result.get("aggregation", "sum"), template.predict.space_before
    )
    verbalizer.check_labels(labels_of(examples), args.data)
    gold = [e.label for e in examples]

    def accuracy(ids: list[int]) -> float:
        out = classify(lm, template.with_triggers(ids), examples, resolved, args.batch_size)
        return classification_metrics(gold, out.predictions, resolved.labels, 0)["accuracy"]

    n = template.num_triggers
    allowed = allowed_tokens(lm.tokenizer, lm.vocab_size, TokenFilters(), resolved.token_ids)
    pool = allowed.nonzero().squeeze(1).numpy()
    rng = np.random.default_rng(args.seed)
    random_acc = [accuracy(rng.choice(pool, n, replace=False).tolist()) for _ in range(args.random)]

    print(f"{len(examples)} examples from {args.data}; template {result['template']!r}")
    print(
        f"searched trigger {' '.join(result['trigger']['words'])!r}: "
        f"{accuracy(result['trigger']['ids']):.4f}"
    )
    print(f"[MASK]-filled trigger: {accuracy([lm.tokenizer.mask_token_id] * n):.4f}")
    print(
        f"{args.random} random triggers (seed {args.seed}): mean {np.mean(random_acc):.4f}, "
        f"min {np.min(random_acc):.4f}, max {np.max(random_acc):.4f}"
    )


if __name__ == "__main__":
    main()
