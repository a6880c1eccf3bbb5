"""Console output shared by the ``ppl-lvm`` commands (:mod:`ppl_lvm.cli`) and the demo (:mod:`ppl_lvm.cli.demo`)."""

from __future__ import annotations

import sys
import warnings
from typing import Any

PROG = "ppl-lvm"
REPORT_FILE = "report.html"


def _record_warnings() -> tuple[Any, list]:
    catcher = warnings.catch_warnings(record=True)
    caught = catcher.__enter__()
    warnings.simplefilter("default")
    return catcher, caught


def _warning_lines(caught: list) -> list[str]:
    lines, seen = [], set()
    for w in caught:
        if issubclass(w.category, DeprecationWarning):
            continue
        text = f"{w.category.__name__}: {w.message}"
        if text not in seen:
            seen.add(text)
            lines.append(text)
    return lines


def _say(message: str) -> None:
    print(message, flush=True)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)

