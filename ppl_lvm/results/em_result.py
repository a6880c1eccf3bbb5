"""The result of an EM fit (an :class:`~ppl_lvm.outcome.EMOutcome` with its queries as methods): point estimates, the exact log-likelihood and its history, responsibilities."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from .. import arviz_export, summary
from ..data import BoundData, to_tensor
from ..em.hmm import viterbi
from ..em.mixture import mixture_log_likelihood
from ..outcome import EMOutcome
from ..posterior.laplace import laplace
from .result import Result

__all__ = ["EMResult"]


@dataclass
class EMResult(Result, EMOutcome):
    """What ``infer(..., method="em")`` returns.

    Attributes
    ----------
    log_likelihood : float
        The exact log-likelihood log p(x) at the final parameters (latents summed out).
    history : ndarray
        Mean (per data point) log-likelihood at each iteration's E-step; never decreases.
    n_iter : int
        Iterations of the kept restart.
    responsibilities : dict of str -> Tensor
        Posterior probabilities of each discrete latent site, shape ``(N, K)`` for a mixture.
    log_likelihood_per_point : Tensor, optional
        log p(x_i) for every data point, when the data sit in one plate.
    closed_form : bool
        Whether the closed-form kernels ran (a recognised mixture) or the generic route.
    """

    @property
    def extra(self) -> dict:
        return {
            "log_likelihood": self.log_likelihood,
            "history": [float(v) for v in self.history],
            "n_iter": self.n_iter,
            "n_parameters": self.n_parameters,
            "n_samples": self.n_samples,
            "closed_form": self.closed_form,
        }

    def __repr__(self) -> str:
        return (
            f"EMResult(log_likelihood={self.log_likelihood:.6g}, n_iter={self.n_iter}, converged={self.converged}, "
            f"closed_form={self.closed_form}, params=[{', '.join(self.params)}])"
        )

    def to_arviz(self, num_samples: int = 500, seed: int | None = None, **kw: Any) -> Any:
        """The fit as ArviZ groups: ``num_samples`` draws of the Laplace approximation as ``posterior`` with their
        pointwise ``log_likelihood`` (for ``az.summary`` and ``az.loo``), the point estimates, responsibilities and
        history; see :mod:`ppl_lvm.arviz_export`."""
        return arviz_export.to_inference_data(self, num_samples=num_samples, seed=seed, **kw)

    def summary(self, num_samples: int = 500, seed: int = 0, var_names: list[str] | None = None) -> Any:
        """The estimates with their uncertainty, one row per scalar coordinate of each parameter (``kind="param"``).

        Columns: ``mean`` (the estimate), ``se`` (:meth:`standard_errors`), ``ci_2.5%`` / ``ci_97.5%`` (the Wald
        interval ``mean -/+ 1.96 se``; it can leave the parameter's support near a boundary, where the draws of
        ``to_arviz()``, which respect it, are the better guide). ``DataFrame.attrs`` holds ``log_likelihood``,
        ``bic``, ``aic``, ``n_parameters``, ``n_samples``, ``n_iter`` and ``converged``. ``num_samples`` and
        ``seed`` are not used (no draws are made); they are there for symmetry with :meth:`Result.summary`.
        """
        return summary.summarize(self, num_samples=num_samples, seed=seed, var_names=var_names)

    # ------------------------------------------------------------------ uncertainty
    def standard_errors(self) -> dict[str, torch.Tensor]:
        """The standard error of every coordinate of every model parameter, in the parameter's shape (float64).

        From the observed information (minus the autograd Hessian of the exact log-likelihood at the estimate, in
        each parameter's unconstrained coordinates) by the delta method; see :mod:`ppl_lvm.posterior.laplace`.
        NaN, with an ``InferenceWarning``, when the information is not positive definite (an estimate on the
        boundary, such as a probability of exactly 0, or a parameter the data do not identify).
        """
        return laplace(self).standard_errors()

    def observed_information(self) -> torch.Tensor:
        """The observed information matrix, ``(P, P)`` over the free unconstrained coordinates of the model's
        parameters (their order and the map back: ``ppl_lvm.posterior.laplace.laplace(result)``)."""
        return laplace(self).information

    def fit_more(self, **options: Any) -> EMResult:
        """Continue EM from these parameters (``init_params="params"``, one restart) for ``max_iter`` more iterations.

        The same model, data and options; any option given here overrides the stored one.
        """
        options = {"init_params": "params", **options}
        if not self.streams:
            return super().fit_more(**options)
        # data read chunk by chunk: continue on all the chunks, not on the first one kept in ``data``
        full = copy.copy(self)
        full.data = BoundData(self.data.args, {**self.data.kwargs, **self.streams}, self.data.coords)
        return Result.fit_more(full, **options)

    # ------------------------------------------------------------------ model selection
    def bic(self) -> float:
        """Bayesian information criterion ``-2 log L + p log N`` (lower is better)."""
        return -2.0 * self.log_likelihood + self.n_parameters * math.log(max(self.n_samples, 1))

    def aic(self) -> float:
        """Akaike information criterion ``-2 log L + 2 p`` (lower is better)."""
        return -2.0 * self.log_likelihood + 2.0 * self.n_parameters

    # ------------------------------------------------------------------ new data (recognised mixtures)
    def _require_pattern(self, what: str):
        if self.pattern is None:
            raise ValueError(f"{what} needs a recognised mixture; for other models refit on the new data")
        return self.pattern

    def _kernel_inputs(self, x: Any):
        pattern = self._require_pattern("scoring new data")
        value = to_tensor(x, pattern.data_argument)
        params = pattern.family.complete_params(pattern.to_kernel(self.params))
        return pattern, pattern.data_matrix(value), params

    def score_samples(self, x: Any) -> torch.Tensor:
        """log p(x_i) of every row of new data under the fitted mixture."""
        pattern, data, params = self._kernel_inputs(x)
        return mixture_log_likelihood(data, pattern.family, params)[0]

    def predict_proba(self, x: Any) -> torch.Tensor:
        """Posterior component probabilities p(z_i = k | x_i) of new data, shape ``(N, K)``."""
        pattern, data, params = self._kernel_inputs(x)
        return mixture_log_likelihood(data, pattern.family, params)[1]

    def predict(self, x: Any) -> torch.Tensor:
        """The most probable component of every row of new data."""
        return self.predict_proba(x).argmax(-1)

    def sample(self, num_samples: int, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``num_samples`` new points from the fitted mixture: ``(x, component)``."""
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        pattern = self._require_pattern("sample()")
        params = pattern.family.complete_params(pattern.to_kernel(self.params))
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        components = torch.multinomial(params["weights"], num_samples, replacement=True, generator=generator)
        x = pattern.family.sample(params, components, generator)
        if pattern.univariate:
            x = x.reshape(-1)
        return x, components

    def map_assignments(self) -> dict[str, torch.Tensor]:
        """The most probable value of every discrete latent site.

        For a hidden Markov chain this is the Viterbi path, shape ``(B, T)`` (``-1`` past each sequence's end);
        otherwise the argmax of each site's responsibilities.
        """
        pattern = self.pattern
        if pattern is not None and hasattr(pattern, "trans"):
            params = pattern.family.complete_params(pattern.to_kernel(self.params))
            log_emission = pattern.family.log_prob(pattern.data, params)
            _, states = viterbi(log_emission, [int(v) for v in pattern.lengths], params["startprob"],
                                params["transmat"])
            return {pattern.latent: pattern.pad(states, fill=-1)}
        return {name: r.argmax(-1) for name, r in self.responsibilities.items()}

    def log_evidence(self, num_particles: int = 1, seed: int | None = None) -> float:
        """The exact log-likelihood (no sampling: every latent is enumerated)."""
        return self.log_likelihood
