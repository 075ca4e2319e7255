"""Metrics over predictions: accuracy, macro-F1, per-class recall, bootstrap intervals, P@k, MRR."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_metrics(
    gold: Sequence[str],
    predicted: Sequence[str],
    labels: Sequence[str],
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Accuracy, macro-F1 over ``labels``, recall per class, a 95% bootstrap interval, n."""
    g = np.asarray(gold, dtype=object)
    p = np.asarray(predicted, dtype=object)
    correct = (g == p).astype(np.float64)
    recall, f1 = {}, []
    for lab in labels:
        tp = float(((p == lab) & (g == lab)).sum())
        support, claimed = float((g == lab).sum()), float((p == lab).sum())
        r = tp / support if support else 0.0
        prec = tp / claimed if claimed else 0.0
        recall[str(lab)] = r
        f1.append(2 * prec * r / (prec + r) if prec + r else 0.0)
    # no resamples: no interval (null), rather than a made-up 0.000-0.000
    interval = list(bootstrap_interval(correct, bootstrap, seed)) if bootstrap > 0 else None
    return {
        "accuracy": float(correct.mean()) if len(correct) else 0.0,
        "accuracy_ci95": interval,
        "macro_f1": float(np.mean(f1)) if f1 else 0.0,
        "recall": recall,
        "n": int(len(correct)),
    }


def bootstrap_interval(
    values: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``; seeded, so reproducible."""
    if len(values) == 0 or samples <= 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(1)
    alpha = (1 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def rank_metrics(ranks: np.ndarray) -> dict:
    """P@1, P@10 and MRR from 1-based ranks of the gold answer."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if len(ranks) == 0:
        return {"p@1": 0.0, "p@10": 0.0, "mrr": 0.0, "n": 0}
    return {
        "p@1": float((ranks == 1).mean()),
        "p@10": float((ranks <= 10).mean()),
        "mrr": float((1.0 / ranks).mean()),
        "n": int(len(ranks)),
    }
