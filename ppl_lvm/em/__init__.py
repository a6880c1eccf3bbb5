"""Exact-enumeration EM: closed-form kernels (mixtures, hidden Markov chains), the generic route, the result."""

from .mixture import EMDegeneracyWarning
from .result import EMResult

__all__ = ["EMDegeneracyWarning", "EMResult"]
