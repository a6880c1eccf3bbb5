"""Recognise a Normal likelihood whose mean is linear in parameters given the state: a mixture of regressions.

A user writes a mixture of linear regressions the natural way::

    with lvm.plate(len(y)):
        z = lvm.latent(dist.Categorical(weights))
        lvm.observe(dist.Normal((X * beta[z]).sum(-1), sigma[z]), y)

The mean is some expression of the data and of parameters indexed by z. It is a linear regression when, for every
component k, ``mean[k, n] = b_n + phi_n . theta_k`` with ``theta_k`` the k-th rows of some parameters (the design
``phi`` and the offset ``b`` the same for every component). That is read from the model itself, not from names:

1. the model is run with z enumerated and every parameter at a random value ``theta_1``; the Jacobian of the
   mean with respect to each candidate parameter (each real-valued parameter with one row per component) is
   taken by automatic differentiation, one column of the design per coordinate (forward-mode products through
   two reverse passes); it must be the same for every component, and the offset ``b = mean - phi theta_1`` too;
2. the model is run again at three more values of every parameter: a small random move ``theta_2``, the
   first value with its signs flipped, ``-theta_1``, and a wide random one (normal noise of both signs, three
   times the values' size plus three); the mean must equal ``b + phi theta`` at each, for every component and
   point (to rounding). A mean that is not affine in those parameters, or whose component k depends on another
   component's rows, or on any other parameter, fails this check except on a set of parameter values of measure
   zero, which independent random draws do not hit. A mean affine only piecewise fails it when a value falls on
   another piece: always for a kink at zero (``relu(beta[z])``, ``abs``: the flipped value), likely for a kink
   elsewhere (the wide draw), not certainly.

The scale must be a positive parameter indexed by z. The kernel then is
:class:`~ppl_lvm.em.families.LinearGaussian`, whose M-step is weighted least squares.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints

from ..runtime import run_scope
from .families import LinearGaussian
from .recognise_emission import find, unwrap

__all__ = ["linear_emission"]


def _means(model: Any, kwargs: dict, state: dict, enumerated: frozenset, x_names: list[str], first_dim: int,
           grad: bool) -> tuple[list, dict]:
    """The observed sites' Normal means with ``enumerated`` summed out, at the parameter values ``state``, and
    those values."""
    store = pyro.get_param_store()
    # fresh leaves: the Jacobian is taken with respect to them
    state = {"params": {m: v.detach().clone().requires_grad_(grad and v.is_floating_point())
                        for m, v in state["params"].items()}, "constraints": state["constraints"]}
    enum_model = poutine.infer_config(model, lambda msg: {"enumerate": "parallel"} if msg["name"] in enumerated else {})
    with store.scope(state), torch.random.fork_rng(devices=[]), torch.set_grad_enabled(grad), run_scope(model):
        trace = poutine.trace(poutine.enum(enum_model, first_available_dim=first_dim)).get_trace(**kwargs)
        leaves = {name: store._params[name] for name in store.keys()}
        return [getattr(unwrap(trace.nodes[x]["fn"]), "loc", None) for x in x_names], leaves


def _moved(state: dict, seed: int, flip: bool) -> dict:
    """``state`` with every unconstrained value negated (``flip``), or moved by normal noise of size
    ``3 (1 + |value|)``."""
    generator = torch.Generator().manual_seed(seed)
    params = {}
    for name in sorted(state["params"]):
        value = state["params"][name].detach()
        if value.is_floating_point() and flip:
            value = -value
        elif value.is_floating_point():
            noise = torch.randn(value.shape, generator=generator, dtype=torch.float64).to(value.dtype)
            value = value + 3.0 * (1.0 + value.abs()) * noise
        params[name] = value
    return {"params": params, "constraints": state["constraints"]}


def _as_rows(loc: torch.Tensor, k_dim: int, k: int, n: int) -> torch.Tensor | None:
    """The mean as (K, N): component by row, data point by column; None when it is not laid out so."""
    if loc is None or loc.dim() < -k_dim or loc.shape[k_dim] != k:
        return None
    shape = [1] * (-k_dim)
    shape[0], shape[-1] = k, n
    try:
        return torch.broadcast_to(loc, shape).reshape(k, n)
    except RuntimeError:
        return None


def _design(mean: torch.Tensor, leaves: dict, names: list[str], k: int) -> tuple[list[str], torch.Tensor] | None:
    """The parameters the mean depends on and the (K, N, F) Jacobian of the mean along their coordinates: for the
    coordinate i of a parameter, d mean[k, n] / d theta[:, i] summed over the rows (one row per component)."""
    probe = torch.zeros_like(mean, requires_grad=True)
    used, columns = [], []
    for name in names:
        leaf = leaves[name]
        (pulled,) = torch.autograd.grad(mean, leaf, grad_outputs=probe, create_graph=True, allow_unused=True)
        if pulled is None:
            continue
        width = leaf.numel() // k
        for i in range(width):
            tangent = torch.zeros((k, width), dtype=leaf.dtype)
            tangent[:, i] = 1.0
            (column,) = torch.autograd.grad(pulled, probe, grad_outputs=tangent.reshape(leaf.shape),
                                            retain_graph=True, allow_unused=True)
            columns.append(torch.zeros_like(mean) if column is None else column.detach())
        used.append(name)
    if not columns:
        return None
    return used, torch.stack(columns, dim=-1)


def _close(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> bool:
    """Equal to rounding, relative to ``scale`` (the size of what ``a`` and ``b`` are parts of)."""
    rtol = 1e-9 if a.dtype == torch.float64 else 1e-4
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * max(float(scale.abs().max()), 1e-300)))


def _stacked(locs: list, k_dims: list[int], k: int, n: int) -> torch.Tensor | None:
    """Every site's mean as (K, N), side by side: (K, sites x N)."""
    rows = [_as_rows(loc, k_dim, k, n) for loc, k_dim in zip(locs, k_dims, strict=True)]
    return None if any(r is None for r in rows) else torch.cat(rows, dim=1)


