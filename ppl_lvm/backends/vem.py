"""``method="vem"``: variational EM for models with continuous latents and parameters (``lvm.param``).

Each iteration alternates

* a **variational E-step**: ``e_steps`` Adam steps on the guide's parameters only, on the ELBO estimated with
  ``num_particles`` reparameterised draws per data point, at the rate ``lr / sqrt(t)`` in iteration ``t`` (see
  :class:`~ppl_lvm.backends.stochastic_em.VariationalStep`) (the guide is the fit's ``guide=``: the model's own
  guide, ``"normal"`` (mean-field, one normal per latent coordinate and data point, the default), an amortised
  encoder (``lvm.AmortizedNormal``) or any guide function);
* a **generalised M-step** on the model's parameters: ``m_steps`` L-BFGS iterations on
  ``E_q[log p(x, z; theta)]`` estimated with ``S_t`` draws per data point from ``q`` held fixed (one seed per
  iteration), kept only when it raises that estimate; ``S_t`` grows geometrically (options ``num_samples``,
  ``sample_growth``, ``max_samples``; see :class:`~ppl_lvm.backends.stochastic_em.StochasticEMOptions`).

``history`` is the ELBO per data point at the start and after each iteration, estimated with ``eval_particles``
draws from one fixed set of base draws (the same seed every iteration): with a reparameterised guide the draws are
``z = g(eps; phi)`` with the same ``eps`` each time, so the sequence changes only with the parameters. It is
monotone up to the error of the stochastic E-step (each M-step can only raise it on the M-step's own draws);
``history_se`` is the standard error of each value over the ``eval_particles`` draws.

The fixed point is the maximum of the ELBO over the guide family and the parameters: the maximum-likelihood
estimate when the family holds the exact posterior (probabilistic PCA and factor analysis with their own
linear-Gaussian guide, a Normal-Normal random-effects model with the ``"normal"`` guide), a biased one otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO
from pyro.poutine.util import site_is_subsample

from ..em.convergence import ConvergenceMonitor, not_converged_message
from ..errors import ConvergenceWarning, FitError
from ..guides import build_guide
from ..outcome import StochasticEMOutcome
from ..runtime import clone_param_state
from .base import Backend, Problem, guide_sites
from .guide_check import check_guide
from .restarts import run_restarts
from .stochastic_em import (
    StochasticEMOptions,
    VariationalStep,
    check_model_for,
    lbfgs_maximise,
    particles,
    sample_size,
    split_parameters,
    stochastic_em_outcome,
)

__all__ = ["VEM", "VEMOptions"]


@dataclass
class VEMOptions(StochasticEMOptions):
    """Options of ``method="vem"``: those of :class:`~ppl_lvm.backends.stochastic_em.StochasticEMOptions` and

    Parameters
    ----------
    e_steps : int
        Adam steps on the guide's parameters per E-step.
    lr : float
        Adam learning rate of the first E-step; iteration ``t`` uses ``lr / sqrt(t)``.
    num_particles : int
        Draws from the guide per data point in each E-step gradient.
    eval_particles : int
        Draws (one fixed set) of the ELBO reported in ``history``.
    """

    e_steps: int = 20
    lr: float = 0.05
    num_particles: int = 8
    eval_particles: int = 64

    def validate(self) -> None:
        super().validate()
        for name in ("e_steps", "num_particles", "eval_particles"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")


class VEMBackend(Backend):
    name = "vem"
    options_class = VEMOptions

    def fit(self, problem: Problem) -> StochasticEMOutcome:
        opts, _ = self.options_of(problem)
        check_model_for(self.name, problem.structure)

        def fit_once(restart: int, seed: int) -> StochasticEMOutcome:
            return self._fit_once(problem, dataclasses.replace(opts, seed=seed))

        return run_restarts(fit_once, n_init=opts.n_init, seed=int(opts.seed), name="variational EM",
                            score=lambda o: float(o.history[-1]))

    def _fit_once(self, problem: Problem, opts: VEMOptions) -> StochasticEMOutcome:
        structure = problem.structure
        kwargs = dict(problem.data.kwargs)
        nesting = structure.max_plate_nesting
        n = structure.n_data or 1
        pyro.set_rng_seed(int(opts.seed))
        start = clone_param_state(problem.init_state) if problem.init_state is not None else \
            {"params": {}, "constraints": {}}
        common = dict(vectorize_particles=True, max_plate_nesting=nesting)
        train = Trace_ELBO(num_particles=opts.num_particles, **common)
        with pyro.get_param_store().scope(start):
            guide, guide_name = build_guide(problem.guide, problem.model, structure)
            gtrace = guide_sites(guide, kwargs)
            check_guide(structure, gtrace, guide, guide_name)
            with torch.no_grad():
                train.loss(problem.model, guide, **kwargs)  # creates every parameter
            store = pyro.get_param_store()
            theta, phi = split_parameters(problem.model, kwargs)
            e_step = VariationalStep(train, problem.model, guide, kwargs, phi, opts.lr)
            eval_seed = int(opts.seed) + 7919

            def reported() -> tuple[float, float]:
                return self._reported(opts.eval_particles, nesting, problem.model, guide, kwargs, eval_seed, n)

            value, se = reported()
            monitor = ConvergenceMonitor(opts.tol)
            monitor.report(value)
            ses, sizes = [se], []
            for iteration in range(1, opts.max_iter + 1):
                e_step(iteration, opts.e_steps)  # the guide's parameters only
                m_seed = int(torch.randint(0, 2**31 - 1, ()).item())
                num = sample_size(opts, iteration)
                m_elbo = Trace_ELBO(num_particles=num, **common)

                def expected_complete(seed: int = m_seed, m_elbo: Trace_ELBO = m_elbo) -> torch.Tensor:
                    # minus the ELBO differs from -E_q log p(x, z; theta) by the guide's entropy, constant in theta
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(seed)
                        return -m_elbo.differentiable_loss(problem.model, guide, **kwargs)

                lbfgs_maximise(expected_complete, theta, opts.m_steps)
                value, se = reported()
                sizes.append(num)
                ses.append(se)
                converged = monitor.report(value)
                if not math.isfinite(value):
                    raise FitError(f"variational EM: the ELBO became {value} after iteration {iteration}")
                if any(bool(cb(iteration, value)) for cb in opts.callbacks) or converged:
                    break
            state = clone_param_state(store.get_state())
        if opts.tol is not None and not monitor.converged and len(monitor.history) == opts.max_iter + 1:
            warnings.warn(not_converged_message(opts.max_iter, opts.tol, "variational EM"), ConvergenceWarning,
                          stacklevel=4)
        options = {k: v for k, v in vars(opts).items() if k != "callbacks"}
        return stochastic_em_outcome(problem, self.name, options, opts.seed, guide, guide_name, state,
                                     monitor.history, ses, sizes, monitor.converged, n)

    @staticmethod
    def _reported(num: int, nesting: int, model: Any, guide: Any, kwargs: dict, seed: int,
                  n: int) -> tuple[float, float]:
        """The ELBO per data point from ``num`` base draws seeded by ``seed``, and its standard error over them."""
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gtrace = poutine.trace(particles(guide, num, nesting)).get_trace(**kwargs)
            mtrace = poutine.trace(poutine.replay(particles(model, num, nesting), trace=gtrace)).get_trace(**kwargs)
            values = per_particle(mtrace, nesting, num) - per_particle(gtrace, nesting, num)
        values = values.double().numpy()
        return float(values.mean()) / n, float(values.std(ddof=1) / math.sqrt(num)) / n


def per_particle(trace: poutine.Trace, nesting: int, num: int) -> torch.Tensor:
    """The sum of every sample site's log density for each of ``num`` particles (the plate at ``-(nesting+1)``)."""
    trace.compute_log_prob()
    total = torch.zeros(num)
    full = nesting + 1
    for node in trace.nodes.values():
        if node["type"] != "sample" or site_is_subsample(node):
            continue
        lp = node["log_prob"]
        lp = lp.reshape((1,) * (full - lp.dim()) + tuple(lp.shape))
        total = total + lp.reshape(lp.shape[0], -1).sum(1)
    return total


VEM = VEMBackend()
