"""Exact-enumeration EM: closed-form kernels (mixtures, hidden Markov chains) and the generic route."""

from ..errors import EMDegeneracyWarning

__all__ = ["EMDegeneracyWarning"]
