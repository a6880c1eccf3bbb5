"""Tracing a model with every discrete latent enumerated, and packing its sites' log-probs into named factors."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from ...errors import UnsupportedModelError


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


def _in_plate(trace: poutine.Trace, name: str, plate: str) -> bool:
    """Is site ``name`` inside ``plate`` (a plate of size 1 too, which packed factors and ordinals leave out)?"""
    return any(f.name == plate for f in trace.nodes[name]["cond_indep_stack"])


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
