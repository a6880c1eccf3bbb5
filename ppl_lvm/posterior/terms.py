"""What one replayed model trace contributes to the accumulators of :mod:`ppl_lvm.posterior.draws`.

Layout of every tensor here: enumeration dims on the left, then one dim of draws (the ``_num_samples`` plate of a
vectorised replay, size 1 when the draws are replayed one at a time), then the model's plates. Enumeration
therefore starts left of the draws' dim in both cases, and each function returns ``(draws or 1, ...)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.discrete import _sample_posterior_from_trace  # Pyro's backward sampler, without a second model run
from pyro.infer.mcmc.util import TraceEinsumEvaluator
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from ..handlers import enum_dims
from ..runtime import broadcast_shape

__all__ = ["DRAW_PLATE", "Unsupported", "in_draws", "log_joint", "pointwise_log_lik", "point_model_terms", "guide_terms",
           "sample_enumerated", "predictive_draws", "per_draw"]

DRAW_PLATE = "_num_samples"


def in_draws(fn: Any, num_samples: int, nesting: int) -> Any:
    """``fn`` run inside the plate of ``num_samples`` draws (dim ``-(nesting + 1)``).

    Wrap the model with it *inside* an enumeration handler (``poutine.enum``, ``infer_discrete``): a site that
    handler enumerates is marked done before any plate outside the handler sees it, so a plate of draws entered
    around the handler would not broadcast it, and its draws would be missing their dim.
    """

    def plated(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate(DRAW_PLATE, num_samples, dim=-(nesting + 1)):
            return fn(*args, **kwargs)

    return plated


class Unsupported(Exception):
    """A model without per-observation log-likelihoods (a Markov chain of discrete latents, ...)."""


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return t.reshape((1,) * (width - t.dim()) + tuple(t.shape)) if t.dim() < width else t


def per_draw(value: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A site's value as ``(draws or 1, *shape)``."""
    shape = tuple(shape)
    size = math.prod(shape)
    if value.numel() == size:
        return value.reshape((1,) + shape)
    if value.numel() > size and value.numel() % size == 0:
        return value.reshape((-1,) + shape)
    while value.dim() > len(shape) + 1 and value.shape[0] == 1:  # broadcast (e.g. a site with one state)
        value = value[0]
    draws = value.shape[0] if value.dim() == len(shape) + 1 else 1
    return torch.broadcast_to(value, (draws,) + shape)


def _sample_nodes(trace: poutine.Trace) -> list[dict]:
    return [n for n in trace.nodes.values() if n["type"] == "sample" and not site_is_subsample(n)]


def _is_enum(node: dict) -> bool:
    return node["infer"].get("_enumerate_dim") is not None


class _LogJoint(TraceEinsumEvaluator):
    """log p(x, theta) per draw with the enumerated sites contracted exactly (Markov chains included).

    As ``TraceEnum_ELBO``: an enumerated site enters with its unmasked log-probability (a masked, padded step of a
    chain still sums to one over its states), everything else with the masked one.
    """

    def _get_log_factors(self, model_trace: poutine.Trace) -> OrderedDict:
        model_trace.compute_log_prob()
        model_trace.pack_tensors()
        log_probs: OrderedDict = OrderedDict()
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample" and not site_is_subsample(site):
                term = site["packed"]["unscaled_log_prob" if _is_enum(site) else "log_prob"]
                log_probs.setdefault(self.ordering[name], []).append(term)
        return log_probs

    def per_draw(self, trace: poutine.Trace) -> torch.Tensor:
        log_probs = self._get_log_factors(trace)
        target = frozenset(s for p, s in trace.plate_to_symbol.items() if p == DRAW_PLATE)
        return contract_to_tensor(log_probs, self._enum_dims, target_ordinal=target).reshape(-1)


