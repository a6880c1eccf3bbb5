"""Model-agnostic exact EM for Pyro / ppl_lvm models whose latents are all discrete with finite support.

The E-step enumerates every discrete latent in parallel (``poutine.enum``), packs each sample site's log-prob
into a named-dimension tensor (a *factor*), and contracts the factors to the exact ``log Z = log p(x)`` with
Pyro's plated tensor variable elimination (:func:`pyro.ops.contract.contract_to_tensor`).  The posterior
marginal of every factor is the gradient of ``log Z`` with respect to a detached copy of that factor's
log-prob (a standard identity of sum-product networks), so one backward pass gives all responsibilities,
pairwise HMM marginals included, in time linear in the chain length.

The M-step maximises ``Q(theta | theta_old) = sum_f sum(marginal_f * log_prob_f(theta))`` over the
unconstrained values of the ``pyro.param`` s with L-BFGS, and keeps the result only if ``Q`` did not decrease
(generalised EM), so the marginal log-likelihood never decreases.

Every function works in the caller's parameter store (run it inside ``pyro.get_param_store().scope()``).

Layout of factors and marginals
-------------------------------
``EStep.factors[name]`` is Pyro's *packed* log-prob of site ``name``: size-1 dims are squeezed away and the
remaining dims are named by the characters of ``EStep.dims[name]`` (also set as the tensor attribute
``_pyro_dims``).  Plate dims use the symbols of ``EStep.plate_to_symbol``; the enumeration dim of an enumerated
site uses ``EStep.enum_symbol[name]``.  ``EStep.marginals[name]`` has the same shape and dims: for a factor over
plate ``n`` and enumerated sites ``z_i``, ``z_j`` it holds ``p(z_i, z_j | x)`` for every ``n``.  Use
:func:`site_marginal` to get a single site's responsibilities laid out as ``(*plate dims, K)``.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.runtime import _ENUM_ALLOCATOR
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from ..errors import UnsupportedModelError
from ._mixture import EMDegeneracyWarning

__all__ = [
    "DEFAULT_MAX_BYTES",
    "EStep",
    "check_enumeration_size",
    "e_step",
    "estimate_enumeration_bytes",
    "expected_complete_log_likelihood",
    "fit_generic_em",
    "generic_m_step",
    "marginal_log_likelihood",
    "site_marginal",
    "site_marginals",
]

#: Default memory budget of one E-step (2 GiB).
DEFAULT_MAX_BYTES = 2 * 1024**3

# Above this many enumeration dims alive at once, the size prototype itself (two values per site) could be
# large; the estimate then falls back to an upper bound without finishing the prototype run.
_PROTOTYPE_MAX_DIMS = 20


# ---------------------------------------------------------------------------------------------------------------
# Tracing helpers
# ---------------------------------------------------------------------------------------------------------------


def _auto_enumerate(model: Callable) -> Callable:
    """``model`` with every unobserved enumerable sample site marked for parallel enumeration.

    Sites whose ``infer`` already says how to enumerate them are left alone.
    """

    def config(msg: dict) -> dict:
        if (
            msg["type"] == "sample"
            and not msg["is_observed"]
            and "enumerate" not in (msg["infer"] or {})
            and getattr(msg["fn"], "has_enumerate_support", False)
        ):
            return {"enumerate": "parallel"}
        return {}

    return poutine.infer_config(model, config)


def _where(model: Any, name: str) -> str:
    location_of = getattr(model, "location_of", None)
    location = location_of(name) if location_of is not None else None
    return f" ({location})" if location is not None else ""


def _check_enumerated(model: Any, trace: poutine.Trace) -> None:
    """Refuse latents that were not enumerated in parallel (continuous, sequential, Monte Carlo)."""
    for name, node in trace.nodes.items():
        if node["type"] != "sample" or node["is_observed"] or site_is_subsample(node):
            continue
        infer = node["infer"]
        if infer.get("_enumerate_dim") is None or infer.get("num_samples") is not None:
            fn = node["fn"]
            why = (
                "it is not discrete with finite support"
                if not getattr(fn, "has_enumerate_support", False)
                else f"it is marked enumerate={infer.get('enumerate')!r}, num_samples={infer.get('num_samples')!r}"
            )
            raise UnsupportedModelError(
                f"site '{name}'{_where(model, name)}: exact EM needs every latent enumerated exactly in parallel, "
                f"but {why} ({type(fn).__name__}); use method='svi' for models with such latents"
            )


def _enum_trace(model: Callable, kwargs: dict[str, Any], max_plate_nesting: int) -> poutine.Trace:
    """The enumerated, packed trace of ``model(**kwargs)`` with log-probs computed."""
    enumerated = poutine.enum(_auto_enumerate(model), first_available_dim=-1 - max_plate_nesting)
    with poutine.block():
        trace = poutine.trace(enumerated).get_trace(**kwargs)
    trace = prune_subsample_sites(trace)
    _check_enumerated(model, trace)
    trace.compute_log_prob()
    trace.pack_tensors()
    return trace


@dataclass
class _Factors:
    """The packed factors of one enumerated trace."""

    trace: poutine.Trace
    factors: OrderedDict  # name -> packed log-prob (carries _pyro_dims)
    ordinals: dict  # name -> frozenset of plate symbols
    sum_dims: set
    dim_to_size: dict
    enum_symbol: dict  # enumerated site name -> its enum symbol


def _ordinal(trace: poutine.Trace, node: dict) -> frozenset:
    return frozenset(trace.plate_to_symbol[f.name] for f in node["cond_indep_stack"] if f.vectorized and f.size > 1)


def _collect_factors(model: Any, trace: poutine.Trace) -> _Factors:
    factors: OrderedDict = OrderedDict()
    ordinals: dict = {}
    enum_symbol: dict = {}
    sum_dims: set = set()
    dim_to_size: dict = {}
    for name, node in trace.nodes.items():
        if node["type"] != "sample":
            continue
        symbol = node["infer"].get("_enumerate_symbol")
        if symbol is not None:
            enum_symbol[name] = symbol
    enum_symbols = set(enum_symbol.values())
    for name, node in trace.nodes.items():
        if node["type"] != "sample":
            continue
        log_prob = node["packed"]["log_prob"]
        if not isinstance(log_prob, torch.Tensor):
            log_prob = torch.as_tensor(log_prob, dtype=torch.get_default_dtype())
            log_prob._pyro_dims = ""
        dims = set(log_prob._pyro_dims)
        if dims & enum_symbols:
            scale = node["scale"]
            if isinstance(scale, torch.Tensor) or float(scale) != 1.0:
                raise UnsupportedModelError(
                    f"site '{name}'{_where(model, name)} depends on enumerated latents and has a likelihood scale "
                    "(poutine.scale or a subsampled plate); exact EM needs the full data, unscaled"
                )
        factors[name] = log_prob
        ordinals[name] = _ordinal(trace, node)
        sum_dims |= dims & enum_symbols
        dim_to_size.update(zip(log_prob._pyro_dims, log_prob.shape, strict=True))
    return _Factors(trace, factors, ordinals, sum_dims, dim_to_size, enum_symbol)


def _tree(terms: dict, ordinals: dict, names: list[str] | None = None) -> OrderedDict:
    tree: OrderedDict = OrderedDict()
    for name in terms if names is None else names:
        tree.setdefault(ordinals[name], []).append(terms[name])
    return tree


def _factorises(fs: _Factors, plate: str) -> bool:
    """log Z factorises over ``plate`` iff no enumerated dim is shared with a term outside it."""
    symbol = fs.trace.plate_to_symbol[plate]
    return all(
        symbol in fs.ordinals[name] or not (set(term._pyro_dims) & fs.sum_dims) for name, term in fs.factors.items()
    )


def _find_data_plate(fs: _Factors, data_plate: str | None) -> tuple[str | None, int | None, bool]:
    """The data plate: a plate around every observed site (``pyro.factor`` sites excepted).

    Among several, plates over which log Z factorises come first, then the outermost (present in most
    factors).  Returns its name, its size and whether log Z factorises over it; ``(None, None, False)`` when
    there is none.
    """
    trace = fs.trace
    if data_plate is None:
        observed = [
            node
            for node in trace.nodes.values()
            if node["type"] == "sample"
            and node["is_observed"]
            and not node["infer"].get("_deterministic")
            and type(node["fn"]).__name__ != "Unit"
        ]
        common: list[str] = []
        for i, node in enumerate(observed):
            names = [f.name for f in node["cond_indep_stack"] if f.vectorized and f.size > 1]
            common = names if i == 0 else [n for n in common if n in names]
        if not common:
            return None, None, False
        data_plate = max(
            common,
            key=lambda p: (_factorises(fs, p), sum(trace.plate_to_symbol[p] in o for o in fs.ordinals.values())),
        )
    if data_plate not in trace.plate_to_symbol:
        raise ValueError(f"no vectorised plate named {data_plate!r} in the model")
    symbol = trace.plate_to_symbol[data_plate]
    return data_plate, fs.dim_to_size.get(symbol, 1), _factorises(fs, data_plate)


# ---------------------------------------------------------------------------------------------------------------
# Memory estimate
# ---------------------------------------------------------------------------------------------------------------


class _TooManyDims(Exception):
    def __init__(self, site: str, bound: int, sites: list[str]):
        self.site, self.bound, self.sites = site, bound, sites


class _PrototypeEnum(EnumMessenger):
    """Enumeration that keeps only the first two values of each site: shapes tell the dims, sizes stay tiny."""

    def __init__(self, first_available_dim: int):
        super().__init__(first_available_dim)
        self.cardinality: dict[int, int] = {}  # enumeration id -> number of values
        self.owner: dict[int, str] = {}  # enumeration id -> site name

    def _pyro_sample(self, msg: dict) -> None:
        alive = dict(_ENUM_ALLOCATOR.dim_to_id)
        if len(alive) > _PROTOTYPE_MAX_DIMS:
            bound = math.prod(self.cardinality.get(i, 1) for i in alive.values())
            for f in msg["cond_indep_stack"]:
                if f.vectorized and f.size:
                    bound *= int(f.size)
            raise _TooManyDims(msg["name"], bound, [self.owner[i] for i in alive.values() if i in self.owner])
        already = msg["done"]
        super()._pyro_sample(msg)
        dim = msg["infer"].get("_enumerate_dim") if msg["infer"] else None
        if already or dim is None or not msg["done"]:
            return
        value = msg["value"]
        pos = dim - msg["fn"].event_dim
        id_ = msg["infer"]["_dim_to_id"][dim]
        self.cardinality[id_] = int(value.size(pos))
        self.owner[id_] = msg["name"]
        if value.size(pos) > 2:
            msg["value"] = value.narrow(pos, 0, 2)


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            break
        n /= 1024
    return f"{n:.3g} {unit}"


@dataclass
class _SizeReport:
    bytes: int
    largest_site: str | None
    largest_shape: tuple[int, ...]
    largest_sites: list[str]
    exact: bool = True


def _size_report(model: Callable, kwargs: dict[str, Any], max_plate_nesting: int) -> _SizeReport:
    messenger = _PrototypeEnum(first_available_dim=-1 - max_plate_nesting)
    itemsize = torch.tensor([], dtype=torch.get_default_dtype()).element_size()
    try:
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(messenger(_auto_enumerate(model))).get_trace(**kwargs)
    except _TooManyDims as err:
        return _SizeReport(2 * err.bound * itemsize, err.site, (err.bound,), err.sites, exact=False)
    total = 0
    largest = (-1, None, (), [])
    for name, node in trace.nodes.items():
        if node["type"] != "sample" or site_is_subsample(node):
            continue
        fn = node["fn"]
        value = node["value"]
        batch = tuple(fn.batch_shape)
        if isinstance(value, torch.Tensor):
            vshape = tuple(value.shape[: value.dim() - fn.event_dim]) if value.dim() >= fn.event_dim else ()
            batch = tuple(torch.broadcast_shapes(batch, vshape))
        dim_to_id = (node["infer"] or {}).get("_dim_to_id", {})
        shape = []
        sites = []
        for i, size in enumerate(batch):
            dim = i - len(batch)
            if size > 1 and dim in dim_to_id and dim_to_id[dim] in messenger.cardinality:
                shape.append(messenger.cardinality[dim_to_id[dim]])
                sites.append(messenger.owner[dim_to_id[dim]])
            else:
                shape.append(int(size))
        n = math.prod(shape)
        total += n
        if n > largest[0]:
            largest = (n, name, tuple(shape), sites)
    # log-probs and their marginals (gradients) are held together during the E-step
    return _SizeReport(2 * total * itemsize, largest[1], largest[2], largest[3])


def estimate_enumeration_bytes(model: Callable, kwargs: dict[str, Any], max_plate_nesting: int) -> int:
    """Estimate the memory of an exact E-step, without allocating the enumerated tensors.

    The model is run once under an enumeration that keeps only two values per discrete site (so every
    intermediate stays small), which reveals which enumeration dims each site's log-prob depends on; the true
    sizes are then multiplied out.

    Parameters
    ----------
    model : callable
        A Pyro or ppl_lvm model; its unobserved enumerable sites are enumerated.
    kwargs : dict
        Keyword arguments of the model.
    max_plate_nesting : int
        Number of plate dims the model uses (enumeration dims go to their left).

    Returns
    -------
    int
        Approximate bytes of the E-step: the packed log-prob of every site and its posterior marginal, in the
        default dtype.  Einsum intermediates are not counted (for chains and mixtures they are no larger than
        the factors).  When more than 20 enumeration dims are alive at once the prototype stops early and the
        result is an upper bound.
    """
    return _size_report(model, kwargs, max_plate_nesting).bytes


def check_enumeration_size(
    model: Callable, kwargs: dict[str, Any], max_plate_nesting: int, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> int:
    """Raise :class:`~ppl_lvm.errors.UnsupportedModelError` if the E-step would need more than ``max_bytes``.

    Returns the estimate (bytes) when it fits.  ``max_bytes=None`` disables the check (returns -1).
    """
    if max_bytes is None:
        return -1
    report = _size_report(model, kwargs, max_plate_nesting)
    if report.bytes > max_bytes:
        sites = ", ".join(f"'{s}'" for s in dict.fromkeys(report.largest_sites)) or "?"
        what = "needs" if report.exact else "may need up to"
        shape = (
            f"tensor of shape {report.largest_shape} at site '{report.largest_site}'"
            if report.exact
            else f"{report.largest_shape[0]:.3g} entries at site '{report.largest_site}'"
        )
        raise UnsupportedModelError(
            f"exact EM: enumerating sites {sites} jointly {what} ~{_format_bytes(report.bytes)} ({shape}); the limit "
            f"is {_format_bytes(max_bytes)}. Decouple the discrete latents (pyro.markov for chains, plates for "
            "independent ones), reduce their number of states, or fit with method='svi'"
        )
    return report.bytes


# ---------------------------------------------------------------------------------------------------------------
# E-step
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Q function and M-step
# ---------------------------------------------------------------------------------------------------------------


def _align(marg: torch.Tensor, target_dims: str, name: str) -> torch.Tensor:
    dims = getattr(marg, "_pyro_dims", None)
    if dims is None or dims == target_dims:
        return marg
    if sorted(dims) != sorted(target_dims):
        raise ValueError(
            f"site '{name}': the marginal's dims {dims!r} differ from the factor's {target_dims!r}; "
            "the model's structure changed since the E-step"
        )
    return marg.permute([dims.index(d) for d in target_dims])


def expected_complete_log_likelihood(
    model: Callable, kwargs: dict[str, Any], max_plate_nesting: int, marginals: dict[str, torch.Tensor] | EStep
) -> torch.Tensor:
    """``Q(theta | theta_old) = sum_f sum(marginal_f * log_prob_f(theta))`` at the current parameters.

    Parameters
    ----------
    model, kwargs, max_plate_nesting
        As for :func:`e_step`.
    marginals : dict or EStep
        The marginals of an :func:`e_step` at ``theta_old`` (or the EStep itself).

    Returns
    -------
    torch.Tensor
        Scalar, differentiable w.r.t. the ``pyro.param`` s of the caller's store.  Every sample site counts:
        latent and observed sites, and ``pyro.factor`` terms (e.g. log-priors of parameters).
    """
    if isinstance(marginals, EStep):
        marginals = marginals.marginals
    fs = _collect_factors(model, _enum_trace(model, kwargs, max_plate_nesting))
    missing = set(fs.factors) ^ set(marginals)
    if missing:
        raise ValueError(f"marginals and model sites differ: {sorted(missing)}")
    q = None
    for name, term in fs.factors.items():
        marg = _align(marginals[name], term._pyro_dims, name)
        if marg.shape != term.shape:
            term = term.expand(marg.shape) if term.dim() == marg.dim() else term
            if marg.shape != term.shape:
                raise ValueError(f"site '{name}': marginal shape {tuple(marg.shape)} != factor {tuple(term.shape)}")
        positive = marg > 0
        contrib = (marg * torch.where(positive, term, torch.zeros_like(term))).sum()
        q = contrib if q is None else q + contrib
    if q is None:
        q = torch.zeros(())
    return q


def _store_params(params: list[str] | None) -> dict[str, torch.Tensor]:
    store = pyro.get_param_store()
    names = list(store.keys()) if params is None else list(params)
    unknown = [n for n in names if n not in store]
    if unknown:
        raise KeyError(f"no parameter(s) {unknown} in the parameter store")
    return {n: store._params[n] for n in names}


def generic_m_step(
    model: Callable,
    kwargs: dict[str, Any],
    max_plate_nesting: int,
    marginals: dict[str, torch.Tensor] | EStep,
    params: list[str] | None = None,
    max_steps: int = 50,
    lr: float = 1.0,
) -> dict[str, Any]:
    """Generalised M-step: maximise ``Q`` over the unconstrained parameters with L-BFGS (strong Wolfe).

    Starts from the current values; keeps the new values only if ``Q(new) >= Q(old)``, else restores the old
    values exactly (also when the optimiser produced NaN).

    Parameters
    ----------
    model, kwargs, max_plate_nesting, marginals
        As for :func:`expected_complete_log_likelihood`.
    params : list of str, optional
        Parameter names to optimise; default every parameter of the store.
    max_steps : int
        L-BFGS iterations (its ``max_iter``).
    lr : float
        L-BFGS learning rate (1 is right with the strong-Wolfe line search).

    Returns
    -------
    dict
        ``accepted`` (bool), ``q_before``, ``q_after`` (floats; ``q_after`` is Q at the kept values),
        ``steps`` (L-BFGS iterations run), ``nan`` (bool).
    """
    if isinstance(marginals, EStep):
        marginals = marginals.marginals
    leaves = _store_params(params)
    old = {n: p.detach().clone() for n, p in leaves.items()}

    def q_value() -> torch.Tensor:
        return expected_complete_log_likelihood(model, kwargs, max_plate_nesting, marginals)

    with torch.no_grad():
        q_before = float(q_value())
    tensors = [p for p in leaves.values() if p.requires_grad]
    if not tensors or not math.isfinite(q_before):
        return {"accepted": False, "q_before": q_before, "q_after": q_before, "steps": 0, "nan": True}
    scale = max(1.0, abs(q_before))
    optimizer = torch.optim.LBFGS(
        tensors,
        lr=lr,
        max_iter=max_steps,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -q_value() / scale
        if loss.requires_grad:
            loss.backward()
        return loss

    nan = False
    try:
        with torch.enable_grad():
            optimizer.step(closure)
    except (ValueError, RuntimeError) as exc:  # e.g. a distribution's argument check on a NaN parameter
        if "nan" not in str(exc).lower() and "invalid" not in str(exc).lower():
            raise
        nan = True
    for p in tensors:
        p.grad = None
    state = optimizer.state[optimizer._params[0]]
    steps = int(state.get("n_iter", 0))
    q_after = float("nan")
    if not nan and all(bool(torch.isfinite(p).all()) for p in tensors):
        try:
            with torch.no_grad():
                q_after = float(q_value())
        except (ValueError, RuntimeError):
            q_after = float("nan")
    nan = nan or not math.isfinite(q_after)
    accepted = (not nan) and q_after >= q_before
    if not accepted:
        with torch.no_grad():
            for n, p in leaves.items():
                p.copy_(old[n])
        q_after = q_before
    return {"accepted": accepted, "q_before": q_before, "q_after": q_after, "steps": steps, "nan": nan}


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------


def fit_generic_em(
    model: Callable,
    kwargs: dict[str, Any],
    max_plate_nesting: int,
    max_iter: int = 100,
    tol: float = 1e-3,
    callback: Callable[[int, float], Any] | None = None,
    *,
    params: list[str] | None = None,
    max_steps: int = 50,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> dict[str, Any]:
    """Exact (generalised) EM: alternate :func:`e_step` and :func:`generic_m_step` until convergence.

    Parameters
    ----------
    model, kwargs, max_plate_nesting
        As for :func:`e_step`.
    max_iter : int
        Maximum number of M-steps.
    tol : float
        Convergence when the mean log-likelihood changes by less than ``tol`` (scikit-learn's convention).
    callback : callable, optional
        ``callback(iteration, mean_log_likelihood)`` after each accepted iteration (the value just appended
        to ``history``); a truthy return value stops the fit (``converged`` is then True only if the
        tolerance was also met).
    params : list of str, optional
        Parameters to optimise (default all of the store).
    max_steps : int
        L-BFGS iterations per M-step.
    max_bytes : int or None
        Memory limit of the E-step (checked once, before the first E-step).

    Returns
    -------
    dict
        ``history``: list of floats, the log-likelihood of each E-step (the initial one first) divided by the
        size of the data plate when there is one, else the total; ``converged`` (bool); ``n_iter`` (M-steps
        run); ``e_step``: the final :class:`EStep` (at the final parameters).

    Notes
    -----
    The log-likelihood never decreases: an M-step whose ``Q`` did not increase is rejected (the loop then
    stops as converged, parameters are at a fixed point of the M-step), and if an accepted M-step lowered the
    log-likelihood by more than a 1e-9 relative slack the parameters are restored and the loop stops with an
    :class:`~ppl_lvm.em._mixture.EMDegeneracyWarning`.
    """
    check_enumeration_size(model, kwargs, max_plate_nesting, max_bytes)
    estep = e_step(model, kwargs, max_plate_nesting, max_bytes=None)
    n = estep.n_data if estep.n_data else 1
    ll = float(estep.log_likelihood)
    history = [ll / n]
    converged = False
    n_iter = 0
    leaves = _store_params(params)
    for iteration in range(1, max_iter + 1):
        snapshot = {k: p.detach().clone() for k, p in leaves.items()}
        info = generic_m_step(model, kwargs, max_plate_nesting, estep.marginals, params=params, max_steps=max_steps)
        n_iter = iteration
        if not info["accepted"]:
            if info["nan"]:
                warnings.warn(
                    f"generic EM: the M-step of iteration {iteration} produced NaN; parameters restored, fit stopped",
                    EMDegeneracyWarning,
                    stacklevel=2,
                )
            else:
                converged = True
            break
        new = e_step(model, kwargs, max_plate_nesting, max_bytes=None)
        new_ll = float(new.log_likelihood)
        if not math.isfinite(new_ll) or new_ll < ll - 1e-9 * max(1.0, abs(ll)):
            with torch.no_grad():
                for k, p in leaves.items():
                    p.copy_(snapshot[k])
            warnings.warn(
                f"generic EM: iteration {iteration} lowered the log-likelihood ({ll!r} -> {new_ll!r}); "
                "parameters restored, fit stopped",
                EMDegeneracyWarning,
                stacklevel=2,
            )
            break
        estep, ll = new, new_ll
        history.append(ll / n)
        stop = callback is not None and bool(callback(iteration, history[-1]))
        if abs(history[-1] - history[-2]) < tol:
            converged = True
            break
        if stop:
            break
    return {"history": history, "converged": converged, "n_iter": n_iter, "e_step": estep}
