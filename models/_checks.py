"""Checks the ready-made models share."""

from __future__ import annotations

import numbers
from typing import Any


def check_k(K: Any, name: str, what: str) -> None:
    """Refuse a number of components or states that is not a positive integer, naming the model."""
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"{name}: K must be a positive integer (the number of {what}), got {K!r}"
                         + ("; pass K=int(...)" if isinstance(K, str) else ""))


def positive_int(name: str, value: Any) -> int:
    """``int(value)`` for a positive integer (``bool`` refused); otherwise a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
