"""Console output shared by the ``ppl-lvm`` commands (:mod:`ppl_lvm.cli`) and the demo (:mod:`ppl_lvm.cli.demo`)."""

from __future__ import annotations

import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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


def _hint(message: str) -> None:
    print(f"{PROG}: hint: {message}", file=sys.stderr, flush=True)


#: seconds between the "still ..." lines of a step when stderr is not a terminal (a log file, CI)
STEP_HEARTBEAT = 10.0


@contextmanager
def _step(message: str, heartbeat: float = STEP_HEARTBEAT) -> Iterator[None]:
    """Announce a step on stderr (``writing the report...``), show its elapsed time while it runs (a live counter
    on a terminal, a ``still ...`` line every ``heartbeat`` seconds otherwise) and end with its duration."""
    stream = sys.stderr
    live = stream.isatty()
    start = time.perf_counter()
    stop = threading.Event()
    print(f"{PROG}: {message}...", end="" if live else "\n", file=stream, flush=True)

    def tick() -> None:
        while not stop.wait(1.0 if live else heartbeat):
            elapsed = time.perf_counter() - start
            if live:
                print(f"\r{PROG}: {message}... {elapsed:.0f} s", end="", file=stream, flush=True)
            else:
                print(f"{PROG}:   still {message} ({elapsed:.0f} s)", file=stream, flush=True)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    finished = False
    try:
        yield
        finished = True
    finally:
        stop.set()
        thread.join()
        end = f"{'done' if finished else 'stopped'} after {time.perf_counter() - start:.1f} s"
        print(f"\r{PROG}: {message}... {end}" if live else f"{PROG}:   {message}: {end}", file=stream, flush=True)
