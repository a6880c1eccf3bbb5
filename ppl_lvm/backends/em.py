"""``method="em"``: exact-enumeration expectation-maximisation.

Every latent must be discrete with finite support; it is summed out exactly. When the model is a finite mixture of
a recognised emission family (see :mod:`ppl_lvm.em.recognise`) the E- and M-steps run in the closed-form kernels
of :mod:`ppl_lvm.em` (scikit-learn's numbers, faster); any other enumerable model runs the generic route of
:mod:`ppl_lvm.em.generic`: an exact E-step by contracting the enumerated trace and a numerical M-step that is
accepted only when it raises the expected complete-data log-likelihood (generalised EM), so the log-likelihood
never decreases either way.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from ..em import generic as _generic
from ..em.hmm import fit_hmm, hmm_e_step
from ..em.init import initialize_hmm, initialize_mixture
from ..em.mixture import fit_mixture, mixture_log_likelihood
from ..em.recognise import recognise_discrete_hmm, recognise_hmm, recognise_mixture
from ..em.result import EMResult
from ..errors import ConvergenceWarning, DataError, InferenceWarning, UnsupportedModelError
from ..runtime import clone_param_state
from .base import Backend, Problem, enumerating

__all__ = ["EM", "EMOptions"]

INITS = ("k-means++", "kmeans", "random", "random_from_data", "params")


@dataclass
class EMOptions:
    """Options of ``method="em"`` (scikit-learn's names).

    Parameters
    ----------
    max_iter : int
        Maximum EM iterations per restart.
    tol : float
        Stop when the mean (per data point) log-likelihood changes by less than ``tol``.
    n_init : int
        Independent restarts; the one with the highest log-likelihood is kept.
    init_params : str or dict
        ``"k-means++"`` (default), ``"kmeans"``, ``"random"`` (random responsibilities), ``"random_from_data"``,
        ``"params"`` (the initial values written in the model's ``lvm.param`` calls), or a dict of initial
        values by parameter name.
    reg_covar : float, optional
        Added to covariance diagonals (Gaussian emissions, scikit-learn's ``reg_covar``, default 1e-6); for
        discrete emissions the floor of probabilities.
    seed : int
        Seed of the initialisation (restart r uses ``seed + r``).
    progress : bool, optional
        Progress bar over iterations; default: only when stderr is a terminal.
    callbacks : sequence of callables
        ``callback(iteration, mean_log_likelihood)``; return ``True`` to stop.
    max_bytes : int
        Refuse (before allocating) an enumeration larger than this.
    """

    max_iter: int = 100
    tol: float = 1e-3
    n_init: int = 1
    init_params: str | dict = "k-means++"
    reg_covar: float | None = None
    seed: int = 0
    progress: bool | None = None
    callbacks: Sequence = ()
    max_bytes: int = 2 * 1024**3

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def validate(self) -> None:
        for name in ("max_iter", "n_init", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.tol, (int, float)) or not math.isfinite(self.tol) or self.tol < 0:
            raise ValueError(f"tol must be a number >= 0, got {self.tol!r}")
        if self.reg_covar is not None and (not isinstance(self.reg_covar, (int, float)) or self.reg_covar < 0):
            raise ValueError(f"reg_covar must be a number >= 0, got {self.reg_covar!r}")
        if not isinstance(self.init_params, dict) and self.init_params not in INITS:
            raise ValueError(f"unknown init_params {self.init_params!r}; choose one of {list(INITS)} or pass a dict of values")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


@dataclass
class _Run:
    history: list[float]
    converged: bool
    n_iter: int
    state: dict
    log_likelihood: float
    per_point: torch.Tensor | None = None
    responsibilities: dict = field(default_factory=dict)
    interrupted: bool = False


def _progress_bar(enabled: bool | None, total: int, desc: str):
    show = enabled if enabled is not None else sys.stderr.isatty()
    if not show:
        return None
    from tqdm.auto import tqdm  # lazy: only a shown progress bar needs it (tqdm.auto may import ipywidgets)

    return tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)


def _copy_state(store: Any) -> dict:
    return clone_param_state(store.get_state())


class EMBackend(Backend):
    name = "em"
    options_class = EMOptions

    def fit(self, problem: Problem):
        opts, _ = self.parse_options(problem.options)
        structure = problem.structure
        for site in structure.continuous_latents:
            raise UnsupportedModelError(
                f"method 'em' needs every latent to be discrete with finite support, but '{site.name}' "
                f"({site.location}) is a continuous {site.distribution}. Fit this model with method='svi' or "
                "method='iwae', or make the site a parameter (lvm.param) for maximum likelihood."
            )
        for site in structure.discrete_latents:
            if not site.enumerable:
                raise UnsupportedModelError(
                    f"method 'em' cannot enumerate '{site.name}' ({site.location}): {site.distribution} has no "
                    "finite support. Use a Categorical/Bernoulli latent, or method='svi'."
                )
        kwargs = dict(problem.data.kwargs)
        start = problem.init_state if problem.init_state is not None else {"params": {}, "constraints": {}}
        with torch.random.fork_rng(devices=[]), pyro.get_param_store().scope(start):
            pyro.set_rng_seed(int(opts.seed))
            poutine.trace(problem.model).get_trace(**kwargs)  # creates every lvm.param
            store = pyro.get_param_store()
            if isinstance(opts.init_params, dict):
                unknown = sorted(set(opts.init_params) - set(store.keys()))
                if unknown:
                    raise ValueError(f"init_params has unknown parameter(s) {unknown}; the model's are {sorted(store.keys())}")
                for name, value in opts.init_params.items():
                    # a copy: the store makes its tensors trainable leaves, the caller's must stay untouched
                    store[name] = torch.as_tensor(value, dtype=store[name].dtype).detach().clone()
            initial = _copy_state(store)
            pattern = None
            for recognise in (recognise_mixture, recognise_hmm, recognise_discrete_hmm):
                pattern = recognise(problem.model, kwargs, structure)
                if pattern is not None:
                    break
            if pattern is not None:
                best = self._fit_closed_form(pattern, kwargs, opts, initial)
            else:
                best = self._fit_generic(problem, kwargs, opts, initial)
            store.set_state(best.state)
            final_state = _copy_state(store)
        if not best.converged:
            warnings.warn(
                f"EM did not converge in {opts.max_iter} iterations (best of {opts.n_init} restart(s)); the last "
                f"change of the mean log-likelihood was above tol={opts.tol}. Increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=4,
            )
        return EMResult.from_em(problem, opts, final_state, best, pattern)

    # ------------------------------------------------------------------ closed-form mixtures and chains
    def _fit_closed_form(self, pattern: Any, kwargs: dict, opts: EMOptions, initial: dict) -> _Run:
        """Restarts of the closed-form kernels: ``fit_mixture`` for mixtures, Baum-Welch for chains."""
        chain = hasattr(pattern, "trans")
        family = pattern.family
        x = pattern.data if chain else pattern.data_matrix(kwargs[pattern.data_argument])
        n, k = x.shape[0], pattern.n_components
        if n < k:
            what = ("observations", "hidden states") if chain else ("data points", "mixture components")
            raise DataError(f"{n} {what[0]} are fewer than the {k} {what[1]}; reduce K or add data")
        lengths = [int(v) for v in pattern.lengths] if chain else None
        reg = family.default_reg if opts.reg_covar is None else float(opts.reg_covar)
        cache = family.precompute(x)
        # the chain kernel reports total log-likelihoods (hmmlearn's convention); ours are per observation
        per = float(n) if chain else 1.0
        initialize = initialize_hmm if chain else initialize_mixture
        store = pyro.get_param_store()
        best: _Run | None = None
        bar = _progress_bar(opts.progress, opts.max_iter * opts.n_init, "em")

        def callback(i: int, ll: float, params: Any) -> bool:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loglik=f"{ll / per:.6g}", refresh=False)
            return any(bool(cb(i, ll / per)) for cb in opts.callbacks)

        try:
            for restart in range(opts.n_init):
                if opts.init_params == "params" or isinstance(opts.init_params, dict):
                    store.set_state(clone_param_state(initial))
                    init_params = family.complete_params(pattern.to_kernel(store))
                else:
                    init_params = initialize(x, family, k, opts.init_params, seed=int(opts.seed) + restart,
                                             reg=reg, cache=cache)
                if chain:
                    fit = fit_hmm(x, lengths, family, init_params, max_iter=opts.max_iter, tol=opts.tol * per,
                                  reg=reg, cache=cache, callback=callback)
                    e = hmm_e_step(family.log_prob(x, fit.params, cache=cache), lengths, fit.params["startprob"],
                                   fit.params["transmat"])
                    per_point, resp = e.log_likelihood, pattern.pad(e.gamma)
                else:
                    fit = fit_mixture(x, family, init_params, max_iter=opts.max_iter, tol=opts.tol, reg=reg,
                                      cache=cache, callback=callback)
                    per_point, resp = mixture_log_likelihood(x, family, fit.params, cache=cache)
                total = float(per_point.sum())
                if best is None or total > best.log_likelihood:
                    store.set_state(clone_param_state(initial))
                    pattern.to_model(fit.params, store)
                    best = _Run([h / per for h in fit.history], fit.converged, fit.n_iter, _copy_state(store),
                                total, per_point.clone(), {pattern.latent: resp.clone()})
        except KeyboardInterrupt:
            if best is None:
                raise
            best.interrupted = True
            warnings.warn(f"EM interrupted (Ctrl-C) during restart {restart + 1} of {opts.n_init}; the best finished "
                          "restart is kept", InferenceWarning, stacklevel=4)
        finally:
            if bar is not None:
                bar.close()
        return best

    # ------------------------------------------------------------------ any enumerable model
    def _fit_generic(self, problem: Problem, kwargs: dict, opts: EMOptions, initial: dict) -> _Run:
        if not isinstance(opts.init_params, dict) and opts.init_params not in ("params", "k-means++"):
            raise UnsupportedModelError(
                f"init_params={opts.init_params!r} is available for recognised mixtures only; this model runs the generic EM "
                "route, which starts from the model's own lvm.param values (init_params='params' or a dict)."
            )
        structure = problem.structure
        model = enumerating(problem.model, [s.name for s in structure.discrete_latents])
        nesting = structure.max_plate_nesting
        store = pyro.get_param_store()
        bar = _progress_bar(opts.progress, opts.max_iter, "em (generic)")

        def callback(i: int, ll: float) -> bool:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loglik=f"{ll:.6g}", refresh=False)
            return any(bool(cb(i, ll)) for cb in opts.callbacks)

        try:
            store.set_state(clone_param_state(initial))
            out = _generic.fit_generic_em(model, kwargs, nesting, max_iter=opts.max_iter, tol=opts.tol,
                                          callback=callback, max_bytes=opts.max_bytes)
        finally:
            if bar is not None:
                bar.close()
        e_step = out["e_step"]
        per_point = getattr(e_step, "log_likelihood_per_point", None)
        responsibilities = _generic.site_marginals(e_step, structure)
        return _Run(list(out["history"]), bool(out["converged"]), int(out["n_iter"]), _copy_state(store),
                    float(e_step.log_likelihood), per_point, responsibilities)


EM = EMBackend()