def log_joint(trace: poutine.Trace, enumerated: bool, nesting: int) -> torch.Tensor:
    """log p(x, theta) per draw ``(draws or 1,)``, the enumerated sites summed out exactly."""
    trace.compute_log_prob()
    if enumerated:
        return _LogJoint(trace, True, nesting + 1).per_draw(trace).double()
    total = torch.zeros(1, dtype=torch.float64)
    for node in _sample_nodes(trace):
        t = _pad(node["log_prob"].double(), nesting + 1)
        total = total + t.reshape(t.shape[0], -1).sum(-1)
    return total


def pointwise_log_lik(trace: poutine.Trace, obs: str, enumerated: list[str], structure: Any) -> torch.Tensor:
    """log p(x_i | draw) of one observed site ``(draws or 1, *batch)``, the discrete latents it depends on summed
    out exactly. Raises :class:`Unsupported` when they cannot be summed out per observation."""
    nesting = structure.max_plate_nesting
    width = nesting + 1
    node = trace.nodes[obs]
    terms = [node["log_prob"]]
    dims = enum_dims(node["log_prob"], width)
    enum_nodes = {n: trace.nodes[n] for n in enumerated if n in trace.nodes}
    site_dim = {n: enum_dims(nd["value"], width) for n, nd in enum_nodes.items()}
    seen: dict[int, str] = {}
    for name, ds in site_dim.items():
        for d in ds:
            if d in seen:  # an enumeration dim reused (a Markov chain): not a plain sum
                raise Unsupported(f"discrete sites '{seen[d]}' and '{name}' share an enumeration dim")
            seen[d] = name
    included: set[str] = set()
    changed = True
    while changed:  # the discrete sites the observation depends on, directly or through other discrete sites
        changed = False
        for name, nd in enum_nodes.items():
            if name not in included and site_dim[name] & dims:
                included.add(name)
                terms.append(nd["unscaled_log_prob"])  # unmasked, as TraceEnum_ELBO: states sum to one
                dims |= enum_dims(nd["unscaled_log_prob"], width)
                changed = True
    obs_plates = set(structure.sites[obs].plates) if obs in structure.sites else set()
    for name in included:
        info = structure.sites.get(name)
        if info is not None and not set(info.plates) <= obs_plates:
            raise Unsupported(f"discrete site '{name}' lies in a plate the observation '{obs}' is not in")
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    if total.dim() > width:
        lead = tuple(range(total.dim() - width))
        total = torch.logsumexp(total, dim=lead) if dims else total.reshape(total.shape[total.dim() - width:])
    total = _pad(total, width)
    batch = tuple(structure.sites[obs].batch_shape) if obs in structure.sites else tuple(node["fn"].batch_shape)
    plates = tuple(total.shape[1:])
    total = total.reshape((total.shape[0],) + plates[nesting - len(batch):])
    return torch.broadcast_to(total, (total.shape[0],) + batch)


def _point_term(term: torch.Tensor, nesting: int, dim: int, n: int) -> torch.Tensor | None:
    """A log-probability summed over every plate dim but the data plate's (enumeration and draw dims kept); None
    when it has no data-plate dim (a global factor: the weights do not factorise)."""
    term = _pad(term, nesting + 1)
    if term.shape[dim] != n:
        if not bool((term == 0).all()):
            return None
        term = torch.zeros(term.shape[: term.dim() - nesting] + (1,) * nesting, dtype=term.dtype)
    others = [d for d in range(-nesting, 0) if d != dim]
    return term.sum(dim=others, keepdim=True) if others else term


def point_model_terms(trace: poutine.Trace, nesting: int, dim: int, n: int) -> torch.Tensor | None:
    """log p(x_i, z_i) per draw and data point ``(draws or 1, n)``, discrete locals summed out per point; None when
    the model's factors do not factorise over the points."""
    width = nesting + 1
    total = torch.zeros((1,) * width, dtype=torch.float64)
    seen: set[int] = set()
    for node in _sample_nodes(trace):
        if _is_enum(node):
            ds = enum_dims(node["value"], width)
            if ds & seen:  # an enumeration dim reused: a Markov chain, not a product over points
                return None
            seen |= ds
        term = _point_term(node["unscaled_log_prob" if _is_enum(node) else "log_prob"].double(), nesting, dim, n)
        if term is None:
            return None
        total = total + term
    if total.dim() > width:
        total = torch.logsumexp(total, dim=tuple(range(total.dim() - width)))
    if math.prod(total.shape[1:]) != n:
        return None
    return total.reshape(total.shape[0], n)


