"""Checks the ready-made models share."""

from __future__ import annotations

from typing import Any


def check_k(K: Any, name: str, what: str) -> None:
    """Refuse a number of components or states that is not a positive integer, naming the model."""
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"{name}: K must be a positive integer (the number of {what}), got {K!r}"
                         + ("; pass K=int(...)" if isinstance(K, str) else ""))
