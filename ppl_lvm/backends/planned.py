"""The fast path of the variational methods: the loss of a fit step without Pyro's effect stack.

A fit's first step runs Pyro's ELBO. :class:`Planner` then runs the same step again through
:mod:`ppl_lvm.interpreter` (the guide draws, the model replays the draws, on the same random numbers) and keeps the
plan only when its loss equals Pyro's and its gradient of every parameter equals the one Pyro's backward left;
from then on every step evaluates the loss from the sites the interpreter records, in the order and with the
arithmetic of Pyro's estimator, so the losses are the Pyro path's to float error under the same seed:

* ``Trace_ELBO`` (``svi``; :class:`TraceLoss`): ``log p(x, z) - log q(z)`` at the draw, with the sticking-the-landing
  surrogate where ``estimator="stl"`` ran (:func:`ppl_lvm.backends.estimators.stick_the_landing`);
* ``TraceMeanField_ELBO`` (``meanfield``; :class:`MeanFieldLoss`): the analytic KL where one is registered, the
  Monte Carlo term elsewhere;
* ``RenyiELBO`` (``iwae`` and ``renyi`` with vectorised particles; :class:`RenyiLoss`): the K draws under a particle
  dim, the log-mean-exp of the weights and the self-normalised surrogate.

A step whose sites differ from the plan's (the model's structure changed) raises
:class:`~ppl_lvm.interpreter.NotPlannable` before anything is differentiated; the fit loop then restores the random
state and runs that step and the rest with Pyro. Estimators it does not implement (enumeration, score-function
sites, DReG, free bits, global latents of ``iwae``, particles one pass at a time) and autoguides other than the
built-in ones (``"normal"``, ``"delta"``, ``"fullrank"`` and Pyro's ``AutoNormal``, whose statements
:mod:`ppl_lvm.backends.planned_guides` runs through the interpreter) run Pyro throughout; :attr:`Planner.reason` says
why.
"""

from __future__ import annotations

import abc
import math
from typing import Any, NamedTuple

import pyro.distributions as dist
import torch
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum

from ..interpreter import Frame, Interpreter, NotPlannable, RunSite, interpreting, unchecked_distributions
from .estimators import STLTrace_ELBO, _fixed
from .planned_guides import autoguide_run

__all__ = ["MeanFieldLoss", "Planner", "RenyiLoss", "TraceLoss", "loss_for"]

#: how close the planned step's loss and gradients must be to the Pyro step's (float32 summation order)
LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-3


class _Key(NamedTuple):
    """A plate as Pyro's estimators compare them (what ``get_dependent_plate_dims`` reads)."""

    name: str
    dim: int
    size: int


class PlannedLoss(abc.ABC):
    """Runs the guide, then the model replaying its draws, through the interpreter; a subclass forms the loss."""

    outer: tuple[Frame, ...] = ()
    #: runs a built-in autoguide's statements through the interpreter (:mod:`.planned_guides`); None: call the guide
    guide_run: Any = None

    def __init__(self) -> None:
        self.named: dict[str, torch.Tensor] = {}
        #: the guide's and the model's site names and the parameters they read, fixed by the first step
        self.structure: tuple[list[str], list[str], list[str]] | None = None
        self.last: tuple[list[str], list[str], list[str]] | None = None

    def run(self, model: Any, guide: Any, kwargs: dict) -> tuple[list[RunSite], list[RunSite]]:
        q = Interpreter("guide", outer=self.outer)
        with interpreting(q):
            if self.guide_run is None:
                guide(**kwargs)
            else:
                self.guide_run(q)
        p = Interpreter("model", replay={s.name: s.value for s in q.sites if not s.observed}, outer=self.outer)
        with interpreting(p):
            model(**kwargs)
        structure = ([s.name for s in q.sites], [s.name for s in p.sites], q.params + p.params)
        if self.structure is None:
            self.last = structure
        elif structure != self.structure:
            raise NotPlannable("the model's or the guide's sites or parameters changed from those of the first step")
        return q.sites, p.sites

    @abc.abstractmethod
    def evaluate(self, model: Any, guide: Any, kwargs: dict) -> tuple[float, torch.Tensor]:
        """The loss (a float, as Pyro's estimator returns it) and the surrogate loss to differentiate."""

    def loss_and_grads(self, model: Any, guide: Any, **kwargs: Any) -> float:
        """The step's loss, its gradients accumulated into ``.grad``. The Pyro distributions the step builds skip
        their argument checks (:class:`~ppl_lvm.interpreter.unchecked_distributions`: in this thread only; the
        first step, run by Pyro, checked the same statements; a parameter that runs off gives a non-finite loss,
        which the fit loop reports)."""
        with unchecked_distributions():
            loss, surrogate = self.evaluate(model, guide, kwargs)
        if self.named and isinstance(surrogate, torch.Tensor) and surrogate.requires_grad:
            surrogate.backward()
        return loss


