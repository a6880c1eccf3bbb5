"""``method="svi"``: stochastic variational inference with ``Trace_ELBO``.

Discrete latent sites that the guide does not sample are summed out exactly with ``TraceEnum_ELBO`` (Pyro's
``Trace_ELBO`` would instead draw them from the prior and optimise the wrong objective).

The gradient estimator (option ``estimator``) is sticking the landing (:mod:`ppl_lvm.backends.estimators`) wherever it
applies, Pyro's standard reparameterised gradient elsewhere; ``result.options["estimator"]`` says which ran.
"""

from __future__ import annotations

from typing import Any

import pyro.poutine as poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from ..em.generic.size import check_enumeration_size
from ..errors import UnsupportedModelError
from ..fit_options import FitOptions
from ..handlers import enumerating
from .base import Problem, VariationalBackend, VIPlan
from .estimators import STLTrace_ELBO, check_estimator, stl_obstacle


def discrete_not_in_guide(problem: Problem, guide_trace: poutine.Trace) -> list[str]:
    sampled = {n for n, node in guide_trace.nodes.items() if node["type"] == "sample"}
    return [s.name for s in problem.structure.discrete_latents if s.name not in sampled]


class SVIBackend(VariationalBackend):
    name = "svi"
    default_guide = None
    method_options = ("estimator",)

    def parse_options(self, options: dict[str, Any]):
        loop, method = super().parse_options(options)
        if "estimator" in method:
            method["estimator"] = check_estimator(method["estimator"])
        return loop, method

    def plan(self, problem: Problem, loop: FitOptions, method: dict, guide: Any, guide_name: str,
             guide_trace: poutine.Trace) -> VIPlan:
        enumerated = discrete_not_in_guide(problem, guide_trace)
        nesting = problem.structure.max_plate_nesting
        common = dict(num_particles=loop.num_particles, vectorize_particles=loop.vectorize_particles,
                      max_plate_nesting=nesting)
        if enumerated:
            elbo = TraceEnum_ELBO(strict_enumeration_warning=False, **common)
            model = enumerating(problem.model, enumerated)
            check_enumeration_size(  # refused before allocating, as method='em' does
                model, problem.data.kwargs, nesting, route=f"method {self.name!r}",
                advice="Sample those latents in the guide instead of enumerating them, decouple them (pyro.markov for "
                       "chains, plates for independent ones), or reduce their number of states")
            estimator = self._estimator(method, "the model's discrete latents are enumerated (TraceEnum_ELBO)")
        else:
            estimator = self._estimator(method, stl_obstacle(guide_trace))
            elbo = (STLTrace_ELBO if estimator == "stl" else Trace_ELBO)(**common)
            model = problem.model
        method["estimator"] = estimator  # recorded in result.options: what ran
        return VIPlan(elbo, model, guide, guide_name, enumerated)

    @staticmethod
    def _estimator(method: dict, obstacle: str | None) -> str:
        """``stl`` unless something stands in its way; an explicit ``estimator='stl'`` that cannot run is refused."""
        asked = method.get("estimator")
        if obstacle is None:
            return asked or "stl"
        if asked == "stl":
            raise UnsupportedModelError(
                f"estimator='stl' cannot be used here: {obstacle}. Use estimator='standard' (Pyro's Trace_ELBO "
                "gradient), or leave estimator unset to pick it automatically"
            )
        return "standard"


SVI = SVIBackend()
