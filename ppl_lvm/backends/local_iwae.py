"""A per-data-point importance-weighted bound for models with global latents, and its DReG gradient.

Write ``theta`` for the latents the guide samples outside the data plate (global), ``z_i`` for those inside it
(local to row ``i``), ``q(theta) q(z_i | x_i, theta)`` for the guide. :class:`LocalIWAE` with ``K`` particles
estimates

``L_K = E_{q(theta)} [ log p(theta) - log q(theta)
+ sum_i E_{z_i1..z_iK ~ q(. | x_i, theta)} log (1/K) sum_k w_ik ]``, with ``w_ik = p(x_i, z_ik | theta) / q(z_ik | x_i, theta)``:

one draw of ``theta`` per step (its own ELBO term) and, given it, ``K`` draws of every row's local latents. Each row's
log-mean-exp is a lower bound on ``log p(x_i | theta)`` that grows with ``K`` (Burda et al., 2015), so ``L_K`` is a
lower bound on ``log p(x)``, non-decreasing in ``K``, equal to the ELBO at ``K = 1`` and tending to
``E_q(theta)[log p(theta) p(x | theta) / q(theta)]`` (the ELBO of the globals with the locals integrated out exactly).
With ``alpha != 0`` each row's term is the Renyi estimate ``1/(1 - alpha) log (1/K) sum_k w_ik^(1 - alpha)``
(a lower bound in expectation for ``0 <= alpha < 1``; Li and Turner, 2016). With a minibatch of ``B`` of ``N`` rows
the row terms are summed over the batch and scaled by ``N / B`` *outside* each row's log-mean-exp, so the minibatch
estimate is unbiased for the full-data ``L_K``; the global term is not scaled. Other site scales (the fit's KL
weight ``beta``) multiply their site's log-density inside the weight, as in Pyro's ``RenyiELBO``.

``estimator="dreg"`` (``alpha = 0`` only) replaces the gradient of the local guide sites' parameters by the doubly
reparameterised one (Tucker, Lawson, Gu and Maddison, 2018): ``sum_k wbar_ik^2 d log w_ik / d z_ik  d z_ik / d phi``
with ``wbar`` the normalised weights of row ``i``, which drops the score term ``d log q / d phi`` at fixed ``z`` and is
unbiased for the same gradient. The loss value and the gradients of the model's parameters and of the global sites'
guide parameters are the standard ones. A local site may depend on earlier local draws (``q(z1 | x) q(z2 | z1)``):
``d log w / d z1`` then includes ``d log q(z2 | z1) / d z1`` at fixed parameters, and ``z2``'s reparameterised
dependence on ``z1`` is followed once (the weights act on copies of the draws that the weights and the model read).
"""

from __future__ import annotations

import math
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

from .estimators import check_estimator, upstream_draws

__all__ = ["ESTIMATORS", "LocalIWAE", "check_iwae_estimator", "dreg_obstacle"]

#: the values of the ``estimator`` option of ``method="iwae"``, each with what it does
ESTIMATORS = {"standard": "the reparameterised IWAE gradient",
              "dreg": "doubly reparameterised gradients of the guide's local sites, lower variance at large K"}


def check_iwae_estimator(value: Any) -> str:
    """Validate ``estimator=`` of ``iwae`` (case-insensitive); returns its canonical name."""
    return check_estimator(value, ESTIMATORS)


def _in_plate(site: dict, plate: str) -> bool:
    return plate in [f.name for f in site["cond_indep_stack"]]


def _latent_sites(trace: poutine.Trace) -> list[str]:
    return [name for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)]


def dreg_obstacle(guide_trace: poutine.Trace, data_plate: str | None) -> str | None:
    """Why DReG does not apply to this guide, or ``None`` when it does.

    DReG needs local guide sites (inside ``data_plate``) that are reparameterised densities (not ``Delta``) whose
    distribution depends on the guide's parameters, the data and earlier *local* draws (a hierarchical guide such as
    ``q(z1 | x) q(z2 | z1)``), not on a global draw: the global draws get the standard gradient, and a local site
    that depends on one would pass the reweighted gradient on to it. Checked by autograd.
    """
    if data_plate is None:
        return "the model has no data plate, so no local latents to weight"
    earlier: list[tuple[str, torch.Tensor]] = []
    for name in _latent_sites(guide_trace):
        site = guide_trace.nodes[name]
        local = _in_plate(site, data_plate)
        if local:
            if isinstance(site["fn"], dist.Delta) or not site["fn"].has_rsample:
                return f"the guide's local site '{name}' is not a reparameterised density ({type(site['fn']).__name__})"
            upstream = upstream_draws(site, earlier)
            if upstream:
                return f"the guide's local site '{name}' depends on its earlier global draws {upstream}"
        elif isinstance(site["value"], torch.Tensor) and site["value"].requires_grad:
            earlier.append((name, site["value"]))
    if not any(_in_plate(guide_trace.nodes[n], data_plate) for n in _latent_sites(guide_trace)):
        return "the guide samples no local latent inside the data plate"
    return None


