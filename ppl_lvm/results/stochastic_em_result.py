"""The result of a Monte Carlo or variational EM fit (``method="mcem"`` / ``"vem"``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..outcome import StochasticEMOutcome
from .result import Result

__all__ = ["StochasticEMResult"]


@dataclass
class StochasticEMResult(Result, StochasticEMOutcome):
    """What ``infer(..., method="mcem")`` and ``infer(..., method="vem")`` return.

    ``params`` holds the maximum-likelihood estimates of the model's parameters (and the guide's variational
    parameters); ``history`` the per-data-point value of each iteration with its Monte Carlo error ``history_se``
    (see :class:`~ppl_lvm.outcome.StochasticEMOutcome`); ``elbo`` is the last ``history`` value times the number
    of data points. The posterior queries (``sample_posterior``, ``log_evidence``, ...) use the fitted guide.
    """

    @property
    def elbo(self) -> float:
        """The last ``history`` value times the number of data points (``vem``: the ELBO; ``mcem``: log p(x))."""
        return -float(self.losses[-1]) if len(self.losses) else float("nan")

    @property
    def extra(self) -> dict:
        return {
            "history": [float(v) for v in self.history],
            "history_se": [float(v) for v in self.history_se],
            "sample_sizes": [int(v) for v in self.sample_sizes],
            "n_iter": self.n_iter,
        }

    def __repr__(self) -> str:
        last = float(self.history[-1]) if len(self.history) else float("nan")
        return (f"StochasticEMResult(method={self.method!r}, n_iter={self.n_iter}, converged={self.converged}, "
                f"history[-1]={last:.6g}, params=[{', '.join(self.params)}])")
