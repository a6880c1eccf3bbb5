"""User-facing results, built from the engines' outcomes: :class:`Result`, :class:`EMResult`, :class:`MCMCResult`, :func:`load`."""

from .build import build_result, fit_result
from .em_result import EMResult
from .load import load
from .mcmc_result import MCMCResult
from .result import Result

__all__ = ["EMResult", "MCMCResult", "Result", "build_result", "fit_result", "load"]
