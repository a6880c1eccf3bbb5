"""Run-time state shared by the primitives: the current model run and the current fit.

A *run* is one call of a compiled model or guide: it records the sites it created (to refuse duplicate names and
to map a site back to its source line). A *fit* is set by the fit loop around many runs: the minibatch subsample of
the data plate and the KL weight (and around the prototype run of many rows: the rows of the data plate it traces). Both live in thread-local stacks so nested and concurrent fits do not mix.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import SourceLocation


@dataclass
class SiteRecord:
    name: str
    kind: str  # "latent", "observed", "param", "plate", "module", "deterministic"
    location: SourceLocation
    argument: str | None = None  # model argument that supplied the observed value


@dataclass
class Run:
    owner: Any
    sites: dict[str, SiteRecord] = field(default_factory=dict)
    markov_indices: list[int] = field(default_factory=list)
    #: the prototype run of :meth:`Model.inspect` checks observed shapes strictly
    preflight: bool = False


@dataclass
class FitContext:
    #: plate name -> (full size, subsample indices) for minibatch fits
    subsample: dict[str, tuple[int, torch.Tensor]] = field(default_factory=dict)
    #: the KL weight on continuous latent sites (beta-VAE, warm-up); 1.0 means untouched
    beta: float = 1.0
    #: the optimisation step being taken, counted from 0 (what schedules such as a guide's temperature read)
    step: int = 0
    #: the prototype run of many rows (:func:`ppl_lvm.model.trace_structure`): (full size, row indices); a plate
    #: given the full size or as many rows as the indices runs on those rows, its full size kept
    rows: tuple[int, torch.Tensor] | None = None
    #: the names of the plates that ran on ``rows``
    sliced_plates: list[str] = field(default_factory=list)


_local = threading.local()


def _stack(attr: str) -> list:
    stack = getattr(_local, attr, None)
    if stack is None:
        stack = []
        setattr(_local, attr, stack)
    return stack


def current_run() -> Run | None:
    stack = _stack("runs")
    return stack[-1] if stack else None


def current_fit() -> FitContext | None:
    stack = _stack("fits")
    return stack[-1] if stack else None


@contextmanager
def run_scope(owner: Any, preflight: bool = False):
    stack = _stack("runs")
    run = Run(owner, preflight=preflight)
    stack.append(run)
    try:
        yield run
    finally:
        stack.pop()


@contextmanager
def fit_scope(ctx: FitContext):
    stack = _stack("fits")
    stack.append(ctx)
    try:
        yield ctx
    finally:
        stack.pop()


def clone_param_state(state: dict) -> dict:
    """A deep copy of a Pyro parameter-store state whose tensors are fresh leaves that require grad.

    ``ParamStoreDict.set_state`` installs tensors as they are, so a detached copy would silently stop training.
    """
    params = {}
    for name, value in state["params"].items():
        copy = value.detach().clone()
        if copy.is_floating_point():
            copy.requires_grad_(True)
        params[name] = copy
    return {"params": params, "constraints": dict(state["constraints"])}


def broadcast_shape(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """The shape ``shapes`` broadcast to, as ``torch.broadcast_shapes`` gives it (``RuntimeError`` when they do not
    broadcast), without its first call's import of ``torch.fx``'s symbolic shapes and sympy (seconds per process)."""
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(-ndim, 0):
        sizes = {int(s[i]) for s in shapes if len(s) >= -i and int(s[i]) != 1}
        if len(sizes) > 1:
            raise RuntimeError(f"the shapes {[tuple(s) for s in shapes]} do not broadcast (dim {i})")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)
