"""report.html: the whole report in one file that opens anywhere, offline: the plots embedded as
base64 PNG ``data:`` URLs, the tables as HTML tables, the style inline; no script, no link out.

It shows the same rows as report.md (:mod:`.tables`) in the same order, so report.json still holds
every number on the page.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from html import escape
from pathlib import Path

from raflora.report.tables import (
    SEEDS_NOTE,
    SWEEP_NOTE,
    difference_rows,
    energy_rows,
    group_rows,
    has_seeds,
    intro,
    paired_rows,
    per_round_rows,
    per_round_sections,
    summary_rows,
    sweep_rows,
)

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; white-space: nowrap; }
th { background: #eee; }
div.wide { overflow-x: auto; }
img { display: block; margin: 0.5em 0 1.5em; max-width: 100%; }
p.note { color: #555; max-width: 60em; }
"""


NUMBER = re.compile(r"[-+]?\d")  # numbers line up on the right, names and settings on the left


def _cell(text: str) -> str:
    return f'<td class="num">{escape(text)}</td>' if NUMBER.match(text) else f"<td>{escape(text)}</td>"


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str | None = None) -> str:
    """A table in a box that scrolls sideways when it is wider than the page (many runs)."""
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(_cell(cell) for cell in row) + "</tr>\n" for row in rows)
    ident = f' id="{escape(table_id)}"' if table_id else ""
    return f'<div class="wide"><table{ident}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table></div>'


def embedded_image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{escape(path.name)}" src="data:image/png;base64,{data}">'


def report_html(report: dict, folder: Path, plots: Sequence[str] = ()) -> str:
    """The page; ``plots`` are PNG file names in ``folder``, read and embedded."""
    title = f"Report: {len(report['runs'])} run(s) of task {report['task']}"
    parts = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="note">{escape(intro(report))}</p>',
        html_table(*summary_rows(report), table_id="summary"),
    ]
    if has_seeds(report):
        parts += [
            "<h2>Over seeds</h2>",
            f'<p class="note">{escape(SEEDS_NOTE)}</p>',
            html_table(*group_rows(report), table_id="groups"),
        ]
        if report["paired"]:
            parts += [
                f"<h3>Paired differences (reference {escape(report['reference'])})</h3>",
                html_table(*paired_rows(report), table_id="paired"),
            ]
    if report.get("sweep"):
        parts += [
            "<h2>Sweep</h2>",
            f'<p class="note">{escape(SWEEP_NOTE)}</p>',
            html_table(*sweep_rows(report), table_id="sweep"),
        ]
    if report["differences"]:
        parts += ["<h2>What differs between the runs</h2>", html_table(*difference_rows(report, code=False))]
    header, rows = energy_rows(report)
    if rows:
        parts += ["<h2>Energy per rank partition, last round</h2>", html_table(header, rows)]
    if plots:
        parts += ["<h2>Plots</h2>"] + [embedded_image(folder / name) for name in plots]
    parts.append("<h2>Per round</h2>")
    for title_, value, show in per_round_sections(report):
        parts += [f"<h3>{escape(title_)}</h3>", html_table(*per_round_rows(report, value, show))]
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
