"""The options of ``autoprompt search`` that become its SearchConfig, and the token filter
options it shares with ``autoprompt labels`` (and any command that runs a search first)."""

from __future__ import annotations

from collections.abc import Callable

import click

from autoprompt_py.cli.paths import InputFile


def filter_options(f: Callable) -> Callable:
    options = [
        click.option(
            "--filter-subwords/--no-filter-subwords",
            default=True,
            show_default=True,
            help="Exclude word-continuation pieces (##ing, BPE/SentencePiece pieces "
            "without a word-start marker).",
        ),
        click.option(
            "--filter-non-alpha/--no-filter-non-alpha",
            default=True,
            show_default=True,
            help="Exclude tokens that are not all ASCII letters.",
        ),
        click.option(
            "--filter-capitalized/--no-filter-capitalized",
            default=True,
            show_default=True,
            help="Exclude capitalized tokens (AutoPrompt's cheap proper-noun filter).",
        ),
        click.option(
            "--stop-list",
            type=InputFile("stop-list file"),
            default=None,
            help="File of words (one a line) never to use.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def token_filters(
    label_words: bool, subwords: bool, non_alpha: bool, capitalized: bool, stop_list: str | None
):
    from autoprompt_py.search import TokenFilters, read_stop_list

    return TokenFilters(
        label_words,
        subwords,
        non_alpha,
        capitalized,
        read_stop_list(stop_list) if stop_list else frozenset(),
    )


class BatchTokens(click.ParamType):
    """A positive number of tokens, or ``auto``."""

    name = "tokens|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            tokens = int(value)
        except ValueError:
            tokens = 0
        if tokens < 1:
            self.fail(f"{value!r}: give a positive number of tokens, or auto", param, ctx)
        return tokens


def require_rows(rows: list, source: str) -> None:
    """Under torchrun: at least one row per process."""
    from autoprompt_py import distributed

    distributed.require_rows(len(rows), source)


class MethodChoice(click.Choice):
    """The registered search methods (``search.method.METHODS``), read when needed: the
    registry imports torch, which ``autoprompt --help`` must not wait for."""

    def __init__(self) -> None:
        super().__init__([])

    @property
    def choices(self):  # noqa: D102
        from autoprompt_py.search.method import METHODS

        return list(METHODS)

    @choices.setter
    def choices(self, value) -> None:
        pass


class _MethodOption(click.Option):
    """--method, its help written from the registry when help is shown."""

    def get_help_record(self, ctx):
        from autoprompt_py.search.method import METHODS

        self.help = "; ".join(f"{m.name}: {m.help}" for m in METHODS.values()) + "."
        return super().get_help_record(ctx)


def _default(name: str):
    """A SearchConfig field's default: written once, in the dataclass."""
    from autoprompt_py.search.config import SearchConfig

    return SearchConfig.__dataclass_fields__[name].default


def _across() -> list[str]:
    from autoprompt_py.several import ACROSS

    return list(ACROSS)


def config_options(f: Callable) -> Callable:
    """The options that become the SearchConfig (collected as ``**settings``)."""
    options = [
        click.option(
            "--method", cls=_MethodOption, type=MethodChoice(), default="gcg", show_default=True
        ),
        click.option(
            "--iters",
            type=click.IntRange(min=0),
            default=100,
            show_default=True,
            help="Iterations per restart (a budget may stop it sooner).",
        ),
        click.option(
            "--time-budget",
            type=float,
            default=None,
            help="Seconds of search; checked after every model chunk (see budget_overshoot).",
        ),
        click.option(
            "--max-forward-passes",
            type=int,
            default=None,
            help="Budget in sequences run through the model (load-independent).",
        ),
        click.option(
            "--restarts",
            type=int,
            default=1,
            show_default=True,
            help="Independent searches sharing the budget; the best on dev is kept.",
        ),
        click.option(
            "--search-width",
            type=int,
            default=32,
            show_default=True,
            help="gcg: candidate triggers scored per step.",
        ),
        click.option(
            "--n-replace",
            type=int,
            default=1,
            show_default=True,
            help="gcg: slots each candidate changes.",
        ),
        click.option(
            "--topk",
            type=int,
            default=32,
            show_default=True,
            help="gcg: gradient top-k tokens per slot to draw from.",
        ),
        click.option(
            "--buffer-size",
            type=int,
            default=0,
            show_default=True,
            help="gcg: keep the B best triggers seen and step from the best (0: off).",
        ),
        click.option(
            "--num-cand",
            type=int,
            default=10,
            show_default=True,
            help="autoprompt: HotFlip candidates per trigger slot and iteration.",
        ),
        click.option(
            "--accumulation-steps",
            type=int,
            default=None,
            help="Batches for the gradient, and as many fresh ones for scoring the "
            "candidates [default: gcg 6, or 2 on relations; autoprompt 10, as the original].",
        ),
        click.option(
            "--position",
            type=click.Choice(["random", "sweep", "all"]),
            default="random",
            show_default=True,
            help="autoprompt: which slot to flip: a random one (AutoPrompt), each in "
            "turn, or the best flip over all slots.",
        ),
        click.option(
            "--select",
            type=click.Choice(["loss", "metric"]),
            default="loss",
            show_default=True,
            help="Rank candidates by loss, or by correct answers (ties to the loss; the "
            "original's rule for classification).",
        ),
        click.option(
            "--objective",
            type=click.Choice(["labels", "vocab"]),
            default="labels",
            show_default=True,
            help="Classification loss: the gold label word's log-probability over the "
            "vocabulary (AutoPrompt), or the cross-entropy over the labels only.",
        ),
        click.option(
            "--initial",
            type=click.Choice(["random", "mask"]),
            default="random",
            show_default=True,
            help="Start without --initial-trigger: random allowed tokens, or the mask token "
            "(the original AutoPrompt).",
        ),
        click.option(
            "--calibrate",
            is_flag=True,
            default=False,
            help="Choose the best trigger on calibrated dev probabilities (contextual "
            "calibration with 'N/A', '' and the mask token).",
        ),
        click.option(
            "--fluency",
            type=float,
            default=0.0,
            show_default=True,
            help="Weight W of the trigger's pseudo-log-likelihood in the selection score.",
        ),
        click.option(
            "--patience",
            type=int,
            default=None,
            help="End a restart after N iterations without a better dev metric.",
        ),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option(
            "--max-batch-tokens",
            type=BatchTokens(),
            default=65536,
            show_default=True,
            help="Padded tokens per forward pass (memory budget); auto: from the free GPU memory.",
        ),
        click.option(
            "--keep",
            type=click.IntRange(min=1),
            default=_default("keep"),
            show_default=True,
            help="The result lists the N best distinct triggers on dev, each with its dev "
            "metrics (score --template RESULT scores them all).",
        ),
        click.option(
            "--across",
            type=click.Choice(_across()),
            default=_default("across"),
            show_default=True,
            help="Several --model: the dev metric the search keeps is the mean over the "
            "models, or the worst model's (min).",
        ),
        click.option(
            "--train-eval-limit",
            type=int,
            default=2000,
            show_default=True,
            help="Train metrics of the result use at most N examples.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f
