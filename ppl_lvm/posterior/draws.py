"""One replay pass: draws from q replayed through the model once per (fit, number of draws, seed), every
accumulator filled at once and the answer cached in ``fit.cache``.

The guide is drawn first, all S draws (vectorised over a plate of draws when the guide allows, exactly as
:func:`~ppl_lvm.posterior.queries.guide_draws` draws them), then the model is replayed with its enumerated discrete
latents in parallel: once over the whole plate of draws when :func:`~ppl_lvm.posterior.queries.vectorizes` says the
model takes one (decided once per fit by a probe), one draw at a time otherwise. From each replayed trace come

* ``lp`` = log p(x, theta_s), the enumerated sites contracted exactly (Markov chains included),
* ``log_q`` = log q(theta_s) (when the guide samples exactly the latent sites: not ``delta``, no helper sites),
* ``log_lik``: per observed site, log p(x_i | theta_s) with the discrete latents it depends on summed out per
  point (``None``, with the reason in ``no_log_lik``, for a Markov chain of discrete latents),
* ``point_weights``: log w_is = log p(x_i, z_is) - log q(z_is | x_i) ``(S, N)`` when the weights factorise over
  the data points (every latent local, discrete ones in the data plate alone),
* draws of the enumerated sites from their exact conditional (Pyro's backward sampler on the same trace) and
  replicated observations (from the trace's observation distributions at those draws).

So an export, a diagnosis, a comparison and a k-hat plot at the same (S, seed) share one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from ..handlers import replay_trace
from ..outcome import MCMCOutcome, Outcome
from ..runtime import run_scope
from . import terms
from .queries import (
    check_count,
    enumerating_model,
    guide_traces,
    guide_vectorizes,
    prepare_guide,
    require_model,
    vectorizes,
)

__all__ = ["Replay", "replay", "importance_log_weights", "pointwise_log_weights", "loo_inputs", "cached_draws"]


@dataclass
class Replay:
    """Everything one pass of S draws gives; arrays are float64, draws keep their dtype."""

    num_samples: int
    seed: int
    vectorised: bool
    draws: dict[str, torch.Tensor]
    guide_sites: list[str]
    observed: dict[str, torch.Tensor]
    predictive: dict[str, torch.Tensor]
    lp: np.ndarray
    log_q: np.ndarray | None
    log_lik: dict[str, np.ndarray] | None
    no_log_lik: str | None
    point_weights: np.ndarray | None
    #: per local continuous latent: (q's distribution, p's distribution, value shape) of the first trace
    local_fns: dict[str, tuple[Any, Any, tuple, tuple]] = field(default_factory=dict)
    model_runs: int = 0

    @property
    def log_weight(self) -> np.ndarray | None:
        """log p(x, theta_s) - log q(theta_s) ``(S,)``, None when the guide has no density for its draws."""
        return None if self.log_q is None else self.lp - self.log_q


def _density(fit: Outcome) -> bool:
    if isinstance(fit, MCMCOutcome):  # stored draws: no q to weight them by
        return False
    name = str(fit.guide_name).lower()
    return "delta" not in name and "map" not in name


def replay(fit: Outcome, num_samples: int, seed: int | None = None) -> Replay:
    """The pass of ``num_samples`` draws at ``seed`` (default: the fit's seed), computed once per fit."""
    check_count("num_samples", num_samples)
    seed = int(fit.seed if seed is None else seed)
    key = ("replay", num_samples, seed)
    if key not in fit.cache:
        fit.cache[key] = _run(fit, num_samples, seed)
    return fit.cache[key]


def cached_draws(fit: Outcome, num_samples: int, seed: int) -> dict[str, torch.Tensor] | None:
    """The draws of a pass already made at (S, seed), None when there is none (the guide's draws are identical to
    :func:`~ppl_lvm.posterior.queries.guide_draws` at the same S and seed)."""
    found = fit.cache.get(("replay", num_samples, int(seed)))
    return None if found is None else found.draws


def _model_trace(fit: Outcome, values: Any, s: int | None, nesting: int) -> poutine.Trace:
    """The model replayed at ``values`` (a guide trace, or a trace of values), enumerated sites in parallel."""
    model = enumerating_model(fit)
    if s is not None:  # the plate of draws inside the enumeration, which then broadcasts the enumerated sites too
        model = terms.in_draws(model, s, nesting)
    fn = poutine.replay(model, trace=values)
    if fit.enumerated:
        fn = poutine.enum(fn, first_available_dim=-(nesting + 2))  # left of the draws' dim, also one at a time
    return poutine.trace(fn).get_trace(**fit.data.kwargs)


def _cat(parts: list[torch.Tensor], s: int) -> np.ndarray:
    """Per-trace pieces ``(draws or 1, ...)`` as one array ``(S, ...)``."""
    joined = torch.cat(parts) if len(parts) > 1 else parts[0]
    joined = torch.broadcast_to(joined, (s,) + tuple(joined.shape[1:])) if joined.shape[0] == 1 else joined
    return joined.detach().cpu().double().numpy()


def _run(fit: Outcome, s: int, seed: int) -> Replay:
    require_model(fit)
    structure = fit.structure
    nesting = structure.max_plate_nesting
    enumerated = list(fit.enumerated)
    observed = [o.name for o in structure.observed_sites]
    vec_guide = guide_vectorizes(fit)
    vec_model = vec_guide and vectorizes(fit)
    plate = structure.data_plate
    per_point = plate is not None and _density(fit) and all(
        structure.sites.get(n) is not None and set(structure.sites[n].plates) == {plate} for n in enumerated)
    dim, n = (structure.plates[plate].dim, structure.plates[plate].size) if per_point else (None, None)

    with fit.activated(), torch.no_grad(), run_scope(fit.guide):
        prepare_guide(fit)
        pyro.set_rng_seed(seed)
        traced = guide_traces(fit, s, vec_guide)
        first = traced[0]
        guide_sites = [m for m, nd in first.nodes.items() if nd["type"] == "sample" and m in structure.sites]
        draws = {m: torch.cat([terms.per_draw(t.nodes[m]["value"], structure.sites[m].shape) for t in traced])
                 for m in guide_sites}
        replayed = [m for m in guide_sites if m not in enumerated]

        # log q (and its per-point terms) from the guide's own traces
        log_q_parts, point_q_parts = [], []
        for t in traced:
            lq, pq = terms.guide_terms(t, set(replayed), nesting, dim, n) if _density(fit) else (None, None)
            log_q_parts.append(lq)
            point_q_parts.append(pq)

        if vec_model:
            model_traces = [_model_trace(fit, first, s, nesting)]
        else:
            model_traces = [_model_trace(fit, replay_trace({m: draws[m][i] for m in replayed}), None, nesting)
                            for i in range(s)]
        runs = len(model_traces)

        lp_parts, ll_parts, point_parts, discrete_parts, predictive_parts = [], {o: [] for o in observed}, [], [], []
        no_log_lik: str | None = None
        for t in model_traces:
            lp_parts.append(terms.log_joint(t, bool(enumerated), nesting))
            if no_log_lik is None:
                try:
                    for o in observed:
                        ll_parts[o].append(terms.pointwise_log_lik(t, o, enumerated, structure))
                except terms.Unsupported as exc:
                    no_log_lik = str(exc)
            if per_point and point_parts is not None:
                pm = terms.point_model_terms(t, nesting, dim, n)
                point_parts = None if pm is None else point_parts + [pm]
            discrete = terms.sample_enumerated(t, enumerated) if enumerated else {}
            discrete_parts.append(discrete)
            predictive_parts.append(terms.predictive_draws(t, observed, discrete, nesting))
        if any(p is None for p in predictive_parts):  # a Markov chain: replay the model with the drawn states
            predictive_parts = _replayed_predictive(fit, draws, discrete_parts, replayed, observed, s, vec_model,
                                                    nesting)
            runs += len(predictive_parts)
    for m in enumerated:
        if m in structure.sites and discrete_parts and m in discrete_parts[0]:
            draws[m] = torch.cat([terms.per_draw(d[m], structure.sites[m].shape) for d in discrete_parts])
    draws = {m: draws[m] for m in [x.name for x in structure.latent_sites] if m in draws}

    log_q = None if any(q is None for q in log_q_parts) else _cat(log_q_parts, s)
    lp = _cat(lp_parts, s)
    point_weights = None
    if per_point and point_parts is not None and log_q is not None and all(p is not None for p in point_q_parts):
        point_weights = _cat(point_parts, s) - _cat(point_q_parts, s)
    log_lik = None if no_log_lik is not None else {o: _cat(ll_parts[o], s) for o in observed}
    predictive = {o: torch.cat([terms.per_draw(p[o], structure.sites[o].shape) for p in predictive_parts])
                  for o in observed}
    predictive = {o: v.expand((s,) + tuple(v.shape[1:])) if v.shape[0] == 1 else v for o, v in predictive.items()}
    local_fns = {}
    for info in structure.local_continuous_latents:
        q, p = first.nodes.get(info.name), model_traces[0].nodes.get(info.name)
        if q is not None and p is not None and q["type"] == "sample":
            local_fns[info.name] = (q["fn"], p["fn"], tuple(q["value"].shape), tuple(p["value"].shape))
    return Replay(num_samples=s, seed=seed, vectorised=vec_model, draws=draws, guide_sites=guide_sites,
                  observed={o: model_traces[0].nodes[o]["value"] for o in observed}, predictive=predictive,
                  lp=lp, log_q=log_q, log_lik=log_lik, no_log_lik=no_log_lik, point_weights=point_weights,
                  local_fns=local_fns, model_runs=runs)


def _replayed_predictive(fit: Outcome, draws: dict, discrete_parts: list, replayed: list[str], observed: list[str],
                         s: int, vectorised: bool, nesting: int) -> list[dict[str, torch.Tensor]]:
    """Replicated observations by running the model unconditioned at every drawn latent (discrete ones too)."""
    model = poutine.uncondition(require_model(fit))
    out = []
    if vectorised:
        values = {m: draws[m] for m in replayed}
        values.update(discrete_parts[0])
        with pyro.plate(terms.DRAW_PLATE, s, dim=-(nesting + 1)):
            trace = poutine.trace(poutine.replay(model, trace=_full_trace(fit, values, s))).get_trace(**fit.data.kwargs)
        return [{o: trace.nodes[o]["value"] for o in observed}]
    for i in range(s):
        values = {m: draws[m][i] for m in replayed}
        values.update(discrete_parts[i])
        trace = poutine.trace(poutine.replay(model, trace=replay_trace(values))).get_trace(**fit.data.kwargs)
        out.append({o: trace.nodes[o]["value"] for o in observed})
    return out


def _full_trace(fit: Outcome, values: dict[str, torch.Tensor], s: int) -> poutine.Trace:
    """Values ``(S, *site)`` in the layout of a plate of draws (the draws' dim left of the model's plates)."""
    nesting = fit.structure.max_plate_nesting
    shaped = {}
    for m, v in values.items():
        info = fit.structure.sites[m]
        event = len(info.event_shape)
        batch = v.reshape((s,) + tuple(info.shape))
        pad = nesting - (batch.dim() - 1 - event)
        shaped[m] = batch.reshape((s,) + (1,) * pad + tuple(batch.shape[1:])) if pad > 0 else batch
    return replay_trace(shaped)


# ---------------------------------------------------------------------------------------------------- readers
def importance_log_weights(fit: Outcome, num_samples: int = 1000, seed: int | None = None,
                           pointwise: bool = False) -> np.ndarray | None:
    """log w_s = log p(x, theta_s) - log q(theta_s) over draws from the guide (discrete locals summed out).

    ``pointwise=False``: the joint weights ``(S,)``, the ``log_weight`` of the ArviZ export's ``sample_stats``
    (the same pass). ``pointwise=True``: the per-point weights ``(S, N)`` whose sum over i is the joint weight,
    available only when the weights factorise over the points (:func:`pointwise_log_weights`). None also when the
    guide has no density for its draws (``delta``, guides with helper sites).
    """
    if not isinstance(pointwise, bool):
        raise ValueError(f"pointwise must be True or False, got {pointwise!r}")
    if pointwise:
        return pointwise_log_weights(fit, num_samples, seed)
    return replay(fit, num_samples, seed).log_weight


def pointwise_log_weights(fit: Outcome, num_samples: int = 1000, seed: int | None = None) -> np.ndarray | None:
    """Per-point importance log-weights ``(S, N)``: log w_is = log p(x_i, z_is) - log q(z_is | x_i).

    For a model whose latents are all local (inside the data plate: PPCA, a VAE, a mixture's assignments) the
    joint weight is the sum over the N points of these, each site's log-probability summed over its dims other
    than the data plate's; enumerated discrete latents are summed out exactly per point (they must lie in the data
    plate alone). None when the weights do not factorise over points (a latent or a factor outside the data plate,
    a discrete latent in a nested plate, a Markov chain, no data plate) or the guide has no density.
    """
    return replay(fit, num_samples, seed).point_weights


def loo_inputs(fit: Outcome, num_samples: int, seed: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Pointwise log-likelihoods ``(S, N)`` (every observed site's points concatenated) and the log weights
    ``(S,)`` (None when the guide has no density) of the pass.

    Raises ``ValueError`` when the model has no per-observation log-likelihood (a Markov chain of discrete latents).
    """
    found = replay(fit, num_samples, seed)
    if found.log_lik is None:
        raise ValueError(f"no PSIS-LOO for this fit: pointwise log-likelihoods need each observation's discrete "
                         f"latents summed out independently ({found.no_log_lik})")
    if not found.log_lik:
        raise ValueError("no PSIS-LOO for this fit: the model has no observed site")
    log_lik = np.concatenate([v.reshape(num_samples, -1) for v in found.log_lik.values()], axis=1)
    return log_lik, found.log_weight
