"""Search curves: the best dev metric so far against seconds or forward passes, one line a run.

    from autoprompt_py.plotting import plot_curves

    figure = plot_curves(["gcg-seed0.json", "autoprompt-seed0.json"], "curve.png", x="passes")

A search result's ``"curve"`` is a list of ``[seconds, forward_passes, best_dev_so_far]``
points (the first point's metric may be null: it is skipped). Each run is drawn as a step line
(the best so far holds until the next improvement), carried on to the run's total cost; runs
whose settings differ only in the seed share a colour, with a line style per seed. The
figure is drawn with matplotlib's Agg canvas and no pyplot, so no display and no global state
are involved; matplotlib is an optional extra (``pip install autoprompt-py[plot]``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprompt_py.errors import AutopromptError
from autoprompt_py.resources import RESULT_KIND
from autoprompt_py.results import atomic_write, refuse_overwrite
from autoprompt_py.textfile import parse_json, read_bytes

# --x choice → (index in a curve point, key in the result's "cost", axis label)
X_AXES = {
    "seconds": (0, "seconds", "wall-clock seconds"),
    "passes": (1, "forward_passes", "model forward passes"),
}
TUNE_KIND = "autoprompt-tune"  # tune/vectors.py's: an ``autoprompt tune`` result.json
MISSING_MATPLOTLIB = "autoprompt plot needs matplotlib: pip install autoprompt-py[plot]"


@dataclass
class RunCurve:
    """One search run's curve, read and checked from its result file."""

    source: str
    points: list[tuple[float, float, float]]  # (seconds, forward passes, best dev so far)
    metric: str
    method: str | None = None
    seed: int | None = None
    cost: dict[str, float] = field(default_factory=dict)  # the run's totals, where recorded
    model: str | None = None
    relation: str | None = None
    settings: str = ""  # the config without its seed: runs equal in it differ only by seed

    @property
    def label(self) -> str:
        method = self.method or "search"
        return method if self.seed is None else f"{method} seed {self.seed}"


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise AutopromptError(MISSING_MATPLOTLIB) from None


