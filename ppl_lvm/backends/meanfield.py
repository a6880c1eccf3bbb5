"""``method="meanfield"``: ``TraceMeanField_ELBO`` with a guide that samples each latent site directly.

The KL term of a site is analytic where ``kl_divergence(q, p)`` is registered for the pair of distributions;
for any other site the estimator falls back to Monte Carlo, and this backend says which sites those are. The same
holds for a site whose prior depends on a latent the guide draws *after* it (the lower layer of a two-layer VAE,
``p(z1 | z2)`` with the guide ``q(z1 | x) q(z2 | z1)``): ``E_q[log q(z1) - log p(z1 | z2)]`` is then no KL between
two distributions known when ``z1`` is drawn, so its term is estimated by Monte Carlo (Pyro's ``TraceMeanField_ELBO``
would take ``KL(q(z1) || p(z1 | z2))`` at the drawn ``z2`` regardless, which is not the ELBO).

``free_bits=lambda`` (Kingma et al. 2016, "free bits") replaces, for every latent site with an analytic KL, the KL
of each latent dimension d averaged over the (mini)batch by ``max(lambda, KL_d)``, then scales it back to the batch
sum: the optimiser gains nothing from pushing a dimension's KL below ``lambda`` nats, which keeps latent units
from collapsing onto the prior. See :class:`FreeBitsMeanField_ELBO`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.distributions.kl import kl_divergence
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled, torch_item
from pyro.poutine.util import site_is_subsample

from ..errors import InferenceWarning, UnsupportedModelError
from ..fit_options import FitOptions
from ..runtime import run_scope
from .base import Problem, VariationalBackend, VIPlan
from .svi import discrete_not_in_guide

__all__ = ["MEANFIELD", "FreeBitsMeanField_ELBO", "MeanFieldBackend"]


def _elementwise(fn: Any) -> tuple[Any, int]:
    """The distribution under ``Independent`` wrappers and how many batch dims they reinterpreted as event dims."""
    dims = 0
    while isinstance(fn, torch.distributions.Independent):
        dims += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, dims


def kl_per_dimension(q: Any, p: Any) -> torch.Tensor:
    """KL(q || p) of one site, shape ``batch_shape + event_shape`` of ``q`` when it factorises over the event.

    For ``Normal(loc, scale).to_event(1)`` against ``Normal(0, 1).to_event(1)`` that is one KL per latent dimension
    and data point. A site whose KL does not split over its event (a multivariate normal, a transformed
    distribution) gets shape ``batch_shape`` (the site is one "dimension"). Raises ``NotImplementedError`` when no
    KL is registered for the pair.
    """
    q_base, q_dims = _elementwise(q)
    p_base, p_dims = _elementwise(p)
    shape = tuple(q.batch_shape) + tuple(q.event_shape)
    if q_dims == p_dims and tuple(q_base.event_shape) == () and tuple(p_base.event_shape) == ():
        try:
            return kl_divergence(q_base, p_base).expand(shape)
        except NotImplementedError:
            pass
    return kl_divergence(q, p).expand(tuple(q.batch_shape))


def _scalar_scale(scale: Any, site: str) -> float | torch.Tensor:
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise UnsupportedModelError(
                f"free_bits: site '{site}' has a per-element scale (poutine.scale with a tensor); free bits need one "
                "scale per site (the minibatch factor times beta). Fit without free_bits."
            )
        return scale.reshape(())
    return scale


class FreeBitsMeanField_ELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` whose analytic KL terms have a floor of ``free_bits`` nats per latent dimension.

    For a latent site with guide ``q`` and prior ``p`` whose KL is registered, with batch elements b = 1..B (the
    data plate, the minibatch, and vectorised particles) and latent dimensions d (the event dims of, e.g.,
    ``Normal(loc, scale).to_event(1)``), the KL term of the ELBO becomes

    ``scale * B * sum_d max(free_bits, (1/B) sum_b KL(q_bd || p_bd))``

    where ``scale`` is the site's scale (N / B for a minibatch, times the fit's beta). With ``free_bits=0`` this is
    the ordinary analytic KL sum, so the loss equals ``TraceMeanField_ELBO``'s. A dimension whose averaged KL is
    below the floor contributes a constant: no gradient pulls it further towards the prior. Sites without an
    analytic KL keep the Monte Carlo estimate and no floor. The loss is no longer a bound on log p(x) when a floor
    is active; report bounds with ``result.log_evidence()`` or ``result.elbo_estimate()``.

    Parameters
    ----------
    free_bits : float
        The floor, in nats per latent dimension (>= 0).
    **kwargs
        Passed to :class:`pyro.infer.TraceMeanField_ELBO` (``num_particles``, ``max_plate_nesting``, ...).
    """

    def __init__(self, free_bits: float = 0.0, monte_carlo: tuple[str, ...] = (), **kwargs: Any):
        super().__init__(**kwargs)
        self.free_bits = check_free_bits(free_bits)
        self.monte_carlo = tuple(monte_carlo)

    def _get_trace(self, model, guide, args, kwargs):
        if not self.monte_carlo:
            return super()._get_trace(model, guide, args, kwargs)
        # the site order differs from the model's on purpose (the backend checked which KLs hold): skip Pyro's
        # order warning, keep its traces
        return Trace_ELBO._get_trace(self, model, guide, args, kwargs)

    def _kl_term(self, name: str, guide_site: dict, model_site: dict) -> torch.Tensor | float:
        mask = guide_site["mask"]
        if mask is False:
            return 0.0
        kl = kl_per_dimension(guide_site["fn"], model_site["fn"])
        batch_dims = len(guide_site["fn"].batch_shape)
        if isinstance(mask, torch.Tensor):
            kl = kl * mask.reshape(mask.shape + (1,) * (kl.dim() - batch_dims))
        size = math.prod(kl.shape[:batch_dims])
        per_dim = kl.reshape((size,) + tuple(kl.shape[batch_dims:])).mean(0)
        floored = per_dim.clamp(min=self.free_bits)
        return _scalar_scale(guide_site["scale"], name) * size * floored.sum()

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        elbo_particle = 0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                elbo_particle = elbo_particle + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            if is_validation_enabled():
                check_fully_reparametrized(guide_site)
            kl = None
            if name not in self.monte_carlo:
                try:
                    kl = self._kl_term(name, guide_site, model_site)
                except NotImplementedError:  # no closed-form KL for this pair of distributions
                    kl = None
            if kl is None:  # the Monte Carlo term: log p - log q at the draw
                entropy_term = guide_site["score_parts"].entropy_term
                elbo_particle = elbo_particle + model_site["log_prob_sum"] - entropy_term.sum()
            else:
                elbo_particle = elbo_particle - kl
        for name, guide_site in guide_trace.nodes.items():
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                if is_validation_enabled():
                    check_fully_reparametrized(guide_site)
                elbo_particle = elbo_particle - guide_site["score_parts"].entropy_term.sum()
        loss = -(elbo_particle.detach() if torch._C._get_tracing_state() else torch_item(elbo_particle))
        return loss, -elbo_particle


