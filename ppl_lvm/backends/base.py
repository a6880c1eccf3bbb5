"""What a backend receives and the shared path of the variational backends.

A variational backend only decides its ELBO and refuses the models it cannot fit; building the guide, the
enumeration of discrete latents the guide does not sample, minibatching and the loop are shared here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from ..data import BoundData
from ..errors import FitError, InferenceWarning, UnsupportedModelError
from ..fit import FitOptions, Minibatch, run_loop
from ..guides import build_guide, empty_guide
from ..model import Model, ModelStructure
from ..runtime import clone_param_state, run_scope

__all__ = ["Backend", "Problem", "VIPlan", "VariationalBackend", "guide_sites"]


# options that belong to another method: the error says which
OPTION_HINTS = {
    "free_bits": "free_bits floors the analytic KL per latent dimension, which needs method='meanfield'",
    "n_components": "the number of components is an argument of the model: pass it in data, e.g. {'x': x, 'K': 3}",
}


@dataclass
class Problem:
    """Everything :func:`ppl_lvm.infer` hands a backend."""

    model: Model
    data: BoundData
    structure: ModelStructure
    method: str
    guide: Any = None
    init_state: dict | None = None  # a parameter-store state to start from (fitting further)
    options: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """Base class: ``name``, the option class it accepts, and :meth:`fit`."""

    name = ""
    options_class: type = FitOptions
    method_options: tuple[str, ...] = ()

    def parse_options(self, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Split ``options`` into loop options and method options; refuse unknown names."""
        loop_names = set(self.options_class.names())
        unknown = sorted(set(options) - loop_names - set(self.method_options))
        if unknown:
            known = sorted(loop_names | set(self.method_options))
            hints = "".join(f"; {OPTION_HINTS[name]}" for name in unknown if name in OPTION_HINTS)
            raise TypeError(f"method {self.name!r} got unknown option(s) {unknown}; its options are {known}{hints}")
        loop = self.options_class(**{k: v for k, v in options.items() if k in loop_names})
        loop.validate()
        method = {k: v for k, v in options.items() if k in self.method_options}
        return loop, method

    @abstractmethod
    def fit(self, problem: Problem):
        """Fit ``problem`` and return a :class:`~ppl_lvm.result.Result`."""


@dataclass
class VIPlan:
    """What a variational backend decided: the ELBO, the (possibly enumerating) model, the guide."""

    elbo: Any
    model: Any
    guide: Any
    guide_name: str
    enumerated: list[str]
    minibatch_scaling: str = "plate"


def guide_sites(guide: Any, kwargs: dict[str, Any]) -> poutine.Trace:
    """One trace of ``guide`` (sample sites it draws); run inside the fit's parameter scope."""
    with torch.random.fork_rng(devices=[]), run_scope(guide):
        return poutine.trace(guide).get_trace(**kwargs)


def enumerating(model: Model, sites: list[str]) -> Any:
    """``model`` with the given discrete latent sites marked for parallel enumeration."""
    names = frozenset(sites)

    def config(msg: dict) -> dict:
        if msg["type"] == "sample" and msg["name"] in names and not msg["is_observed"]:
            return {"enumerate": "parallel"}
        return {}

    return poutine.infer_config(model, config)


