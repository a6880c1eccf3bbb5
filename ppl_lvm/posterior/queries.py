"""Queries of a fitted posterior approximation: draws from q, posterior predictive, bound estimates.

Every function takes an :class:`~ppl_lvm.outcome.Outcome` (a :class:`~ppl_lvm.Result` is one) and runs inside
that fit's parameter store, so the live Pyro store is never touched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceEnum_ELBO, infer_discrete
from pyro.infer.autoguide import AutoGuide

from ..handlers import enumerating
from ..model import Model
from ..outcome import MCMCOutcome, Outcome
from ..runtime import run_scope
from .terms import DRAW_PLATE, in_draws

__all__ = [
    "check_count",
    "elbo_estimate",
    "enumerating_model",
    "guide_draws",
    "guide_traces",
    "guide_vectorizes",
    "log_evidence",
    "posterior_predictive",
    "prepare_guide",
    "require_model",
    "sample_posterior",
    "vectorizes",
]


def require_model(fit: Outcome) -> Model:
    """The fit's model, or a clear error for a result loaded without it."""
    if fit.model is None:
        raise RuntimeError("this result was loaded without its model; pass model= to lvm.load(...)")
    return fit.model


def check_count(name: str, value: Any) -> None:
    """Refuse a draw or particle count that is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def enumerating_model(fit: Outcome) -> Any:
    """The fit's model with its enumerated discrete latents marked for parallel enumeration."""
    model = require_model(fit)
    return enumerating(model, fit.enumerated) if fit.enumerated else model


def prepare_guide(fit: Outcome) -> None:
    """Set up an autoguide's prototype before seeding, so a fresh and a loaded result draw alike."""
    if isinstance(fit.guide, AutoGuide) and fit.guide.prototype_trace is None:
        with torch.random.fork_rng(devices=[]):
            fit.guide._setup_prototype(**fit.data.kwargs)


def _vectorizes(fit: Outcome, what: str, run: Any) -> bool:
    """Whether ``run(2)`` (two draws under a sample plate) works and gives every site its full shape.

    Decided once per fit and cached: models that index a latent's draws with a plain tensor (``locs[z]`` with
    ``locs`` a latent, whose draws carry the plate's dim first) cannot take a plate of draws, and are then drawn one
    at a time by every query. Indexing parameters with an enumerated site (``locs[z]`` with ``locs`` a parameter)
    takes it.
    """
    key = ("vectorizes", what)
    if key not in fit.cache:
        structure = fit.structure
        try:
            with fit.activated(), torch.no_grad(), torch.random.fork_rng(devices=[]), run_scope(fit.guide):
                prepare_guide(fit)
                trace = run(2)
            ok = all(
                node["value"].numel() == 2 * math.prod(structure.sites[name].shape)
                for name, node in trace.nodes.items()
                if node["type"] == "sample" and name in structure.sites and structure.sites[name].kind == "latent"
            )
        except Exception:  # noqa: BLE001 - any failure under a plate of draws means: draw one at a time
            ok = False
        fit.cache[key] = ok
    return fit.cache[key]


def vectorizes(fit: Outcome) -> bool:
    """Whether guide and model run vectorised over a plate of draws (decided once per fit)."""
    return _vectorizes(fit, "model", lambda n: _trace_draws(fit, n, predictive=False))


def guide_vectorizes(fit: Outcome) -> bool:
    """Whether the guide alone runs vectorised over a plate of draws (decided once per fit)."""
    return _vectorizes(fit, "guide", lambda n: guide_traces(fit, n, vectorised=True)[0])


def guide_traces(fit: Outcome, num_samples: int, vectorised: bool) -> list[poutine.Trace]:
    """Traces of the guide for ``num_samples`` draws: one trace under the plate of draws, or one trace per draw."""
    kwargs = fit.data.kwargs
    if vectorised:
        with pyro.plate(DRAW_PLATE, num_samples, dim=-(fit.structure.max_plate_nesting + 1)):
            return [poutine.trace(fit.guide).get_trace(**kwargs)]
    return [poutine.trace(fit.guide).get_trace(**kwargs) for _ in range(num_samples)]


def _trace_draws(fit: Outcome, num_samples: int | None, predictive: bool) -> poutine.Trace:
    """One trace of guide + model; vectorised over a sample plate when ``num_samples`` is given."""
    nesting = fit.structure.max_plate_nesting
    kwargs = fit.data.kwargs
    first_dim = -(nesting + 1)
    model = enumerating_model(fit)
    with contextlib.ExitStack() as stack:
        if num_samples is not None:
            stack.enter_context(pyro.plate(DRAW_PLATE, num_samples, dim=-(nesting + 1)))
            first_dim -= 1
            # the plate of draws inside infer_discrete, which then broadcasts the enumerated sites too
            model = in_draws(model, num_samples, nesting)
        guide_trace = poutine.trace(fit.guide).get_trace(**kwargs)
    fn = poutine.replay(model, trace=guide_trace)
    if fit.enumerated:
        fn = infer_discrete(fn, first_available_dim=first_dim, temperature=1)
    if predictive:
        fn = poutine.uncondition(fn)
    return poutine.trace(fn).get_trace(**kwargs)


def _one_at_a_time(fit: Outcome, num_samples: int) -> Iterator[None]:
    """Step through ``num_samples`` one-draw runs; an MCMC fit's stored draws are pinned to the ones a plate of
    ``num_samples`` draws would get (evenly spaced), so both paths return the same draws."""
    if not isinstance(fit, MCMCOutcome):
        yield from (None for _ in range(num_samples))
        return
    for index in fit.guide.spread(num_samples).tolist():
        with fit.guide.pinned(index):
            yield None


