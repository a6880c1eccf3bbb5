"""The result of an EM fit (an :class:`~ppl_lvm.outcome.EMOutcome` with its queries as methods): point estimates, the exact log-likelihood and its history, responsibilities."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from .. import arviz_export, summary
from ..data import BoundData, bind_data, to_tensor
from ..em.mixture import mixture_log_likelihood
from ..em.patterns import HMMPattern
from ..em.queries import chain_posteriors, chain_viterbi, recognise, sample_chain, sample_mixture
from ..errors import DataError
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
        Posterior probabilities of each discrete latent site, shape ``(N, K)`` for a mixture. A recognised
        mixture's result above N x K = 2**24 entries (option ``keep_responsibilities``) does not hold them: a
        mapping whose tensor is recomputed on access, chunk by chunk (the same numbers; keep the tensor you got
        rather than asking again).
    log_likelihood_per_point : Tensor, optional
        log p(x_i) for every data point, when the data sit in one plate (recomputed on access like the
        responsibilities when those are).
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
            "streamed": bool(self.streams),
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

    # ------------------------------------------------------------------ new data (recognised mixtures and chains)
    def _require_pattern(self, what: str) -> Any:
        if self.pattern is None and self.model is None:
            raise RuntimeError(f"{what} needs the model: this result was loaded without it; pass model= to "
                               "lvm.load(...)")
        if self.pattern is None:
            raise ValueError(f"{what} needs a recognised mixture or hidden Markov chain (closed_form=True); this model "
                             "ran the generic EM route: for new data refit on them")
        return self.pattern

    def _new_data(self, x: Any, arguments: dict, what: str) -> tuple[Any, torch.Tensor | None]:
        """``(pattern, data matrix)`` of a mixture's new rows, or ``(pattern of the new sequences, None)``."""
        pattern = self._require_pattern(what)
        if not isinstance(pattern, HMMPattern):
            if pattern.data_argument is None:
                raise ValueError(f"{what} scores new rows of one data argument; the kernels of this mixture read "
                                 f"{pattern.observed} of {self.model.__name__}() (several observed sites, or a "
                                 "regression's response and design): refit on the new data")
            if arguments:
                raise TypeError(f"{what} of a mixture takes only the new data x, not {sorted(arguments)}")
            return pattern, pattern.data_matrix(to_tensor(x, pattern.data_argument))
        name = pattern.data_argument
        if name is None:
            raise ValueError(f"{what} needs the chain's observations to come from one argument of "
                             f"{self.model.__name__}(); they do not: refit on the new data")
        # arguments that are not tensors (K, n_symbols, ...) are the fit's; tensors (lengths, ...) belong to the data
        kwargs = {k: v for k, v in self.data.kwargs.items() if not isinstance(v, torch.Tensor)}
        kwargs.update(bind_data(self.model, {**arguments, name: x}).kwargs)
        structure = self.model.inspect(**kwargs)
        with self.activated():
            found = recognise(self.model, kwargs, structure)
        if not isinstance(found, HMMPattern) or (found.start, found.trans, found.emission) != (
                pattern.start, pattern.trans, pattern.emission):
            raise DataError(f"{what}: on these data {self.model.__name__}() is not the hidden Markov chain it was "
                            f"fitted as; give sequences shaped like the fit's '{name}' (with lengths= for padded ones)")
        return found, None

    def score_samples(self, x: Any, **arguments: Any) -> torch.Tensor:
        """log p(x_i) of every row of new data under the fitted mixture; for a hidden Markov chain, log p of every
        sequence, ``(B,)``.

        ``arguments`` are the model's other arguments for the new data (``lengths=`` of padded sequences); the
        fit's non-tensor arguments (``K``, ...) are used as they were.
        """
        pattern, data = self._new_data(x, arguments, "score_samples()")
        if data is None:
            return chain_posteriors(pattern, self.params)[0]
        return mixture_log_likelihood(data, pattern.family, pattern.family.complete_params(
            pattern.to_kernel(self.params)))[0]

    def predict_proba(self, x: Any, **arguments: Any) -> torch.Tensor:
        """Posterior component probabilities p(z_i = k | x_i) of new data, shape ``(N, K)``; for a hidden Markov
        chain the state posteriors of every step, ``(B, T, K)`` (zero past each sequence's end)."""
        pattern, data = self._new_data(x, arguments, "predict_proba()")
        if data is None:
            return chain_posteriors(pattern, self.params)[1]
        return mixture_log_likelihood(data, pattern.family, pattern.family.complete_params(
            pattern.to_kernel(self.params)))[1]

    def predict(self, x: Any, **arguments: Any) -> torch.Tensor:
        """The most probable component of every row of new data; for a hidden Markov chain the most probable state
        path of every sequence (Viterbi, as hmmlearn's ``predict``), ``(B, T)``, ``-1`` past each one's end."""
        pattern, data = self._new_data(x, arguments, "predict()")
        if data is None:
            return chain_viterbi(pattern, self.params)
        return self.predict_proba(x).argmax(-1)

    def sample(self, num_samples: int, seed: int | None = None,
               n_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``num_samples`` new points from the fitted mixture: ``(x, component)``.

        For a hidden Markov chain, ``num_samples`` sequences of ``n_steps`` steps (default: the fit's longest):
        ``(x, states)`` of shapes ``(num_samples, n_steps, ...)`` and ``(num_samples, n_steps)``.
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        pattern = self._require_pattern("sample()")
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        if not isinstance(pattern, HMMPattern):
            if n_steps is not None:
                raise TypeError("n_steps= sets the length of sampled sequences of a hidden Markov chain; this fit is "
                                "a mixture: drop it")
            return sample_mixture(pattern, self.params, num_samples, generator)
        n_steps = pattern.n_steps if n_steps is None else n_steps
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
        return sample_chain(pattern, self.params, num_samples, n_steps, generator)

    def map_assignments(self) -> dict[str, torch.Tensor]:
        """The most probable value of every discrete latent site.

        For a hidden Markov chain this is the Viterbi path, shape ``(B, T)`` (``-1`` past each sequence's end);
        otherwise the argmax of each site's responsibilities.
        """
        if isinstance(self.pattern, HMMPattern):
            return {self.pattern.latent: chain_viterbi(self.pattern, self.params)}
        if self.model is None and not self.responsibilities:
            raise RuntimeError("map_assignments() needs the model: this result was loaded without it; pass model= "
                               "to lvm.load(...)")
        return {name: r.argmax(-1) for name, r in self.responsibilities.items()}

    def log_evidence(self, num_particles: int = 1, seed: int | None = None) -> float:
        """The exact log-likelihood (no sampling: every latent is enumerated)."""
        return self.log_likelihood
