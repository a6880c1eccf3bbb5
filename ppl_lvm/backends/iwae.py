"""``method="iwae"`` and ``method="renyi"``: importance-weighted bounds with ``RenyiELBO``.

``iwae`` is ``RenyiELBO(alpha=0)`` with ``num_particles=K`` importance samples drawn in one vectorised pass:
``log (1/K) sum_k p(x, z_k) / q(z_k)``, a bound on log p(x) that tightens as K grows. It is a *per data point*
bound (summed over the data plate) only when every latent the guide samples lies inside the data plate; a global
latent turns it into one joint bound over the whole batch, which tightens very slowly, so such models are refused.
With minibatches the loss and gradients are scaled by N / batch_size outside the log-mean-exp (scaling inside, as a
subsampled plate would, is no bound at all).
"""

from __future__ import annotations

from typing import Any

import pyro.poutine as poutine
from pyro.infer import RenyiELBO
from pyro.poutine.util import site_is_subsample

from ..errors import UnsupportedModelError
from ..fit_options import FitOptions
from .base import Problem, VariationalBackend, VIPlan, local_and_global


class IWAEBackend(VariationalBackend):
    name = "iwae"
    default_guide = "normal"
    default_particles = 5

    def alpha(self, method: dict) -> float:
        return 0.0

    def parse_options(self, options: dict[str, Any]):
        if "num_particles" not in options:
            options = {**options, "num_particles": self.default_particles}
        return super().parse_options(options)

    def plan(self, problem: Problem, loop: FitOptions, method: dict, guide: Any, guide_name: str,
             guide_trace: poutine.Trace) -> VIPlan:
        structure = problem.structure
        sampled = {n for n, node in guide_trace.nodes.items() if node["type"] == "sample"}
        for site in structure.discrete_latents:
            how = "the guide samples it (a score-function term)" if site.name in sampled else "it is not reparameterisable"
            raise UnsupportedModelError(
                f"method {self.name!r} cannot fit the discrete latent '{site.name}' ({site.location}): {how}, and "
                "RenyiELBO neither enumerates nor supports score-function gradients. Use method='svi' (exact "
                "enumeration) or method='em'."
            )
        for name, node in guide_trace.nodes.items():
            if node["type"] == "sample" and not site_is_subsample(node) and not node["fn"].has_rsample:
                raise UnsupportedModelError(
                    f"method {self.name!r} needs reparameterised guide sites, but the guide samples '{name}' from "
                    f"{type(node['fn']).__name__}, which has no rsample. Use a reparameterisable family (Normal, "
                    "a transformed Normal, ...) or method='svi'."
                )
        data_plate, global_sites = local_and_global(structure, guide_trace)
        if global_sites:
            raise UnsupportedModelError(
                f"method {self.name!r}: the guide samples {global_sites} outside the data plate '{data_plate}'. With "
                "a global latent the importance-weighted bound is one joint bound over the whole data set, not a "
                "per-data-point bound, and it barely tightens with K. Make global unknowns parameters "
                "(lvm.param, fitted by maximum likelihood), or fit the model with method='svi'."
            )
        elbo = RenyiELBO(
            alpha=self.alpha(method),
            num_particles=loop.num_particles,
            vectorize_particles=loop.vectorize_particles,
            max_plate_nesting=structure.max_plate_nesting,
        )
        return VIPlan(elbo, problem.model, guide, guide_name, [], minibatch_scaling="loss")

    def bound_estimator(self, outcome: Any) -> Any:
        """The bound the fit optimised: ``RenyiELBO(alpha)`` with the fit's K importance samples."""
        options = outcome.options
        return RenyiELBO(alpha=self.alpha(outcome.options), num_particles=int(options.get("num_particles", 1)),
                         vectorize_particles=bool(options.get("vectorize_particles", True)),
                         max_plate_nesting=outcome.structure.max_plate_nesting)


class RenyiBackend(IWAEBackend):
    name = "renyi"
    method_options = ("alpha",)

    def parse_options(self, options: dict[str, Any]):
        loop, method = super().parse_options(options)
        alpha = method.get("alpha", 0.5)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha == 1:
            raise ValueError(f"alpha must be a number other than 1 (alpha=1 is the ELBO: use method='svi'), got {alpha!r}")
        return loop, method

    def alpha(self, method: dict) -> float:
        return float(method.get("alpha", 0.5))


IWAE = IWAEBackend()
RENYI = RenyiBackend()
