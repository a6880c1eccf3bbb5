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

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO
from pyro.poutine.util import site_is_subsample

from .base import Problem
from .stochastic_em import StochasticEMOptions, VariationalStep, maximise, particles, split_parameters
from .stochastic_em_loop import StochasticEMBackend, prepared_guide

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


class VEMBackend(StochasticEMBackend):
    name = "vem"
    options_class = VEMOptions
    label = "variational EM"
    value_name = "ELBO"

    def start(self, problem: Problem, opts: VEMOptions) -> _VEMRun:
        return _VEMRun(problem, opts)


class _VEMRun:
    """One restart of variational EM (see the module's docstring)."""

    def __init__(self, problem: Problem, opts: VEMOptions):
        structure = problem.structure
        self.problem, self.opts = problem, opts
        self.kwargs = dict(problem.data.kwargs)
        self.common = dict(vectorize_particles=True, max_plate_nesting=structure.max_plate_nesting)
        train = Trace_ELBO(num_particles=opts.num_particles, **self.common)
        self.guide, self.guide_name = prepared_guide(problem, train)
        self.theta, phi = split_parameters(problem.model, self.kwargs)
        self.e_step = VariationalStep(train, problem.model, self.guide, self.kwargs, phi, opts.lr)
        self.eval_seed = int(opts.seed) + 7919

    def reported(self) -> tuple[float, float]:
        return _reported(self.opts.eval_particles, self.common["max_plate_nesting"], self.problem.model, self.guide,
                         self.kwargs, self.eval_seed, self.problem.structure.n_data or 1)

    def iterate(self, iteration: int, num: int) -> dict:
        self.e_step(iteration, self.opts.e_steps)  # the guide's parameters only
        m_seed = int(torch.randint(0, 2**31 - 1, ()).item())
        m_elbo = Trace_ELBO(num_particles=num, **self.common)
        model, guide, kwargs = self.problem.model, self.guide, self.kwargs

        def expected_complete() -> torch.Tensor:
            # minus the ELBO differs from -E_q log p(x, z; theta) by the guide's entropy, constant in theta
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(m_seed)
                return -m_elbo.differentiable_loss(model, guide, **kwargs)

        return maximise(expected_complete, self.theta, self.opts.m_step, self.opts.m_steps, "vem")


def _reported(num: int, nesting: int, model: Any, guide: Any, kwargs: dict, seed: int, n: int) -> tuple[float, float]:
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
