"""``method="svi"``: stochastic variational inference with ``Trace_ELBO``.

Discrete latent sites that the guide does not sample are summed out exactly with ``TraceEnum_ELBO`` (Pyro's
``Trace_ELBO`` would instead draw them from the prior and optimise the wrong objective).

The gradient estimator (option ``estimator``) is sticking the landing (:mod:`ppl_lvm.backends.estimators`) wherever it
applies, Pyro's standard reparameterised gradient elsewhere; ``result.options["estimator"]`` says which ran.

A guide that samples a site without ``rsample`` (a discrete latent it does not leave to enumeration, any
non-reparameterisable distribution) is fitted by the score function with a baseline (option ``baseline``,
:mod:`ppl_lvm.backends.baselines`): ``TraceGraph_ELBO``, Rao-Blackwellised over the dependency structure.
``result.options["score_function_sites"]`` lists those sites and ``result.options["baseline"]`` the baseline that
ran (``None`` where none did). With discrete latents enumerated as well, ``TraceEnum_ELBO`` differentiates the
guide's score-function sites itself (its Dice estimator, Rao-Blackwellised over plates) without a baseline.
A relaxed guide (:class:`ppl_lvm.AmortizedCategorical` with ``relaxed=True``) draws reparameterised relaxed
values; the model's prior at its site is relaxed with it.
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
from .baselines import ScoreFunctionELBO, baseline_nets, check_baseline
from .estimators import STLTrace_ELBO, check_estimator, score_function_sites, stl_obstacle


def discrete_not_in_guide(problem: Problem, guide_trace: poutine.Trace) -> list[str]:
    sampled = {n for n, node in guide_trace.nodes.items() if node["type"] == "sample"}
    return [s.name for s in problem.structure.discrete_latents if s.name not in sampled]


class SVIBackend(VariationalBackend):
    name = "svi"
    default_guide = None
    method_options = ("estimator", "baseline")
    relaxes_guides = True

    def parse_options(self, options: dict[str, Any]):
        loop, method = super().parse_options(options)
        if "estimator" in method:
            method["estimator"] = check_estimator(method["estimator"])
        if "baseline" in method:
            method["baseline"] = check_baseline(method["baseline"])
        return loop, method

    def plan(self, problem: Problem, loop: FitOptions, method: dict, guide: Any, guide_name: str,
             guide_trace: poutine.Trace) -> VIPlan:
        enumerated = discrete_not_in_guide(problem, guide_trace)
        scored = score_function_sites(guide_trace)
        baseline = self._baseline(method, scored, enumerated)
        nesting = problem.structure.max_plate_nesting
        common = dict(num_particles=loop.num_particles, vectorize_particles=loop.vectorize_particles,
                      max_plate_nesting=nesting)
        model = getattr(guide, "relaxing", lambda m: m)(problem.model)
        if enumerated:
            elbo = TraceEnum_ELBO(strict_enumeration_warning=False, **common)
            model = enumerating(model, enumerated)
            check_enumeration_size(  # refused before allocating, as method='em' does
                model, problem.data.kwargs, nesting, route=f"method {self.name!r}",
                advice="Sample those latents in the guide instead of enumerating them, decouple them (pyro.markov for "
                       "chains, plates for independent ones), or reduce their number of states")
            estimator = self._estimator(method, "the model's discrete latents are enumerated (TraceEnum_ELBO)")
        else:
            estimator = self._estimator(method, stl_obstacle(guide_trace))
            if scored:
                nets = baseline_nets(baseline, scored, problem.structure, problem.data.kwargs)
                elbo = ScoreFunctionELBO(scored, baseline, nets, problem.structure, stl=estimator == "stl", **common)
            else:
                elbo = (STLTrace_ELBO if estimator == "stl" else Trace_ELBO)(**common)
        method["estimator"] = estimator  # recorded in result.options: what ran
        method["baseline"] = baseline
        method["score_function_sites"] = scored
        return VIPlan(elbo, model, guide, guide_name, enumerated)

    @staticmethod
    def _baseline(method: dict, scored: list[str], enumerated: list[str]) -> str | None:
        """The baseline that runs: ``"average"`` unless another is asked for; an asked one that cannot run is
        refused (no score-function site to apply it to, or enumerated latents, which ``TraceGraph_ELBO`` cannot
        sum out)."""
        asked = method.get("baseline", "average")
        if not scored:
            if "baseline" in method and asked is not None:
                raise UnsupportedModelError(
                    f"baseline={asked!r} applies to guide sites sampled by the score function (without rsample), "
                    "and this guide has none: every latent it samples is reparameterised, and discrete latents it "
                    "leaves out are summed out exactly. Leave baseline unset (or sample a discrete latent in the "
                    "guide, e.g. with lvm.AmortizedCategorical or lvm.AmortizedBernoulli)")
            return None
        if enumerated:
            if "baseline" in method and asked is not None:
                raise UnsupportedModelError(
                    f"baseline={asked!r} needs TraceGraph_ELBO, which cannot sum out the model's enumerated discrete "
                    f"latents {enumerated}; the guide's score-function sites {scored} then run with TraceEnum_ELBO's "
                    "estimator, which has no baseline. Sample those latents in the guide too, or pass baseline=None")
            return None
        return asked

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
