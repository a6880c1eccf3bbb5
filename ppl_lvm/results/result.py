"""The user-facing result of a gradient fit: an :class:`~ppl_lvm.outcome.Outcome` with its queries as methods."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import arviz_export, diagnostics, io, summary
from ..backends import get_backend
from ..backends.problem import make_problem, step_work
from ..errors import FitError
from ..guides import GUIDES
from ..outcome import Outcome
from ..posterior import queries
from ..runtime import clone_param_state
from ..threads import ThreadChoice, choose_threads, thread_scope
from .display import repr_html

__all__ = ["Result", "fit_into"]


def fit_into(result_class: Callable[[Outcome], type], backend: Any, problem: Any) -> Any:
    """Run ``backend`` on ``problem`` with the thread count of :mod:`ppl_lvm.threads` (restored afterwards) and
    build the result, which records that count; a failed fit's error carries the result reached."""
    choice = choose_threads(problem.num_threads, step_work(problem))
    try:
        with thread_scope(choice):
            outcome = backend.fit(problem)
    except FitError as err:
        if err.outcome is not None:
            _record_threads(err.outcome, choice)
        if err.result is None and err.outcome is not None:
            err.result = result_class(err.outcome).from_outcome(err.outcome)
        raise
    _record_threads(outcome, choice)
    return result_class(outcome).from_outcome(outcome)


def _record_threads(outcome: Outcome, choice: ThreadChoice) -> None:
    """``options["num_threads"]`` (the count the fit ran with) and ``options["num_threads_reason"]``, on the
    outcome and its restarts."""
    for fit in [outcome, *outcome.restarts]:
        fit.options = {**fit.options, "num_threads": choice.threads if choice.threads is not None
                       else torch.get_num_threads(), "num_threads_reason": choice.reason}


