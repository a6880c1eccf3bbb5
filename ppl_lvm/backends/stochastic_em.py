"""What ``method="vem"`` and ``method="mcem"`` share: options, checks, draws with particles, the L-BFGS M-step.

Both are EM for models whose E-step is intractable because a latent is continuous: the expectation of the
complete-data log-likelihood ``log p(x, z; theta)`` under ``p(z | x, theta)`` is replaced by one under an
approximation (a variational guide for ``vem``, self-normalised importance weights for ``mcem``), then maximised
over the model's parameters (``lvm.param``) by L-BFGS with the draws held fixed (a generalised M-step: kept only
when it raises that objective).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from ..errors import FitError, UnsupportedModelError
from ..outcome import StochasticEMOutcome
from ..structure import ModelStructure
from .closed_m_step import closed_form_maximise

__all__ = ["M_STEPS", "StochasticEMOptions", "check_model_for", "lbfgs_maximise", "maximise", "particles", "point_log_probs", "sample_size", "split_parameters",
           "stochastic_em_outcome", "unconstrained",
           "VariationalStep"]

#: the name of the plate that vectorises the particles (draws) of the E-step
PARTICLE_PLATE = "_stochastic_em_particles"


#: the M-steps of option ``m_step``
M_STEPS = ("auto", "closed", "lbfgs")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class StochasticEMOptions:
    """Options common to ``method="vem"`` and ``method="mcem"``.

    Parameters
    ----------
    max_iter : int
        Maximum EM iterations (each: an E-step, then an M-step).
    tol : float or None
        Stop, converged, when the reported per-data-point value (``history``) changes by less than ``tol`` (the
        rule of :mod:`ppl_lvm.em.convergence`); ``None``: run every iteration.
    n_init : int
        Independent restarts (seeds ``seed, seed + 1, ...``); the one with the highest final ``history`` value is
        returned, all are kept in ``restarts``.
    seed : int
        Seed of restart 0.
    m_steps : int
        L-BFGS iterations of each M-step.
    num_samples, sample_growth, max_samples
        The schedule of draws per data point behind each M-step (``mcem``: the importance-sampling E-step;
        ``vem``: the draws from q at which ``E_q[log p(x, z; theta)]`` is maximised), growing geometrically,
        ``S_t = min(max_samples, ceil(num_samples * sample_growth ** (t - 1)))`` in iteration ``t``: 10, 13, 17,
        22, ... with the defaults. The Monte Carlo error of the M-step shrinks as the parameters settle, so the
        iterates stop wandering (a constant sample size leaves them wandering by that error, most along the slow
        directions of EM); ``sample_growth=1`` keeps it constant. ``result.sample_sizes`` lists the ``S_t``.
    m_step : {"auto", "closed", "lbfgs"}
        ``"auto"``: the closed-form M-step where the model's parameters enter Normal sites as
        :mod:`ppl_lvm.backends.closed_m_step` describes (checked every iteration), ``m_steps`` L-BFGS iterations
        otherwise; ``"closed"``: the closed form or an error saying why it does not apply; ``"lbfgs"``: always
        L-BFGS. ``result.options["closed_form_m_steps"]`` says, per iteration, whether the closed form ran.
    callbacks : sequence of callables
        ``callback(iteration, value)`` after each iteration; return ``True`` to stop.
    """

    max_iter: int = 50
    tol: float | None = 1e-3
    n_init: int = 1
    seed: int = 0
    m_steps: int = 20
    num_samples: int = 10
    sample_growth: float = 1.3
    max_samples: int = 1000
    m_step: str = "auto"
    callbacks: Sequence = ()

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def validate(self) -> None:
        for name in ("max_iter", "n_init", "m_steps", "num_samples", "max_samples"):
            _positive_int(name, getattr(self, name))
        growth = self.sample_growth
        if isinstance(growth, bool) or not isinstance(growth, (int, float)) or not 1 <= growth < math.inf:
            raise ValueError(f"sample_growth must be a number >= 1 (1: a constant sample size), got {growth!r}")
        if self.max_samples < self.num_samples:
            raise ValueError(f"max_samples={self.max_samples} is below num_samples={self.num_samples}")
        tol = self.tol
        if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol)
                                or tol < 0):
            raise ValueError(f"tol must be a number >= 0, or None to run all max_iter iterations, got {tol!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.m_step not in M_STEPS:
            raise ValueError(f"m_step must be one of {list(M_STEPS)}, got {self.m_step!r}")
        if not all(callable(cb) for cb in self.callbacks):
            raise ValueError("callbacks must be a sequence of callables callback(iteration, value)")


def sample_size(opts: StochasticEMOptions, iteration: int) -> int:
    """``S_t`` of iteration ``t = iteration`` (1-based): ``min(max_samples, ceil(num_samples * growth**(t-1)))``."""
    return int(min(opts.max_samples, math.ceil(opts.num_samples * opts.sample_growth ** (iteration - 1) - 1e-9)))


def check_model_for(method: str, structure: ModelStructure, local_only: bool = False) -> None:
    """Refuse models ``method`` cannot fit: no continuous latent, a discrete latent, no parameter to maximise."""
    if structure.discrete_latents:
        site = structure.discrete_latents[0]
        raise UnsupportedModelError(
            f"method {method!r} draws continuous latents; '{site.name}' ({site.location}) is a discrete "
            f"{site.distribution}. A model whose latents are all discrete is fitted exactly by method='em'; with "
            "discrete and continuous latents use method='svi' (it sums the discrete ones out)."
        )
    if not structure.continuous_latents:
        raise UnsupportedModelError(
            f"method {method!r} needs a continuous latent to take the expectation over, and this model has no "
            "latent: maximise its likelihood directly with method='svi' (no guide), or method='em' for discrete "
            "latents"
        )
    if not structure.param_sites:
        raise UnsupportedModelError(
            f"method {method!r} maximises over the model's parameters, and this model has none (no lvm.param or "
            "lvm.module): "
            "there is nothing to maximise. Declare the unknowns with lvm.param, or fit the posterior of its "
            "latents with method='svi' or method='nuts'."
        )
    if local_only and structure.global_latents:
        site = structure.global_latents[0]
        where = "outside the data plate" if structure.data_plate else "and the model has no data plate"
        raise UnsupportedModelError(
            f"method {method!r} weights the draws of each data point separately, but the latent '{site.name}' "
            f"({site.location}) is {where} (shared by all data points). Use method='vem', which handles it, or "
            "make it a parameter (lvm.param)."
        )


def split_parameters(model: Callable, kwargs: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The unconstrained leaves of the model's parameters (every parameter its run reads: ``lvm.param`` and
    ``lvm.module`` weights, moved by the M-step) and of the others in the live store (the guide's, moved by the
    E-step)."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        trace = poutine.trace(model).get_trace(**kwargs)
    in_model = [name for name, node in trace.nodes.items() if node["type"] == "param"]
    store = pyro.get_param_store()
    return unconstrained([n for n in store.keys() if n in in_model]), \
        unconstrained([n for n in store.keys() if n not in in_model])


def unconstrained(names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The unconstrained leaves of the named parameters of the live parameter store (what optimisers move)."""
    store = pyro.get_param_store()
    return {n: store._params[n] for n in names}


