"""Writing ``predict``'s rows to a file or standard output, resumably.

A file is written to ``<output>.partial``; after every window ``<output>.partial.json``
records the run's identity (config, model, input) and how many input rows and bytes the
partial file holds. Complete, the partial file is renamed to the output. ``--resume`` cuts
the partial file back to the recorded bytes and goes on after the recorded rows; the windows
are the same as in an uninterrupted run, so the file is too.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from autoprompt_py import distributed
from autoprompt_py.data import cell_text, iter_rows
from autoprompt_py.errors import AutopromptError, raise_pending_stop
from autoprompt_py.language_model import LanguageModel
from autoprompt_py.metrics import classification_metrics, rank_metrics
from autoprompt_py.prediction.config import PredictConfig
from autoprompt_py.prediction.models import RULE, make_predictor
from autoprompt_py.prediction.prefetch import prefetch
from autoprompt_py.prediction.reader import RowReader
from autoprompt_py.prediction.resume import (
    partial_path,
    resume_point,
    run_identity,
    save_point,
    sidecar_path,
)
from autoprompt_py.prediction.run import (
    Predictor,
    gold_field,
    needed_fields,
    open_reader,
    select_prompts,
)
from autoprompt_py.prediction.writer import (
    convert_partial,
    open_writer,
    output_format,
    partial_format,
)
from autoprompt_py.prompt import model_record
from autoprompt_py.resources import load_verbalizer
from autoprompt_py.results import (
    check_output_path,
    claim_output,
    from_main,
    output_lock,
    provenance,
    run_record_path,
    write_json,
)
from autoprompt_py.several import models_record
from autoprompt_py.textfile import open_binary
from autoprompt_py.vocab import read_vocab


def preflight(
    config: PredictConfig,
    data: str,
    output: str,
    *,
    output_format_: str | None = None,
    force: bool = False,
    resume: bool = False,
) -> None:
    """Every check that needs no model: the output, the prompts, and the input's first row
    (a column the template reads that the input lacks is a mistake, not a row to skip)."""
    check_paths(data, output, force, resume, output_format(output, output_format_))
    prompts = select_prompts(config)
    for spec in config.verbalizers:  # a bad file is one line before the model loads
        load_verbalizer(spec)
    if config.vocab:
        read_vocab(config.vocab)
    if not prompts[0].is_relational and not config.verbalizers:
        raise AutopromptError(
            "--verbalizer: a classification template needs one (label → words), e.g. "
            "--verbalizer sst2; relation templates ([X] ... [Y]) need none"
        )
    if data == "-":
        return
    reader = RowReader(data, [], None, "all", config.columns, config.input_format, "skip", 1)
    first = next(reader.windows(1), None)
    if first is None:
        raise AutopromptError(f"--data {data}: no rows in the file")
    row = first[0]
    have = set(row.keep) | {"id"}
    needed = needed_fields(config)
    gold = gold_field(config, prompts[0].is_relational)
    if gold is not None:
        needed.append(gold)
    for name in needed:
        if name not in have:
            relational = prompts[0].is_relational and name == "sub_label"
            fix = (
                "relation rows need the subject of [X] in a 'sub_label' field"
                if relational
                else "rename the column or the template field, or name the columns with --columns"
            )
            if name == gold:
                fix = "choose it with --label-field, or drop --with-labels"
            raise AutopromptError(
                f"{row.example.source}: no field {name!r} (fields: "
                f"{', '.join(map(str, row.keep)) or 'none'}); {fix}"
            )


# -- writing, resumably ----------------------------------------------------------------------


@dataclass
class PredictSummary:
    rows: int = 0  # rows written
    skipped: int = 0
    read: int = 0  # input rows consumed, skipped ones included
    metrics: dict | None = None
    truncated: int = 0
    resumed_from: int = 0


def check_paths(data: str, output: str, force: bool, resume: bool, fmt: str) -> Path | None:
    """Output checks before any work: its format, not the input, not an earlier result."""
    if output == "-":
        if resume:
            raise AutopromptError("--resume continues an output file; it cannot with --output -")
        if fmt == "parquet":
            raise AutopromptError("--output -: Parquet cannot go to standard output; give a file")
        return None
    target = check_output_path(output)
    assert target is not None
    if data != "-" and Path(data).exists() and Path(os.path.realpath(data)) == target:
        raise AutopromptError(
            f"--output {output} is the input file; write the predictions to another file"
        )
    if resume and data == "-":
        raise AutopromptError("--resume needs the same input again: give --data a file, not -")
    # fresh, resume, replace or refuse: rank 0 decides for every rank under torchrun
    claim_output(
        output, force=force, resume=resume, partials=[partial_path(target), sidecar_path(target)]
    )
    return target


def write_predictions(
    config: PredictConfig,
    data: str,
    output: str,
    lm: LanguageModel | Sequence[LanguageModel],
    model: str | Sequence[str],
    *,
    dtype: str = "float32",
    output_format_: str | None = None,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    on_window: Callable[[int], None] | None = None,
    check_first: Callable[[RowReader], None] | None = None,
) -> PredictSummary:
    """Write the predictions of ``data`` to ``output`` (``-``: standard output).

    A file is written to ``<output>.partial``, with ``<output>.partial.json`` saying how many
    input rows and bytes it holds after each window; it is renamed to ``output`` when done.
    ``resume`` continues such a partial file (same config, model and input, or refused with
    the reason) and the finished file is byte for byte the uninterrupted run's.
    ``on_window(n)`` is called after the n-th window is saved (tests interrupt there).
    Several models (``lm`` and ``model`` lists): their ensemble (``prediction.models``).
    """
    fmt = output_format(output, output_format_)
    target = check_paths(data, output, force, resume, fmt)
    # one model: its name, as ever; several: every name, so --resume refuses another set
    names = model if isinstance(model, str) else list(model) if len(model) > 1 else model[0]
    identity = run_identity(config, data, names, dtype, fmt)
    reader = open_reader(config, data)
    main = distributed.is_main()
    skip, offset, earlier = 0, 0, PredictSummary()
    if target is not None and resume:
        # rank 0 reads where to go on for every rank: it soon writes the next record
        point = from_main(lambda: resume_point(target, identity))
        if point is not None:
            skip, offset = point["read"], point["bytes"]
            earlier = PredictSummary(point["rows"], point["skipped"], point["read"])
    elif target is not None and main:
        sidecar_path(target).unlink(missing_ok=True)  # a fresh start: an old record is void
    predictor = make_predictor(config, lm)
    keep = _keep_names(config, data)
    columns = predictor.columns(keep)
    summary = PredictSummary(earlier.rows, earlier.skipped, earlier.read, resumed_from=skip)
    gold: list = []
    predicted: list = []
    if config.with_labels and skip:
        gold, predicted = _labels_written(target, fmt, predictor.relational, offset)

    from tqdm.auto import tqdm

    lock = output_lock(output if target is not None else None)
    with (
        lock,
        tqdm(
            desc="predict",
            unit="row",
            initial=skip,
            disable=not progress or not main,
            file=sys.stderr,
        ) as bar,
    ):
        stream = _open_stream(target, offset, main)
        try:
            writer = (
                open_writer(partial_format(fmt), stream, columns, header=offset == 0)
                if main
                else None
            )
            for n, (out, read, skipped) in enumerate(_windows(predictor, reader, skip), 1):
                summary.rows += len(out)
                summary.read = read
                summary.skipped = earlier.skipped + skipped
                if config.with_labels:
                    _collect(out, predictor.relational, gold, predicted)
                if writer is not None:
                    writer.write(out)
                    stream.flush()
                    if target is not None:
                        os.fsync(stream.fileno())
                        save_point(
                            target,
                            identity,
                            summary.read,
                            summary.rows,
                            summary.skipped,
                            stream.tell(),
                        )
                bar.update(len(out))
                if on_window is not None:
                    on_window(n)
                raise_pending_stop()  # a signal CPython dropped (errors.py)
            summary.read = max(summary.read, reader.rows_read)
            summary.skipped = earlier.skipped + reader.skipped
            if writer is not None:
                writer.close()
        except AutopromptError as e:  # a data error: no half-written output stays behind
            if target is None or not main:
                raise
            stream.close()
            partial_path(target).unlink(missing_ok=True)
            sidecar_path(target).unlink(missing_ok=True)
            raise AutopromptError(
                f"{e} (nothing written: the partial output {partial_path(target).name} was "
                "removed; fix the input and run again)"
            ) from None
        except OSError as e:  # a full disk: what was saved stays, resumable
            if target is None or not main:
                raise
            raise AutopromptError(
                f"--output {output}: cannot write ({e.strerror or e}); the rows saved so far "
                f"stay in {partial_path(target)}: make room, then continue with --resume"
            ) from None
        except BaseException:  # stopped before a window was saved: nothing worth keeping
            if target is not None and main and not sidecar_path(target).exists():
                stream.close()
                partial_path(target).unlink(missing_ok=True)
            raise
        finally:
            if target is not None and main:
                stream.close()
        summary.truncated = predictor.truncated
        if config.with_labels:
            summary.metrics = _metrics(config, predictor, gold, predicted)
        if target is not None and main:
            if summary.rows == 0:
                partial_path(target).unlink(missing_ok=True)
                sidecar_path(target).unlink(missing_ok=True)
                raise AutopromptError(
                    f"--data {data}: no row to predict ({summary.skipped} skipped for a missing "
                    "or empty field)"
                )
            _finish(target, identity, fmt, columns, predictor.window_rows, summary, lm)
    return summary


def _windows(
    predictor: Predictor, reader: RowReader, skip: int
) -> Iterator[tuple[list[dict], int, int]]:
    """(output rows, input rows read, rows skipped so far) per window. The next window is
    read and encoded in a thread while this one runs through the model; the counts are
    taken as each window was read, so a resumed run goes on after the right row."""
    ahead = (
        (rows, predictor.prepare([r.example for r in rows]), reader.rows_read, reader.skipped)
        for rows in reader.windows(predictor.window_rows, skip)
    )
    for rows, encoded, read, skipped in prefetch(ahead):
        yield predictor.window(rows, encoded), read, skipped


def _keep_names(config: PredictConfig, data: str) -> list[str]:
    if config.keep_columns != "all":
        return list(config.keep_columns)
    # the columns of the first row (a header), read before any work
    probe = RowReader(data, [], None, "all", config.columns, config.input_format, "skip", 1)
    if data == "-":
        raise AutopromptError("--keep-columns all needs a file (the columns of its first row)")
    for rows in probe.windows(1):
        return [k for k in rows[0].keep]
    return []


def _open_stream(target: Path | None, offset: int, main: bool):
    if target is None:
        return sys.stdout.buffer
    if not main:
        return None
    partial = partial_path(target)
    if offset:
        stream = open(partial, "r+b")  # noqa: SIM115 - closed by the caller
        stream.truncate(offset)  # drop a window written after the last saved count
        stream.seek(offset)
        return stream
    return open(partial, "wb")  # noqa: SIM115


def _finish(
    target: Path,
    identity: dict,
    fmt: str,
    columns: list[str],
    group_rows: int,
    summary: PredictSummary,
    lm: LanguageModel | Sequence[LanguageModel],
) -> None:
    """The partial file becomes the output (converted where its format differs), with the
    output's permissions; then the run's record is written beside it."""
    partial = partial_path(target)
    if partial_format(fmt) != fmt:
        converted = target.with_name(target.name + ".partial." + fmt)
        try:
            convert_partial(fmt, partial, converted, columns, group_rows)
        except BaseException:
            converted.unlink(missing_ok=True)  # the partial file stays, resumable
            raise
        source = converted
    else:
        source = partial
    try:
        mode = os.stat(target).st_mode & 0o777
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        mode = 0o666 & ~mask
    os.chmod(source, mode)
    os.replace(source, target)
    partial.unlink(missing_ok=True)
    sidecar_path(target).unlink(missing_ok=True)
    counts = {k: v for k, v in asdict(summary).items() if k != "metrics"}
    lms = list(lm) if isinstance(lm, (list, tuple)) else [lm]
    # several models: each one's record, and how their probabilities were combined
    several = {**models_record(lms), "model_ensemble": RULE} if len(lms) > 1 else {}
    record = {
        **provenance("predict", identity["config"]),
        "output": {"path": str(target), "format": fmt, "columns": columns},
        "model": model_record(lms[0]),  # the kind, vocabulary and embedding size, as every result
        **several,
        "dtype": identity["dtype"],
        "input": identity.get("input"),
        "counts": counts,
        "metrics": summary.metrics,
    }
    write_json(run_record_path(target), record)


def _collect(out: list[dict], relational: bool, gold: list, predicted: list) -> None:
    for r in out:
        gold.append(r["gold"])
        predicted.append(r.get("rank") if relational else r["prediction"])


def _labels_written(target, fmt, relational, size: int) -> tuple[list, list]:
    """Gold labels and predictions (or ranks) of a partial file, for a resumed run's metrics."""
    gold: list = []
    predicted: list = []
    with open_binary(partial_path(target), "partial output") as f:
        body = io.BytesIO(f.read(size))  # the saved part only
    for _, row in iter_rows(str(partial_path(target)), partial_format(fmt), None, body):
        gold.append(cell_text(row["gold"]))
        if relational:
            rank = row.get("rank")
            predicted.append(int(rank) if rank not in (None, "") else None)
        else:
            predicted.append(cell_text(row["prediction"]))
    return gold, predicted


def _metrics(config: PredictConfig, predictor: Predictor, gold: list, predicted: list) -> dict:
    if predictor.relational:
        ranks = np.array([r for r in predicted if r], dtype=np.int64)
        out = rank_metrics(ranks)
        out["skipped"] = len(predicted) - len(ranks)
        return out
    return classification_metrics(
        [str(g) for g in gold], predicted, predictor.labels, config.bootstrap, config.seed
    )