def guide_terms(trace: poutine.Trace, names: set[str], nesting: int, dim: int | None, n: int | None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """log q per draw ``(draws or 1,)`` and per draw and point ``(draws or 1, n)`` (None when not per point), when
    the guide samples exactly ``names`` (no helper sites); (None, None) otherwise."""
    trace.compute_log_prob()
    nodes = [nd for nd in _sample_nodes(trace) if not nd["is_observed"]]
    if {nd["name"] for nd in nodes} != set(names):
        return None, None
    log_q = torch.zeros(1, dtype=torch.float64)
    point = torch.zeros((1, 1), dtype=torch.float64) if dim is not None else None
    for nd in nodes:
        t = _pad(nd["log_prob"].double(), nesting + 1)
        log_q = log_q + t.reshape(t.shape[0], -1).sum(-1)
        if point is not None:
            term = _point_term(t, nesting, dim, n)
            point = None if term is None or term.dim() > nesting + 1 else point + term.reshape(term.shape[0], -1)
    return log_q, point


def sample_enumerated(trace: poutine.Trace, enumerated: list[str]) -> dict[str, torch.Tensor]:
    """Draws of the enumerated sites from their exact conditional given the trace's other values.

    Pyro's ``infer_discrete`` (forward filter, backward sample) on the already enumerated trace; the model is not
    run again: the sampled values are read back by a function of the sites alone.
    """
    trace = prune_subsample_sites(trace)
    trace.compute_log_prob()
    trace.pack_tensors()
    names = [n for n in enumerated if n in trace.nodes]

    def read_back() -> dict[str, torch.Tensor]:
        return {n: pyro.sample(n, trace.nodes[n]["fn"], infer={"enumerate": "parallel"}) for n in names}

    with poutine.block():
        return _sample_posterior_from_trace(read_back, trace, 1, False)


def _index_of(node: dict) -> bool:
    """Whether an enumerated site's values are the positions 0..K-1 of its enumeration dim."""
    fn = node["fn"]
    if tuple(fn.event_shape):
        return False
    support = fn.enumerate_support(expand=False).reshape(-1)
    return bool(torch.equal(support.double(), torch.arange(len(support), dtype=torch.float64)))


def predictive_draws(trace: poutine.Trace, observed: list[str], discrete: dict[str, torch.Tensor],
                     nesting: int) -> dict[str, torch.Tensor] | None:
    """Replicated observations from the trace's observation distributions, each enumerated dim taken at the drawn
    discrete value; None when a dim cannot be attributed to one site (a Markov chain) or holds no plain index."""
    width = nesting + 1
    owners: dict[int, str | None] = {}
    for name in discrete:
        node = trace.nodes[name]
        for d in enum_dims(node["value"], width):
            owners[d] = name if d not in owners and _index_of(node) else None
    out = {}
    for obs in observed:
        fn = trace.nodes[obs]["fn"]
        y = fn.sample()
        ev = len(fn.event_shape)
        for d in sorted(enum_dims(torch.empty(fn.batch_shape), width)):  # the leftmost first: the others keep place
            owner = owners.get(d)
            if owner is None:
                return None
            y = y.movedim(d - ev, 0)
            index = discrete[owner].long()
            index = _pad(index.reshape(tuple(index.shape) + (1,) * ev), y.dim() - 1)
            shape = broadcast_shape(tuple(y.shape[1:]), tuple(index.shape))
            y = y.expand((y.shape[0],) + shape)
            y = torch.gather(y, 0, index.expand(shape).unsqueeze(0)).squeeze(0)
        out[obs] = y
    return out
