"""The generic EM loop: alternate exact E-steps and generalised M-steps until convergence."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ...errors import EMDegeneracyWarning
from ..accumulate import ModelChunks
from ..convergence import ConvergenceMonitor
from .factors import _enum_trace
from .interpreted import FastQ
from .mstep import _store_params, maximise_q, q_of_factors
from .passes import e_step_pass, q_objective
from .size import DEFAULT_MAX_BYTES, check_enumeration_size

__all__ = ["fit_generic_em"]


def fit_generic_em(
    model: Callable,
    kwargs: dict[str, Any],
    max_plate_nesting: int,
    max_iter: int = 100,
    tol: float | None = 1e-3,
    callback: Callable[[int, float], Any] | None = None,
    *,
    params: list[str] | None = None,
    max_steps: int = 50,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    data: ModelChunks | None = None,
    dsl_model: Callable | None = None,
    fast_path: bool = True,
    data_plate: str | None = None,
) -> dict[str, Any]:
    """Exact (generalised) EM: alternate :func:`e_step` and :func:`generic_m_step` until convergence.

    Parameters
    ----------
    model, kwargs, max_plate_nesting
        As for :func:`e_step`.
    max_iter : int
        Maximum number of M-steps.
    tol : float or None
        Convergence when the mean log-likelihood changes by less than ``tol`` (:mod:`ppl_lvm.em.convergence`);
        ``None``: no early stop, all ``max_iter`` iterations run.
    callback : callable, optional
        ``callback(iteration, mean_log_likelihood)`` after each iteration (the value just appended to
        ``history``); a truthy return value stops the fit (``converged`` is then True only if the tolerance was
        also met).
    params : list of str, optional
        Parameters to optimise (default all of the store).
    max_steps : int
        L-BFGS iterations per M-step.
    max_bytes : int or None
        Memory limit of the E-step (checked once, before the first E-step, on ``kwargs``).
    data : ModelChunks, optional
        The data read chunk by chunk (:class:`~ppl_lvm.em.accumulate.ModelChunks`; ``kwargs`` then hold the first
        chunk), or a rank's shard of a data-parallel fit; every E-step and every evaluation of the M-step's ``Q``
        is a pass over the chunks, summed over the ranks (:mod:`ppl_lvm.em.generic.passes`). Default: ``kwargs``
        in memory.
    dsl_model : callable, optional
        The model as written with the DSL's statements, with no Pyro handler around it (``model`` is it with its
        latents marked for enumeration): the M-step then evaluates ``Q`` by running it through the interpreter,
        when that ``Q`` and its gradient equal the traced ones at the first M-step
        (:mod:`ppl_lvm.em.generic.interpreted`). Default: every evaluation is a Pyro trace of ``model``.
    fast_path : bool
        ``False``: every evaluation of ``Q`` is a Pyro trace, whatever ``dsl_model``.
    data_plate : str, optional
        The data plate, when known (a data-parallel fit's, from the model's structure: a rank holding one row has
        no plate dim to find it by); default: found by the first E-step.

    Returns
    -------
    dict
        ``history``: list of floats, the log-likelihood of the start and after each iteration
        (``len(history) == n_iter + 1``) divided by the size of the data plate when there is one, else the total;
        ``converged`` (bool); ``n_iter`` (iterations run); ``e_step``: the final :class:`EStep` (at the final
        parameters; None for data read chunk by chunk); ``log_likelihood`` (float) and ``n_data`` (the data
        plate's size, or None) at the final parameters; ``fast_path`` (bool: every M-step after the check evaluated
        ``Q`` by the interpreter) and ``fast_path_reason`` (why not; None when it did).

    Notes
    -----
    The log-likelihood never decreases: an M-step whose ``Q`` did not increase is rejected (the parameters are at
    a fixed point of the M-step; the iteration reports the previous value again, a change of 0, so the loop stops
    converged when ``tol > 0``, and otherwise goes on: the M-step is not recomputed from the unchanged E-step, it
    would be rejected again), and if an accepted M-step lowered the log-likelihood by more than a 1e-9 relative
    slack the parameters are restored and the loop stops with an :class:`~ppl_lvm.em.mixture.EMDegeneracyWarning`.
    """
    check_enumeration_size(model, kwargs, max_plate_nesting, max_bytes)
    data = data if data is not None else ModelChunks(kwargs)
    estep = e_step_pass(model, data, max_plate_nesting, data_plate)
    n = estep.n_data if estep.n_data else 1
    ll = estep.log_likelihood
    monitor = ConvergenceMonitor(tol)
    monitor.report(ll / n)
    n_iter = 0
    leaves = _store_params(params)
    stuck = False  # the last M-step was rejected: the parameters and the E-step have not changed since
    fast = FastQ(dsl_model, None if fast_path else "fast_path=False")
    for iteration in range(1, max_iter + 1):
        n_iter = iteration
        if not stuck:
            snapshot = {k: p.detach().clone() for k, p in leaves.items()}
            objective = q_objective(model, data, max_plate_nesting, estep, fast)
            if not fast.started:  # the check, at the first M-step's old parameters
                fast.start(lambda: _traced(model, data, max_plate_nesting),
                           q_objective(model, data, max_plate_nesting, estep), objective, leaves)
            # in memory in one process, Q at the old parameters is the E-step's factors summed (the same numbers as a
            # fresh trace); a rank's E-step covers only its shard, so a data-parallel fit evaluates the sum over all
            q_before = (None if estep.e_step is None or data.distributed
                        else q_of_factors(estep.e_step.factors, estep.e_step.marginals))
            info = maximise_q(objective, params=params, max_steps=max_steps, q_before=q_before)
            if info["nan"]:
                warnings.warn(
                    f"generic EM: the M-step of iteration {iteration} produced NaN; parameters restored, fit stopped",
                    EMDegeneracyWarning,
                    stacklevel=2,
                )
                break
            stuck = not info["accepted"]
        if stuck:
            converged = monitor.fixed_point()
        else:
            new = e_step_pass(model, data, max_plate_nesting, estep.data_plate)
            new_ll = new.log_likelihood
            if not math.isfinite(new_ll) or new_ll < ll - 1e-9 * max(1.0, abs(ll)):
                with torch.no_grad():
                    for k, p in leaves.items():
                        p.copy_(snapshot[k])
                warnings.warn(
                    f"generic EM: iteration {iteration} lowered the log-likelihood ({ll!r} -> {new_ll!r}); "
                    "parameters restored, fit stopped",
                    EMDegeneracyWarning,
                    stacklevel=2,
                )
                break
            estep, ll = new, new_ll
            converged = monitor.report(ll / n)
        if callback is not None and bool(callback(iteration, ll / n)):
            break
        if converged:
            break
    return {"history": monitor.history, "converged": monitor.converged, "n_iter": n_iter, "e_step": estep.e_step,
            "log_likelihood": ll, "n_data": estep.n_data, "fast_path": fast.active,
            "fast_path_reason": fast.reason if fast.started else "no M-step ran"}


def _traced(model: Callable, data: ModelChunks, max_plate_nesting: int) -> Any:
    with torch.no_grad():
        return _enum_trace(model, data.kwargs, max_plate_nesting)
