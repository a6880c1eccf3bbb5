"""Statistics of draws: Pareto k-hat (PSIS), PSIS-LOO, IWAE_K from importance weights, R-hat and the summaries
of draws. Every ArviZ statistic goes through :mod:`ppl_lvm.posterior.arviz_compat`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import arviz_compat

__all__ = ["SUMMARY_COLUMNS", "RATIO_RTOL", "psis_khat", "psis_khat_points", "ratios_vary", "psis_loo",
           "iwae_from_draws", "summarize_draws", "summarize_chains", "rhat_of_chains", "rhat_across_restarts",
           "row_labels"]

SUMMARY_COLUMNS = arviz_compat.SUMMARY_COLUMNS
RATIO_RTOL = 1e-6


# ---------------------------------------------------------------------------------------------------- k-hat
def psis_khat(log_weights: np.ndarray) -> float:
    """Pareto k-hat of PSIS applied to importance log-ratios ``log_weights`` (one dimension of draws)."""
    _, khat = arviz_compat.psislw(np.asarray(log_weights, dtype=np.float64).reshape(-1))
    return float(np.asarray(khat))


def ratios_vary(log_weights: np.ndarray) -> np.ndarray:
    """Whether importance log-ratios ``(S, ...)`` vary over the draws by more than rounding: a spread above
    ``RATIO_RTOL`` times their magnitude (per trailing coordinate). Ratios constant to rounding mean q is the exact
    posterior there; PSIS fitted to their rounding noise gives any k-hat, up to inf (measured on PPCA with its
    exact posterior as guide: joint k-hat inf from a spread of 1e-13)."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    finite = np.where(np.isfinite(log_weights), log_weights, 0.0)
    scale = np.maximum(1.0, np.max(np.abs(finite), axis=0))
    spread = np.ptp(log_weights, axis=0)
    return ~(spread <= RATIO_RTOL * scale)  # a NaN or inf spread counts as varying


