"""Recognise closed-form EM structure in a compiled model.

A user writes a mixture the natural way::

    weights = lvm.param(torch.ones(K) / K, constraint=constraints.simplex)
    locs = lvm.param(...)                       # (K, D)
    scales = lvm.param(..., constraint=constraints.positive)
    with lvm.plate(len(x)):
        z = lvm.latent(dist.Categorical(weights))
        lvm.observe(dist.Normal(locs[z], scales[z]).to_event(1), x)

To find out which parameters feed which distribution argument, the model is run once with its discrete latent
enumerated (z = 0..K-1 along its own dimension) after every parameter has been given a distinct random value.
A distribution argument that equals ``param`` laid out along z's dimension is "``param`` indexed by z"; one that
equals ``param`` broadcast is "shared". The pattern then selects an emission family of :mod:`ppl_lvm.em.families`
(Gaussian full / diag / spherical / tied, Bernoulli, Categorical, Poisson), whose M-step is closed form. Anything
else falls back to the generic (numerical) M-step.
"""


from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints

from ..model import Model
from ..runtime import run_scope
from ..structure import ModelStructure
from .linear import linear_emission
from .patterns import HMMPattern, MixturePattern
from .recognise_emission import emission_of, matches, same, unwrap

__all__ = ["HMMPattern", "MixturePattern", "recognise_discrete_hmm", "recognise_mixture"]


def _perturbed_state(store: Any, generator: torch.Generator) -> dict:
    """A copy of the store's state with every parameter moved to a distinct random value."""
    state = store.get_state()
    params = {}
    for name, value in state["params"].items():
        noise = torch.rand(value.shape, generator=generator, dtype=torch.float64).to(value.dtype)
        params[name] = value.detach() + 0.1 + 0.5 * noise
    return {"params": params, "constraints": dict(state["constraints"])}


def _probe(model: Model, kwargs: dict, structure: ModelStructure, enumerated: list[str]):
    """Run ``model`` once with ``enumerated`` summed out and every parameter at a distinct random value.

    Returns the trace, the parameter values used and the parameters' constraints.
    """
    store = pyro.get_param_store()
    probe = _perturbed_state(store, torch.Generator().manual_seed(0))
    wanted = frozenset(enumerated)
    enum_model = poutine.infer_config(model, lambda msg: {"enumerate": "parallel"} if msg["name"] in wanted else {})
    first_dim = -1 - structure.max_plate_nesting
    with store.scope(probe), torch.random.fork_rng(devices=[]), torch.no_grad(), run_scope(model):
        trace = poutine.trace(poutine.enum(enum_model, first_available_dim=first_dim)).get_trace(**kwargs)
        values = {name: store[name].detach() for name in store.keys()}
        constraint_of = dict(store._constraints)
    return trace, values, constraint_of


#: families whose columns are independent given z: observed sites of one of them side by side are one emission
_FACTOR_FAMILIES = ("Gaussian(covariance_type='diag')", "Poisson()", "Bernoulli()")


def _product(parts: list[tuple[torch.Tensor, tuple]]) -> tuple[Any, dict, torch.Tensor] | None:
    """Several observed sites sharing z as one emission: their columns side by side, when they are of one family
    with independent columns (diagonal Gaussian, Poisson, Bernoulli) and share no parameter."""
    families = {repr(found[0]) for _, found in parts}
    if len(families) != 1 or families.pop() not in _FACTOR_FAMILIES:
        return None
    emission: dict[str, tuple[tuple, str]] = {}
    for _, (_, part, _) in parts:
        for key, (name, how) in part.items():
            names, previous = emission.get(key, ((), how))
            if previous != how:
                return None
            emission[key] = (names + (name if isinstance(name, tuple) else (name,)), how)
    used = [n for names, _ in emission.values() for n in names]
    if len(used) != len(set(used)):
        return None
    n = parts[0][0].shape[0]
    data = torch.cat([value.reshape(n, -1).to(torch.float64) for value, _ in parts], dim=1)
    return parts[0][1][0], emission, data


