"""Inference backends. Each backend is one module exposing a :class:`~ppl_lvm.backends.base.Backend`.

Adding a method means adding a module here and one line to :data:`BACKENDS`.
"""

from __future__ import annotations

from .base import Backend, Problem
from .em import EM
from .iwae import IWAE, RENYI
from .mcem import MCEM
from .meanfield import MEANFIELD
from .nuts import NUTS_BACKEND
from .svi import SVI
from .vem import VEM

BACKENDS: dict[str, Backend] = {b.name: b for b in (SVI, MEANFIELD, IWAE, RENYI, EM, NUTS_BACKEND, VEM, MCEM)}


def register(backend: Backend) -> None:
    """Make ``backend`` available as ``infer(..., method=backend.name)``."""
    BACKENDS[backend.name] = backend


def get_backend(method: str) -> Backend:
    if not isinstance(method, str) or method.lower() not in BACKENDS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[method.lower()]


__all__ = ["BACKENDS", "Backend", "Problem", "get_backend", "register"]