@dataclass
class Result(Outcome):
    """What :func:`ppl_lvm.infer` returns.

    Attributes
    ----------
    method : str
        The inference method.
    params : dict of str -> Tensor
        Every learned parameter by name, constrained (model parameters and the guide's variational parameters):
        the average of the iterates over the end of the annealing phase (``anneal``), or the final iterate with
        ``anneal=0``; ``elbo`` is the bound at these parameters.
    losses : ndarray
        The loss (negative ELBO or bound) at every step.
    converged : bool
        Whether the loss settled by the noise-aware rule of :func:`ppl_lvm.fit_options.settling` (see
        :class:`ppl_lvm.fit.FitOptions`), over the final steps whose iterates ``params`` average.
    steps : int
        Steps taken.
    seed : int
        The seed the fit used.
    guide_name : str
        Which guide was used.
    enumerated : list of str
        Discrete latent sites summed out exactly by enumeration.
    restarts : list of Result
        With ``n_init > 1``: every restart (seeds ``seed, seed + 1, ...``, this one included), each without its own
        ``restarts``; empty for a single fit.
    """

    params: dict[str, torch.Tensor] = field(default_factory=dict)

    # ------------------------------------------------------------------ summaries
    @property
    def elbo(self) -> float:
        """The bound at the returned parameters ``params`` (the point ``converged`` describes too).

        For ``svi`` and ``meanfield`` the ELBO (discrete latents enumerated: for a model without continuous
        latents it is the exact ``log_evidence()``; ``meanfield`` without ``free_bits``), for ``iwae``/``renyi``
        the bound the fit optimised with its K; estimated by the backend's ``bound_at`` (a mean over up to 32
        evaluations seeded by the fit's seed, so a loaded result reports the same number). Without the model (a
        result loaded without it) or for other methods: minus the mean of the last 10% of the losses.
        """
        if len(self.losses) == 0:
            return math.nan
        backend = get_backend(self.method)
        if hasattr(backend, "bound_at") and self.model is not None and self.structure is not None:
            return backend.bound_at(self)
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return -float(np.mean(tail))

    def __repr__(self) -> str:
        names = ", ".join(list(self.params)[:6]) + (", ..." if len(self.params) > 6 else "")
        return (
            f"Result(method={self.method!r}, guide={self.guide_name!r}, steps={self.steps}, "
            f"converged={self.converged}, elbo={self.elbo:.6g}, params=[{names}])"
        )

    def _repr_html_(self) -> str:
        """A compact table of the fit for Jupyter (method, model, data, objective, convergence, parameters)."""
        return repr_html(self)


    # ------------------------------------------------------------------ posterior queries
    def sample_posterior(self, num_samples: int = 1000, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Draws of every latent site from the fitted posterior approximation, shape ``(num_samples, *site)``.

        Continuous latents come from the guide; discrete latents that were enumerated are drawn from their exact
        conditional posterior given those draws.
        """
        return queries.sample_posterior(self, num_samples, seed)

    def posterior_predictive(self, num_samples: int = 100, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Replicated data: every latent from the posterior, every observed site re-drawn from the model."""
        return queries.posterior_predictive(self, num_samples, seed)

    def elbo_estimate(self, num_particles: int = 100, seed: int | None = None) -> float:
        """A Monte Carlo estimate of the ELBO at the fitted parameters (discrete latents enumerated exactly)."""
        return queries.elbo_estimate(self, num_particles, seed)

    def log_evidence(self, num_particles: int = 1000, seed: int | None = None) -> float:
        """An estimate of log p(x): the importance-weighted bound IWAE_K with ``K = num_particles``.

        Exact (no sampling) when every latent is discrete and enumerated. With continuous latents it is the IWAE
        bound with the guide as proposal: below log p(x), tighter as K grows, summed over data points when every
        latent is local. With global latents it is the joint bound over the whole data set, which tends to log p(x)
        but slowly, not the per-point bound an ``iwae`` fit optimises (see
        :func:`ppl_lvm.posterior.queries.log_evidence`).
        """
        return queries.log_evidence(self, num_particles, seed)

    def global_latent_names(self) -> list[str]:
        """Latent sites outside the data plate (one value for the whole data set): the rows of :meth:`summary`."""
        if self.structure is None:
            return []
        return [s.name for s in self.structure.global_latents]

    def guide_draws(self, num_samples: int, seed: int | None = None, names: list[str] | None = None
                    ) -> dict[str, torch.Tensor]:
        """Draws of the sites the guide samples (only those in ``names`` when given), ``(num_samples, *site)``.

        Cheaper than :meth:`sample_posterior`: the model is not run, so enumerated discrete latents are not drawn.
        """
        return queries.guide_draws(self, num_samples, seed, names)

    def summary(self, num_samples: int = 500, seed: int = 0, var_names: list[str] | None = None) -> Any:
        """One row per scalar coordinate of the global latents (draws from q) and of the model's parameters.

        Latent rows (``kind = "latent"``) are ``az.summary`` statistics of ``num_samples`` draws from the guide
        (discrete components aligned to this fit first, see :mod:`ppl_lvm.posterior.alignment`); ``r_hat`` is the R-hat across
        restarts (``n_init > 1``: each restart's draws are one chain), NaN for a single fit. Parameter rows
        (``kind = "param"``, the point estimates of ``lvm.param`` sites) fill ``mean`` only. ``DataFrame.attrs``
        holds the method, guide, steps, convergence and final ELBO.

        Parameters
        ----------
        num_samples : int
            Draws from the guide (at least 8).
        seed : int
            Seed of the draws.
        var_names : list of str, optional
            Sites and parameters to list; default: every global latent site (outside the data plate) and every
            model parameter (``lvm.module`` weights excluded).

        Returns
        -------
        pandas.DataFrame
        """
        return summary.summarize(self, num_samples=num_samples, seed=seed, var_names=var_names)

    def to_arviz(self, num_samples: int = 500, seed: int | None = None, **kw: Any) -> Any:
        """The fit as ArviZ groups (``az.InferenceData``); see :mod:`ppl_lvm.arviz_export`."""
        return arviz_export.to_inference_data(self, num_samples=num_samples, seed=seed, **kw)

    def diagnose(self, **kw: Any) -> Any:
        """VI health in one call: Pareto k-hat, the bound ladder, active units; see :mod:`ppl_lvm.diagnostics`."""
        return diagnostics.diagnose(self, **kw)

    # ------------------------------------------------------------------ persistence and refits
    def save(self, path: str) -> None:
        """Write the result to ``path`` (tensors and JSON metadata; loads without unpickling code)."""
        io.save_result(self, path)

    def fit_more(self, **options: Any) -> Result:
        """Continue fitting from these parameters with the same model, data, method and guide.

        The options not given are the fit's, except ``device``, ``n_init`` and ``num_threads``: the thread count is
        chosen afresh (:mod:`ppl_lvm.threads`) unless given again.
        """
        backend = get_backend(self.method)
        # the fit's options, without what it only recorded (the sites scored, the M-steps in closed form, ...)
        accepted = backend.option_names() - {"device", "n_init"}
        merged = {k: v for k, v in self.options.items() if k in accepted}
        merged.update(options)
        guide = self.guide_name if self.guide_name in GUIDES else self.guide
        problem = make_problem(backend, queries.require_model(self), dict(self.data.kwargs), guide=guide,
                               init_state=clone_param_state(self.param_state), options=merged)
        return fit_into(lambda outcome: type(self), backend, problem)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_outcome(cls, outcome: Outcome) -> Result:
        """The result of ``outcome`` (its restarts too): the one way results are made."""
        values = outcome.field_values()
        result = cls(**values)
        result.params = result.constrained_params()
        if "bound" in outcome.cache:  # computed by the backend at these parameters (restarts are ranked by it)
            result.cache["bound"] = outcome.cache["bound"]
        if outcome.restarts:
            result.restarts = [result if r is outcome else cls.from_outcome(r) for r in outcome.restarts]
        return result
