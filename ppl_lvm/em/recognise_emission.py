"""Which closed-form emission family an observed site's distribution is, read from its arguments.

The recogniser (:mod:`ppl_lvm.em.recognise`) runs the model once with the discrete latent enumerated (z = 0..K-1
along its own dimension) and every parameter at a distinct random value; here a distribution argument is compared
with every parameter: equal to ``param`` laid out along z's dimension is "``param`` indexed by z", equal to
``param`` broadcast is "shared". The spellings recognised for each family:

* Gaussian: ``Normal(loc[z], scale[z])`` (one column, or ``.to_event(1)`` over D columns: diagonal; a scale with
  one value per component: spherical); ``MultivariateNormal(loc[z], scale_tril=L[z])`` (``lower_cholesky``),
  ``covariance_matrix=S[z]`` or ``precision_matrix=P[z]`` (``positive_definite``): full, or tied when the matrix
  is shared. The location and the scale of a diagonal Gaussian may also be built per dimension, one parameter per
  column (or block of columns), e.g. ``torch.stack([mu0[z], mu1[z]], -1)``;
* Bernoulli ``probs[z]`` (``unit_interval``), Poisson ``rate[z]`` (``positive``), Categorical ``probs[z]``
  (``simplex``), each also per column for the first two.

An emission map says which model parameter plays which kernel parameter and how it converts
(:class:`~ppl_lvm.em.patterns.MixturePattern`); a tuple of names is a parameter built per column.
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from .families import Bernoulli, Categorical, Gaussian, Poisson

__all__ = ["emission_of", "find", "matches", "same", "unwrap"]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to rounding (distributions renormalise probabilities, so not bit for bit)."""
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


def matches(arg: torch.Tensor, value: torch.Tensor, k_dim: int, k: int) -> str | None:
    """Is ``arg`` equal to ``value`` indexed by z (laid along ``k_dim``), or to ``value`` broadcast?"""
    if arg.dim() >= -k_dim and arg.shape[k_dim] == k and value.dim() >= 1 and value.shape[0] == k:
        # insert singleton dims between K and the param's own dims so that K lands on k_dim
        ndim = arg.dim()
        k_pos = ndim + k_dim
        rest = list(value.shape[1:])
        gap = ndim - k_pos - 1 - len(rest)
        if gap >= 0:
            # the param's own dims are right-aligned (event dims); plate dims in between are singletons
            shape = [1] * k_pos + [k] + [1] * gap + rest
            try:
                if same(*_distinct(arg, value.reshape(shape))):
                    return "indexed"
            except RuntimeError:
                pass
    try:
        if same(*_distinct(arg, value)):
            return "shared"
    except RuntimeError:
        pass
    return None


def find(arg: torch.Tensor | None, store_values: dict, k_dim: int, k: int) -> tuple[str, str] | None:
    """``(parameter, "indexed" | "shared")`` of the one parameter ``arg`` equals, else None."""
    if arg is None:
        return None
    found = [(name, how) for name, v in store_values.items() if (how := matches(arg, v, k_dim, k)) is not None]
    return found[0] if len(found) == 1 else None


def _find_columns(arg: torch.Tensor | None, store_values: dict, k_dim: int, k: int, width: int) -> tuple | None:
    """The parameters, left to right, whose columns make up ``arg``'s last dim, each indexed by z: a ``(K,)``
    parameter is one column, a ``(K, m)`` one ``m`` columns. None unless every column is found, exactly once."""
    if arg is None or arg.dim() < 1 or width < 2:
        return None
    arg = torch.broadcast_to(arg, arg.shape[:-1] + (width,)) if arg.shape[-1] == 1 else arg
    if arg.shape[-1] != width:
        return None
    names, col = [], 0
    while col < width:
        hits = []
        for name, v in store_values.items():
            m = 1 if v.dim() == 1 else v.shape[1] if v.dim() == 2 else 0
            if m == 0 or v.shape[0] != k or col + m > width:
                continue
            part = arg[..., col] if v.dim() == 1 else arg[..., col : col + m]
            if matches(part, v, k_dim + (1 if v.dim() == 1 else 0), k) == "indexed":
                hits.append((name, m))
        if len(hits) != 1:
            return None
        names.append(hits[0][0])
        col += hits[0][1]
    return tuple(names) if len(names) > 1 else None


