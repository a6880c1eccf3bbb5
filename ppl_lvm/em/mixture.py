"""Exact EM for finite mixtures: E-step, weights M-step and the fitting loop.

The emission family (see :mod:`ppl_lvm.em.families`) supplies the per-component
log densities and the weighted M-step; this module only handles the mixing
weights, the responsibilities and the loop.  Conventions follow
``sklearn.mixture.GaussianMixture`` so results can be compared number for
number: the history holds the mean per-point log-likelihood evaluated in each
iteration's E-step (i.e. under the parameters *before* that iteration's
M-step, sklearn's ``lower_bounds_``), and convergence is
``abs(change) < tol``.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from ..errors import EMDegeneracyWarning
from .accumulate import Source
from .convergence import KernelFit, iterate

__all__ = [
    "EMDegeneracyWarning",
    "aic",
    "bic",
    "EmissionFamily",
    "MixtureFitResult",
    "fit_mixture",
    "mixture_e_step",
    "mixture_log_likelihood",
    "mixture_n_parameters",
    "mixture_posterior",
    "weights_m_step",
]


Params = dict[str, torch.Tensor]

#: float32 kernels set responsibilities below exp(this) (~9e-27) to 0: what they keep, and its products with the
#: data, stay normal floats, far from float32's smallest normal, 1.2e-38
_FLOAT32_LOG_FLOOR = -60.0


class EmissionFamily(Protocol):
    """Interface every emission family implements (structural typing)."""

    default_reg: float

    def precompute(self, X: Any) -> dict[str, Any]: ...

    def log_prob(self, X: Any, params: Params, *, cache: dict | None = None) -> torch.Tensor: ...

    def m_step(
        self,
        X: Any,
        resp: torch.Tensor,
        params: Params | None = None,
        reg: float | None = None,
        *,
        cache: dict | None = None,
    ) -> Params: ...

    def summary(self, X: Any) -> dict[str, torch.Tensor]: ...

    def statistics(self, resp: torch.Tensor, cache: dict, params: Params | None = None) -> dict[str, torch.Tensor]: ...

    def m_step_statistics(self, stats: dict, params: Params | None, reg: float | None, cache: dict,
                          data: Any) -> Params: ...

    def n_parameters(self, params: Params) -> int: ...

    def sample(
        self, params: Params, component_indices: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor: ...

    def complete_params(self, params: Params, dtype: torch.dtype | None = None) -> Params: ...


def mixture_e_step(
    log_prob_matrix: torch.Tensor, log_weights: torch.Tensor, *, inplace: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Responsibilities and per-point log-likelihood of a mixture.

    Parameters
    ----------
    log_prob_matrix : torch.Tensor, shape (N, K)
        ``log p(x_n | z_n = k)``.
    log_weights : torch.Tensor, shape (K,)
        Log mixing weights.
    inplace : bool, default False
        Reuse ``log_prob_matrix``'s storage for the responsibilities (saves an
        (N, K) allocation per iteration inside :func:`fit_mixture`).

    Returns
    -------
    log_likelihood : torch.Tensor, shape (N,)
        ``log sum_k w_k p(x_n | k)``; ``-inf`` for a point impossible under
        every component.
    resp : torch.Tensor, shape (N, K)
        Posterior ``p(z_n = k | x_n)``; an all-zero row for impossible points
        (never NaN).
    """
    if inplace:
        work = log_prob_matrix.add_(log_weights)
    else:
        work = log_prob_matrix + log_weights
    # Hand-rolled logsumexp: keeping exp(lp - max) lets us reuse it as the
    # responsibilities, one pass fewer than logsumexp followed by exp(lp - lse).
    row_max = work.amax(dim=1, keepdim=True)
    finite = torch.isfinite(row_max)
    if not bool(finite.all()):
        # A point with -inf under every component (e.g. an unseen category
        # with zero probability): shift by 0 so exp gives an all-zero row.
        row_max = torch.where(finite, row_max, torch.zeros_like(row_max))
    work.sub_(row_max)
    floor = _exp_floor(work.dtype)
    if work.numel() and float(work.min()) < floor:
        # exp runs ~10x (float64) to ~80x (float32) slower where its result is subnormal or zero: those entries
        # (responsibilities below exp(floor), ~1e-301 in float64, ~1e-26 in float32) are set to exactly 0 instead.
        below = work < floor
        work.clamp_(min=floor).exp_().masked_fill_(below, 0.0)
    else:
        work.exp_()
    total = work.sum(dim=1, keepdim=True)
    if not bool(finite.all()):
        safe = torch.where(total > 0, total, torch.ones_like(total))
        work.div_(safe)
    else:
        work.div_(total)
    log_likelihood = total.log_().add_(row_max).squeeze(1)
    return log_likelihood, work


def _exp_floor(dtype: torch.dtype) -> float:
    """The smallest log-responsibility kept: 0.98 times the log of the dtype's smallest normal number (float64), -60
    in float32, whose subnormals below exp(-87.3) the CPU computes ~30x slower also in the division and in the
    statistics' products with the data, so a margin is kept (an entry below exp(-60) adds < 1e-25 to a row summing
    to >= 1)."""
    return _FLOAT32_LOG_FLOOR if dtype == torch.float32 else 0.98 * math.log(torch.finfo(dtype).tiny)


