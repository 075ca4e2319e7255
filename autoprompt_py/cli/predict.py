"""``autoprompt predict``: label new data with a found, written or shipped prompt."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import click

from autoprompt_py.cli.evaluation_options import evaluation_options
from autoprompt_py.cli.options import (
    config_option,
    data_options,
    max_batch_tokens_option,
    model_options,
    output_options,
    parse_columns,
    template_options,
)
from autoprompt_py.errors import AutopromptError
from autoprompt_py.prediction.config import PredictConfig
from autoprompt_py.prediction.writer import FORMATS  # light: the readers' and writers' formats

if TYPE_CHECKING:
    from autoprompt_py.template import Chat

_setting = functools.partial(config_option, PredictConfig)  # an option of a PredictConfig field


@click.command("predict")
@data_options(
    "data",
    stdin=True,
    config=PredictConfig,
    data_help="Rows to label: .tsv/.csv (header row, or --columns), .jsonl, .parquet "
    "(pyarrow), or - for standard input (JSON lines, TSV or CSV as its first line shows, or "
    "--input-format).",
    label_help="The gold label column for --with-labels [default: label; relations: obj_label].",
)
@click.option("--input-format", type=click.Choice(FORMATS))
@template_options(
    "Template text, a shipped set, a .jsonl/.txt file or a search result; repeat (with "
    "--ensemble) to combine several.",
    several=True,
    verbalizer="Label → words (file, shipped name or inline JSON) for classification; repeat "
    "with --ensemble. Relation templates ([X] ... [Y]) take none.",
    vocab="Relation mode: predict only these words (one per line), as probe --vocab.",
    config=PredictConfig,
)
@click.option("--relation", help="The relation of a template set to use (e.g. P19 of lama_trex).")
@click.option(
    "--keep-columns",
    help="Input columns copied to each output row, comma-separated, or 'all'.",
)
@click.option(
    "--with-labels",
    is_flag=True,
    help="The input has gold labels (--label-field): copy them and print score's metrics.",
)
@_setting("top_k", click.IntRange(min=1))
@_setting(
    "on_error",
    click.Choice(["skip", "fail"]),
    "A row whose text field is missing or empty: skip it (counted), or stop.",
)
@_setting(
    "window",
    click.IntRange(min=1),
    "Rows read, length-sorted and scored at a time (memory stays bounded by it).",
)
@max_batch_tokens_option(PredictConfig, note="--batch-size bounds the rows")
@evaluation_options(config=PredictConfig)
@output_options(
    "Where the rows go: .jsonl, .csv, .tsv or .parquet by the suffix, or - (standard output; "
    "messages and the progress bar go to standard error).",
    required=False,
    default="-",
    show_default=True,
    force="Replace an existing output.",
    resume="Continue the interrupted run of this output from its last row.",
)
@click.option("--output-format", type=click.Choice(FORMATS))
@model_options(
    config=PredictConfig,
    several="their ensemble: each row's probabilities are the mean of the models' "
    "probabilities, and the prediction is read off the mean.",
)
def predict_command(
    data: str, columns: list[str] | None, templates: tuple[str, ...],
    verbalizers: tuple[str, ...], keep_columns: str | None, weights: str | None,
    content_free: tuple[str, ...], output: str, force: bool, resume: bool,
    output_format: str | None, model_names: tuple[str, ...], device: str, dtype: str,
    chat: Chat | None, **settings: Any,
) -> None:  # fmt: skip
    """Label new data with a prompt: label probabilities, or top-k objects for relations.

    Every row gets each label's probability, the predicted label and its margin; for relation
    templates ([X] ... [Y]), the top-k objects with their probabilities."""
    from autoprompt_py.cli.models import model_from_option, models_from_option, quiet_transformers
    from autoprompt_py.ensemble import parse_weights
    from autoprompt_py.prediction.output import preflight, write_predictions

    keep: tuple[str, ...] | str = ()
    if keep_columns == "all":
        keep = "all"
    elif keep_columns:
        keep = tuple(parse_columns(keep_columns) or ())
    parsed_weights = None
    if weights is not None:
        if not settings["ensemble"]:
            raise AutopromptError("--weights weighs ensemble members: add --ensemble, or drop it")
        parsed_weights = tuple(parse_weights(weights, len(weights.split(","))))
    # every other option is a PredictConfig field of its name (the defaults are the fields')
    config = PredictConfig(
        templates=tuple(templates),
        verbalizers=tuple(verbalizers),
        columns=tuple(columns) if columns else None,
        keep_columns=keep,
        weights=parsed_weights,
        content_free=tuple(content_free) or None,
        chat=chat is not None,
        system=None if chat is None else chat.system,
        **settings,
    )
    several = len(model_names) > 1
    if several:  # a model named twice is refused before the output is claimed
        from autoprompt_py.several import check_distinct

        check_distinct(model_names)
    # before the model loads
    preflight(config, data, output, output_format_=output_format, force=force, resume=resume)
    quiet_transformers()
    # several models: loaded and checked to share one vocabulary before the output is opened
    lms = models_from_option(model_names, device, dtype) if several else None
    lm = lms[0] if several else model_from_option(model_names[0], device, dtype)
    summary = write_predictions(
        config,
        data,
        output,
        lms if several else lm,
        list(model_names) if several else model_names[0],
        dtype=dtype,
        output_format_=output_format,
        force=force,
        resume=resume,
    )
    echo = lambda text: click.echo(text, err=True)  # noqa: E731 - stdout may be the data
    if summary.resumed_from:
        echo(f"resumed after input row {summary.resumed_from}")
    if summary.skipped:
        echo(f"note: {summary.skipped} rows skipped: a text field missing or empty (--on-error)")
    if summary.truncated:
        positions = min(m.max_length for m in lms) if several else lm.max_length
        echo(f"note: {summary.truncated} inputs were cut to the model's {positions} tokens")
    m = summary.metrics
    if m is not None:
        if "accuracy" in m:
            from autoprompt_py.cli.tables import interval

            echo(
                f"accuracy {m['accuracy']:.4f} (95% CI {interval(m['accuracy_ci95'])}), macro-F1 "
                f"{m['macro_f1']:.4f} on {m['n']} rows"
            )
        else:
            echo(
                f"P@1 {m['p@1']:.4f}, P@10 {m['p@10']:.4f}, MRR {m['mrr']:.4f} on {m['n']} "
                f"facts ({m['skipped']} with an object that is not one candidate token)"
            )
    if output != "-":
        echo(f"wrote {summary.rows} rows to {output}")


COMMANDS = [predict_command]