def check_plot_output(output: str | Path, force: bool = False) -> str:
    """Fail before any work when the figure cannot be written, or exists and ``force`` is not
    given; returns the image format."""
    path = Path(output).expanduser()
    if path.is_dir():
        raise AutopromptError(f"--output {output} is a folder; give a file name, e.g. curve.png")
    refuse_overwrite(path, "--output", force)
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in formats:
        raise AutopromptError(
            f"--output {output}: give an image file name ending in .png, .pdf or .svg "
            f"(or .{', .'.join(sorted(set(formats) - {'png', 'pdf', 'svg'}))})"
        )
    return fmt


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_curve(path: str | Path) -> RunCurve:
    """The curve of a search result file; AutopromptError naming the file and what is wrong."""
    path = Path(path)
    fix = "give the .json files written by autoprompt search"
    raw = read_bytes(path, "search result file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:  # a PNG given for its result: binary, not text gone wrong
        raise AutopromptError(f"{path}: not valid JSON; {fix}") from None
    try:
        data = parse_json(text, str(path))
    except AutopromptError as e:
        raise AutopromptError(f"{e}; {fix}") from None
    if isinstance(data, dict) and data.get("kind") == TUNE_KIND:
        return _tuning_curve(path, data)
    if not isinstance(data, dict) or data.get("kind") != RESULT_KIND:
        raise AutopromptError(
            f'{path}: not a search result (no "kind": "{RESULT_KIND}"); give the .json files '
            "written by autoprompt search"
        )
    curve = data.get("curve")
    if curve is None:
        raise AutopromptError(
            f'{path}: not a search result with a "curve" (results of older versions of '
            "autoprompt search lack it; run the search again)"
        )
    if not isinstance(curve, list):
        raise AutopromptError(f'{path}: its "curve" is not a list of points')
    points = []
    for i, point in enumerate(curve, 1):
        if (
            not isinstance(point, list)
            or len(point) != 3
            or not (_number(point[0]) and _number(point[1]))
            or not (point[2] is None or _number(point[2]))
        ):
            raise AutopromptError(
                f'{path}: point {i} of its "curve" is {json.dumps(point)[:60]}, not '
                "[seconds, forward passes, best dev metric or null]"
            )
        if point[2] is not None:
            points.append((float(point[0]), float(point[1]), float(point[2])))
    if not points:
        raise AutopromptError(f'{path}: its "curve" has no point with a dev metric to draw')
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    cost = data.get("cost") if isinstance(data.get("cost"), dict) else {}
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    seed = config.get("seed")
    return RunCurve(
        source=str(path),
        points=points,
        metric=str(data.get("metric") or "dev metric"),
        method=str(data.get("method") or config.get("method") or "") or None,
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        cost={k: float(v) for k, v in cost.items() if _number(v)},
        model=Path(str(model["name"])).name if model.get("name") else None,
        relation=data.get("relation") if isinstance(data.get("relation"), str) else None,
        settings=json.dumps(
            [data.get("method"), {k: v for k, v in config.items() if k != "seed"}],
            sort_keys=True,
            default=str,
        ),
    )


def _tuning_curve(path: Path, data: dict) -> RunCurve:
    """An ``autoprompt tune`` result's curve: the best dev metric so far at each evaluation
    (``passes`` counts training steps)."""
    best, points = None, []
    for c in data.get("curve") if isinstance(data.get("curve"), list) else []:
        if isinstance(c, dict) and all(_number(c.get(k)) for k in ("seconds", "step", "dev")):
            best = c["dev"] if best is None else max(best, c["dev"])
            points.append((float(c["seconds"]), float(c["step"]), float(best)))
    if not points:
        raise AutopromptError(f'{path}: its "curve" has no point with a dev metric to draw')
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    seed = config.get("seed")
    cost = {"seconds": data.get("train_seconds"), "forward_passes": data.get("steps")}
    return RunCurve(
        source=str(path),
        points=points,
        metric=str(data.get("metric") or "dev metric"),
        method=f"tune {data.get('method')}",
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        cost={k: float(v) for k, v in cost.items() if _number(v)},
        model=Path(str(model["name"])).name if model.get("name") else None,
        relation=data.get("relation") if isinstance(data.get("relation"), str) else None,
        settings=json.dumps(
            [data.get("method"), {k: v for k, v in config.items() if k != "seed"}],
            sort_keys=True,
            default=str,
        ),
    )


def run_labels(runs: Sequence[RunCurve]) -> list[str]:
    """``<method> seed <seed>``, with the file name added where two runs would share one."""
    labels = [r.label for r in runs]
    for attempt in (lambda r: Path(r.source).stem, lambda r: r.source):
        clash = {lab for lab in labels if labels.count(lab) > 1}
        if not clash:
            break
        labels = [
            f"{r.label} ({attempt(r)})" if lab in clash else lab for r, lab in zip(runs, labels)
        ]
    return labels


def run_styles(runs: Sequence[RunCurve]) -> list[tuple[int, int]]:
    """(colour, line style) indices: one colour per setting, one style per seed within it."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault(r.settings, []).append(i)
    styles = [(0, 0)] * len(runs)
    for colour, members in enumerate(groups.values()):
        for style, i in enumerate(members):
            styles[i] = (colour, style)
    return styles


def _common(values: Sequence[str | None]) -> str | None:
    distinct = set(values)
    return values[0] if len(distinct) == 1 else None


def plot_curves(
    results: Sequence[str | Path | RunCurve],
    output: str | Path | None = None,
    x: str = "seconds",
    title: str | None = None,
    force: bool = True,
):
    """Draw each run's best dev metric so far against ``x`` (``seconds`` or ``passes``).

    ``results``: result file paths or ``RunCurve``s. Every file is checked before anything is
    drawn; ``output`` (if given) is written atomically, in the format its suffix names, and
    replaces an existing file only with ``force`` (the default here, where the call names the
    file; ``autoprompt plot`` needs ``--force``).
    Returns the matplotlib ``Figure`` (one line per run on its one axes).
    """
    if x not in X_AXES:
        raise AutopromptError(f"--x {x!r}: use one of {', '.join(X_AXES)}")
    if not results:
        raise AutopromptError("no search result files to plot")
    fmt = check_plot_output(output, force) if output is not None else None
    require_matplotlib()
    runs = [r if isinstance(r, RunCurve) else read_curve(r) for r in results]

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    index, cost_key, x_label = X_AXES[x]
    metrics = list(dict.fromkeys(r.metric for r in runs))
    metric = " / ".join(metrics)
    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    line_styles = ("-", "--", ":", "-.")
    for run, label, (colour, style) in zip(runs, run_labels(runs), run_styles(runs)):
        xs = [p[index] for p in run.points]
        ys = [p[2] for p in run.points]
        end = run.cost.get(cost_key)
        if end is not None and end > xs[-1]:  # the best so far holds to the end of the run
            xs.append(end)
            ys.append(ys[-1])
        marked = list(range(len(run.points)))  # the recorded points, not the carried end
        ax.step(
            xs,
            ys,
            where="post",
            label=label,
            color=colours[colour % len(colours)],
            linestyle=line_styles[style % len(line_styles)],
            marker="o",
            markersize=3,
            markevery=marked,
        )
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"best dev {metric} so far")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    if title is None:
        about = (_common([r.model for r in runs]), _common([r.relation for r in runs]))
        detail = ", ".join(s for s in about if s)
        title = f"Best dev {metric} against {x_label}" + (f" ({detail})" if detail else "")
    ax.set_title(title)
    if output is not None:
        atomic_write(output, lambda tmp: figure.savefig(tmp, format=fmt, dpi=150))
    return figure
