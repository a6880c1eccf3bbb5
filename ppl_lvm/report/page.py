"""The HTML page of a report: inline CSS, the :class:`Report` builder of its pieces, and how values are written."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__

SUMMARY_ROWS = 200

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; background: #fff;
       margin: 0; line-height: 1.45; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.3em; border-bottom: 2px solid #d0d7de; padding-bottom: 4px; margin-top: 36px; }
h3 { font-size: 1.08em; margin: 22px 0 8px; color: #24292f; }
.meta { color: #57606a; font-size: 0.9em; margin-bottom: 8px; }
table { border-collapse: collapse; font-size: 0.88em; margin: 6px 0 10px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e5e7eb; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; font-weight: 600; }
td:first-child, th:first-child { text-align: left; }
table.facts td:first-child { color: #57606a; }
table.facts td { text-align: left; }
tr.best td { background: #dafbe1; font-weight: 600; }
.scroll { overflow-x: auto; max-width: 100%; }
ul.words { padding-left: 20px; margin: 6px 0; }
ul.words li { margin: 4px 0; }
li.warn { color: #9a6700; }
li.bad { color: #cf222e; }
p.note { color: #57606a; font-size: 0.88em; margin: 2px 0 8px; }
figure { margin: 14px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e5e7eb; border-radius: 4px; display: block; }
figcaption { color: #57606a; font-size: 0.88em; margin-top: 4px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 0 24px; align-items: start; }
.missing { color: #cf222e; font-size: 0.9em; }
.pair { display: grid; grid-template-columns: minmax(260px, 340px) 1fr; gap: 28px; align-items: start; }
.pair h3 { margin-top: 4px; }
details { margin: 14px 0; }
details > summary { cursor: pointer; font-weight: 600; font-size: 1.02em; margin-bottom: 6px; }
footer { color: #8c959f; font-size: 0.8em; margin-top: 40px; }
"""


# ---------------------------------------------------------------------------------------------------- page builder
class Report:
    """An HTML page built piece by piece; :meth:`write` saves it as one self-contained file.

    Parameters
    ----------
    title : str
        The page title.
    subtitle : str, optional
        One line under the title.
    """

    def __init__(self, title: str, subtitle: str | None = None):
        if not isinstance(title, str) or not title:
            raise ValueError(f"title must be a non-empty string, got {title!r}")
        self.title = title
        self.subtitle = subtitle
        self.parts: list[str] = []
        self._figures: list[str] = []  # pending figures of the current grid

    # ------------------------------------------------------------------ pieces
    def heading(self, text: str, level: int = 2) -> None:
        self.flush_figures()
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, cls: str | None = None) -> None:
        self.flush_figures()
        attr = f' class="{cls}"' if cls else ""
        self.parts.append(f"<p{attr}>{html.escape(text)}</p>")

    def words(self, items: Iterable[tuple[str, str]]) -> None:
        """A list of plain-language statements, each ``(level, text)`` with level ``ok``, ``warn`` or ``bad``."""
        self.flush_figures()
        rows = [f'<li class="{html.escape(level)}">{html.escape(text)}</li>' for level, text in items]
        if rows:
            self.parts.append('<ul class="words">' + "".join(rows) + "</ul>")

    def facts(self, rows: Iterable[tuple[str, Any]]) -> None:
        """A two-column table of labelled values."""
        self.flush_figures()
        body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
        self.parts.append(f'<table class="facts">{body}</table>')

    def facts_and_words(self, facts: Iterable[tuple[str, Any]], words: Iterable[tuple[str, str]]) -> None:
        """The facts table beside the plain-language statements."""
        self.flush_figures()
        self.parts.append('<div class="pair"><div>')
        self.facts(facts)
        self.parts.append("</div><div><h3>In plain words</h3>")
        self.words(words)
        self.parts.append("</div></div>")

    def details(self, label: str, frame: Any, open_: bool = False, max_rows: int | None = SUMMARY_ROWS) -> None:
        """A table under a disclosure triangle (no script needed)."""
        self.flush_figures()
        self.parts.append(f"<details{' open' if open_ else ''}><summary>{html.escape(label)}</summary>")
        self.table(frame, max_rows=max_rows)
        self.parts.append("</details>")

    def table(self, frame: Any, caption: str | None = None, max_rows: int | None = None,
              highlight: Any = None) -> None:
        """A pandas DataFrame as a table (the first ``max_rows`` rows; the row labelled ``highlight`` marked)."""
        self.flush_figures()
        import pandas as pd  # pandas is slow to import and only the tables need it

        if not isinstance(frame, pd.DataFrame):
            frame = pd.DataFrame(frame)
        shown = frame if max_rows is None or len(frame) <= max_rows else frame.head(max_rows)
        head = "<tr><th></th>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns) + "</tr>"
        body = []
        for label, row in shown.iterrows():
            cls = ' class="best"' if highlight is not None and label == highlight else ""
            cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row.tolist())
            body.append(f"<tr{cls}><td>{html.escape(str(label))}</td>{cells}</tr>")
        self.parts.append(f'<div class="scroll"><table>{head}{"".join(body)}</table></div>')
        notes = []
        if shown is not frame:
            notes.append(f"first {len(shown)} of {len(frame)} rows")
        if caption:
            notes.append(caption)
        if notes:
            self.parts.append(f'<p class="note">{html.escape("; ".join(notes))}</p>')

    def figure(self, fig: Any, caption: str) -> None:
        """A matplotlib Figure, embedded as a PNG (the figure is closed); figures in a row share a grid."""
        import matplotlib.pyplot as plt  # matplotlib is optional and slow to import

        buffer = io.BytesIO()
        try:
            fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight", facecolor="white")
        finally:
            plt.close(fig)
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        self._figures.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def missing_figure(self, caption: str, reason: str) -> None:
        self._figures.append(f'<figure><p class="missing">{html.escape(caption)}: not drawn ({html.escape(reason)})'
                             "</p></figure>")

    def flush_figures(self) -> None:
        if self._figures:
            self.parts.append('<div class="grid">' + "".join(self._figures) + "</div>")
            self._figures = []

    # ------------------------------------------------------------------ output
    def html(self) -> str:
        self.flush_figures()
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        sub = f'<p class="meta">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(self.title)}"
            f"</title><style>{_CSS}</style></head><body><main><h1>{html.escape(self.title)}</h1>{sub}"
            + "\n".join(self.parts)
            + f"<footer>ppl_lvm {html.escape(__version__)} &middot; written {stamp}</footer></main></body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html(), encoding="utf-8")
        return path


# ---------------------------------------------------------------------------------------------------- formatting
def _fmt(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "-"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}" if abs(v) < 100 else f"{v:.1f}"  # one decimal from 100 on, so columns line up
    if value is None:
        return "-"
    return str(value)
