"""Online (stochastic) EM for finite mixtures: Cappé and Moulines (2009).

The E-step of a minibatch ``b_t`` gives its statistics per data point, ``sbar_t = statistics(b_t) / |b_t|``
(the same additive statistics as batch EM, :mod:`ppl_lvm.em.accumulate`). A Robbins-Monro step moves the running
statistics towards them, ``s_t = s_{t-1} + gamma_t (sbar_t - s_{t-1})`` with ``gamma_t = t^(-step_exponent)``
(``gamma_1 = 1``, so ``s_1 = sbar_1``), and the parameters are the batch M-step of ``s_t``. With
``0.5 < step_exponent <= 1`` the iterates converge to a stationary point of the likelihood; averaging the
parameters from step ``polyak`` on (Polyak-Ruppert) recovers the batch rate with a slowly decaying step.

Data are seen in passes: a tensor in memory is shuffled at every pass (``seed``); data read chunk by chunk
(:func:`~ppl_lvm.em.stream.chunks`) are read in order, each chunk cut into minibatches of ``batch_size`` rows
(shuffled within the chunk). The history holds, per pass, the mean log-likelihood per point of its minibatches,
each under the parameters before its step (a running estimate, free of cost); the fit stops, converged, when that
changes by less than ``tol`` from one pass to the next, or after ``max_passes``. The log-likelihood of the final
parameters on all the data takes one more pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import DataError
from .accumulate import Source, chunk_statistics
from .mixture import EmissionFamily, mixture_log_likelihood, mixture_posterior, weights_m_step
from .stream import Chunks

__all__ = ["OnlineFit", "fit_mixture_online"]

Params = dict[str, torch.Tensor]


@dataclass
class OnlineFit:
    """What :func:`fit_mixture_online` returns.

    Attributes
    ----------
    params : dict of torch.Tensor
        Final parameters (the Polyak average when averaging was asked for and has started).
    history : list of float
        Per pass, the mean log-likelihood per point of its minibatches (under the parameters before each step).
    log_likelihood : float
        Total log-likelihood of ``params`` on all the data (one more pass).
    n_passes, n_steps : int
        Passes over the data and minibatch steps run.
    converged : bool
        Whether the per-pass value changed by less than ``tol`` at the end.
    """

    params: dict
    history: list[float] = field(default_factory=list)
    log_likelihood: float = float("nan")
    n_passes: int = 0
    n_steps: int = 0
    converged: bool = False
    n_samples: int = 0


class _BatchPass:
    """The M-step's rare needs from one minibatch: statistics per point have ``n = 1``."""

    n = 1

    def __init__(self, cache: dict, resp: torch.Tensor, source: Source) -> None:
        self.cache, self.resp, self.source = cache, resp, source

    def summary(self) -> dict:
        return self.source.summary

    def centred_sums(self, mu: torch.Tensor, idx: torch.Tensor, full: bool) -> torch.Tensor:
        raise DataError("online EM: a component's second moments lost more than 4 of 16 digits to cancellation (the "
                        "data lie far from their mean compared with a component's spread), which running statistics "
                        "cannot repair; standardise the data, or fit them by batch EM")

    def second_moment(self) -> torch.Tensor:
        xc = self.cache["xc"]
        return xc.T @ xc / xc.shape[0]


