"""The generic route's passes over the data: the E-step and the M-step's objective, over one chunk or many.

Data in memory are one chunk: the E-step keeps its :class:`~ppl_lvm.em.generic.estep.EStep`, whose marginals
the M-step's ``Q`` reads at every evaluation of the optimiser. Data read chunk by chunk
(:class:`~ppl_lvm.em.accumulate.ModelChunks`) keep nothing between chunks, so that memory stays at one chunk:

* the E-step is a pass summing each chunk's log-likelihood and data-plate size;
* every evaluation of ``Q`` by the M-step's optimiser (L-BFGS evaluates it repeatedly) is a pass that, chunk by
  chunk, recomputes the chunk's posterior marginals at the iteration's fixed old parameters (the model run with
  them substituted, :func:`pyro.poutine.substitute`), adds the chunk's ``Q`` and backpropagates its gradient,
  which accumulates in the parameters' ``.grad``. Recomputing, rather than caching the marginals of every chunk
  (``N`` times the states per latent), costs one more enumerated run of the model per chunk and evaluation.

In a data-parallel fit (:class:`~ppl_lvm.em.accumulate.ModelChunks` with a reducer) each rank runs the same passes
over its shard (in memory: one chunk whose E-step is kept, as in one process; or read chunk by chunk), and every
pass's sums, ``Q``'s gradient included, are summed over the ranks inside the pass: every evaluation the
optimiser makes, however many its line search asks for, is one sum over all the data on every rank.

The terms outside the data plate (parameter priors, ``lvm.factor`` terms on parameters) are counted in the first
chunk only (of rank 0), so sums over chunks and ranks equal the sums over the data held at once, to rounding. A
model whose log-likelihood does not factorise over the data plate (a discrete latent shared by all points) cannot
be read chunk by chunk nor sharded, and is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch

from ...errors import UnsupportedModelError
from ...interpreter import NotPlannable
from ..accumulate import ModelChunks
from .estep import EStep, e_step
from .interpreted import FastQ
from .mstep import Objective, expected_complete_log_likelihood, q_of_factors

__all__ = ["DataLikelihood", "e_step_pass", "q_objective"]


@dataclass
class DataLikelihood:
    """One E-step pass: the exact log-likelihood, the data plate's total size and name, the EStep in memory."""

    log_likelihood: float
    n_data: int | None
    data_plate: str | None
    e_step: EStep | None  # the data in memory's (None when read chunk by chunk)


def _check_chunk(estep: EStep, index: int, rows: int | None) -> None:
    if estep.data_plate is None or estep.log_likelihood_per_point is None:
        raise UnsupportedModelError(
            "data read chunk by chunk or shared among the ranks of a data-parallel fit (distributed=True) need a "
            "model whose log-likelihood is a sum over the points of its data plate (every latent inside that "
            "plate); this model has "
            + (
                "no plate around its observations"
                if estep.data_plate is None
                else f"a latent outside its data plate '{estep.data_plate}' that couples the points"
            )
            + ". Pass the data in memory, in one process"
        )
    if rows is not None and estep.n_data != rows:
        raise UnsupportedModelError(
            f"chunk {index} of the data has {rows} rows but the model's data plate '{estep.data_plate}' has size "
            f"{estep.n_data}: size the plate from the data (lvm.plate(len(x))), not from an argument"
        )


def e_step_pass(
    model: Callable, data: ModelChunks, max_plate_nesting: int, data_plate: str | None = None
) -> DataLikelihood:
    """The E-step at the store's parameters over every chunk and rank (see the module docstring)."""
    state = {"plate": data_plate, "first": data.reducer.rank == 0, "e_step": None}

    def part(index: int, kwargs: dict, rows: int | None) -> dict[str, torch.Tensor]:
        estep = e_step(model, kwargs, max_plate_nesting, max_bytes=None, data_plate=state["plate"])
        if data.streamed or data.distributed:
            _check_chunk(estep, index, rows)
        # found on the first chunk: a later chunk of one row has no plate dim to find it by
        state["plate"] = estep.data_plate
        # the terms outside the data plate once, with the first chunk (of rank 0)
        value = estep.log_likelihood if state["first"] else estep.log_likelihood_per_point.sum()
        state["first"] = False
        if not data.streamed:  # data in memory: one chunk, whose marginals the M-step reads
            state["e_step"] = estep
        out = {"log_likelihood": value}
        if estep.n_data is not None:
            out["n"] = torch.tensor(float(estep.n_data), dtype=torch.float64)
        return out

    total = data.total(part, what="computing the E-step")
    n = total.get("n")
    return DataLikelihood(float(total["log_likelihood"]), None if n is None else int(n.item()), state["plate"],
                          state["e_step"])


def q_objective(model: Callable, data: ModelChunks, max_plate_nesting: int, likelihood: DataLikelihood,
                fast: FastQ | None = None) -> Objective:
    """``objective(scale)`` of the M-step (:data:`~ppl_lvm.em.generic.mstep.Objective`) at this iteration's old
    parameters: the store's values now, before the optimiser moves them. In a data-parallel fit ``Q`` and its
    gradient are those of all the data, on every rank. ``fast``: evaluate ``Q`` by the interpreter while
    ``fast.active`` (:mod:`ppl_lvm.em.generic.interpreted`), else by Pyro's trace."""

    def chunk_q(kwargs: dict, marginals: dict, outside_plate: str | None) -> torch.Tensor:
        if fast is not None and fast.active:
            try:
                factors, plates = fast.plan.factors(kwargs, marginals)
            except NotPlannable as exc:
                fast.stop(str(exc))
            else:
                keep = None if outside_plate is None else (lambda name: outside_plate in plates[name])
                return q_of_factors(factors, marginals, keep)
        return expected_complete_log_likelihood(model, kwargs, max_plate_nesting, marginals,
                                                outside_plate=outside_plate)

    store = pyro.get_param_store()
    plate = likelihood.data_plate
    if data.streamed:
        old = {name: store[name].detach().clone() for name in store.keys()}
        at_old = poutine.substitute(model, data=old)

        def marginals_of(kwargs: dict) -> dict[str, torch.Tensor]:
            return e_step(at_old, kwargs, max_plate_nesting, max_bytes=None, data_plate=plate).marginals
    else:
        marginals = likelihood.e_step.marginals

        def marginals_of(kwargs: dict) -> dict[str, torch.Tensor]:
            return marginals
    # the leaves whose gradients are summed over the ranks (in name order, the same on every rank)
    leaves = [store._params[n] for n in sorted(store.keys()) if store._params[n].requires_grad]

    def objective(scale: float | None) -> torch.Tensor:
        first: list[bool] = [data.reducer.rank == 0]

        def part(index: int, kwargs: dict, rows: int | None) -> dict[str, torch.Tensor]:
            q = chunk_q(kwargs, marginals_of(kwargs), None if first[0] else plate)
            first[0] = False
            if scale is not None and q.requires_grad:
                (-q / scale).backward()
            return {"q": q.detach()}

        gradients = leaves if scale is not None and data.distributed else ()
        return data.total(part, gradients, what="evaluating the M-step's Q")["q"]

    return objective
