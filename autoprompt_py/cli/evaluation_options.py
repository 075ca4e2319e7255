"""The evaluation group that score, probe and predict share: the bootstrap interval and its
seed, the ensemble and calibration options, checked together before the model loads."""

from __future__ import annotations

import click

from autoprompt_py.cli.options import Decorator, config_option, options, seed_option
from autoprompt_py.errors import AutopromptError
from autoprompt_py.resources import shipped_names

# ensemble.py imports numpy: it is imported inside the commands, so that --help and a mistyped
# option answer at once; tests/test_newcomer.py checks this copy
RULES = ("mean-logprob", "mean-prob", "vote")  # ensemble.RULES


def shipped(kind: str) -> str:
    """The shipped sets' names for a --help text: the same list the errors name."""
    return ", ".join(shipped_names(kind)) or "none"


def evaluation_options(
    *, config: type | None = None, bootstrap: bool = True, weights: bool = True
) -> Decorator:
    """With ``bootstrap``: --bootstrap and --seed (which seeds it); then --ensemble,
    --ensemble-rule, --weights (with ``weights``), --calibrate, --content-free. Defaults from
    ``config`` where it has the field."""
    chosen = []
    if bootstrap:
        chosen += [
            config_option(
                config,
                "bootstrap",
                click.IntRange(min=0),
                "Bootstrap resamples for the accuracy interval.",
                fallback=1000,
            ),
            seed_option(config),
        ]
    chosen += [
        click.option(
            "--ensemble",
            is_flag=True,
            help="Also report the ensemble of all members (score: every template × every "
            "verbalizer; probe: the templates of each relation).",
        ),
        config_option(
            config,
            "ensemble_rule",
            None,
            f"How members combine: {', '.join(RULES)}.",
            fallback=RULES[0],
        ),
    ]
    if weights:
        chosen.append(
            click.option(
                "--weights",
                help="One weight per member, comma-separated, in the order template × verbalizer.",
            )
        )
    chosen += [
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
    return options(*chosen)


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
