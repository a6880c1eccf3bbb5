"""One EM fit from one start, on each route, returned as an :class:`~ppl_lvm.outcome.EMOutcome`.

``method="em"`` has two routes (:mod:`ppl_lvm.backends.em` picks one and runs the restarts):

* the closed-form route, for a recognised finite mixture or hidden Markov chain: the kernels of
  :mod:`ppl_lvm.em.mixture` and :mod:`ppl_lvm.em.hmm`, started from :mod:`ppl_lvm.em.init`;
* the generic route, for any other model whose latents are all enumerable: :func:`ppl_lvm.em.generic.fit_generic_em`
  (in memory, or over data read chunk by chunk: :mod:`ppl_lvm.em.generic.passes`).

Starts of the generic route
---------------------------
``init_params="params"`` (its default) or a dict: restart 0 starts from the model's ``lvm.param`` values (with the
dict's values written over them); restart ``r >= 1`` from a random start around them: every unconstrained
coordinate of every parameter moved by standard normal noise drawn from ``torch.Generator().manual_seed(seed + r)``
(:func:`jitter_state`). ``init_params="random"``: every restart, restart 0 included, from such a random start.

Every fit warns (:class:`~ppl_lvm.errors.ConvergenceWarning`) when it stopped without meeting the rule of
:mod:`ppl_lvm.em.convergence` (not with ``tol=None``, which asks for every iteration, not for convergence); :func:`~ppl_lvm.backends.restarts.run_restarts` passes on only the kept fit's warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from ..collective import restarting, started
from ..errors import ConvergenceWarning
from ..guides import empty_guide
from ..handlers import enumerating
from ..outcome import EMOutcome, ResponsibilitiesOnDemand
from ..runtime import clone_param_state
from .accumulate import ModelChunks, Source
from .convergence import not_converged_message
from .generic import fit_generic_em, site_marginals
from .hmm import fit_hmm, hmm_e_step
from .init import initialize_hmm, initialize_mixture
from .mixture import fit_mixture
from .online import fit_mixture_online
from .parameters import n_data_points, n_free_parameters
from .ranks import Reducer
from .rows import MixtureRows

__all__ = ["EMRun", "closed_form_fit", "create_params", "em_outcome", "generic_fit", "jitter_state"]

GUIDE_NAME = "none (all latents enumerated)"


@dataclass
class EMRun:
    """What one fit reached, before it becomes an outcome: the model's final state and the kernel's numbers."""

    history: list[float]
    converged: bool
    n_iter: int
    state: dict
    log_likelihood: float
    per_point: torch.Tensor | None = None
    responsibilities: dict = field(default_factory=dict)
    #: data points of the whole fit when ``per_point`` covers only this rank's shard (a data-parallel fit) or is
    #: not held
    n_samples: int | None = None
    #: what this fit ran, recorded over the route's options (the generic route: ``fast_path``, ``fast_path_reason``)
    ran: dict = field(default_factory=dict)
    #: what recomputes every row's values on access when the fit does not hold them (:mod:`ppl_lvm.em.rows`)
    rows: Any = None


def create_params(model: Any, kwargs: dict, structure: Any) -> None:
    """Run the model once on all the data to create every ``lvm.param`` (initial values may read the data).

    With one discrete latent, inside the data plate (a mixture's assignment), it is enumerated, so the run holds K
    values of it, not one per data point, and the distributions inside the data plate are built on K rows of
    parameters (a mixture's ``locs[z]`` is (K, 1, D), not (N, D)); a parameter created after the latent is then
    drawn from the random stream before the latent's draws instead of after them. Other models are run as written
    (a global discrete latent enumerated could broadcast against every row).
    """
    latents = structure.discrete_latents
    if len(latents) == 1 and structure.is_local(latents[0].name):
        first = -1 - structure.max_plate_nesting
        model = poutine.enum(enumerating(model, [latents[0].name]), first_available_dim=first)
    poutine.trace(model).get_trace(**kwargs)


def em_outcome(problem: Any, options: dict, seed: int, run: EMRun, pattern: Any) -> EMOutcome:
    """The outcome of one fit: history, exact log-likelihood, responsibilities and the BIC counts."""
    n = run.n_samples if run.n_samples is not None else n_data_points(pattern, run.per_point, problem.structure)
    history = np.asarray(run.history, dtype=float)
    outcome = EMOutcome(
        method="em",
        losses=-history * max(n, 1),
        converged=bool(run.converged),
        steps=int(run.n_iter),
        seed=int(seed),
        guide_name=GUIDE_NAME,
        model=problem.model,
        guide=empty_guide,
        data=problem.data,
        structure=problem.structure,
        param_state=run.state,
        options={**options, **run.ran},
        enumerated=[s.name for s in problem.structure.discrete_latents],
        interrupted=False,
        log_likelihood=float(run.log_likelihood),
        history=history,
        n_iter=int(run.n_iter),
        responsibilities=dict(run.responsibilities) if run.rows is None else ResponsibilitiesOnDemand(run.rows),
        log_likelihood_per_point=run.per_point,
        closed_form=pattern is not None,
        n_samples=n,
        pattern=pattern,
        streams=dict(problem.streams),
        rows=run.rows,
    )
    outcome.n_parameters = n_free_parameters(pattern, outcome.constrained_params(), run.state["constraints"])
    return outcome


def _warn_unless_converged(converged: bool, max_iter: int, tol: float | None, restart: int, seed: int) -> None:
    if not converged and tol is not None:  # tol=None asked for every iteration, not for convergence
        warnings.warn(f"{not_converged_message(max_iter, tol)} (restart {restart}, seed {seed})", ConvergenceWarning,
                      stacklevel=3)


def closed_form_fit(pattern: Any, source: Source, initial: dict, options: dict,
                    callback: Callable[[int, float], bool], keep_rows: bool = True) -> Callable[[int, int], EMRun]:
    """``fit_once(restart, seed) -> EMRun`` of a recognised mixture (``fit_mixture``) or chain (Baum-Welch).

    ``source`` holds this process's data (:class:`~ppl_lvm.em.accumulate.Source`; in a data-parallel fit, the
    rank's shard and the reducer). ``options`` are the resolved options (``init_params`` a string or ``"dict"``,
    ``reg_covar`` a float); ``callback(iteration, mean_log_likelihood)`` returns True to stop. In a data-parallel
    fit the start is rank 0's (a data-seeded start is drawn from rank 0's shard) and every rank receives it; the
    log-likelihood and the number of points are those of the whole data, the per-point values and
    responsibilities those of the rank's shard. ``keep_rows``: a mixture's data in memory keep every row's values
    in the run; otherwise the run carries what recomputes them on access (:class:`~ppl_lvm.em.rows.MixtureRows`).
    """
    chain = hasattr(pattern, "trans")
    family = pattern.family
    reducer = source.reducer
    init = options["init_params"]
    # rows to seed a data-driven start from (a random chunk's worth of a large tensor): only where they are read
    x, cache = (None, None) if source.streamed and init in ("params", "dict") else source.local_data()
    lengths = [int(v) for v in pattern.lengths] if chain and not source.streamed else None
    reg, tol, max_iter = options["reg_covar"], options["tol"], options["max_iter"]
    # the chain kernel reports total log-likelihoods (hmmlearn's units); ours are per observation
    per = float(source.n) if chain else 1.0
    initialize = initialize_hmm if chain else initialize_mixture
    store = pyro.get_param_store()
    in_memory = not source.streamed or source.data.per_row  # every row's values can be kept or recomputed

    def kernel_callback(i: int, ll: float, params: Any) -> bool:
        return callback(i, ll / per)

    def fit_once(restart: int, seed: int) -> EMRun:
        restarting(f"drawing the start of restart {restart} (seed {seed})")
        store.set_state(clone_param_state(initial))
        start = None
        if init in ("params", "dict"):
            start = family.complete_params(pattern.to_kernel(store))
        elif reducer.rank == 0:
            start = initialize(x, family, pattern.n_components, init, seed=seed, reg=reg, cache=cache)
        started()  # every rank has its start (rank 0 the one it drew): the iterations' sums are not checked
        start = reducer.broadcast(start)
        rows = None
        if chain:
            fit = fit_hmm(source, None, family, start, max_iter=max_iter, tol=None if tol is None else tol * per,
                          reg=reg, callback=kernel_callback)
            if source.streamed:  # no (N, K) state posteriors of data never held at once; the final log-likelihood
                per_point, resp = None, None
                total = sum(float(hmm_e_step(family.log_prob(None, fit.params, cache=c), None,
                                             fit.params["startprob"], fit.params["transmat"],
                                             buckets=buckets).log_likelihood.sum())
                            for c, buckets in source.chunks())
            else:
                e = hmm_e_step(family.log_prob(x, fit.params, cache=cache), lengths, fit.params["startprob"],
                               fit.params["transmat"])
                per_point, resp = e.log_likelihood.clone(), pattern.pad(e.gamma)
                total = per_point.sum(dtype=torch.float64)
        else:
            if options.get("online"):
                fit = _online(source, family, start, options, seed, kernel_callback)
            else:
                fit = fit_mixture(source, family, start, max_iter=max_iter, tol=tol, reg=reg,
                                  callback=kernel_callback)
            if in_memory or not options.get("online"):
                # the final E-step, in the fit's own chunks: the total, and every row's values where they are kept
                rows = MixtureRows.from_source(source, fit.params, pattern.latent)
                keep = in_memory and keep_rows
                per_point, resp, total = rows.compute(keep, keep, caches=(c for c, _ in source.chunks()))
                rows = rows if in_memory and not keep_rows else None
            else:  # online EM over data never held at once: its own last pass's log-likelihood
                per_point, resp, total = None, None, fit.log_likelihood
        pattern.to_model(fit.params, store)
        _warn_unless_converged(fit.converged, max_iter, tol, restart, seed)
        total = float(reducer.sum({"log_likelihood": torch.as_tensor(total, dtype=torch.float64)})["log_likelihood"])
        responsibilities = {} if resp is None else {pattern.latent: resp}
        n_samples = source.n if reducer.distributed or per_point is None else None
        return EMRun([h / per for h in fit.history], fit.converged, fit.n_iter, clone_param_state(store.get_state()),
                     total, per_point, responsibilities, n_samples, rows=rows)

    return fit_once


def _online(source: Source, family: Any, start: dict, options: dict, seed: int, callback: Any) -> Any:
    """Online EM over the source's data; the fit reads like a kernel's (``n_iter``: passes)."""
    # a tensor in memory is shuffled whole every pass, also when the batch EM route reads it in chunks
    data = source.data.tensor if source.streamed and source.data.per_row else source.data
    fit = fit_mixture_online(data, family, start, batch_size=options["batch_size"] or 1000,
                             max_passes=options["max_iter"], tol=options["tol"],
                             step_exponent=options["step_exponent"], polyak=options["polyak"],
                             reg=options["reg_covar"], seed=seed, callback=callback)
    fit.n_iter = fit.n_passes
    return fit


def jitter_state(state: dict, seed: int) -> dict:
    """A copy of a parameter-store state with every unconstrained coordinate moved by N(0, 1) noise.

    The noise comes from ``torch.Generator().manual_seed(seed)``, parameters in name order, so a seed fixes it.
    """
    generator = torch.Generator().manual_seed(int(seed))
    moved = {}
    for name in sorted(state["params"]):
        value = state["params"][name]
        if value.is_floating_point():
            value = value.detach() + torch.randn(value.shape, generator=generator, dtype=torch.float64).to(value.dtype)
        moved[name] = value
    return clone_param_state({"params": moved, "constraints": state["constraints"]})  # trainable leaves again


def generic_fit(model: Any, kwargs: dict, structure: Any, initial: dict, options: dict,
                callback: Callable[[int, float], bool], data: ModelChunks | None = None,
                dsl_model: Any = None) -> Callable[[int, int], EMRun]:
    """``fit_once(restart, seed) -> EMRun`` of the generic route; the starts are those of the module docstring.

    ``dsl_model``: the model as written (``model`` is it with its latents marked for enumeration), whose ``Q`` the
    M-step evaluates by the interpreter when ``options["fast_path"]`` (:mod:`ppl_lvm.em.generic.interpreted`).

    The enumeration size is checked once by the caller, not per restart. ``data``: the arguments read chunk by
    chunk, or the rank's shard of a data-parallel fit (:class:`~ppl_lvm.em.accumulate.ModelChunks`); a streamed
    fit keeps no per-point values or responsibilities, and its ``n_samples`` is the data plate's total size. In a
    data-parallel fit every restart starts from rank 0's start (its random start too) and every pass is summed
    over the ranks (:mod:`ppl_lvm.em.generic.passes`); the log-likelihood, history and ``n_samples`` are those
    of all the data, the per-point values and responsibilities those of the rank's shard (none when streamed).
    """
    store = pyro.get_param_store()
    tol, max_iter = options["tol"], options["max_iter"]
    random_start = options["init_params"] == "random"
    streamed = data is not None and data.streamed
    reducer = data.reducer if data is not None else Reducer()
    # the ranks shard the structure's data plate; a rank of one row has no plate dim to find it by
    data_plate = structure.data_plate if reducer.distributed else None

    def fit_once(restart: int, seed: int) -> EMRun:
        restarting(f"setting up restart {restart} (seed {seed})")
        jitter = random_start or restart > 0
        store.set_state(reducer.broadcast_state(jitter_state(initial, seed) if jitter else clone_param_state(initial)))
        started()  # the passes of the iterations are checked by themselves (Reducer.sum_checked)
        out = fit_generic_em(model, kwargs, structure.max_plate_nesting, max_iter=max_iter, tol=tol,
                             callback=callback, max_bytes=None, data=data, dsl_model=dsl_model,
                             fast_path=options.get("fast_path", True), data_plate=data_plate)
        _warn_unless_converged(out["converged"], max_iter, tol, restart, seed)
        state = clone_param_state(store.get_state())
        history, converged, n_iter = list(out["history"]), bool(out["converged"]), int(out["n_iter"])
        ran = {"fast_path": out["fast_path"], "fast_path_reason": out["fast_path_reason"]}
        if streamed:
            return EMRun(history, converged, n_iter, state, float(out["log_likelihood"]), None, {}, int(out["n_data"]),
                         ran=ran)
        e_step = out["e_step"]
        return EMRun(history, converged, n_iter, state, float(out["log_likelihood"]), e_step.log_likelihood_per_point,
                     site_marginals(e_step, structure), int(out["n_data"]) if reducer.distributed else None, ran=ran)

    return fit_once