class LocalIWAE:
    """The bound ``L_K`` of this module's docstring: per-row importance weights over the local latents, one draw of
    the global latents with their own ELBO term, minibatch scale outside each row's log-mean-exp.

    Parameters
    ----------
    num_particles : int
        ``K``, the number of draws of each row's local latents.
    data_plate : str
        The name of the data plate: guide sites inside it are local, the others global.
    max_plate_nesting : int
        The model's plate nesting; the particles take the dim to its left.
    alpha : float
        0 for IWAE, otherwise the Renyi ``alpha`` of each row's term (not 1).
    vectorize_particles : bool
        Draw the ``K`` particles in one pass under a plate (True) or in ``K`` passes.
    estimator : {"standard", "dreg"}
        The gradient of the local guide sites' parameters; ``"dreg"`` needs ``alpha = 0``.
    """

    def __init__(self, num_particles: int, data_plate: str, max_plate_nesting: int, alpha: float = 0.0,
                 vectorize_particles: bool = True, estimator: str = "standard"):
        if alpha == 1:
            raise ValueError("alpha must be a number other than 1 (alpha=1 is the ELBO)")
        estimator = check_iwae_estimator(estimator)
        if estimator == "dreg" and alpha != 0:
            raise ValueError(f"estimator='dreg' is the gradient of the IWAE bound (alpha=0), got alpha={alpha}")
        self.num_particles = int(num_particles)
        self.data_plate = data_plate
        self.max_plate_nesting = int(max_plate_nesting)
        self.alpha = float(alpha)
        self.vectorize_particles = bool(vectorize_particles)
        self.estimator = estimator

    # ------------------------------------------------------------------ per-site reductions
    def _row_terms(self, log_prob: torch.Tensor, data_dim: int) -> torch.Tensor:
        """Sum a site's log-density (batch dims ``(particles, *plates)``) to ``(particles or 1, rows or 1)``."""
        width = self.max_plate_nesting + 1
        if log_prob.dim() > width:
            raise ValueError(f"a log-density of shape {tuple(log_prob.shape)} has more batch dims than "
                             f"max_plate_nesting={self.max_plate_nesting} plus the particle dim")
        log_prob = log_prob.reshape((1,) * (width - log_prob.dim()) + tuple(log_prob.shape))
        row = width + data_dim
        others = [d for d in range(1, width) if d != row]
        out = log_prob.sum(others, keepdim=True) if others else log_prob
        return out.reshape(out.shape[0], out.shape[row])

    def _particle_pass(self, model: Any, guide: Any, globals_trace: poutine.Trace, args: Any, kwargs: Any,
                       hooks: list) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """One pass of ``K`` (vectorised) or 1 particles: the row log-weights ``(particles, rows)``, the model's
        global log-density, and the rows' scale ``N / B``."""
        guide_trace = poutine.trace(poutine.replay(guide, trace=globals_trace)).get_trace(*args, **kwargs)
        drawn = self._reweighted_copies(guide_trace, hooks) if self.estimator == "dreg" else {}
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        model_trace.compute_log_prob()
        log_w: torch.Tensor | float = 0.0
        model_global: torch.Tensor | float = 0.0
        row_scale: float | None = None
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for site in trace.nodes.values():
                if site["type"] != "sample" or site_is_subsample(site):
                    continue
                frame = next((f for f in site["cond_indep_stack"] if f.name == self.data_plate), None)
                if frame is None:
                    if sign > 0:  # the model's global sites: the same value in every particle
                        model_global = model_global + self._row_terms(site["log_prob"], -1).sum(-1).mean()
                    continue  # the guide's global sites: replayed; their density is taken once, outside
                scale = (frame.full_size or frame.size) / frame.size
                row_scale = scale if row_scale is None else row_scale
                if sign > 0:
                    log_p = site["unscaled_log_prob"]
                elif self.estimator == "dreg":
                    term, earlier_parts = self._dreg_log_q(site, scale, drawn)
                    for part, dim in earlier_parts:
                        log_w = log_w - self._row_terms(part, dim)
                    log_w = log_w - self._row_terms(term, frame.dim)
                    continue
                else:
                    log_p = site["fn"].log_prob(site["value"])
                log_p = scale_and_mask(log_p, site["scale"] / scale, site["mask"])
                log_w = log_w + sign * self._row_terms(log_p, frame.dim)
        if not isinstance(log_w, torch.Tensor):
            log_w = torch.zeros(1, 1)
        return log_w, torch.as_tensor(model_global), row_scale

    def _reweighted_copies(self, guide_trace: poutine.Trace, hooks: list) -> dict[str, tuple]:
        """DReG: put a copy of every local draw into the trace (the model and the weights read the copy, on which the
        reweighting hook sits), so a later draw that is a function of an earlier one (``z2 = g(z1, eps)``) passes
        its gradient back to the earlier draw once weighted, not twice. Returns, in the guide's order, name ->
        ``(draw, copy, data-plate dim, event dim)``."""
        drawn: dict[str, tuple] = {}
        for name in _latent_sites(guide_trace):
            site = guide_trace.nodes[name]
            frame = next((f for f in site["cond_indep_stack"] if f.name == self.data_plate), None)
            if frame is None:
                continue
            copy = site["value"].clone()
            drawn[name] = (site["value"], copy, frame.dim, site["fn"].event_dim)
            hooks.append((copy, frame.dim, site["fn"].event_dim))
            site["value"] = copy
        return drawn

    @staticmethod
    def _dreg_log_q(site: dict, scale: float, drawn: dict[str, tuple]) -> tuple[torch.Tensor, list]:
        """log q of a local guide site whose gradient is the path term only: through the draw's copy, and through
        the earlier local draws its distribution depends on (``d log q(z2 | z1) / d z1`` at fixed parameters), never
        through the parameters at a fixed draw (the score term). Returns the term and the earlier draws' parts."""
        names = list(drawn)
        copy = drawn[site["name"]][1]
        fn = site["fn"]
        at_fixed = scale_and_mask(fn.log_prob(copy.detach()), site["scale"] / scale, site["mask"])
        term = scale_and_mask(fn.log_prob(copy), site["scale"] / scale, site["mask"]) - at_fixed + at_fixed.detach()
        parts = []
        earlier = [drawn[n] for n in names[: names.index(site["name"])] if drawn[n][0].requires_grad]
        if earlier and at_fixed.requires_grad:
            grads = torch.autograd.grad(at_fixed.sum(), [e[0] for e in earlier], retain_graph=True, allow_unused=True)
            for (_, prior_copy, dim, event_dim), g in zip(earlier, grads, strict=True):
                if g is not None:  # a linear term: no value, the gradient d log q / d z_earlier on the copy
                    linear = g.detach() * (prior_copy - prior_copy.detach())
                    parts.append((linear.sum(tuple(range(-event_dim, 0))) if event_dim else linear, dim))
        return term, parts

    def _bound(self, model: Any, guide: Any, args: Any, kwargs: Any) -> tuple[torch.Tensor, list, torch.Tensor]:
        """The estimate of ``L_K`` (a differentiable scalar), the DReG hooks to arm, and the rows' log-weights."""
        first = poutine.trace(guide).get_trace(*args, **kwargs)
        globals_trace = first.copy()
        global_term: torch.Tensor | float = 0.0
        for name in list(globals_trace.nodes):
            site = globals_trace.nodes[name]
            if site["type"] != "sample" or site_is_subsample(site) or _in_plate(site, self.data_plate):
                globals_trace.remove_node(name)
            else:
                global_term = global_term - scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"],
                                                           site["mask"]).sum()
        hooks: list = []
        K = self.num_particles
        if self.vectorize_particles:
            with pyro.plate("num_particles_vectorized", K, dim=-(self.max_plate_nesting + 1)):
                log_w, model_global, row_scale = self._particle_pass(model, guide, globals_trace, args, kwargs, hooks)
            log_w = log_w.expand(K, log_w.shape[1])
        else:
            passes = [self._particle_pass(model, guide, globals_trace, args, kwargs, hooks) for _ in range(K)]
            log_w = torch.cat([p[0] for p in passes], 0)
            model_global, row_scale = passes[0][1], passes[0][2]
        if self.alpha == 0:
            rows = torch.logsumexp(log_w, 0) - math.log(K)
        else:
            rows = (torch.logsumexp((1 - self.alpha) * log_w, 0) - math.log(K)) / (1 - self.alpha)
        bound = (row_scale or 1.0) * rows.sum() + model_global + global_term
        return bound, hooks, log_w

    # ------------------------------------------------------------------ the ELBO interface
    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """``-L_K`` estimated with one draw of the globals and ``K`` of the locals (no gradients)."""
        with torch.no_grad():
            bound, _, _ = self._bound(model, guide, args, kwargs)
        return -float(bound)

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``-L_K`` as a tensor with the standard (reparameterised) gradient."""
        if self.estimator == "dreg":
            raise ValueError("differentiable_loss gives the standard gradient; the DReG gradient is computed by "
                             "loss_and_grads")
        return -self._bound(model, guide, args, kwargs)[0]

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """``-L_K`` and its gradient (DReG for the local guide sites with ``estimator="dreg"``) into ``.grad``."""
        bound, hooks, log_w = self._bound(model, guide, args, kwargs)
        if hooks:
            weights = torch.softmax(log_w.detach(), 0)  # (K, rows), normalised over the particles of each row
            width = self.max_plate_nesting + 1
            per_pass = len(hooks) // (1 if self.vectorize_particles else self.num_particles)
            for i, (value, data_dim, event_dim) in enumerate(hooks):
                w = weights if self.vectorize_particles else weights[i // per_pass : i // per_pass + 1]
                shape = [1] * width
                shape[0], shape[width + data_dim] = w.shape[0], w.shape[1]
                w = w.reshape(shape + [1] * event_dim)
                w = w.reshape(w.shape[max(0, w.dim() - value.dim()):])  # one pass of K: no particle dim
                value.register_hook(lambda grad, w=w: grad * w)
        loss = -bound
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach())
