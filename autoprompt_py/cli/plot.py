"""``autoprompt plot``: search curves of several runs on one figure."""

from __future__ import annotations

from pathlib import Path

import click

from autoprompt_py.cli.options import output_options
from autoprompt_py.cli.outputs import lock_output
from autoprompt_py.cli.paths import InputFile
from autoprompt_py.plotting import X_AXES, check_plot_output, plot_curves, read_curve


@click.command("plot")
@click.argument(
    "results", nargs=-1, required=True, type=InputFile("search result file", as_path=True)
)
@output_options(
    "The image to write; its suffix picks the format (.png, .pdf, .svg, ...).",
    "-o",
    type=click.Path(path_type=Path),
)
@click.option(
    "--x",
    "x_axis",
    type=click.Choice(list(X_AXES)),
    default="seconds",
    show_default=True,
    help="Against wall-clock seconds or model forward passes.",
)
@click.option("--title", default=None, help="Figure title [default: metric, model, relation].")
def plot_command(
    results: tuple[Path, ...], output: Path, x_axis: str, title: str | None, force: bool
) -> None:
    """Draw the best dev metric so far of search RESULTS (.json) against cost, one line a run.

    Needs matplotlib: pip install autoprompt-py[plot].
    """
    check_plot_output(output, force)
    lock_output(output)  # a second plot to the same --output is refused while this one runs
    runs = [read_curve(path) for path in results]  # every file checked before drawing
    plot_curves(runs, output, x=x_axis, title=title, force=force)
    metrics = " / ".join(dict.fromkeys(r.metric for r in runs))
    click.echo(
        f"wrote {output}: {len(runs)} run{'s' * (len(runs) != 1)}, best dev {metrics} "
        f"against {X_AXES[x_axis][2]}"
    )


COMMANDS = [plot_command]
