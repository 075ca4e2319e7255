"""``predict``, the API under ``autoprompt predict`` (one model or several), and its model
ensemble: ``--model`` given more than once.

Each model scores every row with every prompt member as one model does (its own members'
ensemble and calibration); the models' probabilities are then averaged, label by label (for
relations, candidate by candidate), and the prediction, margin, top-k and ranks are read off
the average. Under vote, the averaged figures are the members' vote shares, and ties are
broken by the mean of the models' tie-breaks. The models share one vocabulary
(``several.check_shared_vocabulary``), so a label's words and a candidate's id mean the same
thing to every model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from autoprompt_py.ensemble import Combined
from autoprompt_py.errors import AutopromptError
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.prediction.config import PredictConfig
from autoprompt_py.prediction.reader import InputRow
from autoprompt_py.prediction.run import Predictor, open_reader

RULE = "mean-probability"  # how the models are combined, as the run record names it


class ModelEnsemble:
    """Several models' ``Predictor``s as one: what ``write_predictions`` asks of a predictor."""

    def __init__(self, config: PredictConfig, lms: Sequence[LanguageModel]) -> None:
        self.config = config
        self.predictors = [Predictor(config, lm) for lm in lms]
        first = self.predictors[0]
        self.lm = first.lm
        self.relational = first.relational
        if self.relational:
            widths = {len(p.cand_ids) for p in self.predictors}
            if len(widths) > 1:  # models padded to other sizes: a column is not one token
                sizes = ", ".join(f"{p.lm.name}: {len(p.cand_ids)}" for p in self.predictors)
                raise AutopromptError(
                    f"--model: the models' vocabularies have different numbers of rows "
                    f"({sizes}); relations over the whole vocabulary need one: give --vocab"
                )
        else:
            self.labels = first.labels

    @property
    def members(self):
        return self.predictors[0].members

    @property
    def window_rows(self) -> int:
        return min(p.window_rows for p in self.predictors)

    @property
    def truncated(self) -> int:
        """Inputs cut to a model's positions: the most any one model cut (a row counted once)."""
        return max(p.truncated for p in self.predictors)

    def columns(self, keep: Sequence[str]) -> list[str]:
        return self.predictors[0].columns(keep)

    def member_names(self) -> list[str]:
        return self.predictors[0].member_names()

    def prepare(self, examples) -> list[dict]:
        """Each model's encoded rows (models may differ in positions, so each encodes)."""
        return [p.prepare(examples) for p in self.predictors]

    def window(self, rows: Sequence[InputRow], encoded: list | None = None) -> list[dict]:
        examples = [r.example for r in rows]
        if encoded is None:
            encoded = self.prepare(examples)
        first = self.predictors[0]
        total = tiebreak = None
        for p, enc in zip(self.predictors, encoded):
            if self.relational:
                scores, tb = p.relation_scores(examples, enc)
                probs = scores if tb is not None else np.exp(scores.astype(np.float64))
            else:
                _, probs, tb = p.label_scores(examples, enc)
            total = _add(total, probs)
            tiebreak = None if tb is None else _add(tiebreak, tb)
            del probs, tb
        n = len(self.predictors)
        mean = total / n
        tiebreak = None if tiebreak is None else tiebreak / n
        if not self.relational:
            return first.label_rows(rows, Combined(mean, tiebreak).argmax(), mean)
        if tiebreak is None:  # relation_rows reads log-probabilities
            with np.errstate(divide="ignore"):
                mean = np.log(mean)
        return first.relation_rows(rows, examples, mean, tiebreak)


def _add(total: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.copy() if total is None else total + x


def make_predictor(config: PredictConfig, lms: LanguageModel | Sequence[LanguageModel]):
    """A ``Predictor`` for one model, a ``ModelEnsemble`` for several."""
    if not isinstance(lms, (list, tuple)):
        return Predictor(config, lms)
    return Predictor(config, lms[0]) if len(lms) == 1 else ModelEnsemble(config, lms)


def predict(
    config: PredictConfig, data: str, lm: LanguageModel | Sequence[LanguageModel] | None = None
) -> Iterator[dict]:
    """Output rows of ``data`` in input order, read and scored a window at a time (the API
    under ``autoprompt predict``; ``write_predictions`` writes them to a file). Without
    ``lm``, the bundled model; a list of models: their ensemble (``make_predictor``)."""
    if lm is None:
        from autoprompt_py.model import load_model

        lm = load_model()
    predictor = make_predictor(config, lm)
    for rows in open_reader(config, data).windows(predictor.window_rows):
        yield from predictor.window(rows)