def _draw(fit: Outcome, num_samples: int, seed: int | None, predictive: bool) -> dict[str, torch.Tensor]:
    check_count("num_samples", num_samples)
    require_model(fit)
    structure = fit.structure
    wanted = [s.name for s in structure.latent_sites]
    if predictive:
        wanted += [s.name for s in structure.observed_sites]
    with fit.activated(), torch.no_grad(), run_scope(fit.guide):
        prepare_guide(fit)
        pyro.set_rng_seed(fit.seed if seed is None else seed)
        if vectorizes(fit):
            trace = _trace_draws(fit, num_samples, predictive)
            values = {n: trace.nodes[n]["value"] for n in wanted if n in trace.nodes}
            # detached: a point-mass guide (AutoDelta) returns its parameter itself as the draw
            return {n: v.detach().reshape((num_samples,) + structure.sites[n].shape) for n, v in values.items()}
        traces = [_trace_draws(fit, None, predictive) for _ in _one_at_a_time(fit, num_samples)]
        return {
            n: torch.stack([t.nodes[n]["value"].reshape(structure.sites[n].shape) for t in traces])
            for n in wanted
            if n in traces[0].nodes
        }


def sample_posterior(fit: Outcome, num_samples: int = 1000, seed: int | None = None) -> dict[str, torch.Tensor]:
    """Draws of every latent site from the fitted posterior approximation, shape ``(num_samples, *site)``."""
    return _draw(fit, num_samples, seed, predictive=False)


def posterior_predictive(fit: Outcome, num_samples: int = 100, seed: int | None = None) -> dict[str, torch.Tensor]:
    """Replicated data: every latent from the posterior, every observed site re-drawn from the model."""
    return _draw(fit, num_samples, seed, predictive=True)


def guide_draws(fit: Outcome, num_samples: int, seed: int | None = None, names: list[str] | None = None
                ) -> dict[str, torch.Tensor]:
    """Draws of the sites the guide samples (only those in ``names`` when given), ``(num_samples, *site)``."""
    check_count("num_samples", num_samples)
    require_model(fit)
    structure = fit.structure

    def wanted(trace: poutine.Trace) -> list[str]:
        return [n for n, node in trace.nodes.items()
                if node["type"] == "sample" and n in structure.sites and (names is None or n in names)]

    with fit.activated(), torch.no_grad(), run_scope(fit.guide):
        prepare_guide(fit)
        pyro.set_rng_seed(fit.seed if seed is None else seed)
        if guide_vectorizes(fit):
            trace = guide_traces(fit, num_samples, vectorised=True)[0]
            return {n: trace.nodes[n]["value"].detach().reshape((num_samples,) + structure.sites[n].shape)
                    for n in wanted(trace)}
        traces = guide_traces(fit, num_samples, vectorised=False)
        return {n: torch.stack([t.nodes[n]["value"].reshape(structure.sites[n].shape) for t in traces])
                for n in wanted(traces[0])}


def _bound(fit: Outcome, elbo: Any, seed: int | None) -> float:
    model = enumerating_model(fit)
    with fit.activated(), torch.no_grad():
        prepare_guide(fit)
        pyro.set_rng_seed(fit.seed if seed is None else seed)
        return -float(elbo.loss(model, fit.guide, **fit.data.kwargs))


def elbo_estimate(fit: Outcome, num_particles: int = 100, seed: int | None = None) -> float:
    """A Monte Carlo estimate of the ELBO at the fitted parameters (discrete latents enumerated exactly)."""
    check_count("num_particles", num_particles)
    nesting = fit.structure.max_plate_nesting
    vectorize = vectorizes(fit)
    if fit.enumerated:
        elbo = TraceEnum_ELBO(num_particles=num_particles, vectorize_particles=vectorize, max_plate_nesting=nesting,
                              strict_enumeration_warning=False)
    else:
        elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=vectorize, max_plate_nesting=nesting)
    return _bound(fit, elbo, seed)


def log_evidence(fit: Outcome, num_particles: int = 1000, seed: int | None = None) -> float:
    """An estimate of log p(x): the importance-weighted bound IWAE_K with ``K = num_particles``.

    Exact (no sampling) when every latent is discrete and enumerated. With continuous latents it is the IWAE
    bound with the guide as proposal: below log p(x), tighter as K grows.

    When the guide also samples global latents (outside the data plate), each of the K importance samples is a draw of
    everything, the globals and every row's locals, and its weight is a product over the whole data set: the *joint*
    bound (Pyro's ``RenyiELBO``). It tends to log p(x) as K grows, but slowly when there are many rows. This is not
    the per-data-point bound that ``method="iwae"`` optimises for such a model (:class:`~ppl_lvm.backends.local_iwae.
    LocalIWAE`, reported as ``result.elbo``): that one is far tighter at the same K, but as K grows it tends to
    ``E_q(theta)[log p(theta) p(x | theta) / q(theta)]``, below log p(x) by ``KL(q(theta) || p(theta | x))``, so it
    is no estimate of log p(x). Both are lower bounds (tests/backends/test_local_iwae_models.py checks them against
    brute-force log-evidences).
    """
    check_count("num_particles", num_particles)
    nesting = fit.structure.max_plate_nesting
    if not fit.structure.continuous_latents:
        # exact: nothing is sampled (a model without any latent has nothing to enumerate either)
        return _bound(fit, TraceEnum_ELBO(max_plate_nesting=nesting, strict_enumeration_warning=False), seed)
    if fit.enumerated:
        raise ValueError(
            "log_evidence with both enumerated discrete and continuous latents is not available; "
            "use elbo_estimate() for a lower bound"
        )
    elbo = RenyiELBO(alpha=0.0, num_particles=num_particles, vectorize_particles=vectorizes(fit),
                     max_plate_nesting=nesting)
    return _bound(fit, elbo, seed)

