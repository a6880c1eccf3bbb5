"""The memory estimate of an exact E-step and the check that refuses enumerations over budget."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.runtime import _ENUM_ALLOCATOR
from pyro.poutine.util import site_is_subsample

from ...errors import UnsupportedModelError
from ...runtime import broadcast_shape
from .factors import _auto_enumerate

__all__ = ["DEFAULT_MAX_BYTES", "check_enumeration_size", "estimate_enumeration_bytes"]

#: Default memory budget of one E-step (2 GiB).
DEFAULT_MAX_BYTES = 2 * 1024**3

# Above this many enumeration dims alive at once, the size prototype itself (two values per site) could be
# large; the estimate then falls back to an upper bound without finishing the prototype run.
_PROTOTYPE_MAX_DIMS = 20


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
            batch = broadcast_shape(batch, vshape)
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
    model: Callable, kwargs: dict[str, Any], max_plate_nesting: int, max_bytes: int | None = DEFAULT_MAX_BYTES,
    route: str = "exact EM",
    advice: str = ("Decouple the discrete latents (pyro.markov for chains, plates for independent ones), reduce "
                   "their number of states, or fit with method='svi'"),
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
            f"{route}: enumerating sites {sites} jointly {what} ~{_format_bytes(report.bytes)} ({shape}); the limit "
            f"is {_format_bytes(max_bytes)}. {advice}"
        )
    return report.bytes
