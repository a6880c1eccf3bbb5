"""The HTML page of a report: the :class:`Report` builder of its blocks, rendered by the package's Jinja2 templates.

The templates (``ppl_lvm/report/templates``: the page, one macro per kind of block, the CSS) are package data, loaded
with :class:`jinja2.PackageLoader`, with autoescaping on: every text and number reaches the page escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from .._version import __version__

SUMMARY_ROWS = 200


@functools.cache
def _environment() -> jinja2.Environment:
    """The templates' environment (made once, on the first page written)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ppl_lvm.report", "templates"),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "j2", "css"), default_for_string=True, default=True
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    return env


# ---------------------------------------------------------------------------------------------------- page builder
class Report:
    """An HTML page built block by block; :meth:`write` saves it as one self-contained file.

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
        self.blocks: list[dict[str, Any]] = []
        self._figures: list[dict[str, str]] = []  # pending figures of the current grid

    # ------------------------------------------------------------------ pieces
    def _add(self, kind: str, **fields: Any) -> None:
        self.flush_figures()
        self.blocks.append({"kind": kind, **fields})

    def heading(self, text: str, level: int = 2) -> None:
        if level not in (2, 3, 4):
            raise ValueError(f"level must be 2, 3 or 4 (the page title is the only h1), got {level!r}")
        self._add("heading", text=str(text), level=level)

    def paragraph(self, text: str, cls: str | None = None) -> None:
        self._add("paragraph", text=str(text), cls=cls)

    def words(self, items: Iterable[tuple[str, str]]) -> None:
        """A list of plain-language statements, each ``(level, text)`` with level ``ok``, ``warn`` or ``bad``."""
        self._add("words", items=[(str(level), str(text)) for level, text in items])

    def facts(self, rows: Iterable[tuple[str, Any]]) -> None:
        """A two-column table of labelled values (long values wrap)."""
        self._add("facts", rows=[(str(k), v) for k, v in rows])

    def facts_and_words(self, facts: Iterable[tuple[str, Any]], words: Iterable[tuple[str, str]]) -> None:
        """The facts table beside the plain-language statements (one above the other on a narrow window)."""
        self._add("pair", facts=[(str(k), v) for k, v in facts], words=[(str(a), str(b)) for a, b in words])

    def details(self, label: str, frame: Any, open_: bool = False, max_rows: int | None = SUMMARY_ROWS) -> None:
        """A table under a disclosure triangle (no script needed)."""
        self._add("details", label=str(label), open=bool(open_), table=_table(frame, None, max_rows, None))

    def table(self, frame: Any, caption: str | None = None, max_rows: int | None = None, highlight: Any = None) -> None:
        """A pandas DataFrame as a table (the first ``max_rows`` rows; the row labelled ``highlight`` marked)."""
        self._add("table", **_table(frame, caption, max_rows, highlight))

    def figure(self, fig: Any, caption: str) -> None:
        """A matplotlib Figure, embedded as a PNG (the figure is closed); figures in a row share a grid."""
        import matplotlib.pyplot as plt  # matplotlib is optional and slow to import

        buffer = io.BytesIO()
        try:
            fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight", facecolor="white")
        finally:
            plt.close(fig)
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        self._figures.append({"caption": str(caption), "src": f"data:image/png;base64,{data}"})

    def missing_figure(self, caption: str, reason: str) -> None:
        """A figure that could not be drawn: its caption and why, in its place."""
        self._figures.append({"caption": str(caption), "src": "", "reason": str(reason)})

    def flush_figures(self) -> None:
        if self._figures:
            self.blocks.append({"kind": "figures", "items": self._figures})
            self._figures = []

    # ------------------------------------------------------------------ output
    def html(self) -> str:
        self.flush_figures()
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return (
            _environment()
            .get_template("page.html.j2")
            .render(title=self.title, subtitle=self.subtitle, body=self.blocks, version=__version__, stamp=stamp)
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html(), encoding="utf-8")
        return path


def _table(frame: Any, caption: str | None, max_rows: int | None, highlight: Any) -> dict[str, Any]:
    import pandas as pd  # pandas is slow to import and only the tables need it

    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
    shown = frame if max_rows is None or len(frame) <= max_rows else frame.head(max_rows)
    rows = [(str(label), row.tolist(), highlight is not None and label == highlight) for label, row in shown.iterrows()]
    notes = []
    if shown is not frame:
        notes.append(f"first {len(shown)} of {len(frame)} rows")
    if caption:
        notes.append(caption)
    return {
        "index_name": "" if frame.index.name is None else str(frame.index.name),
        "columns": [str(c) for c in shown.columns],
        "rows": rows,
        "note": "; ".join(notes),
    }


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
