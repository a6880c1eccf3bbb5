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
from .families import Bernoulli, Categorical, Gaussian, Poisson
from .patterns import HMMPattern, MixturePattern

__all__ = ["HMMPattern", "MixturePattern", "recognise_discrete_hmm", "recognise_mixture"]


def _perturbed_state(store: Any, generator: torch.Generator) -> dict:
    """A copy of the store's state with every parameter moved to a distinct random value."""
    state = store.get_state()
    params = {}
    for name, value in state["params"].items():
        noise = torch.rand(value.shape, generator=generator, dtype=torch.float64).to(value.dtype)
        params[name] = value.detach() + 0.1 + 0.5 * noise
    return {"params": params, "constraints": dict(state["constraints"])}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    # distributions renormalise probabilities, so equality holds up to rounding, not bit for bit
    rtol = 1e-10 if a.dtype == torch.float64 else 1e-5
    return a.dtype == b.dtype and torch.allclose(a, b, rtol=rtol, atol=0.0)


def _distinct(arg: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``arg`` and ``value`` (broadcast to ``arg``'s shape) cut to one index along every dim where ``arg`` is a
    broadcast view (stride 0): its entries repeat there, so comparing the cut is comparing the whole, exactly. A
    mixture's distribution arguments are such views along the data plate (K x N x D views of K x D parameters), so
    the comparison costs K x D, not K x N x D."""
    value = torch.broadcast_to(value, arg.shape)
    for d in range(arg.dim()):
        if arg.shape[d] > 1 and arg.stride(d) == 0:
            arg, value = arg.narrow(d, 0, 1), value.narrow(d, 0, 1)
    return arg, value


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


def _matches(arg: torch.Tensor, value: torch.Tensor, k_dim: int, k: int) -> str | None:
    """Is ``arg`` equal to ``value`` indexed by z (laid along ``k_dim``), or to ``value`` broadcast?"""
    if arg.shape[k_dim] == k and value.dim() >= 1 and value.shape[0] == k:
        # insert singleton dims between K and the param's own dims so that K lands on k_dim
        ndim = arg.dim()
        k_pos = ndim + k_dim
        rest = list(value.shape[1:])
        gap = ndim - k_pos - 1 - len(rest)
        if gap >= 0:
            # the param's own dims are right-aligned (event dims); plate dims in between are singletons
            shape = [1] * k_pos + [k] + [1] * gap + rest
            try:
                if _same(*_distinct(arg, value.reshape(shape))):
                    return "indexed"
            except RuntimeError:
                pass
    try:
        if _same(*_distinct(arg, value)):
            return "shared"
    except RuntimeError:
        pass
    return None


def _find(arg: torch.Tensor | None, store_values: dict, k_dim: int, k: int) -> tuple[str, str] | None:
    if arg is None:
        return None
    found = [(name, how) for name, v in store_values.items() if (how := _matches(arg, v, k_dim, k)) is not None]
    return found[0] if len(found) == 1 else None


def _unwrap(fn: Any) -> Any:
    while isinstance(fn, (dist.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)) or type(
        fn
    ).__name__ in ("Independent", "ExpandedDistribution", "MaskedDistribution"):
        fn = fn.base_dist
    return fn


def _emission(x_fn: Any, x_value: torch.Tensor, other: dict, constraint_of: dict, k_dim: int, k: int):
    """``(family, emission map, univariate)`` when ``x_fn``'s arguments are params indexed by the state."""
    univariate = x_value.dim() == 1

    def role(arg: torch.Tensor | None, constraint: Any = None, dim: int = k_dim) -> tuple[str, str] | None:
        hit = _find(arg, other, dim, k)
        if hit is None or (constraint is not None and constraint_of.get(hit[0]) is not constraint):
            return None
        return hit

    if isinstance(x_fn, dist.Normal):
        loc, scale = role(x_fn.loc), role(x_fn.scale, constraints.positive)
        if loc is None or scale is None or loc[1] != "indexed" or scale[1] != "indexed":
            return None
        shape = other[scale[0]].shape
        if univariate or shape == (k, x_value.shape[-1]):
            family = Gaussian("diag")
        elif shape == (k,):
            family = Gaussian("spherical")
        else:
            return None
        return family, {"means": (loc[0], "identity"), "covariances": (scale[0], "square")}, univariate
    if isinstance(x_fn, dist.MultivariateNormal) and not univariate:
        loc, tril = role(x_fn.loc), role(x_fn.scale_tril, constraints.lower_cholesky, k_dim - 1)
        if loc is None or tril is None or loc[1] != "indexed":
            return None
        family = Gaussian("full" if tril[1] == "indexed" else "tied")
        return family, {"means": (loc[0], "identity"), "covariances": (tril[0], "cholesky")}, univariate
    if isinstance(x_fn, dist.Bernoulli):
        probs = role(x_fn.probs, constraints.unit_interval)
        if probs is None or probs[1] != "indexed":
            return None
        return Bernoulli(), {"probs": (probs[0], "identity")}, univariate
    if isinstance(x_fn, dist.Poisson):
        rate = role(x_fn.rate, constraints.positive)
        if rate is None or rate[1] != "indexed":
            return None
        return Poisson(), {"rates": (rate[0], "identity")}, univariate
    if isinstance(x_fn, dist.Categorical) and univariate:
        probs = role(x_fn.probs, constraints.simplex, k_dim - 1)
        if probs is None or probs[1] != "indexed":
            return None
        # the categorical kernel takes (N,) integer symbols as they are
        return Categorical(n_categories=other[probs[0]].shape[-1]), {"probs": (probs[0], "identity")}, False
    return None


def recognise_mixture(model: Model, kwargs: dict, structure: ModelStructure) -> MixturePattern | None:
    """The closed-form pattern of ``model``, or ``None`` when it is not a recognised finite mixture.

    Must be called inside the fit's parameter-store scope, after the model's parameters exist.
    """
    latents = structure.discrete_latents
    observed = structure.observed_sites
    if len(latents) != 1 or len(observed) != 1 or structure.continuous_latents:
        return None
    z_info, x_info = latents[0], observed[0]
    if len(z_info.plates) != 1 or x_info.plates != z_info.plates or x_info.argument not in kwargs:
        return None
    trace, values, constraint_of = _probe(model, kwargs, structure, [z_info.name])
    z_site, x_site = trace.nodes[z_info.name], trace.nodes[x_info.name]
    z_fn = _unwrap(z_site["fn"])
    if not isinstance(z_fn, dist.Categorical) or isinstance(z_fn, dist.OneHotCategorical):
        return None
    k = z_fn.probs.shape[-1]
    weights = next((n for n, v in values.items() if v.shape == (k,) and _matches(z_fn.probs, v, -1, k)), None)
    if weights is None or constraint_of.get(weights) is not constraints.simplex:
        return None
    x_value = x_site["value"]
    k_dim = -z_site["value"].dim() - (0 if x_value.dim() == 1 else 1)
    other = {n: v for n, v in values.items() if n != weights}
    found = _emission(_unwrap(x_site["fn"]), x_value, other, constraint_of, k_dim, k)
    if found is None:
        return None
    family, emission, univariate = found
    return MixturePattern(
        latent=z_info.name,
        observed=x_info.name,
        data_argument=x_info.argument,
        n_components=k,
        family=family,
        weights=weights,
        emission=emission,
        univariate=univariate,
    )


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
    fn = _unwrap(site["fn"])
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
    start = next((n for n, v in simplex.items() if v.shape == (k,) and _same(torch.broadcast_to(v, first.shape).to(first.dtype), first)), None)
    trans = next((n for n, v in simplex.items() if v.shape == (k, k) and n != start
                  and (n_steps == 1 or _same(torch.broadcast_to(v, rest.shape).to(rest.dtype), rest))), None)
    if start is None or trans is None:
        return None
    event = fn.observation_dist.event_shape
    obs_value = torch.zeros((1,) * (2 - len(event)) + tuple(event) if event else (1,))
    found = _emission(_unwrap(fn.observation_dist), obs_value, {n: v for n, v in values.items() if n not in (start, trans)},
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