class VariationalBackend(Backend):
    """Shared ``fit`` of svi / meanfield / iwae / renyi: subclasses implement :meth:`plan`."""

    default_guide: str | None = None

    @abstractmethod
    def plan(self, problem: Problem, loop: FitOptions, method: dict, guide: Any, guide_name: str,
             guide_trace: poutine.Trace) -> VIPlan:
        """Choose the ELBO (and refuse models the method cannot fit)."""

    def fit(self, problem: Problem):
        """Fit once, or ``n_init`` times with seeds ``seed, seed + 1, ...`` keeping the lowest final smoothed loss.

        A restart whose loss turns NaN is dropped with an :class:`~ppl_lvm.errors.InferenceWarning` (its
        ``FitError`` is raised only when every restart fails). Networks registered with ``lvm.module`` are trained in
        place, so their restarts continue from the weights the previous restart reached: restarts are meant for
        models with a few global unknowns (mixtures, chains), where local optima differ.
        """
        from ..fit import smoothed_final_loss

        loop, method = self.parse_options(problem.options)
        if loop.n_init == 1:
            return self._fit_once(problem, loop, method)
        fits, failures = [], []
        for restart in range(loop.n_init):
            options = dataclasses.replace(loop, seed=int(loop.seed) + restart)
            try:
                fits.append(self._fit_once(problem, options, method))
                if fits[-1].interrupted:  # Ctrl-C ends the restarts too
                    break
            except FitError as err:
                failures.append(err)
                warnings.warn(f"restart {restart} (seed {options.seed}) of {self.name} failed and is dropped: {err}",
                              InferenceWarning, stacklevel=4)
        if not fits:
            raise failures[-1]
        scores = [smoothed_final_loss(f.losses, loop.smoothing) for f in fits]
        scores = [s if math.isfinite(s) else math.inf for s in scores]
        best = fits[min(range(len(fits)), key=scores.__getitem__)]
        best.restarts = fits
        return best

    def _fit_once(self, problem: Problem, loop: FitOptions, method: dict):
        from ..result import Result

        pyro.set_rng_seed(int(loop.seed))
        kwargs = dict(problem.data.kwargs)
        device_ctx: Any = contextlib.nullcontext()
        if loop.device is not None:
            device = torch.device(loop.device)
            kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            device_ctx = device
        if problem.init_state is not None:
            state = clone_param_state(problem.init_state)
        else:
            state = {"params": {}, "constraints": {}}
        spec = problem.guide if problem.guide is not None else self.default_guide
        with device_ctx, pyro.get_param_store().scope(state) as state:
            guide, guide_name = build_guide(spec, problem.model, problem.structure)
            gtrace = guide_sites(guide, kwargs) if guide is not empty_guide else poutine.Trace()
            plan = self.plan(problem, loop, method, guide, guide_name, gtrace)
            minibatch = self._minibatch(problem, loop, plan, gtrace)
            try:
                history = run_loop(
                    loss_and_grads=plan.elbo.loss_and_grads,
                    model=plan.model,
                    guide=plan.guide,
                    kwargs=kwargs,
                    options=loop,
                    minibatch=minibatch,
                    method=self.name,
                )
            except FitError as err:
                err.result = Result.from_fit(
                    problem, self.name, plan, loop, method, pyro.get_param_store().get_state(),
                    {"losses": [], "steps": err.step or 0, "converged": False, "interrupted": True},
                )
                raise
            final_state = clone_param_state(pyro.get_param_store().get_state())
        return Result.from_fit(problem, self.name, plan, loop, method, final_state, history)

    def _minibatch(self, problem: Problem, loop: FitOptions, plan: VIPlan, gtrace: poutine.Trace):
        if loop.batch_size is None:
            return None
        data = problem.data.tensors()
        observed = problem.structure.observed_sites
        if not data or not observed:
            raise ValueError("batch_size needs data: the model has no observed data arguments")
        n = next(iter(data.values())).shape[0]
        plate = next(
            (p for p in problem.structure.plates.values() if p.size == n and all(p.name in s.plates for s in observed)),
            None,
        )
        if plate is None:
            raise UnsupportedModelError(
                f"batch_size={loop.batch_size} needs a plate of size {n} (the number of data rows) around every "
                "observed site; wrap the likelihood in `with lvm.plate(N) as data:`"
            )
        if loop.batch_size > n:
            raise ValueError(f"batch_size={loop.batch_size} is larger than the number of data rows ({n})")
        for name, node in gtrace.nodes.items():
            if node["type"] == "sample" and plate.name in [f.name for f in node["cond_indep_stack"]]:
                if "amortised" not in plan.guide_name and "user guide" not in plan.guide_name:
                    raise UnsupportedModelError(
                        f"batch_size with the {plan.guide_name!r} guide: site '{name}' is a local latent with its own "
                        "variational parameters per data row; minibatching it needs an amortised guide "
                        "(lvm.AmortizedNormal or a guide with an encoder), or fit without batch_size"
                    )
        arguments = [k for k, v in data.items() if v.dim() > 0 and v.shape[0] == n]
        return Minibatch(plate.name, n, loop.batch_size, arguments, plan.minibatch_scaling)


def local_and_global(structure: ModelStructure, gtrace: poutine.Trace) -> tuple[str | None, list[str]]:
    """The data plate (the plate around every observed site), and guide sites outside it (global latents)."""
    observed = structure.observed_sites
    common = set.intersection(*(set(s.plates) for s in observed)) if observed else set()
    data_plate = next(iter(sorted(common)), None)
    global_sites = [
        name
        for name, node in gtrace.nodes.items()
        if node["type"] == "sample"
        and not site_is_subsample(node)
        and data_plate not in [f.name for f in node["cond_indep_stack"]]
    ]
    if data_plate is None:
        global_sites = []
    return data_plate, global_sites
