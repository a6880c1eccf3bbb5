"""The iteration loop that ``method="vem"`` and ``method="mcem"`` share: restarts, the E/M alternation, the
reported value and its convergence, the outcome.

A method says how to start one restart (:meth:`StochasticEMBackend.start`, returning an :class:`EMRun`: its guide,
the reported value, one iteration); the loop does the rest, the same way for both.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from abc import abstractmethod
from typing import Any, Protocol

import pyro
import torch

from ..em.convergence import ConvergenceMonitor, not_converged_message
from ..errors import ConvergenceWarning, FitError
from ..guides import build_guide
from ..outcome import StochasticEMOutcome
from ..runtime import clone_param_state
from .base import Backend, Problem, guide_sites
from .guide_check import check_guide
from .restarts import run_restarts
from .stochastic_em import StochasticEMOptions, check_model_for, sample_size, stochastic_em_outcome

__all__ = ["EMRun", "StochasticEMBackend", "prepared_guide"]


class EMRun(Protocol):
    """One restart of a stochastic EM method, its parameters live in the parameter store."""

    guide: Any
    guide_name: str

    def reported(self) -> tuple[float, float]:
        """The value reported in ``history`` (per data point) and its Monte Carlo standard error."""

    def iterate(self, iteration: int, num: int) -> dict:
        """One E-step and one M-step, with ``num`` draws per data point behind the M-step; returns the M-step's
        record (:func:`~ppl_lvm.backends.stochastic_em.maximise`)."""


def prepared_guide(problem: Problem, elbo: Any) -> tuple[Any, str]:
    """The fit's guide, checked against the model, with every parameter of model and guide created (one ELBO
    evaluation with ``elbo``, no gradient)."""
    kwargs = dict(problem.data.kwargs)
    guide, guide_name = build_guide(problem.guide, problem.model, problem.structure)
    check_guide(problem.structure, guide_sites(guide, kwargs), guide, guide_name)
    with torch.no_grad():
        elbo.loss(problem.model, guide, **kwargs)
    return guide, guide_name


class StochasticEMBackend(Backend):
    """EM whose E-step is approximate: the restarts and the iteration loop of ``vem`` and ``mcem``.

    Subclasses set ``name``, ``options_class``, ``label`` (the method in words, for messages), ``value_name``
    (what ``history`` reports) and ``local_only`` (every latent must be in the data plate), and implement
    :meth:`start`.
    """

    label: str = "stochastic EM"
    value_name: str = "reported value"
    local_only: bool = False

    def fit(self, problem: Problem) -> StochasticEMOutcome:
        opts, _ = self.options_of(problem)
        check_model_for(self.name, problem.structure, local_only=self.local_only)
        self.check(problem, opts)

        def fit_once(restart: int, seed: int) -> StochasticEMOutcome:
            return self._fit_once(problem, dataclasses.replace(opts, seed=seed))

        return run_restarts(fit_once, n_init=opts.n_init, seed=int(opts.seed), name=self.label,
                            score=lambda o: float(o.history[-1]))

    def check(self, problem: Problem, opts: Any) -> None:
        """Refuse what this method cannot run with these options (nothing, unless a subclass says so)."""

    @abstractmethod
    def start(self, problem: Problem, opts: Any) -> EMRun:
        """Create the parameters of one restart (inside its parameter-store scope) and return the run."""

    def finish(self, run: EMRun, options: dict) -> None:
        """Add what the run recorded to the fit's ``options`` (nothing, unless a subclass says so)."""

    def _fit_once(self, problem: Problem, opts: StochasticEMOptions) -> StochasticEMOutcome:
        pyro.set_rng_seed(int(opts.seed))
        start = clone_param_state(problem.init_state) if problem.init_state is not None else \
            {"params": {}, "constraints": {}}
        with pyro.get_param_store().scope(start):
            run = self.start(problem, opts)
            value, se = run.reported()
            monitor = ConvergenceMonitor(opts.tol)
            monitor.report(value)
            ses, sizes, closed = [se], [], []
            for iteration in range(1, opts.max_iter + 1):
                num = sample_size(opts, iteration)
                closed.append(bool(run.iterate(iteration, num)["closed_form"]))
                value, se = run.reported()
                sizes.append(num)
                ses.append(se)
                converged = monitor.report(value)
                if not math.isfinite(value):
                    raise FitError(f"{self.label}: the {self.value_name} became {value} after iteration {iteration}")
                if any(bool(cb(iteration, value)) for cb in opts.callbacks) or converged:
                    break
            state = clone_param_state(pyro.get_param_store().get_state())
        if opts.tol is not None and not monitor.converged and len(monitor.history) == opts.max_iter + 1:
            warnings.warn(not_converged_message(opts.max_iter, opts.tol, self.label), ConvergenceWarning,
                          stacklevel=4)
        options = {k: v for k, v in vars(opts).items() if k != "callbacks"}
        options["closed_form_m_steps"] = closed
        self.finish(run, options)
        return stochastic_em_outcome(problem, self.name, options, opts.seed, run.guide, run.guide_name, state,
                                     monitor.history, ses, sizes, monitor.converged, problem.structure.n_data or 1)