def recognise_mixture(model: Model, kwargs: dict, structure: ModelStructure) -> MixturePattern | None:
    """The closed-form pattern of ``model``, or ``None`` when it is not a recognised finite mixture.

    One discrete latent z in the data plate and observed sites in that plate: one site of a recognised emission
    family (:mod:`ppl_lvm.em.recognise_emission`), several sites of one family with independent columns (their
    columns side by side: independent factors), or one Normal site whose mean is linear in parameters given z
    (:mod:`ppl_lvm.em.linear`: weighted least squares). Must be called inside the fit's parameter-store scope,
    after the model's parameters exist.
    """
    latents = structure.discrete_latents
    observed = structure.observed_sites
    if len(latents) != 1 or not observed or structure.continuous_latents:
        return None
    z_info = latents[0]
    if len(z_info.plates) != 1 or any(x.plates != z_info.plates for x in observed):
        return None
    trace, values, constraint_of = _probe(model, kwargs, structure, [z_info.name])
    z_site = trace.nodes[z_info.name]
    z_fn = unwrap(z_site["fn"])
    if not isinstance(z_fn, dist.Categorical) or isinstance(z_fn, dist.OneHotCategorical):
        return None
    k = z_fn.probs.shape[-1]
    weights = next((n for n, v in values.items() if v.shape == (k,) and matches(z_fn.probs, v, -1, k)), None)
    if weights is None or constraint_of.get(weights) is not constraints.simplex:
        return None
    other = {n: v for n, v in values.items() if n != weights}
    parts = []
    for x_info in observed:
        x_value = trace.nodes[x_info.name]["value"]
        k_dim = -z_site["value"].dim() - (0 if x_value.dim() == 1 else 1)
        found = emission_of(unwrap(trace.nodes[x_info.name]["fn"]), x_value, other, constraint_of, k_dim, k)
        if found is None and len(observed) == 1:
            store = pyro.get_param_store()
            states = tuple(_perturbed_state(store, torch.Generator().manual_seed(s)) for s in (0, 1))
            linear = linear_emission(model, kwargs, structure, trace, values, constraint_of,
                                     [(z_info.name, x_info.name)], (weights,), k, states)
            if linear is None:
                return None
            family, emission, rows = linear
            return MixturePattern(z_info.name, x_info.name, None, k, family, weights, emission, False, rows[0])
        if found is None:
            return None
        parts.append((x_value, found))
    if len(parts) == 1:
        if observed[0].argument not in kwargs:
            return None
        family, emission, univariate = parts[0][1]
        return MixturePattern(z_info.name, observed[0].name, observed[0].argument, k, family, weights, emission,
                              univariate)
    product = _product(parts)
    if product is None:
        return None
    family, emission, data = product
    return MixturePattern(z_info.name, ", ".join(x.name for x in observed), None, k, family, weights, emission,
                          False, data)


def _data_argument(structure: ModelStructure) -> str | None:
    """The one model argument every observed site reads (``x`` of ``x[:, t]``), or None."""
    arguments = {s.argument for s in structure.observed_sites}
    return arguments.pop() if len(arguments) == 1 else None


def recognise_discrete_hmm(model: Model, kwargs: dict, structure: ModelStructure) -> HMMPattern | None:
    """The closed-form pattern of a chain declared as one site, ``lvm.observe(dist.DiscreteHMM(...), x)``.

    Recognised: the first step's transition rows all equal a simplex ``start`` parameter (``DiscreteHMM``'s initial
    state precedes the first emission, so ``z_0 ~ start`` is written as the first transition), the remaining
    steps' transitions are the log of a simplex ``trans`` parameter, and the observation distribution's arguments
    are parameters with one row per state (the emission families of mixtures). Sequences share one length.
    """
    observed = structure.observed_sites
    if structure.latent_sites or len(observed) != 1 or observed[0].distribution != "DiscreteHMM":
        return None
    if len(observed[0].plates) > 1:
        return None
    trace, values, constraint_of = _probe(model, kwargs, structure, [])
    site = trace.nodes[observed[0].name]
    fn = unwrap(site["fn"])
    if not isinstance(fn, dist.DiscreteHMM):
        return None
    x = site["value"]
    n_steps = x.shape[-1 - len(fn.observation_dist.event_shape)]
    k = fn.transition_logits.shape[-1]
    probs = fn.transition_logits.exp()  # DiscreteHMM normalises its logits
    if probs.dim() < 3 or probs.shape[-3] != n_steps:
        return None
    first, rest = probs[..., :1, :, :], probs[..., 1:, :, :]
    simplex = {n: v for n, v in values.items() if constraint_of.get(n) is constraints.simplex}
    start = next((n for n, v in simplex.items() if v.shape == (k,) and same(torch.broadcast_to(v, first.shape).to(first.dtype), first)), None)
    trans = next((n for n, v in simplex.items() if v.shape == (k, k) and n != start
                  and (n_steps == 1 or same(torch.broadcast_to(v, rest.shape).to(rest.dtype), rest))), None)
    if start is None or trans is None:
        return None
    event = fn.observation_dist.event_shape
    obs_value = torch.zeros((1,) * (2 - len(event)) + tuple(event) if event else (1,))
    found = emission_of(unwrap(fn.observation_dist), obs_value, {n: v for n, v in values.items() if n not in (start, trans)},
                      constraint_of, -1 - len(event), k)
    if found is None:
        return None
    family, emission, univariate = found
    sequences = x.reshape((-1, n_steps) + tuple(event))
    lengths = torch.full((sequences.shape[0],), n_steps)
    data = sequences.reshape((-1,) + tuple(event))
    if univariate:
        data = data.reshape(-1, 1)
    return HMMPattern([], [observed[0].name], k, family, start, trans, emission, univariate, lengths, data, n_steps,
                      _data_argument(structure))
