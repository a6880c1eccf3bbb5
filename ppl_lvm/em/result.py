"""The result of an EM fit: point estimates, the exact log-likelihood and its history, responsibilities."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pyro.distributions import constraints

from ..data import to_tensor
from ..guides import empty_guide
from ..result import Result

__all__ = ["EMResult", "count_free_parameters"]


def _free_size(value: torch.Tensor, constraint: Any) -> int:
    """Free (unconstrained) dimensions of one parameter, as BIC counts them."""
    if constraint is constraints.simplex:
        return value.numel() - value.numel() // value.shape[-1]
    if constraint in (constraints.lower_cholesky, constraints.positive_definite, constraints.corr_cholesky):
        d = value.shape[-1]
        per = d * (d + 1) // 2 if constraint is not constraints.corr_cholesky else d * (d - 1) // 2
        return per * (value.numel() // (d * d))
    return value.numel()


def count_free_parameters(params: dict[str, torch.Tensor], constraint_of: dict[str, Any]) -> int:
    """Number of free parameters: simplex rows lose one, Cholesky factors count their lower triangle."""
    return sum(_free_size(v, constraint_of.get(k, constraints.real)) for k, v in params.items())


@dataclass
class EMResult(Result):
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

    log_likelihood: float = math.nan
    history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_iter: int = 0
    responsibilities: dict[str, torch.Tensor] = field(default_factory=dict)
    log_likelihood_per_point: torch.Tensor | None = None
    closed_form: bool = False
    n_parameters: int = 0
    n_samples: int = 0
    pattern: Any = None

    @classmethod
    def from_em(cls, problem: Any, opts: Any, state: dict, run: Any, pattern: Any) -> EMResult:
        if pattern is not None and hasattr(pattern, "trans"):
            n = int(pattern.lengths.sum())
        elif run.per_point is not None:
            n = int(run.per_point.numel())
        else:  # the size of the data plate around the observations
            observed = problem.structure.observed_sites
            n = observed[0].batch_shape[0] if observed and observed[0].batch_shape else 1
        history = np.asarray(run.history, dtype=float)
        result = cls(
            method="em",
            params={},
            losses=-history * max(n, 1),
            converged=bool(run.converged),
            steps=int(run.n_iter),
            seed=int(opts.seed),
            guide_name="none (all latents enumerated)",
            model=problem.model,
            guide=empty_guide,
            data=problem.data,
            structure=problem.structure,
            param_state=state,
            options={k: v for k, v in vars(opts).items() if k != "callbacks" and not isinstance(v, dict)},
            enumerated=[s.name for s in problem.structure.discrete_latents],
            log_likelihood=float(run.log_likelihood),
            history=history,
            n_iter=int(run.n_iter),
            responsibilities=dict(run.responsibilities),
            interrupted=bool(run.interrupted),
            log_likelihood_per_point=run.per_point,
            closed_form=pattern is not None,
            n_samples=n,
            pattern=pattern,
        )
        result.params = result._constrained_params()
        if pattern is not None and hasattr(pattern, "trans"):
            from .hmm import hmm_n_parameters

            result.n_parameters = int(hmm_n_parameters(pattern.family, pattern.to_kernel(result.params)))
        elif pattern is not None:
            from .mixture import mixture_n_parameters

            result.n_parameters = int(mixture_n_parameters(pattern.family, pattern.to_kernel(result.params)))
        else:
            result.n_parameters = count_free_parameters(result.params, state["constraints"])
        return result

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
        """Point estimates, responsibilities and history as ArviZ groups; see :mod:`ppl_lvm.arviz_export`."""
        from ..arviz_export import to_inference_data

        return to_inference_data(self, num_samples=num_samples, seed=seed, **kw)

    def summary(self, num_samples: int = 500, seed: int = 0, var_names: list[str] | None = None) -> Any:
        """The point estimates, one row per scalar coordinate of each parameter (column ``mean``, ``kind="param"``).

        ``DataFrame.attrs`` holds ``log_likelihood``, ``bic``, ``aic``, ``n_parameters``, ``n_samples``, ``n_iter``
        and ``converged``. ``num_samples`` and ``seed`` are accepted for symmetry with :meth:`Result.summary`.
        """
        from ..diagnostics import summarize

        return summarize(self, num_samples=num_samples, seed=seed, var_names=var_names)

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
        from .mixture import mixture_log_likelihood

        pattern, data, params = self._kernel_inputs(x)
        return mixture_log_likelihood(data, pattern.family, params)[0]

    def predict_proba(self, x: Any) -> torch.Tensor:
        """Posterior component probabilities p(z_i = k | x_i) of new data, shape ``(N, K)``."""
        from .mixture import mixture_log_likelihood

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
            from .hmm import viterbi

            params = pattern.family.complete_params(pattern.to_kernel(self.params))
            log_emission = pattern.family.log_prob(pattern.data, params)
            _, states = viterbi(log_emission, [int(v) for v in pattern.lengths], params["startprob"],
                                params["transmat"])
            return {pattern.latent: pattern.pad(states, fill=-1)}
        return {name: r.argmax(-1) for name, r in self.responsibilities.items()}

    def log_evidence(self, num_particles: int = 1, seed: int | None = None) -> float:
        """The exact log-likelihood (no sampling: every latent is enumerated)."""
        return self.log_likelihood
