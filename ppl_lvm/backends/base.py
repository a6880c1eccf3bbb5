"""What a backend receives and the shared path of the variational backends.

A variational backend only decides its ELBO and refuses the models it cannot fit; building the guide, the
enumeration of discrete latents the guide does not sample, minibatching and the loop are shared here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoGuide
from pyro.poutine.util import site_is_subsample

from ..collective import collective, restarting, set_up, started
from ..data import row_arguments
from ..errors import FitError, UnsupportedModelError
from ..fit import FitOptions, Minibatch, run_loop
from ..guides import build_guide, empty_guide
from ..handlers import enumerating
from ..outcome import Outcome
from ..runtime import FitContext, clone_param_state, fit_scope, run_scope
from ..structure import ModelStructure
from .distributed import DataParallel, check_rows_guide
from .guide_check import check_guide
from .planned import Planner
from .problem import OPTION_HINTS, Problem
from .restarts import run_restarts

__all__ = ["Backend", "Problem", "VIPlan", "VariationalBackend", "guide_sites"]


class Backend(ABC):
    """Base class: ``name``, the option class it accepts, and :meth:`fit`."""

    name = ""
    options_class: type = FitOptions
    method_options: tuple[str, ...] = ()

    def option_names(self) -> set[str]:
        """Every option this method accepts (what a fit records besides them, e.g. which estimator ran, is not one)."""
        return set(self.options_class.names()) | set(self.method_options)

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

    def keeps_float32(self, loop: Any) -> bool:
        """Whether float32 data stay float32 on the way in (not converted to torch's default dtype): the
        backend's kernels read them as given (``loop``: the parsed options)."""
        return False

    def options_of(self, problem: Problem) -> tuple[Any, dict[str, Any]]:
        """The problem's options as parsed by :meth:`parse_options` (once, in :func:`make_problem`)."""
        if problem.parsed_options is None:  # a Problem built by hand
            problem.parsed_options = self.parse_options(problem.options)
        return problem.parsed_options

    @abstractmethod
    def fit(self, problem: Problem):
        """Fit ``problem`` and return an :class:`~ppl_lvm.outcome.Outcome` (``lvm.infer`` builds the result from it)."""


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
    """One trace of ``guide`` (sample sites it draws) as a fit step draws them (a relaxed guide draws relaxed
    values there); run inside the fit's parameter scope."""
    with torch.random.fork_rng(devices=[]), run_scope(guide), fit_scope(FitContext()):
        return poutine.trace(guide).get_trace(**kwargs)


class VariationalBackend(Backend):
    """Shared ``fit`` of svi / meanfield / iwae / renyi: subclasses implement :meth:`plan`."""

    default_guide: str | None = None
    #: whether :meth:`plan` relaxes the model's prior where a relaxed guide samples (the Gumbel-softmax)
    relaxes_guides = False

    @abstractmethod
    def plan(self, problem: Problem, loop: FitOptions, method: dict, guide: Any, guide_name: str,
             guide_trace: poutine.Trace) -> VIPlan:
        """Choose the ELBO (and refuse models the method cannot fit)."""

    def fit(self, problem: Problem) -> Outcome:
        """Fit once, or ``n_init`` times with seeds ``seed, seed + 1, ...`` keeping the highest :meth:`bound_at`.

        Restarts run through :func:`~ppl_lvm.backends.restarts.run_restarts` (a restart whose loss turns NaN is
        dropped with an :class:`~ppl_lvm.errors.InferenceWarning`; its ``FitError`` is raised only when every restart
        fails). Networks registered with ``lvm.module`` are trained in place, so their restarts continue from the
        weights the previous restart reached: restarts are meant for models with a few global unknowns (mixtures,
        chains), where local optima differ.

        With ``distributed=True`` every rank runs this together (:mod:`ppl_lvm.backends.distributed`).
        """
        loop, method = self.options_of(problem)
        with set_up("setting up the fit", active=loop.distributed):  # up to each restart's first step
            parallel = DataParallel.start(self, problem, loop, method) if loop.distributed else None

            def fit_once(restart: int, seed: int) -> Outcome:
                return self._fit_once(problem, dataclasses.replace(loop, seed=seed), method, parallel)

            return run_restarts(fit_once, n_init=loop.n_init, seed=int(loop.seed), name=self.name,
                                score=self.bound_at if loop.n_init > 1 else lambda o: 0.0)

    #: at most this many evaluations of the bound estimator in :meth:`bound_at`
    bound_evaluations = 32

    def bound_estimator(self, outcome: Outcome) -> Any:
        """The estimator of the bound that :meth:`bound_at` averages: the ELBO, discrete latents enumerated."""
        options = outcome.options
        common = dict(num_particles=int(options.get("num_particles", 1)),
                      vectorize_particles=bool(options.get("vectorize_particles", True)),
                      max_plate_nesting=outcome.structure.max_plate_nesting)
        if outcome.enumerated:
            return TraceEnum_ELBO(strict_enumeration_warning=False, **common)
        return Trace_ELBO(**common)

    def bound_at(self, outcome: Outcome, parallel: DataParallel | None = None) -> float:
        """The bound at the outcome's parameters (what ``result.elbo`` reports and restarts are ranked by).

        The mean of up to :attr:`bound_evaluations` evaluations of :meth:`bound_estimator` on the whole data set
        with the fit's number of particles, seeded by the fit's seed (the same number every time it is asked,
        from a loaded result too); it stops early once the standard error of the mean is below 0.01 nats or
        1e-6 of the bound, at once when two evaluations agree exactly (nothing is sampled: a fully enumerated
        model, where it is the exact log-likelihood). Cached in ``outcome.cache["bound"]``.
        """
        if "bound" in outcome.cache:
            return outcome.cache["bound"]
        if outcome.model is None or outcome.structure is None or outcome.steps == 0:
            return math.nan
        elbo = self.bound_estimator(outcome)
        model = enumerating(outcome.model, outcome.enumerated) if outcome.enumerated else outcome.model
        guide = outcome.guide
        if parallel is not None:  # each evaluation is summed over the ranks' shards (the global terms once)
            model, guide = parallel.wrap(model), parallel.wrap(guide)
        kwargs = dict(outcome.data.kwargs)
        device = outcome.options.get("device")
        if device is not None:
            kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        values: list[float] = []
        with outcome.activated(), torch.no_grad(), torch.random.fork_rng(devices=[]):
            if isinstance(outcome.guide, AutoGuide) and outcome.guide.prototype_trace is None:
                outcome.guide._setup_prototype(**kwargs)
            torch.manual_seed(int(outcome.seed))
            for i in range(self.bound_evaluations):
                value = -float(elbo.loss(model, guide, **kwargs))
                values.append(parallel.total(value) if parallel is not None else value)
                if i == 1 and values[0] == values[1]:
                    break
                if i >= 3:
                    se = float(np.std(values, ddof=1)) / math.sqrt(len(values))
                    if se < max(0.01, 1e-6 * abs(float(np.mean(values)))):
                        break
        bound = float(np.mean(values)) if all(math.isfinite(v) for v in values) else math.nan
        outcome.cache["bound"] = bound
        return bound

    def _fit_once(self, problem: Problem, loop: FitOptions, method: dict, parallel: DataParallel | None = None):
        pyro.set_rng_seed(int(loop.seed))
        if parallel is not None:
            restarting(f"setting up the fit (seed {loop.seed})")
            parallel.reset_stream(int(loop.seed))
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
        spec = problem.guide
        if spec is None and problem.model.user_guide is None:  # the declared guide wins
            spec = self.default_guide
        together = collective(f"setting up the fit (seed {loop.seed})") if parallel else contextlib.nullcontext()
        with device_ctx, pyro.get_param_store().scope(state) as state:
            with together:
                guide, guide_name = build_guide(spec, problem.model, problem.structure)
                gtrace = guide_sites(guide, kwargs) if guide is not empty_guide else poutine.Trace()
                check_guide(problem.structure, gtrace, guide, guide_name)
                if getattr(guide, "relaxed", False) and not self.relaxes_guides:
                    raise UnsupportedModelError(
                        f"method {self.name!r} with the relaxed guide {guide_name}: the Gumbel-softmax relaxation is "
                        "fitted by method='svi', which relaxes the model's prior at the site with it; use "
                        "method='svi', or relaxed=False")
                plan = self.plan(problem, loop, method, guide, guide_name, gtrace)
                minibatch = self._minibatch(problem, loop, plan, gtrace, parallel)
                if parallel is not None:
                    check_rows_guide(gtrace, parallel.plate, plan.guide_name)
                    with torch.random.fork_rng(devices=[]), run_scope(problem.model):  # creates the model's params
                        poutine.trace(poutine.replay(problem.model, trace=gtrace)).get_trace(**kwargs)
            if parallel is not None:
                parallel.broadcast_params(pyro.get_param_store())  # DDP's start: rank 0's values everywhere
                started()  # a step's failure is announced by the step itself (DataParallel.check_step)
            planner = Planner(plan.elbo, plan.guide, self._no_fast_path(loop, plan, parallel))
            try:
                history = run_loop(
                    loss_and_grads=plan.elbo.loss_and_grads,
                    model=plan.model,
                    guide=plan.guide,
                    kwargs=kwargs,
                    options=loop,
                    minibatch=minibatch,
                    method=self.name,
                    parallel=parallel,
                    planner=planner if planner.loss is not None else None,
                )
                history["fast_path_reason"] = None if history["fast_path"] else planner.reason
            except FitError as err:
                err.outcome = self._outcome(
                    problem, plan, loop, method, pyro.get_param_store().get_state(),
                    {"losses": [], "steps": err.step or 0, "converged": False, "interrupted": True},
                )
                raise
            final_state = clone_param_state(pyro.get_param_store().get_state())
        outcome = self._outcome(problem, plan, loop, method, final_state, history)
        if parallel is not None:  # now, while every rank is here: the bound of all the data, cached for result.elbo
            parallel.full_data()
            self.bound_at(outcome, parallel)
        return outcome

    @staticmethod
    def _no_fast_path(loop: FitOptions, plan: VIPlan, parallel: DataParallel | None) -> str | None:
        """Why the fit's steps cannot run on the fast path whatever the model (``None``: the planner decides)."""
        if not loop.fast_path:
            return "fast_path=False"
        if parallel is not None:
            return "distributed=True (the gradients are summed over the ranks by Pyro's path)"
        if plan.enumerated:
            return f"the discrete latents {plan.enumerated} are summed out by enumeration (TraceEnum_ELBO)"
        if loop.device is not None and torch.device(loop.device).type != "cpu":
            return f"device={loop.device!r} (the fast path replays the CPU generator's draws only)"
        return None

    def _outcome(self, problem: Problem, plan: VIPlan, loop: FitOptions, method: dict, state: dict,
                 history: dict) -> Outcome:
        options = {k: v for k, v in vars(loop).items() if k not in ("callbacks",) and not callable(v)}
        options.update(method)
        options["fast_path"] = bool(history.get("fast_path", False))  # what ran, and why not
        options["fast_path_reason"] = history.get("fast_path_reason", "the fit stopped with an error")
        return Outcome(
            method=self.name,
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

    def _minibatch(self, problem: Problem, loop: FitOptions, plan: VIPlan, gtrace: poutine.Trace,
                   parallel: DataParallel | None = None):
        if loop.batch_size is None:
            return None
        data = problem.data.tensors()
        observed = problem.structure.observed_sites
        if not data or not observed:
            raise ValueError("batch_size needs data: the model has no observed data arguments")
        n = next(iter(data.values())).shape[0]
        name = problem.structure.data_plate
        plate = problem.structure.plates[name] if name is not None else None
        if plate is None or plate.size != n:
            raise UnsupportedModelError(
                f"batch_size={loop.batch_size} needs a plate of size {n} (the number of data rows) around every "
                "observed site; wrap the likelihood in `with lvm.plate(N) as data:`"
            )
        if parallel is None and loop.batch_size > n:
            raise ValueError(f"batch_size={loop.batch_size} is larger than the number of data rows ({n})")
        for name, node in gtrace.nodes.items():
            if node["type"] == "sample" and plate.name in [f.name for f in node["cond_indep_stack"]]:
                if "amortised" not in plan.guide_name and "user guide" not in plan.guide_name:
                    raise UnsupportedModelError(
                        f"batch_size with the {plan.guide_name!r} guide: site '{name}' is a local latent with its own "
                        "variational parameters per data row; minibatching it needs an amortised guide "
                        "(lvm.AmortizedNormal or a guide with an encoder), or fit without batch_size"
                    )
        arguments = row_arguments(data, n)[1]
        size = n if parallel is None else parallel.n_total  # a data-parallel batch is drawn from all the rows
        return Minibatch(plate.name, size, loop.batch_size, arguments, plan.minibatch_scaling)


def local_and_global(structure: ModelStructure, gtrace: poutine.Trace) -> tuple[str | None, list[str]]:
    """The data plate (:attr:`ModelStructure.data_plate`), and the guide sites outside it (global latents)."""
    data_plate = structure.data_plate
    if data_plate is None:
        return None, []
    global_sites = [
        name
        for name, node in gtrace.nodes.items()
        if node["type"] == "sample"
        and not site_is_subsample(node)
        and data_plate not in [f.name for f in node["cond_indep_stack"]]
    ]
    return data_plate, global_sites
