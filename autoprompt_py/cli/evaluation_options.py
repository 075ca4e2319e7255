"""Options that score, probe and predict share: the ensemble and calibration options, checked
together before the model loads."""

from __future__ import annotations

import click

from autoprompt_py.errors import AutopromptError
from autoprompt_py.resources import shipped_names

# the model, data and scoring modules (torch, numpy) are imported inside the commands, so that
# --help and a mistyped option answer at once; tests/test_newcomer.py checks these copies
AGGREGATIONS = ("sum", "mean-logit", "mean-logprob")  # verbalizer.AGGREGATIONS
RULES = ("mean-logprob", "mean-prob", "vote")  # ensemble.RULES


def shipped(kind: str) -> str:
    """The shipped sets' names for a --help text: the same list the errors name."""
    return ", ".join(shipped_names(kind)) or "none"


def ensemble_options(weights: bool = True):
    """--ensemble, --ensemble-rule, --weights (score only), --calibrate, --content-free."""
    options = [
        click.option(
            "--ensemble",
            is_flag=True,
            help="Also report the ensemble of all members (score: every template × every "
            "verbalizer; probe: the templates of each relation).",
        ),
        click.option(
            "--ensemble-rule",
            default="mean-logprob",
            show_default=True,
            help=f"How members combine: {', '.join(RULES)}.",
        ),
    ]
    if weights:
        options.append(
            click.option(
                "--weights",
                help="One weight per member, comma-separated, in the order template × verbalizer.",
            )
        )
    options += [
        click.option(
            "--calibrate",
            is_flag=True,
            help="Also report contextually calibrated metrics (Zhao et al. 2021).",
        ),
        click.option(
            "--content-free",
            multiple=True,
            help="A content-free text for --calibrate (repeatable; default: 'N/A', '' and "
            "'[MASK]', the model's mask token).",
        ),
    ]

    def apply(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return apply


def check_ensemble_options(
    ensemble: bool,
    rule: str,
    weights: str | None,
    calibrate: bool,
    content_free: tuple[str, ...],
) -> tuple[str, tuple[str, ...] | None]:
    """Options that only make sense together, checked before the model loads."""
    from autoprompt_py.calibration import check_content_free
    from autoprompt_py.ensemble import check_rule

    rule = check_rule(rule)
    if weights is not None and not ensemble:
        raise AutopromptError("--weights weighs ensemble members: add --ensemble, or drop it")
    if content_free and not calibrate:
        raise AutopromptError(
            "--content-free texts are used by --calibrate: add --calibrate, or drop them"
        )
    return rule, (check_content_free(content_free) if calibrate else None)
