"""User-facing results, built from the engines' outcomes: :class:`Result`, :class:`EMResult`, :class:`MCMCResult`, :class:`StochasticEMResult`, :func:`load`."""

from .build import build_result, fit_result
from .em_result import EMResult
from .load import load
from .mcmc_result import MCMCResult
from .result import Result
from .stochastic_em_result import StochasticEMResult

__all__ = ["EMResult", "MCMCResult", "Result", "StochasticEMResult", "build_result", "fit_result", "load"]
