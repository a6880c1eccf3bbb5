"""The result of a Monte Carlo or variational EM fit (``method="mcem"`` / ``"vem"``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UnsupportedModelError
from ..outcome import StochasticEMOutcome
from .result import Result

__all__ = ["StochasticEMResult"]


@dataclass
class StochasticEMResult(Result, StochasticEMOutcome):
    """What ``infer(..., method="mcem")`` and ``infer(..., method="vem")`` return.

    ``params`` holds the maximum-likelihood estimates of the model's parameters (and the guide's variational
    parameters); ``history`` the per-data-point value of each iteration with its Monte Carlo error ``history_se``
    (see :class:`~ppl_lvm.outcome.StochasticEMOutcome`); ``elbo`` is the last ``history`` value times the number
    of data points. The posterior queries (``sample_posterior``, ``log_evidence``, ...) use the fitted guide; a
    ``mcem`` fit with ``proposal="prior"`` has none, and refuses them.
    """

    def _require_guide(self, query: str) -> None:
        if self.options.get("proposal") == "prior":
            raise UnsupportedModelError(
                f"{query}() needs a fitted guide, and this method='mcem' fit drew from the prior (proposal='prior'), "
                "so it has none; refit with proposal='guide' (the default) for posterior queries"
            )

    def sample_posterior(self, num_samples: int = 1000, seed: int | None = None) -> dict:
        self._require_guide("sample_posterior")
        return super().sample_posterior(num_samples, seed)

    def posterior_predictive(self, num_samples: int = 100, seed: int | None = None) -> dict:
        self._require_guide("posterior_predictive")
        return super().posterior_predictive(num_samples, seed)

    def elbo_estimate(self, num_particles: int = 100, seed: int | None = None) -> float:
        self._require_guide("elbo_estimate")
        return super().elbo_estimate(num_particles, seed)

    def log_evidence(self, num_particles: int = 1000, seed: int | None = None) -> float:
        self._require_guide("log_evidence")
        return super().log_evidence(num_particles, seed)

    def guide_draws(self, num_samples: int, seed: int | None = None, names: list[str] | None = None) -> dict:
        self._require_guide("guide_draws")
        return super().guide_draws(num_samples, seed, names)

    def diagnose(self, **kw: Any) -> Any:
        self._require_guide("diagnose")
        return super().diagnose(**kw)

    def to_arviz(self, num_samples: int = 500, seed: int | None = None, **kw: Any) -> Any:
        self._require_guide("to_arviz")
        return super().to_arviz(num_samples, seed, **kw)

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
