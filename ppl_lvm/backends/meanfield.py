"""``method="meanfield"``: ``TraceMeanField_ELBO`` with a guide that samples each latent site directly.

The KL term of a site is analytic where ``kl_divergence(q, p)`` is registered for the pair of distributions;
for any other site the estimator falls back to Monte Carlo, and this backend says which sites those are.
"""

from __future__ import annotations

import warnings
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.distributions.kl import kl_divergence
from pyro.infer import TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample

from ..errors import InferenceWarning, UnsupportedModelError
from ..fit import FitOptions
from ..runtime import run_scope
from .base import Problem, VariationalBackend, VIPlan
from .svi import discrete_not_in_guide


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
    method_options = ("on_missing_kl",)

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
        if missing:
            lines = "; ".join(
                f"site '{n}' ({problem.structure.location(n)}): no KL({q} || {p})" for n, q, p in missing
            )
            text = (
                f"no analytic KL for {lines}. Those sites use a Monte Carlo KL estimate. For an analytic KL give "
                "the site a distribution whose KL to the guide's is registered (e.g. Normal prior with the "
                "'normal' guide on a real-valued site)."
            )
            if policy == "error":
                raise UnsupportedModelError(text)
            warnings.warn(text, InferenceWarning, stacklevel=5)
        elbo = TraceMeanField_ELBO(
            num_particles=loop.num_particles,
            vectorize_particles=loop.vectorize_particles,
            max_plate_nesting=problem.structure.max_plate_nesting,
        )
        return VIPlan(elbo, problem.model, guide, guide_name, [])


MEANFIELD = MeanFieldBackend()