def linear_emission(model: Any, kwargs: dict, structure: Any, trace: Any, values: dict, constraint_of: dict,
                    pairs: list[tuple[str, str]], exclude: tuple[str, ...], k: int, states: tuple[dict, dict]):
    """``(family, emission map, rows)`` of Normal sites whose mean is linear in parameters given their state.

    ``pairs``: ``(z, x)`` site names, one for a mixture, one per step for a chain (each ``x`` emitted from its
    ``z``); ``rows``: each ``x`` site's data matrix (response minus offset, then design), ``(N, 1 + F)``.
    ``trace``, ``values``: the recogniser's probe (every z enumerated, parameters at ``states[0]``); ``states``: two
    independent random parameter states (the probe's, and the small move of step 2 above); ``exclude``:
    the parameters already placed (mixing weights, a chain's start and transitions).
    """
    scale_name, ys, k_dims = None, [], []
    for z_name, x_name in pairs:
        fn, y = unwrap(trace.nodes[x_name]["fn"]), trace.nodes[x_name]["value"]
        if type(fn).__name__ != "Normal" or y.dim() != 1 or not y.is_floating_point():
            return None
        k_dim = -trace.nodes[z_name]["value"].dim()
        # after the first site only the scale already found is a candidate (checks stay O(sites))
        pool = {m: v for m, v in values.items() if m not in exclude} if scale_name is None else \
            {scale_name: values[scale_name]}
        scale = find(fn.scale, pool, k_dim, k)
        if scale is None or scale[1] != "indexed" or values[scale[0]].shape != (k,):
            return None
        scale_name = scale[0]
        ys.append(y)
        k_dims.append(k_dim)
    if constraint_of.get(scale_name) is not constraints.positive or len({y.shape[0] for y in ys}) != 1:
        return None
    n = ys[0].shape[0]
    candidates = [m for m, v in values.items() if m not in exclude + (scale_name,) and v.is_floating_point()
                  and v.dim() >= 1 and v.shape[0] == k and constraint_of.get(m, constraints.real) is constraints.real]
    if not candidates:
        return None
    first_dim = -1 - structure.max_plate_nesting
    enumerated = frozenset(z for z, _ in pairs)
    x_names = [x for _, x in pairs]
    locs, leaves = _means(model, kwargs, states[0], enumerated, x_names, first_dim, grad=True)
    mean = _stacked(locs, k_dims, k, n)
    if mean is None or not mean.requires_grad:
        return None
    found = _design(mean, leaves, candidates, k)
    if found is None:
        return None
    used, jacobian = found
    design = jacobian[0]
    if not all(_close(jacobian[j], design, jacobian) for j in range(1, k)):
        return None
    theta = torch.cat([leaves[m].detach().reshape(k, -1) for m in used], dim=-1)
    offsets = mean.detach() - theta @ design.T
    offset = offsets[0]
    if not all(_close(offsets[j], offset, mean.detach()) for j in range(1, k)):
        return None
    for state in (states[1], _moved(states[0], 2, flip=True), _moved(states[0], 2, flip=False)):
        locs2, leaves2 = _means(model, kwargs, state, enumerated, x_names, first_dim, grad=False)
        mean2 = _stacked(locs2, k_dims, k, n)
        theta2 = torch.cat([leaves2[m].detach().reshape(k, -1) for m in used], dim=-1)
        if mean2 is None or not _close(mean2, offset + theta2 @ design.T, mean2):
            return None
    y = torch.cat(ys)
    data = torch.cat([(y - offset).unsqueeze(1), design], dim=1).to(torch.promote_types(y.dtype, design.dtype))
    emission = {"coefs": (tuple(used), "identity"), "variances": (scale_name, "square")}
    return LinearGaussian(), emission, list(data.split(n))
