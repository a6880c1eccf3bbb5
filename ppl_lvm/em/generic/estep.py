"""The exact E-step: log-likelihood and posterior marginals of every factor, by tensor variable elimination."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing

from .factors import _collect_factors, _enum_trace, _Factors, _find_data_plate, _in_plate, _tree
from .size import DEFAULT_MAX_BYTES, check_enumeration_size

__all__ = ["EStep", "e_step", "marginal_log_likelihood", "site_marginal", "site_marginals"]


@dataclass
class EStep:
    """The result of :func:`e_step`.

    Attributes
    ----------
    log_likelihood : torch.Tensor
        Scalar, the exact ``log p(x) = log Z`` (plus any ``pyro.factor`` terms), detached.
    factors : dict of str to torch.Tensor
        Site name -> packed log-prob at the current parameters (detached); dims named by ``dims[name]``.
    marginals : dict of str to torch.Tensor
        Site name -> posterior marginal of the factor's enumerated variables, same shape and dims as the
        factor (``d log Z / d factor``).  A factor with no enumerated dims gets ones.
    log_likelihood_per_point : torch.Tensor or None
        ``log p(x_i)`` for each index of the data plate, when ``log Z`` factorises over it (None when, e.g., a
        global discrete latent couples the points); terms outside the data plate (priors, global constants)
        are not included, so
        ``log_likelihood_per_point.sum() + (their sum) == log_likelihood``.
    dims : dict of str to str
        Site name -> packed dim symbols of its factor / marginal.
    enum_symbol : dict of str to str
        Enumerated site name -> symbol of its own enumeration dim.
    plate_to_symbol : dict of str to str
        Plate name -> symbol.
    data_plate : str or None
        Name of the data plate (a plate around every observed site), if any.
    n_data : int or None
        Size of the data plate.
    """

    log_likelihood: torch.Tensor
    factors: dict[str, torch.Tensor]
    marginals: dict[str, torch.Tensor]
    log_likelihood_per_point: torch.Tensor | None = None
    dims: dict[str, str] = field(default_factory=dict)
    enum_symbol: dict[str, str] = field(default_factory=dict)
    plate_to_symbol: dict[str, str] = field(default_factory=dict)
    data_plate: str | None = None
    n_data: int | None = None


def _named(t: torch.Tensor, dims: str) -> torch.Tensor:
    t._pyro_dims = dims
    return t


def _log_z(fs: _Factors, terms: dict, data_plate: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Contract ``terms`` (same names/dims as ``fs.factors``) to log Z and, if given a data plate, per point."""
    ring = LogRing(dim_to_size=fs.dim_to_size)
    if data_plate is None:
        if not terms:
            return torch.zeros(()), None
        return contract_to_tensor(_tree(terms, fs.ordinals), set(fs.sum_dims), ring=ring), None
    symbol = fs.trace.plate_to_symbol[data_plate]
    inside = [n for n in terms if symbol in fs.ordinals[n]]
    outside = [n for n in terms if symbol not in fs.ordinals[n]]
    per_point = contract_to_tensor(
        _tree(terms, fs.ordinals, inside), set(fs.sum_dims), target_ordinal=frozenset({symbol}), ring=ring
    )
    per_point = packed.unpack(per_point, {symbol: -1}).reshape(-1) if per_point.dim() else per_point.reshape(1)
    log_z = per_point.sum()
    for n in outside:  # no enumerated dims here (the data plate was chosen so): plain sums
        log_z = log_z + terms[n].sum()
    return log_z, per_point