def _batches(data: Any, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    pieces = (x for x, _ in data) if isinstance(data, Chunks) else [torch.as_tensor(data)]
    for x in pieces:
        order = torch.randperm(x.shape[0], generator=generator)
        for lo in range(0, x.shape[0], batch_size):
            yield x[order[lo : lo + batch_size]]


def _average(family: EmissionFamily, total: Params, count: int) -> Params:
    mean = {k: v / count for k, v in total.items() if k != "precisions_cholesky"}
    return family.complete_params(mean) if "precisions_cholesky" in total else mean


def fit_mixture_online(data: Any, family: EmissionFamily, init_params: Params, *, batch_size: int = 1000,
                       max_passes: int = 10, tol: float | None = 1e-4, step_exponent: float = 0.6,
                       polyak: int | None = None, reg: float | None = None, seed: int = 0,
                       callback: Any = None) -> OnlineFit:
    """Fit a finite mixture by online EM (see the module docstring).

    Parameters
    ----------
    data : tensor or Chunks
        Data in memory (shuffled every pass) or read chunk by chunk (:func:`~ppl_lvm.em.stream.chunks`).
    family : EmissionFamily
    init_params : dict
        Initial parameters with ``"weights"`` (as for :func:`~ppl_lvm.em.mixture.fit_mixture`).
    batch_size : int
        Rows per minibatch (per step).
    max_passes : int
        Passes over the data at most.
    tol : float or None
        Stop when the per-pass mean log-likelihood per point changes by less than ``tol``; None: every pass.
    step_exponent : float
        ``alpha`` of the step sizes ``gamma_t = t^(-alpha)``, in (0.5, 1].
    polyak : int, optional
        Average the parameters of the steps from this step on (1-based); None: no averaging.
    reg : float, optional
        The family's regularisation (``reg_covar`` for Gaussians).
    seed : int
        Seed of the shuffling.
    callback : callable, optional
        ``callback(n_pass, mean_log_likelihood, params)`` after every pass; True stops.

    Returns
    -------
    OnlineFit
    """
    if not 0.5 < step_exponent <= 1.0:
        raise ValueError(f"step_exponent must be in (0.5, 1] (Robbins-Monro conditions), got {step_exponent!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if polyak is not None and (isinstance(polyak, bool) or not isinstance(polyak, int) or polyak < 1):
        raise ValueError(f"polyak must be a positive step number or None, got {polyak!r}")
    reg = family.default_reg if reg is None else reg
    stream = data if isinstance(data, Chunks) else Chunks(pieces=[torch.as_tensor(data)])
    source = Source(family, stream)  # the first pass: the common centring and the number of points
    posterior = mixture_posterior(family)
    generator = torch.Generator().manual_seed(int(seed))
    params = family.complete_params(dict(init_params))
    running: dict | None = None
    averaged: Params | None = None
    fit = OnlineFit(params=params, n_samples=source.n)
    t = 0
    for n_pass in range(1, max_passes + 1):
        ll_sum, seen = 0.0, 0
        for batch in _batches(data, batch_size, generator):
            t += 1
            cache = family.precompute(batch, summary=source.summary)
            resp, stats = chunk_statistics(family, cache, None, posterior, params)
            m = batch.shape[0]
            ll_sum, seen = ll_sum + float(stats.pop("log_likelihood")), seen + m
            gamma = t ** (-step_exponent)
            step = {k: v / m for k, v in stats.items()}
            running = step if running is None else {k: running[k] + gamma * (step[k] - running[k]) for k in step}
            params = family.m_step_statistics(running, params, reg, cache, _BatchPass(cache, resp, source))
            params["weights"] = weights_m_step(running["weights_sum"])
            if polyak is not None and t >= polyak:
                averaged = dict(params) if averaged is None else {k: averaged[k] + params[k] for k in averaged}
        fit.history.append(ll_sum / max(seen, 1))
        fit.n_passes, fit.n_steps = n_pass, t
        stop = callback is not None and bool(callback(n_pass, fit.history[-1], params))
        if tol is not None and len(fit.history) >= 2 and abs(fit.history[-1] - fit.history[-2]) < tol:
            fit.converged = True
        if stop or fit.converged:
            break
    if averaged is not None:
        params = _average(family, averaged, t - polyak + 1)
    fit.params = params
    fit.log_likelihood = sum(float(mixture_log_likelihood(None, family, params, cache=c)[0].sum())
                             for c, _ in source.chunks())
    return fit

