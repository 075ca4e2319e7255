"""The options of ``autoprompt search`` that become its SearchConfig (each default read from
the dataclass), and the token filter group it shares with ``autoprompt labels``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from autoprompt_py.cli.options import (
    Decorator,
    config_option,
    max_batch_tokens_option,
    options,
    seed_option,
)
from autoprompt_py.cli.paths import InputFile
from autoprompt_py.search.config import INITIAL, OBJECTIVES, POSITIONS, SELECT, SearchConfig
from autoprompt_py.several import ACROSS


def filter_options(*, label_words: bool = False) -> Decorator:
    """The token filters, passed on as ``filters`` (``search.TokenFilters``): with
    ``label_words``, --filter-labels first; then --filter-subwords, --filter-non-alpha,
    --filter-capitalized and --stop-list."""
    labels = click.option(
        "--filter-labels/--no-filter-labels",
        default=True,
        show_default=True,
        help="Exclude the label words (relation mode: the training objects).",
    )
    return options(
        *([labels] if label_words else []),
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
            help="File of words (one a line) never to use.",
        ),
        _pass_filters,
    )


def _pass_filters(f: Callable) -> Callable:
    """The filter options passed on as one ``filters`` (the stop list read before any model;
    without --filter-labels, label words are allowed)."""

    @functools.wraps(f)
    def wrapper(*args: Any, filter_subwords: bool, filter_non_alpha: bool,
                filter_capitalized: bool, stop_list: str | None, **kwargs: Any) -> Any:  # fmt: skip
        from autoprompt_py.search import TokenFilters, read_stop_list

        filters = TokenFilters(
            label_words=kwargs.pop("filter_labels", False),
            subwords=filter_subwords,
            non_alphabetic=filter_non_alpha,
            capitalized=filter_capitalized,
            stop_words=read_stop_list(stop_list) if stop_list else frozenset(),
        )
        return f(*args, filters=filters, **kwargs)

    return wrapper


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


_setting = functools.partial(config_option, SearchConfig)  # an option of a SearchConfig field


# every option that becomes a SearchConfig field (the command collects them as ``**settings``);
# each default is the field's own
CONFIG_OPTIONS = (
    _setting("method", MethodChoice(), cls=_MethodOption),
    _setting("iters", click.IntRange(min=0), "Iterations per restart (a budget may stop it sooner)."),
    _setting("time_budget", float,
             "Seconds of search; checked after every model chunk (see budget_overshoot)."),
    _setting("max_forward_passes", int,
             "Budget in sequences run through the model (load-independent)."),
    _setting("restarts", int, "Independent searches sharing the budget; the best on dev is kept."),
    _setting("search_width", int, "gcg: candidate triggers scored per step."),
    _setting("n_replace", int, "gcg: slots each candidate changes."),
    _setting("topk", int, "gcg: gradient top-k tokens per slot to draw from."),
    _setting("buffer_size", int,
             "gcg: keep the B best triggers seen and step from the best (0: off)."),
    _setting("num_cand", int, "autoprompt: HotFlip candidates per trigger slot and iteration."),
    _setting("accumulation_steps", int,
             "Batches for the gradient, and as many fresh ones for scoring the candidates "
             "[default: gcg 6, or 2 on relations; autoprompt 10, as the original]."),
    _setting("position", click.Choice(POSITIONS),
             "autoprompt: which slot to flip: a random one (AutoPrompt), each in turn, or the "
             "best flip over all slots."),
    _setting("select", click.Choice(SELECT),
             "Rank candidates by loss, or by correct answers (ties to the loss; the original's "
             "rule for classification)."),
    _setting("objective", click.Choice(OBJECTIVES),
             "Classification loss: the gold label word's log-probability over the vocabulary "
             "(AutoPrompt), or the cross-entropy over the labels only."),
    _setting("initial", click.Choice(INITIAL),
             "Start without --initial-trigger: random allowed tokens, or the mask token (the "
             "original AutoPrompt)."),
    _setting("calibrate", None,
             "Choose the best trigger on calibrated dev probabilities (contextual calibration "
             "with 'N/A', '' and the mask token).", is_flag=True, show_default=False),
    _setting("fluency", float,
             "Weight W of the trigger's pseudo-log-likelihood in the selection score."),
    _setting("patience", int, "End a restart after N iterations without a better dev metric."),
    seed_option(SearchConfig),
    max_batch_tokens_option(SearchConfig),
    _setting("keep", click.IntRange(min=1),
             "The result lists the N best distinct triggers on dev, each with its dev metrics "
             "(score --template RESULT scores them all)."),
    _setting("across", click.Choice(list(ACROSS)),
             "Several --model: the dev metric the search keeps is the mean over the models, or "
             "the worst model's (min)."),
    _setting("train_eval_limit", int, "Train metrics of the result use at most N examples."),
)  # fmt: skip


def config_options(f: Callable) -> Callable:
    """The options that become the SearchConfig (collected as ``**settings``)."""
    return options(*CONFIG_OPTIONS)(f)