def e_step(
    model: Callable,
    kwargs: dict[str, Any],
    max_plate_nesting: int,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    data_plate: str | None = None,
) -> EStep:
    """Exact E-step: log-likelihood and posterior marginals of every factor, by enumeration.

    Parameters
    ----------
    model : callable
        A Pyro or ppl_lvm model whose latents are all discrete with finite support; unobserved enumerable
        sites are enumerated in parallel (sites already configured with ``infer={"enumerate": ...}`` keep it).
        ``pyro.markov`` chains reuse enumeration dims, so a chain of length T costs O(T K^2).
    kwargs : dict
        Keyword arguments of the model (its data).
    max_plate_nesting : int
        Number of plate dims the model uses.
    max_bytes : int or None
        Refuse (``UnsupportedModelError``) before allocating when :func:`estimate_enumeration_bytes` is larger;
        ``None`` skips the check (and its extra prototype run).
    data_plate : str, optional
        The data plate (of ``log_likelihood_per_point`` and ``n_data``); by default the plate around every
        observed site, preferring one over which ``log Z`` factorises, then the outermost.

    Returns
    -------
    EStep
    """
    check_enumeration_size(model, kwargs, max_plate_nesting, max_bytes)
    with torch.no_grad():
        trace = _enum_trace(model, kwargs, max_plate_nesting)
    fs = _collect_factors(model, trace)
    plate, n_data, factorises = _find_data_plate(fs, data_plate)
    leaves = {n: _named(t.detach().clone().requires_grad_(True), t._pyro_dims) for n, t in fs.factors.items()}
    with torch.enable_grad():
        log_z, per_point = _log_z(fs, leaves, plate if factorises else None)
        names = list(leaves)
        if log_z.requires_grad:
            grads = torch.autograd.grad(log_z, [leaves[n] for n in names], allow_unused=True)
        else:
            grads = [None] * len(names)
    if per_point is None and plate is not None and n_data == 1:
        # a plate of one point has no dim in the packed factors: that point's value is log Z less the terms outside
        # the plate, when none of them depends on an enumerated latent
        outside = [t for n, t in fs.factors.items() if not _in_plate(trace, n, plate)]
        if not any(set(t._pyro_dims) & fs.sum_dims for t in outside):
            per_point = (log_z - sum((t.sum() for t in outside), torch.zeros(()))).reshape(1)
    marginals = {}
    for n, g in zip(names, grads, strict=True):
        marg = torch.ones_like(leaves[n]) if g is None else g.detach()
        marginals[n] = _named(marg, fs.factors[n]._pyro_dims)
    factors = {n: _named(t.detach().clone(), t._pyro_dims) for n, t in fs.factors.items()}
    return EStep(
        log_likelihood=log_z.detach(),
        factors=factors,
        marginals=marginals,
        log_likelihood_per_point=None if per_point is None else per_point.detach(),
        dims={n: t._pyro_dims for n, t in fs.factors.items()},
        enum_symbol=dict(fs.enum_symbol),
        plate_to_symbol=dict(trace.plate_to_symbol),
        data_plate=plate,
        n_data=n_data,
    )


def marginal_log_likelihood(model: Callable, kwargs: dict[str, Any], max_plate_nesting: int) -> torch.Tensor:
    """The exact ``log p(x)`` (all latents summed out), differentiable w.r.t. the ``pyro.param`` s."""
    fs = _collect_factors(model, _enum_trace(model, kwargs, max_plate_nesting))
    return _log_z(fs, fs.factors, None)[0]


def site_marginal(estep: EStep, name: str) -> torch.Tensor:
    """Posterior marginal of one enumerated site, laid out as ``(*plate dims of its factor, K)``.

    The site's own factor (its log-prob) is summed over the other enumerated dims it depends on (e.g. the
    previous state of a chain), and the site's enumeration dim is moved last.  For a mixture
    ``z ~ Categorical(w)`` inside a data plate of size N this is the ``(N, K)`` responsibility matrix.
    """
    marg = estep.marginals[name]
    dims = estep.dims[name]
    own = estep.enum_symbol[name]
    plates = set(estep.plate_to_symbol.values())
    others = [i for i, d in enumerate(dims) if d != own and d not in plates]
    if others:
        marg = marg.sum(others)
        dims = "".join(d for i, d in enumerate(dims) if i not in others)
    if own not in dims:  # a single state: probability one
        return marg.unsqueeze(-1)
    order = [i for i, d in enumerate(dims) if d != own] + [dims.index(own)]
    return marg.permute(order)


def site_marginals(estep: EStep, structure: Any = None) -> dict[str, torch.Tensor]:
    """:func:`site_marginal` of every enumerated site (or of ``structure.discrete_latents`` when given)."""
    if structure is not None:
        names = [s.name for s in structure.discrete_latents if s.name in estep.enum_symbol]
    else:
        names = list(estep.enum_symbol)
    return {name: site_marginal(estep, name) for name in names}