def check_free_bits(value: Any) -> float:
    """``free_bits`` must be a finite number >= 0 (nats per latent dimension)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"free_bits must be a number >= 0 (nats per latent dimension, e.g. 0.25 or 0.5), got {value!r}"
        )
    return float(value)


def drawn_later(model: Any, guide_trace: poutine.Trace, kwargs: dict) -> dict[str, list[str]]:
    """The latent sites whose prior in ``model`` depends on latents the guide draws after them: site -> those
    latents. Checked by autograd, with every guide draw replayed as a fresh leaf (the guide's own dependence on
    earlier draws is allowed: a KL given earlier draws is still a closed form)."""
    order = [name for name, site in guide_trace.nodes.items()
             if site["type"] == "sample" and not site_is_subsample(site) and not site["is_observed"]]
    leaves = guide_trace.copy()
    for name in order:
        value = leaves.nodes[name]["value"]
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            leaves.nodes[name]["value"] = value.detach().requires_grad_()
    with torch.random.fork_rng(devices=[]), run_scope(model), torch.enable_grad():
        model_trace = poutine.trace(poutine.replay(model, trace=leaves)).get_trace(**kwargs)
    late: dict[str, list[str]] = {}
    for i, name in enumerate(order):
        later = [(n, leaves.nodes[n]["value"]) for n in order[i + 1:] if leaves.nodes[n]["value"].requires_grad]
        site = model_trace.nodes.get(name)
        if not later or site is None:
            continue
        log_p = site["fn"].log_prob(site["value"].detach())
        if not log_p.requires_grad:
            continue
        grads = torch.autograd.grad(log_p.sum(), [v for _, v in later], allow_unused=True)
        parents = [n for (n, _), g in zip(later, grads, strict=True) if g is not None]
        if parents:
            late[name] = parents
    return late


def _without_kl(problem: Problem, guide_trace: poutine.Trace, kwargs: dict) -> list[tuple[str, str, str]]:
    with torch.random.fork_rng(devices=[]), run_scope(problem.model):
        model_trace = poutine.trace(poutine.replay(problem.model, trace=guide_trace)).get_trace(**kwargs)
    missing = []
    for name, q_site in guide_trace.nodes.items():
        if q_site["type"] != "sample" or site_is_subsample(q_site) or name not in model_trace.nodes:
            continue
        p_fn, q_fn = model_trace.nodes[name]["fn"], q_site["fn"]
        try:
            kl_divergence(q_fn, p_fn)
        except NotImplementedError:
            missing.append((name, type(q_fn).__name__, type(p_fn).__name__))
    return missing


class MeanFieldBackend(VariationalBackend):
    name = "meanfield"
    default_guide = "normal"
    method_options = ("on_missing_kl", "free_bits")

    def parse_options(self, options: dict[str, Any]):
        loop, method = super().parse_options(options)
        if "free_bits" in method:
            method["free_bits"] = check_free_bits(method["free_bits"])
        return loop, method

    def plan(self, problem: Problem, loop: FitOptions, method: dict, guide: Any, guide_name: str,
             guide_trace: poutine.Trace) -> VIPlan:
        enumerated = discrete_not_in_guide(problem, guide_trace)
        if enumerated:
            site = problem.structure.sites[enumerated[0]]
            raise UnsupportedModelError(
                f"method 'meanfield' cannot sum out the discrete latent '{site.name}' ({site.location}): "
                "TraceMeanField_ELBO does not enumerate. Use method='svi' (which enumerates it exactly) or "
                "method='em'."
            )
        policy = method.get("on_missing_kl", "warn")
        if policy not in ("warn", "error"):
            raise ValueError(f"on_missing_kl must be 'warn' or 'error', got {policy!r}")
        missing = _without_kl(problem, guide_trace, problem.data.kwargs)
        late = drawn_later(problem.model, guide_trace, problem.data.kwargs)
        missing = [m for m in missing if m[0] not in late]
        if missing or late:
            lines = "; ".join(
                [f"site '{n}' ({problem.structure.location(n)}): no KL({q} || {p})" for n, q, p in missing]
                + [f"site '{n}' ({problem.structure.location(n)}): its prior depends on {parents}, which the guide "
                   "draws after it (and from it), so its KL term has no closed form" for n, parents in late.items()]
            )
            text = (
                f"no analytic KL for {lines}. Those sites use a Monte Carlo KL estimate. For an analytic KL give "
                "the site a distribution whose KL to the guide's is registered (e.g. Normal prior with the "
                "'normal' guide on a real-valued site)"
                + (", and a prior that depends on latents the guide draws before the site." if late else ".")
            )
            if policy == "error":
                raise UnsupportedModelError(text)
            warnings.warn(text, InferenceWarning, stacklevel=5)
        common = dict(
            num_particles=loop.num_particles,
            vectorize_particles=loop.vectorize_particles,
            max_plate_nesting=problem.structure.max_plate_nesting,
        )
        if "free_bits" in method or late:
            elbo = FreeBitsMeanField_ELBO(free_bits=method.get("free_bits", 0.0), monte_carlo=tuple(late), **common)
        else:
            elbo = TraceMeanField_ELBO(**common)
        return VIPlan(elbo, problem.model, guide, guide_name, [])

    def bound_estimator(self, outcome: Any) -> Any:
        """The ELBO with analytic KL terms (without ``free_bits``, which make the loss no bound), Monte Carlo ones
        for the sites whose prior depends on a later guide draw."""
        options = outcome.options
        common = dict(num_particles=int(options.get("num_particles", 1)),
                      vectorize_particles=bool(options.get("vectorize_particles", True)),
                      max_plate_nesting=outcome.structure.max_plate_nesting)
        late: dict[str, list[str]] = {}
        if outcome.model is not None:
            with outcome.activated(), torch.random.fork_rng(devices=[]):
                with run_scope(outcome.guide):
                    trace = poutine.trace(outcome.guide).get_trace(**outcome.data.kwargs)
                late = drawn_later(outcome.model, trace, outcome.data.kwargs)
        if late:
            return FreeBitsMeanField_ELBO(0.0, monte_carlo=tuple(late), **common)
        return TraceMeanField_ELBO(**common)


MEANFIELD = MeanFieldBackend()