def _psis(log_ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSIS of log ratios ``(N, S)``: normalised smoothed log weights ``(N, S)`` and k-hat ``(N,)``."""
    lw, khat = arviz_compat.psislw(log_ratios)
    return lw, np.atleast_1d(khat)


def psis_khat_points(log_weights: np.ndarray) -> np.ndarray:
    """Pareto k-hat per point of per-point importance log-ratios ``(S, N)``: an array ``(N,)``, NaN for a point
    whose ratios are constant to rounding (:func:`ratios_vary`: q is exact there)."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    if log_weights.ndim != 2 or log_weights.shape[0] < 2:
        raise ValueError(f"log_weights must be (draws >= 2, points), got shape {log_weights.shape}")
    varies = ratios_vary(log_weights)
    khat = np.full(log_weights.shape[1], np.nan)
    if varies.any():
        _, k = _psis(np.ascontiguousarray(log_weights[:, varies].T))
        khat[varies] = k
    return khat


# ---------------------------------------------------------------------------------------------------- bounds
def iwae_from_draws(point_w: np.ndarray, ladder: tuple[int, ...]) -> dict[int, float]:
    """IWAE_K for each K of ``ladder`` from one set of log-weights ``point_w`` of shape (S, N) (per point; N = 1
    for joint weights).

    The S draws are cut into ``S // K`` groups of K; each group gives the bound sum_i log mean_k w_ik, and the rung
    is their average (a K larger than S is left out). Averaging over groups lowers the Monte Carlo error of a single
    IWAE_K evaluation, and when the K divide one another and S (the default 1, 10, 100 with 500 or 1000 draws) the
    groups nest, so the ladder cannot go down: by the concavity of log, the log of a group's mean weight is at least
    the mean of the logs of its subgroups' mean weights.
    """
    point_w = np.asarray(point_w, dtype=np.float64).reshape(len(point_w), -1)
    draws = point_w.shape[0]
    rungs = {}
    for k in ladder:
        groups = draws // k
        if groups:
            w = point_w[: groups * k].reshape(groups, k, -1)
            rungs[k] = float((np.logaddexp.reduce(w, axis=1) - math.log(k)).sum(-1).mean())
    return rungs


# ---------------------------------------------------------------------------------------------------- LOO
def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(top, axis=axis) + np.log(np.sum(np.exp(a - top), axis=axis))


def psis_loo(log_lik: np.ndarray, log_weight: np.ndarray | None = None) -> dict[str, Any]:
    """PSIS-LOO from pointwise log-likelihoods ``(S, N)`` of draws theta_s.

    Without ``log_weight`` the draws are taken as posterior draws (``az.loo``'s estimate, reff = 1: the draws are
    independent). With ``log_weight`` = log p(x, theta_s) - log q(theta_s) the draws come from an approximation
    q and each leave-one-out importance ratio is p(theta_s | x_-i) / q(theta_s), proportional to
    exp(log_weight_s - log p(x_i | theta_s)): the approximate-posterior correction of Magnusson et al. (2019),
    smoothed by PSIS per point. ``lppd`` (behind ``p_loo``) then uses the PSIS-smoothed full-data weights
    p(theta_s | x) / q(theta_s).

    Returns ``elpd_loo``, ``se``, ``p_loo``, ``elpd_i`` (N,), ``pareto_k`` (N,), ``good_k`` and ``warning``
    (some k above ``good_k`` = min(1 - 1 / log10 S, 0.7)).
    """
    log_lik = np.asarray(log_lik, dtype=np.float64)
    if log_lik.ndim != 2 or log_lik.shape[0] < 2:
        raise ValueError(f"log_lik must be (draws >= 2, points), got shape {log_lik.shape}")
    s, n = log_lik.shape
    ll = log_lik.T  # (N, S)
    if log_weight is None:
        lw, khat = _psis(-ll)
        lppd_i = _logsumexp(ll, axis=1) - np.log(s)
    else:
        log_weight = np.asarray(log_weight, dtype=np.float64).reshape(-1)
        if log_weight.shape != (s,):
            raise ValueError(f"log_weight must have one value per draw ({s}), got shape {log_weight.shape}")
        lw, khat = _psis(log_weight[None, :] - ll)
        full, _ = _psis(log_weight[None, :])
        lppd_i = _logsumexp(full + ll, axis=1)
    elpd_i = _logsumexp(lw + ll, axis=1)
    good_k = min(1 - 1 / np.log10(s), 0.7)
    return {
        "elpd_loo": float(elpd_i.sum()),
        "se": float(np.sqrt(n * np.var(elpd_i))),
        "p_loo": float(lppd_i.sum() - elpd_i.sum()),
        "elpd_i": elpd_i,
        "pareto_k": khat,
        "good_k": float(good_k),
        "warning": bool(np.any(khat > good_k)),
    }


# ---------------------------------------------------------------------------------------------------- summaries
def _split(array: np.ndarray, chains: int) -> np.ndarray:
    """Independent draws (S, ...) as (chains, S // chains, ...)."""
    return array.reshape((chains, array.shape[0] // chains) + array.shape[1:])


def summarize_draws(draws: dict[str, np.ndarray]) -> Any:
    """``az.summary`` of independent draws ``{name: (S, *shape)}``, unrounded, one row per scalar coordinate.

    The draws are split into two chains so that ArviZ computes the Monte Carlo errors and effective sample sizes
    (with one chain it logs a shape-validation message); their ``r_hat`` is only a check of the sampler and is
    returned as the column ``r_hat`` for the caller to replace.
    """
    import pandas as pd  # pandas is imported on first use: import ppl_lvm stays fast

    if not draws:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    data = {}
    for name, array in draws.items():
        array = np.asarray(array, dtype=np.float64)
        if array.shape[0] < 8:
            raise ValueError(f"summaries need at least 8 draws, got {array.shape[0]} for '{name}'")
        usable = array.shape[0] - array.shape[0] % 2
        data[name] = _split(array[:usable], 2)
    return arviz_compat.summary(data)[SUMMARY_COLUMNS]


def summarize_chains(chains: dict[str, np.ndarray]) -> Any:
    """``az.summary`` of Markov chains ``{name: (chains, draws, *shape)}``, unrounded, one row per scalar
    coordinate: R-hat, bulk and tail ESS and the Monte Carlo errors across the chains."""
    import pandas as pd  # pandas is imported on first use: import ppl_lvm stays fast

    if not chains:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    data = {name: np.asarray(array, dtype=np.float64) for name, array in chains.items()}
    for name, array in data.items():
        if array.shape[1] < 4:
            raise ValueError(f"summaries need at least 4 draws per chain, got {array.shape[1]} for '{name}'")
    return arviz_compat.summary(data)[SUMMARY_COLUMNS]


def rhat_of_chains(chains: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rank-normalised split R-hat (``az.rhat``) of ``{name: (chains, draws, *shape)}``, per coordinate."""
    return {name: arviz_compat.rhat(name, np.asarray(array, dtype=np.float64)) for name, array in chains.items()}


def rhat_across_restarts(chains: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``az.rhat`` of ``{name: (restarts, draws, *shape)}``; NaN where no restart has spread (a point estimate,
    e.g. a ``delta`` guide: R-hat is undefined there, not infinite)."""
    rhat = rhat_of_chains(chains)
    for name, values in chains.items():
        rhat[name] = np.where(np.all(np.ptp(values, axis=1) == 0, axis=0), np.nan, rhat[name])
    return rhat


def row_labels(name: str, shape: tuple[int, ...]) -> list[str]:
    """ArviZ's row labels: ``name`` for a scalar, ``name[i, j]`` per coordinate otherwise."""
    if not shape:
        return [name]
    return [f"{name}[{', '.join(str(i) for i in idx)}]" for idx in np.ndindex(*shape)]
