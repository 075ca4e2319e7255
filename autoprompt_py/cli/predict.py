"""``autoprompt predict``: label new data with a found, written or shipped prompt."""

from __future__ import annotations

import click

from autoprompt_py.cli.common import (
    chat_options,
    model_options,
    parse_columns,
    quiet_transformers,
)
from autoprompt_py.cli.evaluation_options import AGGREGATIONS, ensemble_options
from autoprompt_py.cli.paths import DATA_FIX, InputFile
from autoprompt_py.errors import AutopromptError


def _tokens(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise AutopromptError(f"--max-batch-tokens {value!r}: give a number of tokens or auto")
    return n


@click.command()
@click.option(
    "--data",
    required=True,
    type=InputFile("data file", stdin=True, fix=DATA_FIX),
    help="Rows to label: .tsv/.csv (header row, or --columns), .jsonl, .parquet (pyarrow), "
    "or - for standard input (JSON lines, TSV or CSV as its first line shows, or "
    "--input-format).",
)
@click.option(
    "--template",
    "templates",
    multiple=True,
    required=True,
    help="Template text, a shipped set, a .jsonl/.txt file or a search result; repeat (with "
    "--ensemble) to combine several.",
)
@click.option(
    "--verbalizer",
    "verbalizers",
    multiple=True,
    help="Label → words (file, shipped name or inline JSON) for classification; repeat with "
    "--ensemble. Relation templates ([X] ... [Y]) take none.",
)
@click.option("--aggregation", type=click.Choice(AGGREGATIONS), default="sum", show_default=True)
@click.option(
    "--output",
    default="-",
    show_default=True,
    help="Where the rows go: .jsonl, .csv, .tsv or .parquet by the suffix, or - (standard "
    "output; messages and the progress bar go to standard error).",
)
@click.option("--output-format", type=click.Choice(["jsonl", "csv", "tsv", "parquet"]))
@click.option("--input-format", type=click.Choice(["jsonl", "csv", "tsv", "parquet"]))
@click.option("--columns", help="Column names of a header-less .tsv/.csv, e.g. text,label.")
@click.option(
    "--keep-columns",
    help="Input columns copied to each output row, comma-separated, or 'all'.",
)
@click.option(
    "--with-labels",
    is_flag=True,
    help="The input has gold labels (--label-field): copy them and print score's metrics.",
)
@click.option(
    "--label-field",
    help="The gold label column for --with-labels [default: label; relations: obj_label].",
)
@click.option("--relation", help="The relation of a template set to use (e.g. P19 of lama_trex).")
@click.option(
    "--vocab",
    type=InputFile("vocabulary file"),
    help="Relation mode: predict only these words (one per line), as probe --vocab.",
)
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--on-error",
    type=click.Choice(["skip", "fail"]),
    default="skip",
    show_default=True,
    help="A row whose text field is missing or empty: skip it (counted), or stop.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N input rows.")
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Rows read, length-sorted and scored at a time (memory stays bounded by it).",
)
@click.option(
    "--max-batch-tokens",
    default="65536",
    show_default=True,
    help="Padded tokens per forward (--batch-size bounds the rows), or auto: from the free "
    "GPU memory.",
)
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option(
    "--resume", is_flag=True, help="Continue the interrupted run of this output from its last row."
)
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@ensemble_options()
@chat_options
@model_options(
    several="their ensemble: each row's probabilities are the mean of the models' "
    "probabilities, and the prediction is read off the mean."
)
def predict(
    data,
    templates,
    verbalizers,
    aggregation,
    output,
    output_format,
    input_format,
    columns,
    keep_columns,
    with_labels,
    label_field,
    relation,
    vocab,
    top_k,
    on_error,
    limit,
    window,
    max_batch_tokens,
    force,
    resume,
    bootstrap,
    seed,
    ensemble,
    ensemble_rule,
    weights,
    calibrate,
    content_free,
    chat,
    model_names,
    device,
    dtype,
    batch_size,
) -> None:
    """Label new data with a prompt: label probabilities, or top-k objects for relations.

    Every row gets each label's probability, the predicted label and its margin; for relation
    templates ([X] ... [Y]), the top-k objects with their probabilities."""
    from autoprompt_py.cli.common import load_model, load_models
    from autoprompt_py.ensemble import parse_weights
    from autoprompt_py.prediction.output import preflight, write_predictions
    from autoprompt_py.prediction.run import PredictConfig

    keep: tuple[str, ...] | str = ()
    if keep_columns == "all":
        keep = "all"
    elif keep_columns:
        keep = tuple(parse_columns(keep_columns) or ())
    parsed_weights = None
    if weights is not None:
        if not ensemble:
            raise AutopromptError("--weights weighs ensemble members: add --ensemble, or drop it")
        parsed_weights = tuple(parse_weights(weights, len(weights.split(","))))
    config = PredictConfig(
        templates=tuple(templates),
        verbalizers=tuple(verbalizers),
        aggregation=aggregation,
        ensemble=ensemble,
        ensemble_rule=ensemble_rule,
        weights=parsed_weights,
        calibrate=calibrate,
        content_free=tuple(content_free) or None,
        relation=relation,
        vocab=vocab,
        top_k=top_k,
        with_labels=with_labels,
        label_field=label_field,
        keep_columns=keep,
        columns=tuple(parse_columns(columns) or ()) or None,
        input_format=input_format,
        on_error=on_error,
        limit=limit,
        window=window,
        batch_size=batch_size,
        max_batch_tokens=_tokens(max_batch_tokens),
        bootstrap=bootstrap,
        seed=seed,
        chat=chat is not None,
        system=None if chat is None else chat.system,
    )
    several = len(model_names) > 1
    if several:  # a model named twice is refused before the output is claimed
        from autoprompt_py.several import check_distinct

        check_distinct(model_names)
    preflight(config, data, output, output_format, force, resume)  # before the model loads
    quiet_transformers()
    # several models: loaded and checked to share one vocabulary before the output is opened
    lms = load_models(model_names, device, dtype) if several else None
    lm = lms[0] if several else load_model(model_names[0], device, dtype)
    summary = write_predictions(
        config,
        data,
        output,
        lms if several else lm,
        list(model_names) if several else model_names[0],
        dtype,
        output_format,
        force,
        resume,
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


COMMANDS = [predict]