def _log_prob(site: RunSite) -> torch.Tensor:
    if site.mask is None:  # scale_and_mask's arithmetic, without its checks
        log_p = site.fn.log_prob(site.value)
        return log_p if site.scale == 1.0 else log_p * site.scale
    return scale_and_mask(site.fn.log_prob(site.value), site.scale, site.mask)


def _stl_applies(site: RunSite) -> bool:
    """The sites whose surrogate sticking the landing changes (as ``estimators._stl_sites`` selects them)."""
    return site.fn.has_rsample and not isinstance(site.fn, dist.Delta)


class ParticleLoss(PlannedLoss):
    """A loss of ``num_particles`` draws, vectorised under a plate at ``dim`` when there are more than one."""

    def __init__(self, num_particles: int = 1, dim: int = -1):
        super().__init__()
        self.num_particles = int(num_particles)
        if self.num_particles > 1:
            self.outer = (Frame("num_particles_vectorized", dim, self.num_particles, self.num_particles),)


class TraceLoss(ParticleLoss):
    """``Trace_ELBO``; ``stl=True``: its sticking-the-landing surrogate (``STLTrace_ELBO``)."""

    def __init__(self, stl: bool, num_particles: int = 1, dim: int = -1):
        super().__init__(num_particles, dim)
        self.stl = stl

    def evaluate(self, model, guide, kwargs):
        q_sites, p_sites = self.run(model, guide, kwargs)
        elbo, surrogate = 0.0, 0.0
        for site in p_sites:
            total = _log_prob(site).sum()
            elbo = elbo + total.item()
            surrogate = surrogate + total
        for site in q_sites:
            log_q = _log_prob(site)
            elbo = elbo - log_q.sum().item()
            entropy = log_q
            if self.stl and entropy.requires_grad and _stl_applies(site):
                score = scale_and_mask(site.fn.log_prob(_fixed(site.value)), site.scale, site.mask)
                entropy = entropy - score + score.detach()
            surrogate = surrogate - entropy.sum()
        if self.num_particles == 1:  # x / 1 is x, bit for bit (and so is its gradient): one node fewer
            return 0.0 + -elbo, -surrogate
        return 0.0 + -elbo / self.num_particles, -surrogate / self.num_particles


class MeanFieldLoss(ParticleLoss):
    """``TraceMeanField_ELBO``: analytic KL terms where registered, Monte Carlo elsewhere."""

    def evaluate(self, model, guide, kwargs):
        q_sites, p_sites = self.run(model, guide, kwargs)
        q_by_name = {s.name: s for s in q_sites}
        elbo: Any = 0
        for site in p_sites:
            if site.observed:
                elbo = elbo + _log_prob(site).sum()
                continue
            q = q_by_name[site.name]
            try:
                kl = scale_and_mask(kl_divergence(q.fn, site.fn), q.scale, q.mask)
            except NotImplementedError:
                elbo = elbo + _log_prob(site).sum() - _log_prob(q).sum()
                continue
            kl_sum = kl.sum() if torch.is_tensor(kl) else kl * torch.Size(q.fn.batch_shape).numel()
            elbo = elbo - kl_sum
        names = {s.name for s in p_sites}
        for q in q_sites:
            if q.name not in names:
                raise NotPlannable(f"the guide's site '{q.name}' is not in the model (an auxiliary site)")
        if not torch.is_tensor(elbo):
            raise NotPlannable("the model has no sample site")
        if self.num_particles == 1:  # x / 1 is x, bit for bit (and so is its gradient): one node fewer
            return 0.0 + -elbo.item(), -elbo
        return 0.0 + -elbo.item() / self.num_particles, -elbo / self.num_particles


class RenyiLoss(PlannedLoss):
    """``RenyiELBO(alpha)`` with ``K`` vectorised particles (``alpha=0``: the IWAE bound)."""

    def __init__(self, alpha: float, num_particles: int, dim: int):
        super().__init__()
        self.alpha, self.num_particles = float(alpha), int(num_particles)
        self.outer = (Frame("num_particles_vectorized", dim, num_particles, num_particles),)

    def evaluate(self, model, guide, kwargs):
        q_sites, p_sites = self.run(model, guide, kwargs)
        sum_dims = get_dependent_plate_dims(
            [{"type": "sample", "cond_indep_stack": tuple(_Key(f.name, f.dim, f.size) for f in s.frames)}
             for s in p_sites])
        elbo: Any = 0
        surrogate: Any = 0
        for site in p_sites:
            total = torch_sum(_log_prob(site), sum_dims)
            elbo = elbo + total.detach()
            surrogate = surrogate + total
        for site in q_sites:
            total = torch_sum(_log_prob(site), sum_dims)
            elbo = elbo - total.detach()
            surrogate = surrogate - total
        if not torch.is_tensor(elbo):
            return 0.0, torch.zeros(())
        log_weights = (1.0 - self.alpha) * elbo
        log_mean = torch.logsumexp(log_weights, dim=0, keepdim=True) - math.log(self.num_particles)
        bound = log_mean.sum().item() / (1.0 - self.alpha)
        weights = (log_weights - log_mean).exp()
        return -bound, -((weights * surrogate).sum() / self.num_particles)


