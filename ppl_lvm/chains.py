"""Chains written step by step (``lvm.markov``), known from a run of a few of their steps.

A model's prototype run (:meth:`~ppl_lvm.model.Model.inspect`) runs every top-level ``lvm.markov`` loop on the
steps of :func:`~ppl_lvm.runtime.chain_positions` only: the first :data:`~ppl_lvm.runtime.CHAIN_PREFIX` and
:data:`~ppl_lvm.runtime.CHAIN_SPREAD` more spread evenly up to the last. The other steps are taken to repeat them
(:func:`extend_chains`) when the steps that ran say so:

* every step that ran after the first has the same sites in the same order: the same names up to the step's
  suffix (``z_5`` for ``z`` at step 5), kinds, distributions, supports, shapes, plates, source lines and arguments;
* every observed step reads its value from one model argument, at the step's index along one of its dims
  (``x[:, t]``; the argument read in the code, else the only one that fits), and the argument lies in the support
  of the step's distribution at every step's index.

The structure then lists every step's sites, as a run of every step would, at a cost that does not grow with the
number of steps run by the model (a chain of 10^5 steps is known from 11 of them). Otherwise (steps that differ,
a loop inside a loop, a loop left early, observations that are not slices of an argument, data outside the
support) :func:`extend_chains` returns ``None`` and the prototype runs every step, whose checks name the step.

What the steps that ran cannot show is a step that differs from the others where none of them runs (a branch on
one particular ``t``): such a step is listed as a repeat of the others. The spread steps (the last among them)
catch a chain that changes from some step on, or along a period of two or three steps.
"""

from __future__ import annotations

import gc
from dataclasses import fields
from typing import Any

import pyro.poutine as poutine
import torch

from .runtime import ChainLoop, SiteRecord, StepSelection
from .structure import ModelStructure, SiteInfo, structure_from_trace

__all__ = ["extend_chains", "step_base", "step_source", "time_dim"]

_FIELDS = tuple(f.name for f in fields(SiteInfo))  # "name" first
_SIGNATURE = ("kind", "distribution", "discrete", "enumerable", "reparameterized", "support", "batch_shape",
              "event_shape", "shape", "plates", "location", "argument")


def step_base(name: str, index: Any) -> str | None:
    """``"z"`` for the site ``"z_5"`` of step 5; ``None`` when the name does not carry the step."""
    suffix = f"_{index}"
    return name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else None


def _signature(loop: ChainLoop, position: int, sites: dict[str, SiteInfo]) -> tuple | None:
    index = loop.indices[position]
    out = []
    for name in loop.sites.get(position, ()):
        base = step_base(name, index)
        if base is None or name not in sites:
            return None
        info = sites[name]
        out.append((base,) + tuple(getattr(info, f) for f in _SIGNATURE))
    return tuple(out)


def time_dim(values: list[tuple[Any, torch.Tensor]], data: torch.Tensor) -> int | None:
    """The dim of ``data`` along which it holds every ``(index, value)`` pair's value at its index, or None."""
    first = values[0][1]
    for dim in range(data.dim()):
        if data.shape[:dim] + data.shape[dim + 1:] != first.shape:
            continue
        size = data.shape[dim]
        if all(isinstance(i, int) and 0 <= i < size and torch.equal(data.select(dim, i).to(v.dtype), v)
               for i, v in values):
            return dim
    return None


def step_source(values: list[tuple[Any, torch.Tensor]], arguments: dict[str, Any],
                name: str | None) -> tuple[torch.Tensor, int] | None:
    """``(argument, dim)``: the model argument whose slices along ``dim`` are the observed ``(index, value)`` pairs;
    the argument named ``name`` (the one read in the code, ``x`` of ``x[:, t]``), else the only one that fits."""
    named = arguments.get(name) if name else None
    candidates = [named] if isinstance(named, torch.Tensor) else [v for v in arguments.values()
                                                                  if isinstance(v, torch.Tensor)]
    found = [(data, dim) for data in candidates if (dim := time_dim(values, data)) is not None]
    return found[0] if len(found) == 1 else None


