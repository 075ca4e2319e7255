"""The tables that score and probe print, and their notes on what was cut or split."""

from __future__ import annotations

import click


def probe_table(probes, calibrate: bool) -> None:
    from autoprompt_py.probing import KINDS, averages

    header = ["relation", "template", "facts", "skipped", "P@1", "P@10", "MRR"]
    if calibrate:
        header += ["cal P@1", "cal P@10", "cal MRR"]

    def cells(m: dict | None) -> list[str]:
        if m is None:
            return ["", "", ""]
        return [f"{m['p@1']:.4f}", f"{m['p@10']:.4f}", f"{m['mrr']:.4f}"]

    rows = []
    for p in probes:
        shown = [(m.name, m) for m in p.members]
        if len(p.dev) and p.best is not None:
            best = p.members[p.best].name
            if calibrate and p.best_cal is not None and p.best_cal != p.best:
                best += f" (cal: {p.members[p.best_cal].name})"
            shown.append((f"best on dev: {best}", None))
        if p.ensemble is not None:
            shown.append((p.ensemble.name, p.ensemble))
        for label, m in shown:
            if m is None:  # the best row: raw and calibrated choices may differ
                raw = p.metrics(p.kind_ranks("best-dev"))
                cal = p.kind_ranks("best-dev", True)
                cal = p.metrics(cal) if cal is not None else None
                text = ""
            else:
                raw = p.metrics(m.ranks)
                cal = p.metrics(m.cal_ranks) if m.cal_ranks is not None else None
                text = "" if m.template == m.name else m.template
            row = [p.relation, label, str(len(p.test)), str(p.skipped)] + cells(raw)
            if calibrate:
                row += cells(cal)
            rows.append(row + [text])
    kinds = [k for k in KINDS if any(p.kind(k) is not None for p in probes)]
    if not any(len(p.dev) for p in probes):
        kinds = [k for k in kinds if k != "best-dev"]
    multi = any(len(p.members) > 1 for p in probes)
    for kind in kinds:
        raw, cal = averages(probes, kind), averages(probes, kind, True) if calibrate else None
        for avg in ("micro", "macro"):
            a = raw[avg]
            label = f"{avg} ({kind})" if multi else avg
            n = str(a.get("n", a.get("relations")))
            row = [label, "", n, ""] + cells(a)
            if calibrate:
                row += cells(cal[avg] if cal else None)
            rows.append(row + [""])
    table(header + ["template text"], rows)


def score_row(rank: str, r, labels: list[str]) -> list[str]:
    m = r.metrics
    row = [
        rank,
        str(m["n"]),
        f"{m['accuracy']:.4f}",
        interval(m["accuracy_ci95"]),
        f"{m['macro_f1']:.4f}",
    ] + [f"{m['recall'][lab]:.3f}" for lab in labels]
    if r.calibrated is not None:
        c = r.calibrated.metrics
        row += [
            f"{c['accuracy']:.4f}",
            interval(c["accuracy_ci95"]),
            f"{c['macro_f1']:.4f}",
        ]
    return row + [r.name]


def interval(ci: list[float] | None) -> str:
    """``--bootstrap 0`` computes no interval: the column says so rather than 0.000-0.000."""
    return "-" if ci is None else "{:.3f}-{:.3f}".format(*ci)


def notes(results, max_length: int) -> None:
    """Say once what was cut or split, so that nobody misreads the figures."""
    for r in results:
        if r.truncated:
            name = getattr(r, "name", None) or getattr(r, "relation", "")
            click.echo(
                f"note: {name}: {r.truncated} inputs longer than {max_length} tokens "
                "were cut from their shortenable field",
                err=True,
            )
    split = sorted({w for r in results for w in getattr(r, "multi_piece_words", [])})
    if split:
        click.echo(
            "note: label words split into several tokens are scored with one mask per "
            f"piece: {', '.join(split)}",
            err=True,
        )


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    click.echo(fmt.format(*header))
    for row in rows:
        click.echo(fmt.format(*row))
