"""``autoprompt plot`` and ``plot_curves``: one step line per search result, and bad input.

The result files are written by hand from the documented format (``kind``, ``metric``,
``method``, ``config.seed``, ``cost``, ``curve`` of [seconds, forward passes, best dev]).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from optional import requires

from autoprompt_py.cli import main
from autoprompt_py.errors import AutopromptError
from autoprompt_py.plotting import plot_curves, read_curve
from autoprompt_py.resources import RESULT_KIND

pytestmark = requires("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_result(
    path: Path,
    method: str = "gcg",
    seed: int = 0,
    curve: list | None = None,
    metric: str = "accuracy",
    seconds: float = 12.0,
    passes: int = 9000,
    **extra,
) -> Path:
    data = {
        "kind": RESULT_KIND,
        "metric": metric,
        "method": method,
        "config": {"seed": seed, "method": method},
        "cost": {
            "seconds": seconds,
            "forward_passes": passes,
            "forward_calls": 40,
            "backward_passes": 20,
            "candidate_evaluations": 2560,
        },
        "curve": [[0.5, 100, None], [1.0, 200, 0.51], [4.0, 3000, 0.55], [9.0, 7000, 0.58]]
        if curve is None
        else curve,
        "model": {"name": "../shared/models/bert-tiny-splade"},
        "relation": None,
        **extra,
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def run(*args):
    return CliRunner().invoke(main, ["plot", *map(str, args)], catch_exceptions=False)


def assert_user_error(r, *fragments: str) -> str:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_plot_curves_draws_one_step_line_per_run(tmp_path):
    files = [
        write_result(tmp_path / "a.json", "gcg", 0),
        write_result(tmp_path / "b.json", "gcg", 1, curve=[[0.0, 0, 0.6], [3.0, 900, 0.62]]),
        write_result(tmp_path / "c.json", "autoprompt", 0, seconds=9.0),
    ]
    out = tmp_path / "curve.png"
    figure = plot_curves(files, out)
    (ax,) = figure.axes
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["gcg seed 0", "gcg seed 1", "autoprompt seed 0"]
    assert all(line.get_drawstyle() == "steps-post" for line in lines)
    # seeds of one setting share a colour and differ in style; another method differs in colour
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert lines[0].get_linestyle() != lines[1].get_linestyle()
    assert lines[0].get_linestyle() == lines[2].get_linestyle() == "-"
    # null first point skipped, the best so far carried on to the run's total seconds
    assert list(lines[0].get_xdata()) == [1.0, 4.0, 9.0, 12.0]
    assert list(lines[0].get_ydata()) == [0.51, 0.55, 0.58, 0.58]
    assert list(lines[2].get_xdata()) == [1.0, 4.0, 9.0]  # ended at its last point
    assert ax.get_xlabel() == "wall-clock seconds"
    assert ax.get_ylabel() == "best dev accuracy so far"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        line.get_label() for line in lines
    ]
    assert "bert-tiny-splade" in ax.get_title()
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    assert not list(tmp_path.glob(".*.tmp"))


def test_plot_against_forward_passes_and_colliding_labels(tmp_path):
    files = [
        write_result(tmp_path / "loss.json", "autoprompt", 0, metric="P@1", relation="P19"),
        write_result(tmp_path / "metric.json", "autoprompt", 0, metric="P@1", relation="P19"),
        write_result(tmp_path / "other.json", "gcg", 0, metric="P@1", relation="P19"),
    ]
    figure = plot_curves(files, None, x="passes")
    (ax,) = figure.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["autoprompt seed 0 (loss)", "autoprompt seed 0 (metric)", "gcg seed 0"]
    assert list(ax.get_lines()[0].get_xdata()) == [200, 3000, 7000, 9000]
    assert ax.get_xlabel() == "model forward passes"
    assert ax.get_ylabel() == "best dev P@1 so far"
    assert "P19" in ax.get_title()

    sub = tmp_path / "sub"
    sub.mkdir()
    same_stem = [files[0], write_result(sub / "loss.json", "autoprompt", 0)]
    labels = [line.get_label() for line in plot_curves(same_stem).axes[0].get_lines()]
    assert labels[0] != labels[1] and all(str(p) in lab for p, lab in zip(same_stem, labels))


def test_label_falls_back_to_config_method_and_file(tmp_path):
    path = write_result(tmp_path / "x.json", "gcg", 3)
    data = json.loads(path.read_text())
    del data["method"]
    path.write_text(json.dumps(data))
    assert read_curve(path).label == "gcg seed 3"  # the config's method
    del data["config"]
    path.write_text(json.dumps(data))
    assert read_curve(path).label == "search"


def test_cli_writes_png_against_seconds_and_passes(tmp_path):
    a = write_result(tmp_path / "a.json", "gcg", 0)
    b = write_result(tmp_path / "b.json", "autoprompt", 1)
    for x, label in (("seconds", "wall-clock seconds"), ("passes", "model forward passes")):
        out = tmp_path / f"{x}.png"
        r = run(a, b, "--output", out, "--x", x)
        assert r.exit_code == 0, r.stderr
        assert r.stdout.strip() == f"wrote {out}: 2 runs, best dev accuracy against {label}"
        assert out.read_bytes().startswith(PNG_SIGNATURE)
    svg = tmp_path / "curve.svg"
    r = run(a, "-o", svg, "--title", "SST-2, 60 s")
    assert r.exit_code == 0, r.stderr
    text = svg.read_text()
    assert "<svg" in text and "SST-2, 60 s" in text


def test_missing_matplotlib(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    out = tmp_path / "curve.png"
    r = run(write_result(tmp_path / "a.json"), "--output", out)
    line = assert_user_error(r)
    assert line == "error: autoprompt plot needs matplotlib: pip install autoprompt-py[plot]"
    assert not out.exists()
    with pytest.raises(AutopromptError, match="needs matplotlib"):
        plot_curves([tmp_path / "a.json"])


@pytest.mark.parametrize(
    "content, fragments",
    [
        ("{not json", ["bad.json:1: not valid JSON"]),
        (b"\x89PNG\r\n\x1a\n\x00\xff", ["bad.json: not valid JSON"]),
        ('{"kind": "something"}', ["bad.json: not a search result", RESULT_KIND]),
        ("[1, 2]", ["bad.json: not a search result"]),
        ({"curve": None}, ['bad.json: not a search result with a "curve"', "run the search"]),
        ({"curve": {"a": 1}}, ['bad.json: its "curve" is not a list']),
        ({"curve": [[1.0, 10]]}, ["bad.json: point 1 of its", "[seconds, forward passes"]),
        ({"curve": [[1.0, 10, 0.5], [2, "x", 0.6]]}, ["bad.json: point 2 of its"]),
        ({"curve": [[1.0, 10, None]]}, ['bad.json: its "curve" has no point with a dev metric']),
    ],
)
def test_bad_result_files(tmp_path, content, fragments):
    good = write_result(tmp_path / "good.json")
    bad = tmp_path / "bad.json"
    if isinstance(content, dict):
        write_result(bad)
        data = json.loads(bad.read_text())
        data.update(content)
        if content["curve"] is None:
            del data["curve"]
        bad.write_text(json.dumps(data))
    elif isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content)
    out = tmp_path / "curve.png"
    assert_user_error(run(good, bad, "--output", out), *fragments)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(AutopromptError):
        read_curve(bad)


def test_bad_paths_and_options(tmp_path):
    good = write_result(tmp_path / "good.json")
    assert_user_error(run(tmp_path / "none.json", "-o", tmp_path / "c.png"), "none.json: no such")
    assert_user_error(run(tmp_path, "-o", tmp_path / "c.png"), "a folder, not a search result")
    assert_user_error(run(good, "-o", tmp_path / "no" / "c.png"), "does not exist")
    assert_user_error(run(good, "-o", tmp_path), "is a folder")
    assert_user_error(run(good, "-o", tmp_path / "c.json"), "c.json: give an image file", ".png")
    assert_user_error(run(good, "-o", tmp_path / "curve"), "give an image file name")
    assert json.loads(good.read_text())["kind"] == RESULT_KIND  # never overwritten
    r = run(good, "-o", tmp_path / "c.png", "--x", "iterations")
    assert r.exit_code == 2 and "iterations" in r.stderr
    r = run("-o", tmp_path / "c.png")
    assert r.exit_code == 2 and "RESULTS" in r.stderr
    assert not list(tmp_path.glob("c*"))
