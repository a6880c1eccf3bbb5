"""The result of a fit: a value holding parameters, history and the means to query the fitted posterior."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceEnum_ELBO, infer_discrete
from pyro.infer.autoguide import AutoGuide

from .data import BoundData
from .errors import PplLvmError
from .model import Model, ModelStructure
from .runtime import run_scope

__all__ = ["Result"]


@dataclass
class Result:
    """What :func:`ppl_lvm.infer` returns.

    Attributes
    ----------
    method : str
        The inference method.
    params : dict of str -> Tensor
        Every learned parameter by name, constrained (model parameters and the guide's variational parameters).
    losses : ndarray
        The loss (negative ELBO or bound) at every step.
    converged : bool
        Whether the smoothed loss settled (see :class:`ppl_lvm.fit.FitOptions`).
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

    method: str
    params: dict[str, torch.Tensor]
    losses: np.ndarray
    converged: bool
    steps: int
    seed: int
    guide_name: str
    model: Model | None
    guide: Any
    data: BoundData
    structure: ModelStructure | None
    param_state: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    enumerated: list[str] = field(default_factory=list)
    interrupted: bool = False
    restarts: list[Result] = field(default_factory=list, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_fit(cls, problem, method_name, plan, loop, method_options, state, history) -> Result:
        options = {k: v for k, v in vars(loop).items() if k not in ("callbacks",) and not callable(v)}
        options.update(method_options)
        result = cls(
            method=method_name,
            params={},
            losses=np.asarray(history["losses"], dtype=float),
            converged=bool(history["converged"]),
            steps=int(history["steps"]),
            seed=int(loop.seed),
            guide_name=plan.guide_name,
            model=problem.model,
            guide=plan.guide,
            data=problem.data,
            structure=problem.structure,
            param_state=state,
            options=options,
            enumerated=list(plan.enumerated),
            interrupted=bool(history["interrupted"]),
        )
        result.params = result._constrained_params()
        return result

    @contextmanager
    def activated(self) -> Iterator[None]:
        """Make this result's parameters the live Pyro parameter store (restored on exit)."""
        with pyro.get_param_store().scope(self.param_state):
            yield

    def _constrained_params(self) -> dict[str, torch.Tensor]:
        with self.activated():
            store = pyro.get_param_store()
            return {name: store[name].detach().clone() for name in list(store.keys())}

    # ------------------------------------------------------------------ summaries
    @property
    def elbo(self) -> float:
        """The final smoothed bound (negative loss), averaged over the last 10% of steps."""
        if len(self.losses) == 0:
            return math.nan
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return -float(np.mean(tail))

    def __repr__(self) -> str:
        names = ", ".join(list(self.params)[:6]) + (", ..." if len(self.params) > 6 else "")
        return (
            f"Result(method={self.method!r}, guide={self.guide_name!r}, steps={self.steps}, "
            f"converged={self.converged}, elbo={self.elbo:.6g}, params=[{names}])"
        )

    # ------------------------------------------------------------------ posterior queries
    def _require_model(self) -> Model:
        if self.model is None:
            raise RuntimeError("this result was loaded without its model; pass model= to lvm.load(...)")
        return self.model

    def _enumerating_model(self) -> Any:
        from .backends.base import enumerating

        model = self._require_model()
        return enumerating(model, self.enumerated) if self.enumerated else model

    def _trace_draws(self, num_samples: int | None, predictive: bool) -> poutine.Trace:
        """One trace of guide + model; vectorised over a sample plate when ``num_samples`` is given."""
        nesting = self.structure.max_plate_nesting
        kwargs = self.data.kwargs
        with contextlib.ExitStack() as stack:
            first_dim = -(nesting + 1)
            if num_samples is not None:
                stack.enter_context(pyro.plate("_num_samples", num_samples, dim=-(nesting + 1)))
                first_dim -= 1
            guide_trace = poutine.trace(self.guide).get_trace(**kwargs)
            fn = poutine.replay(self._enumerating_model(), trace=guide_trace)
            if self.enumerated:
                fn = infer_discrete(fn, first_available_dim=first_dim, temperature=1)
            if predictive:
                fn = poutine.uncondition(fn)
            return poutine.trace(fn).get_trace(**kwargs)

    def _draw(self, num_samples: int, seed: int | None, predictive: bool) -> dict[str, torch.Tensor]:
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        self._require_model()
        structure = self.structure
        wanted = [s.name for s in structure.latent_sites]
        if predictive:
            wanted += [s.name for s in structure.observed_sites]
        with self.activated(), torch.no_grad(), run_scope(self.guide):
            self._prepare_guide()
            pyro.set_rng_seed(self.seed if seed is None else seed)
            try:
                trace = self._trace_draws(num_samples, predictive)
                values = {n: trace.nodes[n]["value"] for n in wanted if n in trace.nodes}
                draws = {n: v.reshape((num_samples,) + structure.sites[n].shape) for n, v in values.items()}
            except (IndexError, RuntimeError, ValueError, PplLvmError):
                # models that index with plain tensors (locs[z]) are not vectorisable: draw one at a time
                traces = [self._trace_draws(None, predictive) for _ in range(num_samples)]
                draws = {
                    n: torch.stack([t.nodes[n]["value"].reshape(structure.sites[n].shape) for t in traces])
                    for n in wanted
                    if n in traces[0].nodes
                }
        return draws

    def sample_posterior(self, num_samples: int = 1000, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Draws of every latent site from the fitted posterior approximation, shape ``(num_samples, *site)``.

        Continuous latents come from the guide; discrete latents that were enumerated are drawn from their exact
        conditional posterior given those draws.
        """
        return self._draw(num_samples, seed, predictive=False)

    def posterior_predictive(self, num_samples: int = 100, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Replicated data: every latent from the posterior, every observed site re-drawn from the model."""
        return self._draw(num_samples, seed, predictive=True)

    def _prepare_guide(self) -> None:
        """Set up an autoguide's prototype before seeding, so a fresh and a loaded result draw alike."""
        if isinstance(self.guide, AutoGuide) and self.guide.prototype_trace is None:
            with torch.random.fork_rng(devices=[]):
                self.guide._setup_prototype(**self.data.kwargs)

    def _bound(self, elbo: Any, seed: int | None) -> float:
        model = self._enumerating_model()
        with self.activated(), torch.no_grad():
            self._prepare_guide()
            pyro.set_rng_seed(self.seed if seed is None else seed)
            return -float(elbo.loss(model, self.guide, **self.data.kwargs))

    def elbo_estimate(self, num_particles: int = 100, seed: int | None = None) -> float:
        """A Monte Carlo estimate of the ELBO at the fitted parameters (discrete latents enumerated exactly)."""
        nesting = self.structure.max_plate_nesting
        if self.enumerated:
            elbo = TraceEnum_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=nesting,
                                  strict_enumeration_warning=False)
        else:
            elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=nesting)
        return self._bound(elbo, seed)

    def log_evidence(self, num_particles: int = 1000, seed: int | None = None) -> float:
        """An estimate of log p(x): the importance-weighted bound IWAE_K with ``K = num_particles``.

        Exact (no sampling) when every latent is discrete and enumerated. With continuous latents it is the IWAE
        bound with the guide as proposal: below log p(x), tighter as K grows, summed over data points when every
        latent is local.
        """
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        nesting = self.structure.max_plate_nesting
        if not self.structure.continuous_latents:
            # exact: nothing is sampled (a model without any latent has nothing to enumerate either)
            return self._bound(TraceEnum_ELBO(max_plate_nesting=nesting, strict_enumeration_warning=False), seed)
        if self.enumerated:
            raise ValueError(
                "log_evidence with both enumerated discrete and continuous latents is not available; "
                "use elbo_estimate() for a lower bound"
            )
        elbo = RenyiELBO(alpha=0.0, num_particles=num_particles, vectorize_particles=True, max_plate_nesting=nesting)
        return self._bound(elbo, seed)

    def global_latent_names(self) -> list[str]:
        """Latent sites outside the data plate (one value for the whole data set): the rows of :meth:`summary`."""
        structure = self.structure
        if structure is None:
            return []
        observed = structure.observed_sites
        common = set.intersection(*(set(s.plates) for s in observed)) if observed else set()
        return [s.name for s in structure.latent_sites if not (set(s.plates) & common)]

    def guide_draws(self, num_samples: int, seed: int | None = None, names: list[str] | None = None
                    ) -> dict[str, torch.Tensor]:
        """Draws of the sites the guide samples (only those in ``names`` when given), ``(num_samples, *site)``.

        Cheaper than :meth:`sample_posterior`: the model is not run, so enumerated discrete latents are not drawn.
        """
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        self._require_model()
        structure = self.structure
        kwargs = self.data.kwargs

        def wanted(trace: poutine.Trace) -> list[str]:
            return [n for n, node in trace.nodes.items()
                    if node["type"] == "sample" and n in structure.sites and (names is None or n in names)]

        with self.activated(), torch.no_grad(), run_scope(self.guide):
            self._prepare_guide()
            pyro.set_rng_seed(self.seed if seed is None else seed)
            try:
                with pyro.plate("_num_samples", num_samples, dim=-(structure.max_plate_nesting + 1)):
                    trace = poutine.trace(self.guide).get_trace(**kwargs)
                return {n: trace.nodes[n]["value"].reshape((num_samples,) + structure.sites[n].shape)
                        for n in wanted(trace)}
            except (IndexError, RuntimeError, ValueError, PplLvmError):
                traces = [poutine.trace(self.guide).get_trace(**kwargs) for _ in range(num_samples)]
                return {n: torch.stack([t.nodes[n]["value"].reshape(structure.sites[n].shape) for t in traces])
                        for n in wanted(traces[0])}

    def summary(self, num_samples: int = 500, seed: int = 0, var_names: list[str] | None = None) -> Any:
        """One row per scalar coordinate of the global latents (draws from q) and of the model's parameters.

        Latent rows (``kind = "latent"``) are ``az.summary`` statistics of ``num_samples`` draws from the guide
        (discrete components aligned to this fit first, see :mod:`ppl_lvm.alignment`); ``r_hat`` is the R-hat across
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
        from .diagnostics import summarize

        return summarize(self, num_samples=num_samples, seed=seed, var_names=var_names)

    def to_arviz(self, num_samples: int = 500, seed: int | None = None, **kw: Any) -> Any:
        """The fit as ArviZ groups (``az.InferenceData``); see :mod:`ppl_lvm.arviz_export`."""
        from .arviz_export import to_inference_data

        return to_inference_data(self, num_samples=num_samples, seed=seed, **kw)

    def diagnose(self, **kw: Any) -> Any:
        """VI health in one call: Pareto k-hat, the bound ladder, active units; see :mod:`ppl_lvm.diagnostics`."""
        from .diagnostics import diagnose

        return diagnose(self, **kw)

    # ------------------------------------------------------------------ persistence and refits
    def save(self, path: str) -> None:
        """Write the result to ``path`` (tensors and JSON metadata; loads without unpickling code)."""
        from .io import save_result

        save_result(self, path)

    def fit_more(self, **options: Any) -> Result:
        """Continue fitting from these parameters with the same model, data, method and guide."""
        from .api import infer

        merged = {k: v for k, v in self.options.items() if k not in ("device", "n_init")}
        merged.update(options)
        from .guides import GUIDES

        guide = self.guide_name if self.guide_name in GUIDES else self.guide
        return infer(self._require_model(), dict(self.data.kwargs), method=self.method, guide=guide, init=self,
                     **merged)
