"""Outcome -> result: the one place the user-facing results are made."""

from __future__ import annotations

from typing import Any

from ..outcome import EMOutcome, MCMCOutcome, Outcome, StochasticEMOutcome
from .em_result import EMResult
from .mcmc_result import MCMCResult
from .result import Result, fit_into
from .stochastic_em_result import StochasticEMResult

__all__ = ["build_result", "fit_result", "result_class"]


def result_class(outcome: Outcome) -> type[Result]:
    """The result type of an outcome: :class:`EMResult` for EM, :class:`MCMCResult` for MCMC,
    :class:`StochasticEMResult` for ``mcem``/``vem``, :class:`Result` otherwise."""
    if isinstance(outcome, MCMCOutcome):
        return MCMCResult
    if isinstance(outcome, StochasticEMOutcome):
        return StochasticEMResult
    return EMResult if isinstance(outcome, EMOutcome) else Result


def build_result(outcome: Outcome) -> Result:
    """The result of ``outcome`` (restarts included)."""
    return result_class(outcome).from_outcome(outcome)


def fit_result(backend: Any, problem: Any) -> Result:
    """Fit ``problem`` with ``backend`` and return its result (a failed fit's ``FitError.result`` is filled)."""
    return fit_into(result_class, backend, problem)
