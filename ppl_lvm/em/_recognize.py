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
equals ``param`` broadcast is "shared". The pattern then selects an emission family of :mod:`ppl_lvm.em._families`
(Gaussian full / diag / spherical / tied, Bernoulli, Categorical, Poisson), whose M-step is closed form. Anything
else falls back to the generic (numerical) M-step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints

from ..model import Model, ModelStructure
from ..runtime import run_scope
from ._families import Bernoulli, Categorical, Gaussian, Poisson

__all__ = ["MixturePattern", "recognise_mixture"]


@dataclass
class MixturePattern:
    """A finite mixture with a closed-form M-step: which site and parameters play which role."""

    latent: str  # the discrete site z
    observed: str  # the observed site x
    data_argument: str  # the model argument holding x
    n_components: int
    family: Any  # an emission family instance
    weights: str  # the param holding the mixing weights
    #: family parameter -> (model param name, how to convert): e.g. {"means": ("locs", "identity")}
    emission: dict[str, tuple[str, str]]
    univariate: bool  # x is (N,) and was reshaped to (N, 1) for the kernels

    def data_matrix(self, value: torch.Tensor) -> torch.Tensor:
        return value.reshape(-1, 1) if self.univariate else value

    # -------------------------------------------------------------- model params <-> kernel params
    def to_kernel(self, store: Any) -> dict[str, torch.Tensor]:
        out = {"weights": store[self.weights].detach().to(torch.float64)}
        for key, (name, how) in self.emission.items():
            value = store[name].detach().to(torch.float64)
            if self.univariate and value.dim() == 1 and key in ("means", "probs", "rates"):
                value = value.unsqueeze(-1)
            if how == "square":
                value = value**2
                if self.univariate and key == "covariances" and value.dim() == 1 and self.family.covariance_type == "diag":
                    value = value.unsqueeze(-1)
            elif how == "cholesky":
                value = value @ value.transpose(-1, -2)
            out[key] = value
        return out

    def to_model(self, params: dict[str, torch.Tensor], store: Any) -> None:
        dtype = store[self.weights].dtype
        store[self.weights] = params["weights"].to(dtype)
        for key, (name, how) in self.emission.items():
            value = params[key]
            if how == "square":
                value = value.clamp_min(0).sqrt()
            elif how == "cholesky":
                value = torch.linalg.cholesky(value)
            target_shape = store[name].shape
            store[name] = value.reshape(target_shape).to(dtype)


def _perturbed_state(store: Any, generator: torch.Generator) -> dict:
    """A copy of the store's state with every parameter moved to a distinct random value."""
    state = store.get_state()
    params = {}
    for name, value in state["params"].items():
        noise = torch.rand(value.shape, generator=generator, dtype=torch.float64).to(value.dtype)
        params[name] = value.detach() + 0.1 + 0.5 * noise
    return {"params": params, "constraints": dict(state["constraints"])}


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
                if torch.equal(torch.broadcast_to(value.reshape(shape), arg.shape), arg):
                    return "indexed"
            except RuntimeError:
                pass
    try:
        if torch.equal(torch.broadcast_to(value, arg.shape), arg):
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
    nesting = structure.max_plate_nesting
    store = pyro.get_param_store()
    probe = _perturbed_state(store, torch.Generator().manual_seed(0))
    enum_model = poutine.infer_config(
        model, lambda msg: {"enumerate": "parallel"} if msg["name"] == z_info.name else {}
    )
    with store.scope(probe), torch.random.fork_rng(devices=[]), torch.no_grad(), run_scope(model):
        trace = poutine.trace(poutine.enum(enum_model, first_available_dim=-1 - nesting)).get_trace(**kwargs)
        values = {name: store[name].detach() for name in store.keys()}
        constraint_of = dict(store._constraints)
    z_site, x_site = trace.nodes[z_info.name], trace.nodes[x_info.name]
    z_fn = _unwrap(z_site["fn"])
    if not isinstance(z_fn, dist.Categorical) or isinstance(z_fn, dist.OneHotCategorical):
        return None
    k = z_fn.probs.shape[-1]
    weights = next((n for n, v in values.items() if v.shape == (k,) and _matches(z_fn.probs, v, -1, k)), None)
    if weights is None or constraint_of.get(weights) is not constraints.simplex:
        return None
    x_fn = _unwrap(x_site["fn"])
    # the enumerated dim of z inside x's batch shape
    enum_dim = -z_site["value"].dim()
    x_value = x_site["value"]
    univariate = x_value.dim() == 1
    event = 0 if univariate else 1
    k_dim = enum_dim - event  # position of K counted from the right of the distribution argument
    other = {n: v for n, v in values.items() if n != weights}

    def role(arg: torch.Tensor | None, want: str, constraint: Any = None) -> str | None:
        hit = _find(arg, other, k_dim, k)
        if hit is None or hit[1] != want:
            return None
        if constraint is not None and constraint_of.get(hit[0]) is not constraint:
            return None
        return hit[0]

    family = None
    emission: dict[str, tuple[str, str]] = {}
    if isinstance(x_fn, dist.Normal):
        loc = role(x_fn.loc, "indexed")
        if loc is None:
            return None
        scale_hit = _find(x_fn.scale, other, k_dim, k)
        if scale_hit is None or constraint_of.get(scale_hit[0]) is not constraints.positive:
            return None
        scale_name, how = scale_hit
        scale_value = values[scale_name]
        if how == "indexed" and (univariate or scale_value.shape == (k, x_value.shape[-1])):
            family = Gaussian("diag")
        elif how == "indexed" and scale_value.shape == (k,):
            family = Gaussian("spherical")
        else:
            return None
        emission = {"means": (loc, "identity"), "covariances": (scale_name, "square")}
    elif isinstance(x_fn, dist.MultivariateNormal) and not univariate:
        loc = role(x_fn.loc, "indexed")
        tril_hit = _find(x_fn.scale_tril, other, k_dim - 1, k)
        if loc is None or tril_hit is None or constraint_of.get(tril_hit[0]) is not constraints.lower_cholesky:
            return None
        family = Gaussian("full" if tril_hit[1] == "indexed" else "tied")
        emission = {"means": (loc, "identity"), "covariances": (tril_hit[0], "cholesky")}
    elif isinstance(x_fn, dist.Bernoulli):
        probs = role(x_fn.probs, "indexed", constraints.unit_interval)
        if probs is None:
            return None
        family = Bernoulli()
        emission = {"probs": (probs, "identity")}
    elif isinstance(x_fn, dist.Poisson):
        rate = role(x_fn.rate, "indexed", constraints.positive)
        if rate is None:
            return None
        family = Poisson()
        emission = {"rates": (rate, "identity")}
    elif isinstance(x_fn, dist.Categorical) and univariate:
        probs = _find(x_fn.probs, other, k_dim - 1, k)
        if probs is None or probs[1] != "indexed" or constraint_of.get(probs[0]) is not constraints.simplex:
            return None
        family = Categorical(n_categories=values[probs[0]].shape[-1])
        emission = {"probs": (probs[0], "identity")}
        univariate = False  # the categorical kernel takes (N,) integer symbols as they are
    if family is None:
        return None
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
