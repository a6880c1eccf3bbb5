"""Run-time state shared by the primitives: the current model run and the current fit.

A *run* is one call of a compiled model or guide: it records the sites it created (to refuse duplicate names and
to map a site back to its source line). A *fit* is set by the fit loop around many runs: the minibatch subsample of
the data plate and the KL weight (and around the prototype run of many rows: the rows of the data plate it traces). Both live in thread-local stacks so nested and concurrent fits do not mix.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch

from .errors import SourceLocation


@dataclass
class SiteRecord:
    name: str
    kind: str  # "latent", "observed", "param", "plate", "module", "deterministic"
    location: SourceLocation
    argument: str | None = None  # model argument that supplied the observed value


@dataclass(slots=True)
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


#: a long chain's prototype runs its first steps and this many more spread over the rest (the last one among them)
CHAIN_PREFIX = 3
CHAIN_SPREAD = 8


@dataclass
class ChainLoop:
    """One ``lvm.markov`` loop of a prototype run that ran a few of its steps (see :func:`select_steps`)."""

    indices: list  # every index of the loop's iterable, in order
    positions: list[int]  # the positions (into ``indices``) that ran
    #: position -> names of the sample sites created at that step, in order
    sites: dict[int, list[str]] = field(default_factory=dict)
    complete: bool = False  # the loop ran to its end (no ``break``)

    def record(self, position: int, sites: dict, before: int) -> None:
        """Attribute the sample sites made since the run had ``before`` sites to the ``position``-th step run."""
        self.sites[self.positions[position]] = [name for name in islice(sites, before, None)
                                                if sites[name].kind not in ("param", "module")]


@dataclass
class StepSelection:
    """What the ``lvm.markov`` loops of one run did when only a few of their steps ran."""

    loops: list[ChainLoop] = field(default_factory=list)
    nested: bool = False  # a loop inside a loop: it ran every step


def chain_positions(n: int) -> list[int]:
    """The steps a prototype runs of a loop of ``n`` steps: the first :data:`CHAIN_PREFIX`, then
    :data:`CHAIN_SPREAD` spread evenly up to the last; every step of a short loop."""
    if n <= CHAIN_PREFIX + CHAIN_SPREAD:
        return list(range(n))
    spread = {CHAIN_PREFIX - 1 + round(j * (n - CHAIN_PREFIX) / CHAIN_SPREAD) for j in range(1, CHAIN_SPREAD + 1)}
    return sorted(set(range(CHAIN_PREFIX)) | spread)


class _Stacks(threading.local):
    """Each thread's stacks of runs, fits and step selections (made for a thread on its first use)."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.fits: list[FitContext] = []
        self.selections: list[StepSelection] = []


_local = _Stacks()


def run_stack() -> list[Run]:
    """This thread's stack of runs, innermost last (a compiled model's call pushes its :class:`Run` here and pops
    it, without the context manager's calls)."""
    return _local.runs


def current_run() -> Run | None:
    stack = _local.runs
    return stack[-1] if stack else None


def current_fit() -> FitContext | None:
    stack = _local.fits
    return stack[-1] if stack else None


class run_scope:
    """``with run_scope(owner) as run:`` makes a new :class:`Run` the current one."""

    __slots__ = ("run", "stack")

    def __init__(self, owner: Any, preflight: bool = False):
        self.run = Run(owner, preflight=preflight)

    def __enter__(self) -> Run:
        self.stack = _local.runs
        self.stack.append(self.run)
        return self.run

    def __exit__(self, *exc: Any) -> None:
        self.stack.pop()


def current_selection() -> StepSelection | None:
    stack = _local.selections
    return stack[-1] if stack else None


def selected_steps(iterable: Iterable, run: Run | None) -> tuple[Iterable, ChainLoop | None]:
    """The steps an ``lvm.markov`` loop of ``run`` runs: those of :func:`chain_positions` within
    :func:`select_steps` (the loop, recorded in the selection, comes too), else all of ``iterable``."""
    selection = current_selection()
    if selection is None or run is None:
        return iterable, None
    if run.markov_indices:
        selection.nested = True  # an inner loop runs every step; the prototype then runs the whole model
        return iterable, None
    indices = list(iterable)
    loop = ChainLoop(indices, chain_positions(len(indices)))
    selection.loops.append(loop)
    return [indices[p] for p in loop.positions], loop


@contextmanager
def select_steps():
    """Within this scope every top-level ``lvm.markov`` loop of a model run runs only the steps of
    :func:`chain_positions`; the :class:`StepSelection` yielded records what each loop did."""
    stack = _local.selections
    selection = StepSelection()
    stack.append(selection)
    try:
        yield selection
    finally:
        stack.pop()


@contextmanager
def fit_scope(ctx: FitContext):
    stack = _local.fits
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