def loss_for(elbo: Any, guide: Any) -> tuple[PlannedLoss | None, str | None]:
    """The planned loss standing for Pyro's estimator ``elbo``, or ``None`` and why there is none."""
    guide_run, why = autoguide_run(guide)
    if why is not None:
        return None, why
    loss, why = _loss_for(elbo)
    if loss is not None:
        loss.guide_run = guide_run
    return loss, why


def _loss_for(elbo: Any) -> tuple[PlannedLoss | None, str | None]:
    name = type(elbo).__name__
    particles = int(getattr(elbo, "num_particles", 1))
    dim = -int(elbo.max_plate_nesting) if math.isfinite(getattr(elbo, "max_plate_nesting", math.inf)) else None
    if type(elbo) in (Trace_ELBO, STLTrace_ELBO, TraceMeanField_ELBO):
        if particles > 1 and (not elbo.vectorize_particles or dim is None):
            return None, f"{name} with num_particles={particles} drawn one at a time (vectorize_particles=False)"
        if type(elbo) is TraceMeanField_ELBO:
            return MeanFieldLoss(particles, dim or -1), None
        return TraceLoss(type(elbo) is STLTrace_ELBO, particles, dim or -1), None
    if type(elbo) is RenyiELBO:
        if particles < 2 or not elbo.vectorize_particles:
            return None, f"{name} with num_particles={particles}, vectorize_particles={elbo.vectorize_particles}"
        if dim is None:
            return None, f"{name} without max_plate_nesting"
        return RenyiLoss(elbo.alpha, particles, dim), None
    return None, f"the estimator {name} has no fast path"


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * scale + 1e-12))


class Planner:
    """Decides once per fit whether its steps run on the fast path, and builds the planned loss.

    Parameters
    ----------
    elbo : Pyro ELBO
        The estimator the backend chose (what the fast path must equal).
    guide : callable
        The fit's guide.
    reason : str, optional
        Why the fit cannot use the fast path, decided before it starts (``fast_path=False``, ``distributed``,
        enumerated latents...).
    """

    def __init__(self, elbo: Any, guide: Any, reason: str | None = None):
        self.loss, self.reason = (None, reason) if reason is not None else loss_for(elbo, guide)

    def start(self, model: Any, guide: Any, kwargs: dict, named: dict[str, torch.Tensor], loss: float,
              rng: torch.Tensor) -> PlannedLoss | None:
        """The planned loss, checked against the Pyro step just taken (its ``loss`` and the gradients in
        ``.grad``) on the random state ``rng`` it started from; ``None`` (and :attr:`reason`) when it differs."""
        planned = self.loss
        if planned is None:
            return None
        params = list(named.values())
        try:
            with torch.random.fork_rng(devices=[]), torch.enable_grad():
                torch.set_rng_state(rng)
                value, surrogate = planned.evaluate(model, guide, kwargs)
        except NotPlannable as exc:
            return self._refuse(str(exc))
        except Exception as exc:  # noqa: BLE001 - Pyro's step ran this model: what failed is the plan, not the model
            return self._refuse(f"the interpreter failed: {type(exc).__name__}: {exc}")
        if not math.isclose(value, float(loss), rel_tol=LOSS_RTOL, abs_tol=LOSS_RTOL):
            return self._refuse(f"its loss {value!r} differed from the Pyro step's {float(loss)!r}")
        needs = isinstance(surrogate, torch.Tensor) and surrogate.requires_grad and bool(params)
        grads = torch.autograd.grad(surrogate, params, allow_unused=True) if needs else [None] * len(params)
        for (name, p), g in zip(named.items(), grads, strict=True):
            if (g is None) != (p.grad is None) or (g is not None and not _close(g, p.grad, GRAD_RTOL)):
                return self._refuse(f"its gradient of '{name}' differed from the Pyro step's")
        planned.named = dict(named)
        planned.structure = planned.last
        return planned

    def _refuse(self, reason: str) -> None:
        self.loss, self.reason = None, reason
        return None

    def stop(self, reason: str) -> None:
        """The fit left the fast path (the structure changed at a later step)."""
        self.loss, self.reason = None, reason