def weights_m_step(resp_sum: torch.Tensor) -> torch.Tensor:
    """Mixing weights from summed responsibilities (sklearn's ``nk + 10 eps``).

    Parameters
    ----------
    resp_sum : torch.Tensor, shape (K,)
        ``sum_n resp[n, k]``.

    Returns
    -------
    torch.Tensor, shape (K,)
        Normalised weights; never exactly zero, so their log stays finite.
    """
    nk = resp_sum + 10 * torch.finfo(resp_sum.dtype).eps
    return nk / nk.sum()


def mixture_n_parameters(family: EmissionFamily, params: Params) -> int:
    """Free parameters of a mixture (sklearn's ``_n_parameters`` convention).

    Emission parameters plus ``K - 1`` mixing weights.
    """
    n_components = int(params["weights"].shape[0])
    return int(family.n_parameters(params)) + n_components - 1


def bic(total_log_likelihood: float, n_parameters: int, n_samples: int) -> float:
    """Bayesian information criterion ``-2 log L + p log n`` (sklearn's ``bic``).

    ``total_log_likelihood`` is summed over data points (or sequences, for an
    HMM); ``n_samples`` is the number of observations (hmmlearn uses the
    number of rows of the concatenated data).
    """
    return -2.0 * float(total_log_likelihood) + n_parameters * math.log(n_samples)


def aic(total_log_likelihood: float, n_parameters: int) -> float:
    """Akaike information criterion ``-2 log L + 2 p`` (sklearn's ``aic``)."""
    return -2.0 * float(total_log_likelihood) + 2.0 * n_parameters


def mixture_log_likelihood(
    X: Any, family: EmissionFamily, params: Params, *, cache: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point log-likelihood and responsibilities under fixed parameters.

    Equivalent to sklearn's ``score_samples`` and ``predict_proba``.

    Returns
    -------
    log_likelihood : torch.Tensor, shape (N,)
    resp : torch.Tensor, shape (N, K)
    """
    if cache is None:
        cache = family.precompute(X)
    lp = family.log_prob(X, params, cache=cache)
    return mixture_e_step(lp, params["weights"].log(), inplace=True)


def mixture_posterior(family: EmissionFamily):
    """The E-step of one chunk, for :meth:`~ppl_lvm.em.accumulate.Source.accumulate`: ``(resp, extra sums)``."""

    def posterior(cache: dict, layout: Any, params: Params) -> tuple[torch.Tensor, dict]:
        lp = family.log_prob(None, params, cache=cache)
        ll, resp = mixture_e_step(lp, params["weights"].log(), inplace=True)
        return resp, {"log_likelihood": ll.sum(), "weights_sum": resp.sum(dim=0)}

    return posterior


MixtureFitResult = KernelFit  # what fit_mixture returns; history: the mean log-likelihood per point


def fit_mixture(
    X: Any,
    family: EmissionFamily,
    init_params: Params,
    max_iter: int = 100,
    tol: float | None = 1e-3,
    reg: float | None = None,
    *,
    cache: dict | None = None,
    callback: Any = None,
) -> MixtureFitResult:
    """Fit a finite mixture by exact EM.

    Parameters
    ----------
    X : array-like, Chunks or Source
        Data in the format the family expects (e.g. (N, D) float for Gaussian); data read chunk by chunk
        (:func:`ppl_lvm.em.stream.chunks`); or a :class:`~ppl_lvm.em.accumulate.Source` (a data-parallel fit's
        shard with its reducer). Streamed and data-parallel fits run the same iterations on the same totals
        (:mod:`ppl_lvm.em.accumulate`).
    family : EmissionFamily
        Emission family instance, e.g. ``Gaussian("full")``.
    init_params : dict of torch.Tensor
        Initial parameters: ``"weights"`` (K,) plus the family's parameters
        (see :func:`ppl_lvm.em.init.initialize_mixture`).
    max_iter : int, default 100
    tol : float or None, default 1e-3
        Stop when the mean log-likelihood changes by less than ``tol``
        (absolute change, as sklearn; see :mod:`ppl_lvm.em.convergence`);
        ``None``: no early stop, all ``max_iter`` iterations run
        (``n_iter == len(history) == max_iter`` unless a callback stops).
    reg : float, optional
        Family regularisation (Gaussian: ``reg_covar``; discrete families:
        probability clamp); defaults to ``family.default_reg``.
    cache : dict, optional
        Result of ``family.precompute(X)`` of data in memory; computed when omitted.
    callback : callable, optional
        Called as ``callback(n_iter, mean_log_likelihood, params)`` after every
        iteration; returning ``True`` stops the loop.

    Returns
    -------
    MixtureFitResult
    """
    if reg is None:
        reg = family.default_reg
    source = X if isinstance(X, Source) else Source(family, X, cache=cache)
    params = family.complete_params(dict(init_params))
    if "weights" not in params:
        raise ValueError("init_params must contain 'weights'")

    posterior = mixture_posterior(family)
    dtype = getattr(family, "dtype", torch.float64)  # the kernels' (statistics summed and M-step in float64)

    def step(params: Params) -> tuple[float, Params]:
        stats = source.accumulate(posterior, params)
        new_params = family.m_step_statistics(stats, params, reg, source.template, source.data_pass(posterior, params))
        new_params["weights"] = weights_m_step(stats["weights_sum"])
        new_params = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in new_params.items()}
        return float(stats["log_likelihood"]) / source.n, new_params

    return iterate(step, params, max_iter, tol, callback, stop_on_nan=True)