def particles(fn: Callable, num: int, max_plate_nesting: int) -> Callable:
    """``fn`` run inside a plate of ``num`` particles left of the model's plates (vectorised draws)."""

    def vectorised(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate(PARTICLE_PLATE, num, dim=-(max_plate_nesting + 1)):
            return fn(*args, **kwargs)

    return vectorised


def point_log_probs(trace: poutine.Trace, names: Sequence[str], data_dim: int, max_plate_nesting: int,
                    num: int, n: int) -> torch.Tensor:
    """The sum of the named sites' log densities per particle and data point, shape ``(num, n)``.

    ``data_dim`` is the (negative) dim of the data plate; the particle plate sits at ``-(max_plate_nesting + 1)``.
    Every other batch dim is summed.
    """
    full = max_plate_nesting + 1
    total = torch.zeros(num, n)
    for name in names:
        lp = trace.nodes[name]["log_prob"]
        lp = lp.reshape((1,) * (full - lp.dim()) + tuple(lp.shape))
        keep = {0, full + data_dim}
        other = [d for d in range(full) if d not in keep]
        if other:
            lp = lp.sum(other, keepdim=True)
        total = total + lp.reshape(lp.shape[0], lp.shape[full + data_dim])
    return total


def lbfgs_maximise(objective: Callable[[], torch.Tensor], leaves: dict[str, torch.Tensor],
                   max_steps: int) -> dict[str, Any]:
    """Maximise ``objective()`` over the leaves with L-BFGS (strong Wolfe); keep the result only if it is higher.

    Returns ``accepted``, ``before`` and ``after`` (the objective at the kept values).
    """
    tensors = [p for p in leaves.values() if p.requires_grad]
    old = [p.detach().clone() for p in tensors]
    with torch.no_grad():
        before = float(objective())
    if not tensors or not math.isfinite(before):
        return {"accepted": False, "before": before, "after": before}
    scale = max(1.0, abs(before))
    optimizer = torch.optim.LBFGS(tensors, lr=1.0, max_iter=max_steps, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -objective() / scale
        loss.backward()
        return loss

    after = math.nan
    try:
        with torch.enable_grad():
            optimizer.step(closure)
        if all(bool(torch.isfinite(p).all()) for p in tensors):
            with torch.no_grad():
                after = float(objective())
    except (ValueError, RuntimeError) as exc:  # a distribution's argument check on a parameter gone NaN
        if "nan" not in str(exc).lower() and "invalid" not in str(exc).lower():
            raise
    for p in tensors:
        p.grad = None
    accepted = math.isfinite(after) and after >= before
    if not accepted:
        with torch.no_grad():
            for p, value in zip(tensors, old, strict=True):
                p.copy_(value)
        after = before
    return {"accepted": accepted, "before": before, "after": after}


def maximise(objective: Callable[[], torch.Tensor], leaves: dict[str, torch.Tensor], m_step: str,
             max_steps: int, method: str) -> dict[str, Any]:
    """The M-step of option ``m_step``: :func:`~ppl_lvm.backends.closed_m_step.closed_form_maximise` or
    :func:`lbfgs_maximise`; the result says which ran (``closed_form``)."""
    if m_step != "lbfgs":
        info, reason = closed_form_maximise(objective, leaves)
        if info is not None:
            return {**info, "closed_form": True}
        if m_step == "closed":
            raise UnsupportedModelError(f"method {method!r} with m_step='closed': the closed-form M-step does not "
                                        f"apply, because {reason}. Use m_step='auto' (L-BFGS where it does not "
                                        "apply) or m_step='lbfgs'")
    return {**lbfgs_maximise(objective, leaves, max_steps), "closed_form": False}


class VariationalStep:
    """The E-step on the guide's parameters ``phi``: Adam steps on the ELBO, the model's parameters held fixed.

    The learning rate of iteration ``t`` is ``lr / sqrt(t)`` (one Adam state across iterations): Adam's steps
    have a size of about ``lr`` however small the gradient's mean, so a constant rate leaves the guide wandering by
    that much around its optimum; the decay lets it settle as EM does (a Robbins-Monro schedule).
    """

    def __init__(self, elbo: Any, model: Any, guide: Any, kwargs: dict, phi: dict[str, torch.Tensor], lr: float):
        self.elbo, self.model, self.guide, self.kwargs = elbo, model, guide, kwargs
        self.leaves = list(phi.values())
        self.lr = float(lr)
        self.adam = torch.optim.Adam(self.leaves, lr=self.lr) if self.leaves else None

    def __call__(self, iteration: int, steps: int) -> None:
        """``steps`` Adam steps at the rate of ``iteration``; a non-finite ELBO raises ``FitError``."""
        if self.adam is None:
            return
        for group in self.adam.param_groups:
            group["lr"] = self.lr / math.sqrt(iteration)
        for _ in range(steps):
            loss = self.elbo.differentiable_loss(self.model, self.guide, **self.kwargs)
            if not torch.isfinite(loss):
                raise FitError(f"the ELBO became {float(loss)} in the E-step of iteration {iteration}; try a "
                               "smaller lr or standardised data")
            grads = torch.autograd.grad(loss, self.leaves, allow_unused=True)
            for p, g in zip(self.leaves, grads, strict=True):
                p.grad = g
            self.adam.step()
            self.adam.zero_grad(set_to_none=True)


def stochastic_em_outcome(problem: Any, name: str, options: dict, seed: int, guide: Any, guide_name: str,
                          state: dict, history: list[float], history_se: list[float], sample_sizes: list[int],
                          converged: bool, n: int) -> StochasticEMOutcome:
    """The outcome of one restart (``losses`` is minus the total value per iteration, as for EM)."""
    return StochasticEMOutcome(
        method=name,
        losses=-np.asarray(history, dtype=float) * n,
        converged=bool(converged),
        steps=len(history) - 1,
        seed=int(seed),
        guide_name=guide_name,
        model=problem.model,
        guide=guide,
        data=problem.data,
        structure=problem.structure,
        param_state=state,
        options=options,
        history=np.asarray(history, dtype=float),
        history_se=np.asarray(history_se, dtype=float),
        sample_sizes=np.asarray(sample_sizes, dtype=int),
        n_iter=len(history) - 1,
    )
