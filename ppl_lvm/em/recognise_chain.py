"""Recognise a hidden Markov chain written step by step with ``lvm.markov``.

The model is run once with every step's state enumerated (as :mod:`ppl_lvm.em.recognise` does for mixtures), on
the steps a prototype runs of a long chain (:func:`~ppl_lvm.runtime.select_steps`: the first few and some spread
up to the last; every step of a short chain). Those steps must show one chain: ``z_0 ~ Categorical(start)``,
``z_t ~ Categorical(trans[z_{t-1}])``, one observation per step whose distribution's arguments are parameters
indexed by ``z_t``. What the kernels need of every step is then read without running the others:

* the sequences, from the model argument that every step observes a slice of (``x[:, t]``), checked against the
  values of the steps that ran;
* the lengths, from the steps' masks (``poutine.mask(t < lengths)``): all steps kept when every step that ran is,
  else the one integer argument of shape ``(B,)`` whose ``t < lengths`` gives every mask that ran.

When the steps that ran cannot tell (the lengths computed inside the model, observations that are not an
argument's slices), the model is run again on every step, and every step is checked as it is.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from ..chains import step_source
from ..model import Model
from ..runtime import select_steps
from ..structure import ModelStructure
from .linear import linear_emission
from .patterns import HMMPattern
from .recognise import _data_argument, _perturbed_state, _probe
from .recognise_emission import emission_of, find, matches, unwrap

__all__ = ["recognise_hmm"]

_UNDECIDED = object()  # the steps that ran cannot tell: run every step


def _chain_sites(names: list[str]) -> tuple[str, list[str]] | None:
    """``("z", ["z_0", ..., "z_{T-1}"])`` when the names are one markov-suffixed family."""
    base = names[0].rsplit("_", 1)[0] if names else ""
    if all(n == f"{base}_{i}" for i, n in enumerate(names)):  # in step order already (the structure's order)
        return base, names
    bases = {n.rsplit("_", 1)[0] for n in names}
    if len(bases) != 1 or not all(n.rsplit("_", 1)[-1].isdigit() for n in names):
        return None
    base = bases.pop()
    ordered = sorted(names, key=lambda n: int(n.rsplit("_", 1)[1]))
    if [int(n.rsplit("_", 1)[1]) for n in ordered] != list(range(len(ordered))):
        return None
    return base, ordered


def recognise_hmm(model: Model, kwargs: dict, structure: ModelStructure) -> HMMPattern | None:
    """The closed-form pattern of a hidden Markov model written with ``lvm.markov``, else ``None``.

    Recognised: ``z_0 ~ Categorical(start)``, ``z_t ~ Categorical(trans[z_{t-1}])``, one observation per step
    whose distribution's arguments are params indexed by ``z_t`` (the emission families of mixtures), or a Normal
    whose mean is linear in parameters given ``z_t`` (a regression within the states, :mod:`ppl_lvm.em.linear`,
    checked on the probe of every step), all inside one plate over sequences, with steps past a sequence's length
    masked out (``poutine.mask(t < lengths)``).
    """
    discrete, observed_sites = structure.discrete_latents, structure.observed_sites
    if structure.continuous_latents or len(discrete) < 2:
        return None
    latents = _chain_sites([s.name for s in discrete])
    observed = _chain_sites([s.name for s in observed_sites])
    if latents is None or observed is None or len(latents[1]) != len(observed[1]):
        return None
    z_names, x_names = latents[1], observed[1]
    plates = {s.plates for s in discrete} | {s.plates for s in observed_sites}
    if len(plates) != 1 or len(next(iter(plates))) != 1:
        return None
    with select_steps() as selection:
        probe = _probe(model, kwargs, structure, z_names)
    found = _UNDECIDED
    if not selection.nested and all(loop.complete for loop in selection.loops):
        found = _read_chain(model, probe, z_names, x_names, kwargs, structure)
    if found is _UNDECIDED:
        found = _read_chain(model, _probe(model, kwargs, structure, z_names), z_names, x_names, kwargs, structure)
    return found


def _read_chain(model: Model, probe: tuple, z_names: list[str], x_names: list[str], kwargs: dict,
                structure: ModelStructure):
    """The pattern from a probe of the steps that ran (all of them, or those of a long chain's prototype)."""
    trace, values, constraint_of = probe
    steps = [t for t, name in enumerate(z_names) if name in trace.nodes and x_names[t] in trace.nodes]
    if not steps or steps[0] != 0:
        return None
    first = unwrap(trace.nodes[z_names[0]]["fn"])
    if not isinstance(first, dist.Categorical) or isinstance(first, dist.OneHotCategorical):
        return None
    k = first.probs.shape[-1]
    start = next((n for n, v in values.items() if v.shape == (k,) and matches(first.probs, v, -1, k)), None)
    if start is None or constraint_of.get(start) is not constraints.simplex:
        return None
    trans = None
    emission = family = univariate = None
    regression = False  # the first step's emission is no family of mixtures: a regression within the states?
    masks = []
    for i, t in enumerate(steps):
        z_site, x_site = trace.nodes[z_names[t]], trace.nodes[x_names[t]]
        if t > 0:
            previous = trace.nodes[z_names[steps[i - 1]]]["value"]  # the step that ran before this one
            # after the first step only the parameter already found is a candidate (checks stay O(steps))
            candidates = {trans: values[trans]} if trans is not None else {n: v for n, v in values.items() if n != start}
            hit = find(unwrap(z_site["fn"]).probs, candidates, -previous.dim() - 1, k)
            if hit is None or hit[1] != "indexed":
                return None
            trans = hit[0]
        x_value = x_site["value"]
        k_dim = -z_site["value"].dim() - (0 if x_value.dim() == 1 else 1)
        if emission is None:
            candidates = {n: v for n, v in values.items() if n not in (start, trans)}
        else:
            candidates = {n: values[n] for name, _ in emission.values()
                          for n in (name if isinstance(name, tuple) else (name,))}
        if not regression:
            found = emission_of(unwrap(x_site["fn"]), x_value, candidates, constraint_of, k_dim, k)
            regression = found is None and t == 0
            if not regression and (found is None or (emission is not None and found[1] != emission)):
                return None
            if not regression:
                family, emission, univariate = found
        mask = z_site["mask"]
        masks.append(torch.ones(x_value.shape[0], dtype=torch.bool) if mask is None else mask.reshape(-1).bool())
    if trans is None or constraint_of.get(trans) is not constraints.simplex:
        return None
    argument = _data_argument(structure)
    if regression and len(steps) != len(z_names):
        return _UNDECIDED  # the linearity check and the design rows read every step
    if regression:  # the rows of every step: response minus offset, then the design (ppl_lvm.em.linear)
        states = tuple(_perturbed_state(pyro.get_param_store(), torch.Generator().manual_seed(s)) for s in (0, 1))
        linear = linear_emission(model, kwargs, structure, trace, values, constraint_of,
                                 list(zip(z_names, x_names, strict=True)), (start, trans), k, states)
        if linear is None:
            return None
        family, emission, rows = linear
        univariate, argument = False, None
        mask = torch.stack(masks, dim=1)
        lengths = mask.sum(1)
        sequences = torch.stack(rows, dim=1)  # (B, T, 1 + F)
    elif len(steps) == len(z_names):
        mask = torch.stack(masks, dim=1)  # (B, T)
        lengths = mask.sum(1)
        sequences = torch.stack([trace.nodes[n]["value"] for n in x_names], dim=1)  # (B, T, ...)
    else:
        lengths = _lengths(masks, steps, len(z_names), kwargs)
        sequences = _sequences(trace, x_names, steps, kwargs, argument)
        if lengths is None or sequences is None:
            return _UNDECIDED
        mask = torch.arange(len(z_names))[None, :] < lengths[:, None]
    if not torch.equal(mask, torch.arange(mask.shape[1])[None, :] < lengths[:, None]) or bool((lengths == 0).any()):
        return None  # only prefix masks (padded sequences) are sequences of different lengths
    data = sequences[mask]
    if univariate:
        data = data.reshape(-1, 1)
    return HMMPattern(z_names, x_names, k, family, start, trans, emission, univariate, lengths, data, len(z_names),
                      argument)


def _lengths(masks: list[torch.Tensor], steps: list[int], n_steps: int, kwargs: dict) -> torch.Tensor | None:
    """Every sequence's length from the masks of the steps that ran, or None when they do not tell it."""
    ran = torch.stack(masks, dim=1)  # (B, steps)
    b = ran.shape[0]
    if bool(ran.all()):  # the last step is among those that ran: every step of every sequence is kept
        return torch.full((b,), n_steps, dtype=torch.long)
    at = torch.as_tensor(steps)
    found = [v for v in kwargs.values()
             if isinstance(v, torch.Tensor) and v.shape == (b,) and not v.is_floating_point() and v.dtype != torch.bool
             and torch.equal(at[None, :] < v[:, None], ran)]
    if len(found) != 1:
        return None
    return found[0].to(torch.long).clamp(max=n_steps)


def _sequences(trace, x_names: list[str], steps: list[int], kwargs: dict, argument: str | None):
    """(B, T, ...) of the argument every step observes a slice of, or None when the steps that ran say otherwise."""
    values = [(t, trace.nodes[x_names[t]]["value"]) for t in steps]
    source = step_source(values, kwargs, argument)
    if source is None or source[0].shape[source[1]] < len(x_names):
        return None
    data, dim = source
    return data.narrow(dim, 0, len(x_names)).movedim(dim, 1).to(values[0][1].dtype)
