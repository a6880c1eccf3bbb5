"""One step of the fit loop: the minibatch of a step, its loss and gradients on the fast path or on Pyro's, and the
snapshot of the best parameters.

:class:`Stepper` takes the steps: Pyro's estimator, or from the second step the planned loss of
:mod:`ppl_lvm.backends.planned` when the planner accepts the first step; after the first step, on either path, one
torch optimiser steps all the parameters (:class:`~ppl_lvm.fit_options.FlatOptim`). A planned step that meets a
changed structure or a non-finite loss restores the random state and is taken again by Pyro, which runs the rest of
the fit.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import pyro.infer.util
import pyro.poutine as poutine
import torch

from .fit_options import FlatOptim, Minibatch
from .interpreter import NotPlannable
from .runtime import FitContext

__all__ = ["Batches", "BestSnapshot", "Stepper"]

_SHAPE = operator.attrgetter("shape")


class Batches:
    """The rows of each step: a seeded permutation per pass over the data, the last partial batch dropped.

    :meth:`next` returns the step's keyword arguments (the sliced data) and the factor of its loss and gradients,
    and sets the fit context's subsample of the data plate (``scaling="plate"``).
    """

    def __init__(self, minibatch: Minibatch, seed: int, ctx: FitContext, parallel: Any = None):
        self.minibatch, self.ctx, self.parallel = minibatch, ctx, parallel
        self.generator = torch.Generator().manual_seed(int(seed))
        self.order: torch.Tensor | None = None
        self.cursor = 0

    def next(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], float]:
        mb = self.minibatch
        if self.order is None or self.cursor + mb.batch_size > mb.size:
            self.order = torch.randperm(mb.size, generator=self.generator)
            self.cursor = 0
        idx = self.order[self.cursor : self.cursor + mb.batch_size]
        self.cursor += mb.batch_size
        full, factor = mb.size, 1.0
        if self.parallel is not None:  # the global batch's rows in this rank's shard
            idx, full, factor = self.parallel.local_rows(idx, mb.batch_size)
        step_kwargs = dict(kwargs)
        for name in mb.arguments:
            value = kwargs[name]
            step_kwargs[name] = value.index_select(0, idx if idx.device == value.device else idx.to(value.device))
        if mb.scaling == "plate":
            self.ctx.subsample = {mb.plate: (full, idx)}
            return step_kwargs, 1.0
        return step_kwargs, factor * mb.size / mb.batch_size


class BestSnapshot:
    """The unconstrained parameters at the best smoothed loss so far, in buffers allocated once.

    :meth:`take` copies the store's tensors into the buffers with one ``torch._foreach_copy_`` while the store holds
    the same tensors as at the last copy (every step of a fit, unless a parameter is created or replaced); otherwise
    it rebuilds the buffers. :attr:`state` maps each name to its buffer (names no longer in the store are kept).
    """

    def __init__(self, store: Any):
        self.store = store
        self.state: dict[str, torch.Tensor] = {}
        self._sources: tuple[torch.Tensor, ...] = ()
        self._shapes: list[torch.Size] = []
        self._targets: list[torch.Tensor] = []
        self.take()

    def take(self) -> dict[str, torch.Tensor]:
        sources = tuple(self.store._params.values())
        grad = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)  # torch.no_grad() without its three Python calls (this runs most steps)
        try:
            if (len(sources) == len(self._sources) and all(map(operator.is_, sources, self._sources))
                    and list(map(_SHAPE, sources)) == self._shapes):
                if sources:
                    torch._foreach_copy_(self._targets, sources)  # one call for all of them
            else:
                self._rebuild()
        finally:
            torch._C._set_grad_enabled(grad)
        return self.state

    def _rebuild(self) -> None:
        copy_from, copy_to = [], []
        for name, value in self.store._params.items():
            kept = self.state.get(name)
            if kept is None or kept.shape != value.shape or kept.dtype != value.dtype or kept.device != value.device:
                self.state[name] = value.detach().clone()
            else:
                copy_from.append(value)
                copy_to.append(kept)
        if copy_to:
            torch._foreach_copy_(copy_to, copy_from)
        self._sources = tuple(self.store._params.values())
        self._shapes = [s.shape for s in self._sources]
        self._targets = [self.state[name] for name in self.store._params]

    def restore(self) -> None:
        """Put the snapshot back into the store, as fresh leaves (what a failed fit leaves behind)."""
        self.store._params.update({k: v.clone().requires_grad_() for k, v in self.state.items()})


class Stepper:
    """The loss and gradients of one step, on the fast path (``planned``) or by Pyro's estimator.

    Parameters
    ----------
    loss_and_grads : callable
        Pyro's ``elbo.loss_and_grads``.
    model, guide : callable
        What Pyro's estimator runs (wrapped by the KL weight and the data-parallel handlers where they apply).
    raw_model, raw_guide : callable
        What the planned loss runs (the interpreter applies the KL weight itself).
    planner : Planner, optional
        Decides after the first step whether the rest run on the fast path.
    optim : PyroOptim
        The optimiser; :attr:`optim` becomes a :class:`FlatOptim` over the same rule after the first step (on
        either path: the same steps, bit for bit, in one optimiser call instead of one per parameter).
    """

    def __init__(self, loss_and_grads: Any, model: Any, guide: Any, raw_model: Any, raw_guide: Any, planner: Any,
                 optim: Any):
        self.loss_and_grads, self.model, self.guide = loss_and_grads, model, guide
        self.raw_model, self.raw_guide, self.planner = raw_model, raw_guide, planner
        self.optim = optim
        self.planned: Any = None
        self._named: dict[str, torch.Tensor] = {}
        self._params: list[torch.Tensor] = []

    def __call__(self, step: int, step_kwargs: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor],
                                                                         list[torch.Tensor], Exception | None]:
        """``(loss, named parameters, their list, error)`` of the step; ``error`` is what the step raised (the loop
        decides what to do with it), else ``None``."""
        if self.planned is not None:
            done = self._planned_step(step, step_kwargs)
            if done is not None:
                return done
        return self._pyro_step(step, step_kwargs)

    def _planned_step(self, step: int, step_kwargs: dict[str, Any]) -> tuple | None:
        planned = self.planned
        state_before = torch.get_rng_state()
        try:
            loss = planned.loss_and_grads(self.raw_model, self.raw_guide, **step_kwargs)
            if not math.isfinite(loss):  # Pyro's step says where (its argument checks are on)
                raise NotPlannable(f"the loss became {loss}")
        except NotPlannable as exc:  # e.g. the structure changed: this step and the rest by Pyro
            self.planner.stop(f"from step {step}: {exc}")
            torch.set_rng_state(state_before)
            for p in planned.named.values():
                p.grad = None
            self.planned = None
            return None
        except Exception as exc:  # noqa: BLE001 - raised by the loop, as on the Pyro path
            return None, planned.named, self._params_of(planned.named), exc
        return loss, planned.named, self._params_of(planned.named), None

    def _pyro_step(self, step: int, step_kwargs: dict[str, Any]) -> tuple:
        error: Exception | None = None
        loss: Any = None
        state_before = torch.get_rng_state() if self.planner is not None and step == 1 else None
        with poutine.trace(param_only=True) as param_capture:
            try:
                loss = self.loss_and_grads(self.model, self.guide, **step_kwargs)
            except Exception as exc:  # noqa: BLE001 - raised by the loop, on every rank of a data-parallel fit
                error = exc
        named = {name: site["value"].unconstrained() for name, site in param_capture.trace.nodes.items()}
        if state_before is not None and error is None:
            self.planned = self.planner.start(self.raw_model, self.raw_guide, step_kwargs, named, loss, state_before)
        if step == 1 and error is None and named and not isinstance(self.optim, FlatOptim):
            # on either path, one torch optimiser over every parameter, with the rule of Pyro's per-parameter ones
            self.optim = FlatOptim(self.optim, list(named.values()))
        return loss, named, list(named.values()), error

    def _params_of(self, named: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The list of ``named``'s tensors, the same list object while ``named`` is the same (the fast path)."""
        if named is not self._named:
            self._named, self._params = named, list(named.values())
        return self._params

    def step_optimizer(self, params: list[torch.Tensor]) -> None:
        """The optimiser's step over ``params``, then their gradients cleared."""
        self.optim(params)
        if self.planned is not None:
            for p in params:
                p.grad = None
        else:
            pyro.infer.util.zero_grads(params)