def unwrap(fn: Any) -> Any:
    """The distribution under ``Independent`` / ``Expanded`` / ``Masked`` wrappers."""
    while isinstance(fn, (dist.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)) or type(
        fn
    ).__name__ in ("Independent", "ExpandedDistribution", "MaskedDistribution"):
        fn = fn.base_dist
    return fn


def emission_of(x_fn: Any, x_value: torch.Tensor, other: dict, constraint_of: dict, k_dim: int, k: int):
    """``(family, emission map, univariate)`` when ``x_fn``'s arguments are params indexed by the state, else None.

    ``x_value`` is the site's value (its last dim the columns unless it is one column per point).
    """
    univariate = x_value.dim() == 1
    width = 1 if univariate else x_value.shape[-1]

    def constrained(name: str, constraint: Any) -> bool:
        return constraint is None or constraint_of.get(name) is constraint

    def role(arg: torch.Tensor | None, constraint: Any = None, dim: int = k_dim) -> tuple[str, str] | None:
        hit = find(arg, other, dim, k)
        if hit is None or not constrained(hit[0], constraint):
            return None
        return hit

    def indexed(arg: torch.Tensor | None, constraint: Any = None) -> str | tuple | None:
        """The parameter (or, built per column, the parameters) that ``arg`` is, indexed by z."""
        hit = role(arg, constraint)
        if hit is not None:
            return hit[0] if hit[1] == "indexed" else None
        if univariate:
            return None
        names = _find_columns(arg, other, k_dim, k, width)
        if names is None or not all(constrained(n, constraint) for n in names):
            return None
        return names

    if isinstance(x_fn, dist.Normal):
        loc, scale = indexed(x_fn.loc), indexed(x_fn.scale, constraints.positive)
        if loc is None or scale is None:
            return None
        shape = (k, width) if isinstance(scale, tuple) else other[scale].shape
        if univariate or shape == (k, width):
            family = Gaussian("diag")
        elif shape == (k,):
            family = Gaussian("spherical")
        else:
            return None
        return family, {"means": (loc, "identity"), "covariances": (scale, "square")}, univariate
    if isinstance(x_fn, dist.MultivariateNormal) and not univariate:
        loc = indexed(x_fn.loc)
        spelled = [key for key in ("scale_tril", "covariance_matrix", "precision_matrix") if key in vars(x_fn)]
        if loc is None or len(spelled) != 1:
            return None
        key = spelled[0]
        want = constraints.lower_cholesky if key == "scale_tril" else constraints.positive_definite
        matrix = role(getattr(x_fn, key), want, k_dim - 1)
        if matrix is None:
            return None
        family = Gaussian("full" if matrix[1] == "indexed" else "tied")
        how = {"scale_tril": "cholesky", "covariance_matrix": "identity", "precision_matrix": "precision"}[key]
        return family, {"means": (loc, "identity"), "covariances": (matrix[0], how)}, univariate
    if isinstance(x_fn, dist.Bernoulli):
        probs = indexed(x_fn.probs, constraints.unit_interval)
        return None if probs is None else (Bernoulli(), {"probs": (probs, "identity")}, univariate)
    if isinstance(x_fn, dist.Poisson):
        rate = indexed(x_fn.rate, constraints.positive)
        return None if rate is None else (Poisson(), {"rates": (rate, "identity")}, univariate)
    if isinstance(x_fn, dist.Categorical) and univariate:
        probs = role(x_fn.probs, constraints.simplex, k_dim - 1)
        if probs is None or probs[1] != "indexed":
            return None
        # the categorical kernel takes (N,) integer symbols as they are
        return Categorical(n_categories=other[probs[0]].shape[-1]), {"probs": (probs[0], "identity")}, False
    return None
