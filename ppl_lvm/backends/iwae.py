"""``method="iwae"`` and ``method="renyi"``: importance-weighted bounds.

``iwae`` with ``num_particles=K`` optimises an importance-weighted bound on log p(x) that tightens as K grows, a
*per data point* bound summed over the data plate. When every latent the guide samples lies inside the data plate it
is Pyro's ``RenyiELBO(alpha=0)``, ``sum_i log (1/K) sum_k p(x_i, z_ik) / q(z_ik | x_i)``, with the K draws in one
vectorised pass; with minibatches the loss and gradients are scaled by N / batch_size outside the log-mean-exp.
When the guide samples global latents too (outside the data plate), or with ``estimator="dreg"``, it is
:class:`~ppl_lvm.backends.local_iwae.LocalIWAE`: one draw of the globals per step with their own ELBO term
``log p(theta) - log q(theta)``, and for each row the log-mean-exp of K weights of its local latents given that draw,
the minibatch scale N / B applied per row outside the log-mean-exp (Pyro's ``RenyiELBO`` would instead take one
weight for the whole batch and put the scale inside it, which is no bound). ``renyi`` is the same with each row's
term the Renyi ``alpha`` estimate.

``estimator`` (``iwae`` only): ``"standard"`` (the default, the reparameterised gradient) or ``"dreg"`` (doubly
reparameterised gradients for the guide's local sites, Tucker et al. 2018: lower variance at large K, the same
expected gradient); ``result.options["estimator"]`` says which ran.
"""

from __future__ import annotations

from typing import Any

import pyro.poutine as poutine
from pyro.infer import RenyiELBO
from pyro.poutine.util import site_is_subsample

from ..errors import UnsupportedModelError
from ..fit_options import FitOptions
from .base import Problem, VariationalBackend, VIPlan, local_and_global
from .local_iwae import LocalIWAE, check_iwae_estimator, dreg_obstacle


class IWAEBackend(VariationalBackend):
    name = "iwae"
    default_guide = "normal"
    default_particles = 5
    method_options = ("estimator",)

    def alpha(self, method: dict) -> float:
        return 0.0

    def parse_options(self, options: dict[str, Any]):
        if "num_particles" not in options:
            options = {**options, "num_particles": self.default_particles}
        loop, method = super().parse_options(options)
        if "estimator" in method:
            method["estimator"] = check_iwae_estimator(method["estimator"])
        return loop, method

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
        estimator = method.get("estimator", "standard")
        method["estimator"] = estimator  # recorded in result.options: what ran
        if estimator == "dreg":
            obstacle = dreg_obstacle(guide_trace, data_plate)
            if obstacle is not None:
                raise UnsupportedModelError(
                    f"estimator='dreg' cannot be used here: {obstacle}. DReG reweights the gradient of local guide "
                    "sites that depend on the guide's parameters, the data and earlier local draws only; use "
                    "estimator='standard'"
                )
        if global_sites or estimator == "dreg":
            return VIPlan(self._local_iwae(loop.num_particles, loop.vectorize_particles, method, structure,
                                           data_plate), problem.model, guide, guide_name, [],
                          minibatch_scaling="plate")
        elbo = RenyiELBO(
            alpha=self.alpha(method),
            num_particles=loop.num_particles,
            vectorize_particles=loop.vectorize_particles,
            max_plate_nesting=structure.max_plate_nesting,
        )
        return VIPlan(elbo, problem.model, guide, guide_name, [], minibatch_scaling="loss")

    def _local_iwae(self, num_particles: int, vectorize: bool, method: dict, structure: Any,
                    data_plate: str | None) -> LocalIWAE:
        if data_plate is None:
            raise UnsupportedModelError(
                f"method {self.name!r} needs a data plate around the observed sites (the bound is per data point); "
                "wrap the likelihood in `with lvm.plate(N):`, or fit the model with method='svi'"
            )
        return LocalIWAE(num_particles, data_plate, structure.max_plate_nesting, alpha=self.alpha(method),
                         vectorize_particles=vectorize, estimator=method.get("estimator", "standard"))

    def bound_estimator(self, outcome: Any) -> Any:
        """The bound the fit optimised, with the fit's K importance samples: ``RenyiELBO(alpha)`` when every guide
        site is local, :class:`~ppl_lvm.backends.local_iwae.LocalIWAE` when the fit used it."""
        options = outcome.options
        num_particles = int(options.get("num_particles", 1))
        vectorize = bool(options.get("vectorize_particles", True))
        if options.get("estimator") == "dreg" or (outcome.structure.global_latents
                                                   and outcome.structure.data_plate is not None):
            return self._local_iwae(num_particles, vectorize, {**options, "estimator": "standard"},
                                    outcome.structure, outcome.structure.data_plate)
        return RenyiELBO(alpha=self.alpha(outcome.options), num_particles=num_particles,
                         vectorize_particles=vectorize, max_plate_nesting=outcome.structure.max_plate_nesting)


class RenyiBackend(IWAEBackend):
    name = "renyi"
    method_options = ("alpha", "estimator")

    def parse_options(self, options: dict[str, Any]):
        loop, method = super().parse_options(options)
        if method.get("estimator") == "dreg":
            raise ValueError("estimator='dreg' is the doubly reparameterised gradient of the IWAE bound (alpha=0); "
                             "method='renyi' has no such estimator. Use method='iwae' with estimator='dreg', or "
                             "estimator='standard'")
        alpha = method.get("alpha", 0.5)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha == 1:
            raise ValueError(f"alpha must be a number other than 1 (alpha=1 is the ELBO: use method='svi'), got {alpha!r}")
        return loop, method

    def alpha(self, method: dict) -> float:
        return float(method.get("alpha", 0.5))


IWAE = IWAEBackend()
RENYI = RenyiBackend()
