"""``method="mcem"``: Monte Carlo EM by self-normalised importance sampling (Wei and Tanner 1990).

Every latent must be continuous and local (one per data point, in the data plate), so that ``p(z | x, theta)``
factorises over the data points. Iteration ``t``:

* **E-step**: ``S_t`` draws ``z_is`` per data point from a proposal ``r`` (option ``proposal``): ``"guide"`` (the
  default; the fit's guide, first moved towards the posterior by ``guide_steps`` Adam steps on the ELBO, as the
  E-step of ``vem``) or ``"prior"`` (the model's own distribution of the latents, no guide). Each draw gets the
  self-normalised weight ``w_is ∝ p(x_i, z_is; theta) / r(z_is)`` (summing to 1 over s for each i). With
  ``proposal="nuts"`` the draws come from ``p(z | x, theta)`` itself, by one NUTS chain per E-step
  (:mod:`ppl_lvm.backends.mcem_nuts`), and weigh ``1 / S_t`` each; the guide is still adapted, for the reported
  estimate only.
* **M-step**: ``m_steps`` L-BFGS iterations on ``sum_i sum_s w_is log p(x_i, z_is; theta)`` with the draws and
  weights fixed, kept only when it raises that sum (generalised EM).

The sample size grows geometrically: ``S_t = min(max_samples, ceil(num_samples * sample_growth ** (t - 1)))``
(defaults 10, 1.3, 1000: 10, 13, 17, 22, ... draws per point), so that the Monte Carlo error of the E-step shrinks
as the parameter steps do (Booth and Hobert 1999 grow it when the step is swamped by that error; a fixed schedule
keeps runs reproducible). ``result.sample_sizes`` lists the ``S_t`` used.

``history`` is the importance-sampling estimate of ``log p(x)`` per data point,
``(1/N) sum_i log((1/K) sum_k p(x_i, z_ik) / r(z_ik))`` with ``K = eval_samples`` draws from one fixed set of base
draws (the same seed every iteration, so its changes are those of the parameters and of the proposal, not of
fresh draws; it is below log p(x) on average by about the variance of the weights over 2K). ``history_se`` is its
delta-method standard error, ``sqrt(sum_i (K sum_k wbar_ik^2 - 1) / K) / N`` with ``wbar`` the normalised
weights. Exact EM never lowers ``log p(x)``; this estimate is monotone up to that error.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO
from pyro.poutine.util import site_is_subsample

from ..errors import FitError, InferenceWarning
from .base import Problem
from .mcem_nuts import NUTSEStep
from .stochastic_em import (
    StochasticEMOptions,
    VariationalStep,
    maximise,
    particles,
    point_log_probs,
    split_parameters,
)
from .stochastic_em_loop import StochasticEMBackend, prepared_guide

__all__ = ["MCEM", "MCEMOptions"]

PROPOSALS = ("guide", "prior", "nuts")


@dataclass
class MCEMOptions(StochasticEMOptions):
    """Options of ``method="mcem"``: those of :class:`~ppl_lvm.backends.stochastic_em.StochasticEMOptions` and

    Parameters
    ----------
    proposal : {"guide", "prior", "nuts"}
        Where the E-step's draws come from: importance sampling from the fit's guide (adapted each iteration) or
        from the model's prior, or posterior draws by NUTS (:mod:`ppl_lvm.backends.mcem_nuts`; the guide then
        serves only the reported estimate).
    eval_samples : int
        Draws per data point (one fixed set) of the estimate reported in ``history``.
    guide_steps : int
        Adam steps on the guide's ELBO per iteration (``proposal="guide"``; 0 keeps the guide fixed).
    lr : float
        Adam learning rate of the first iteration's guide steps; iteration ``t`` uses ``lr / sqrt(t)``.
    num_particles : int
        Draws per data point of each of those ELBO gradients.
    nuts_warmup : int
        ``proposal="nuts"``: warm-up steps of each E-step's chain.
    target_accept_prob : float
        ``proposal="nuts"``: target acceptance probability of NUTS's step-size adaptation, in (0, 1).
    """

    proposal: str = "guide"
    eval_samples: int = 100
    guide_steps: int = 20
    lr: float = 0.05
    num_particles: int = 8
    nuts_warmup: int = 100
    target_accept_prob: float = 0.8

    def validate(self) -> None:
        super().validate()
        for name in ("eval_samples", "num_particles"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if isinstance(self.guide_steps, bool) or not isinstance(self.guide_steps, (int, np.integer)) \
                or self.guide_steps < 0:
            raise ValueError(f"guide_steps must be an integer >= 0, got {self.guide_steps!r}")
        if isinstance(self.nuts_warmup, bool) or not isinstance(self.nuts_warmup, (int, np.integer)) \
                or self.nuts_warmup < 1:
            raise ValueError(f"nuts_warmup must be a positive integer, got {self.nuts_warmup!r}")
        p = self.target_accept_prob
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
            raise ValueError(f"target_accept_prob must be a number in (0, 1), e.g. 0.8 or 0.95, got {p!r}")
        if self.proposal not in PROPOSALS:
            raise ValueError(f"proposal must be one of {list(PROPOSALS)}, got {self.proposal!r}")


class _Sampler:
    """Draws from the proposal and the per-point log weights and complete-data log densities."""

    def __init__(self, problem: Problem, guide: Any):
        structure = problem.structure
        self.model, self.guide, self.kwargs = problem.model, guide, dict(problem.data.kwargs)
        self.nesting = structure.max_plate_nesting
        self.plate = structure.data_plate
        self.dim = structure.plates[self.plate].dim
        self.n = structure.n_data
        self.latents = [s.name for s in structure.latent_sites]

    def _split(self, trace: poutine.Trace) -> tuple[list[str], list[str]]:
        inside, outside = [], []
        for name, node in trace.nodes.items():
            if node["type"] != "sample" or site_is_subsample(node):
                continue
            (inside if self.plate in [f.name for f in node["cond_indep_stack"]] else outside).append(name)
        return inside, outside

    def draw(self, num: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``num`` draws per data point from the proposal: the latent values and log weights ``(num, n)``."""
        with torch.no_grad():
            if self.guide is None:
                trace = poutine.trace(particles(self.model, num, self.nesting)).get_trace(**self.kwargs)
                values = {k: trace.nodes[k]["value"] for k in self.latents}
                proposal = point_log_probs(_logp(trace), self.latents, self.dim, self.nesting, num, self.n)
            else:
                gtrace = poutine.trace(particles(self.guide, num, self.nesting)).get_trace(**self.kwargs)
                values = {k: gtrace.nodes[k]["value"] for k in self.latents}
                proposal = point_log_probs(_logp(gtrace), self.latents, self.dim, self.nesting, num, self.n)
            joint, _ = self.complete(values, num)
        return values, joint - proposal

    def complete(self, values: dict[str, torch.Tensor], num: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``log p(x_i, z_is; theta)`` at the given draws, ``(num, n)``, and the sites outside the data plate."""
        conditioned = poutine.condition(particles(self.model, num, self.nesting), data=values)
        trace = _logp(poutine.trace(conditioned).get_trace(**self.kwargs))
        inside, outside = self._split(trace)
        rest = sum((trace.nodes[k]["log_prob_sum"] for k in outside), torch.zeros(())) / num
        return point_log_probs(trace, inside, self.dim, self.nesting, num, self.n), rest


def _logp(trace: poutine.Trace) -> poutine.Trace:
    trace.compute_log_prob()
    return trace


def _estimate(log_weights: torch.Tensor) -> tuple[float, float]:
    """The importance-sampling estimate of log p(x) per data point and its delta-method standard error."""
    num, n = log_weights.shape
    per_point = torch.logsumexp(log_weights, 0) - math.log(num)
    normalised = torch.softmax(log_weights, 0)
    relvar = (num * (normalised**2).sum(0) - 1).clamp(min=0) / num
    return float(per_point.sum()) / n, float(relvar.sum().sqrt()) / n


class MCEMBackend(StochasticEMBackend):
    name = "mcem"
    options_class = MCEMOptions
    label = "Monte Carlo EM"
    value_name = "log-likelihood estimate"
    local_only = True

    def check(self, problem: Problem, opts: MCEMOptions) -> None:
        if opts.proposal == "prior" and problem.guide is not None:
            raise ValueError("proposal='prior' draws from the model's prior and uses no guide; drop guide=, or use "
                             "proposal='guide'")

    def start(self, problem: Problem, opts: MCEMOptions) -> _MCEMRun:
        return _MCEMRun(problem, opts)

    def finish(self, run: _MCEMRun, options: dict) -> None:
        if run.nuts is None:
            return
        counts = list(run.nuts.divergences)
        options["nuts_divergences"] = counts
        if sum(counts):
            warnings.warn(f"Monte Carlo EM: the NUTS E-steps had {sum(counts)} divergent transitions (per "
                          f"iteration: {counts}); their draws may miss part of p(z | x, theta). Raise "
                          "target_accept_prob (0.9, 0.95) or nuts_warmup", InferenceWarning, stacklevel=5)


class _MCEMRun:
    """One restart of Monte Carlo EM (see the module's docstring)."""

    def __init__(self, problem: Problem, opts: MCEMOptions):
        structure = problem.structure
        self.problem, self.opts = problem, opts
        kwargs = dict(problem.data.kwargs)
        train = Trace_ELBO(num_particles=opts.num_particles, vectorize_particles=True,
                           max_plate_nesting=structure.max_plate_nesting)
        if opts.proposal == "prior":
            self.guide, self.guide_name = None, "prior (no guide)"
            with torch.no_grad():
                poutine.trace(problem.model).get_trace(**kwargs)  # creates every parameter
        else:
            self.guide, self.guide_name = prepared_guide(problem, train)
        self.theta, phi = split_parameters(problem.model, kwargs)
        self.sampler = _Sampler(problem, self.guide)
        self.nuts = NUTSEStep(problem, opts.nuts_warmup, opts.target_accept_prob) if opts.proposal == "nuts" \
            else None
        self.e_step = VariationalStep(train, problem.model, self.guide, kwargs, phi, opts.lr)
        self.eval_seed = int(opts.seed) + 7919

    def reported(self) -> tuple[float, float]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.eval_seed)
            return _estimate(self.sampler.draw(self.opts.eval_samples)[1])

    def iterate(self, iteration: int, num: int) -> dict:
        self.e_step(iteration, self.opts.guide_steps)
        values, log_weights = (self.nuts or self.sampler).draw(num)
        if not bool(torch.isfinite(log_weights).any(0).all()):
            raise FitError(f"Monte Carlo EM: every importance weight of a data point is zero or NaN in "
                           f"iteration {iteration}; use proposal='guide' or a wider guide")
        weights = torch.softmax(log_weights, 0)
        sampler = self.sampler

        def weighted_complete() -> torch.Tensor:
            joint, rest = sampler.complete(values, num)
            return (weights * joint).sum() + rest

        return maximise(weighted_complete, self.theta, self.opts.m_step, self.opts.m_steps, "mcem")


MCEM = MCEMBackend()