def _observations_repeat(loop: ChainLoop, template: int, trace: poutine.Trace, sites: dict[str, SiteInfo],
                         arguments: dict[str, Any]) -> bool:
    """Whether every observed site of the template step is one argument's slice at the step's index, in support
    at every index of the loop (the checks the prototype makes of the steps it ran, made of all of them)."""
    for name in loop.sites[template]:
        info = sites[name]
        if info.kind != "observed":
            continue
        base = step_base(name, loop.indices[template])
        values = [(loop.indices[p], trace.nodes[f"{base}_{loop.indices[p]}"]["value"]) for p in loop.positions if p]
        source = step_source(values, arguments, info.argument)
        if source is None:
            return False
        data, dim = source
        if not all(isinstance(i, int) and 0 <= i < data.shape[dim] for i in loop.indices):
            return False
        steps = data if loop.indices == list(range(data.shape[dim])) else data.index_select(
            dim, torch.as_tensor(loop.indices))
        support = getattr(trace.nodes[name]["fn"], "support", None)
        if support is not None:
            try:
                ok = bool(support.check(steps.to(values[0][1].dtype)).all())
            except (RuntimeError, ValueError, TypeError):
                ok = False
            if not ok:
                return False
    return True


def extend_chains(trace: poutine.Trace, records: dict[str, SiteRecord], selection: StepSelection,
                  arguments: dict[str, Any]) -> tuple[ModelStructure, dict[str, SiteRecord]] | None:
    """The structure of a run of every step, from a run of the selected steps of each loop (``selection``, made
    under :func:`~ppl_lvm.runtime.select_steps`), and the site records of the steps that ran; ``None`` when the
    steps that ran do not show that the others repeat them (see the module docstring). ``arguments`` are the
    model's by name."""
    structure = structure_from_trace(trace, records)
    if selection.nested or not all(loop.complete for loop in selection.loops):
        return None
    sites = structure.sites
    plans = []  # (loop, template position, the positions that did not run)
    for loop in selection.loops:
        missing = sorted(set(range(len(loop.indices))) - set(loop.positions))
        if not missing:
            continue
        template = loop.positions[1]
        signatures = {_signature(loop, p, sites) for p in loop.positions[1:]}
        if len(signatures) != 1 or None in signatures:
            return None
        if not _observations_repeat(loop, template, trace, sites, arguments):
            return None
        plans.append((loop, template, missing))
    if not plans:
        return structure, records
    # the first site of a step that ran -> the steps before it that did not run, whose sites go just before it
    before: dict[str, tuple[ChainLoop, int, list[int]]] = {}
    for loop, template, missing in plans:
        if not loop.sites[template]:
            continue  # steps without sites
        cursor = 0
        for p in loop.positions:
            gap = []
            while cursor < len(missing) and missing[cursor] < p:
                gap.append(missing[cursor])
                cursor += 1
            if gap:
                before[loop.sites[p][0]] = (loop, template, gap)
    new_sites: dict[str, SiteInfo] = {}
    collecting = gc.isenabled()
    gc.disable()  # many small objects at once: no collection passes over the heap while they are made
    try:
        for name, info in sites.items():
            if name in before:
                loop, template, gap = before[name]
                sources = [(step_base(n, loop.indices[template]), [getattr(sites[n], f) for f in _FIELDS[1:]])
                           for n in loop.sites[template]]
                for p in gap:
                    index = loop.indices[p]
                    for base, values in sources:
                        new = f"{base}_{index}"
                        new_sites[new] = SiteInfo(new, *values)
            new_sites[name] = info
    finally:
        if collecting:
            gc.enable()
    return ModelStructure(new_sites, structure.plates, structure.max_plate_nesting), records
