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


def check_measurements(x: Any, name: str) -> None:
    """Refuse integer or boolean data for a model of continuous measurements (its means start at rows of ``x``,
    and a parameter must be floating point), saying how to convert them."""
    if not x.is_floating_point():
        raise ValueError(f"{name}: x must hold floating-point measurements, got dtype {x.dtype}; convert it with "
                         "x.to(torch.get_default_dtype()) (numpy: x.astype(float))")
