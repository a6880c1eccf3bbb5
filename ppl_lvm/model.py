"""``@lvm.model`` and ``@lvm.guide``: a function compiled to a Pyro model that knows its own structure.

A :class:`Model` is still an ordinary Pyro model (a callable), so ``poutine.trace``, ``Predictive`` and Pyro's own
``SVI`` accept it. Decorating scans the source once for site names; :meth:`Model.inspect` runs the model once (a
prototype run, as Pyro's autoguides do) to record every site's kind, support, shapes, plates and source line.
"""

from __future__ import annotations

import functools
import inspect as _inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from .errors import SourceLocation
from .naming import source_index
from .primitives import distribution_name
from .runtime import SiteRecord, run_scope

__all__ = ["Model", "Guide", "model", "guide", "ModelStructure", "SiteInfo", "PlateInfo"]


class _Compiled:
    """Shared behaviour of models and guides: source scan at decoration, a run scope per call."""

    def __init__(self, fn: Callable):
        if not callable(fn):
            raise TypeError(f"expected a function, got {type(fn).__name__}")
        functools.update_wrapper(self, fn)
        self.fn = fn
        code = getattr(fn, "__code__", None)
        if code is None:
            raise TypeError(f"{fn!r} is not a Python function; decorate a `def` function")
        self._index = source_index(code)
        self.signature = _inspect.signature(fn)
        #: site name -> record of the most recent run (kind and source line)
        self.site_records: dict[str, SiteRecord] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with run_scope(self) as run:
            try:
                return self.fn(*args, **kwargs)
            finally:
                self.site_records = run.sites

    @property
    def argument_names(self) -> list[str]:
        return list(self.signature.parameters)

    def location_of(self, site: str) -> SourceLocation | None:
        record = self.site_records.get(site)
        return record.location if record is not None else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.__name__} at {self._index.filename}:{self.fn.__code__.co_firstlineno}>"


class Model(_Compiled):
    """A generative model declared with :func:`model`.

    Examples
    --------
    >>> import torch, ppl_lvm as lvm
    >>> from ppl_lvm import dist
    >>> @lvm.model
    ... def normal_mean(x=None, n=10):
    ...     mu = lvm.latent(dist.Normal(0.0, 10.0), name="mu")
    ...     with lvm.plate("data", n):
    ...         return lvm.latent(dist.Normal(mu, 1.0), name="x", obs=x)
    >>> sorted(normal_mean.inspect(torch.zeros(10)).sites)
    ['mu', 'x']
    """

    def __init__(self, fn: Callable):
        super().__init__(fn)
        self.user_guide: Guide | None = None

    def guide(self, fn: Callable) -> Guide:
        """Decorator: declare ``fn`` as this model's guide (``@my_model.guide``)."""
        g = fn if isinstance(fn, Guide) else Guide(fn)
        g.model = self
        self.user_guide = g
        return g

    def inspect(self, *args: Any, **kwargs: Any) -> ModelStructure:
        """Run the model once (a prototype run) and record every site.

        The run leaves no trace: it uses a private parameter store and forks the random number generator.
        Observed shapes are checked strictly on this run, so shape errors name the site and the source line.
        """
        return trace_structure(self, args, kwargs)

    def describe(self, *args: Any, **kwargs: Any) -> str:
        """The table of sites of :meth:`inspect`, as text (also printed)."""
        table = self.inspect(*args, **kwargs).table()
        print(table)
        return table


class Guide(_Compiled):
    """A variational family declared with :func:`guide`; same arguments as its model."""

    def __init__(self, fn: Callable, model: Model | None = None):
        super().__init__(fn)
        self.model = model


def model(fn: Callable) -> Model:
    """Decorator: compile a Python function into a :class:`Model`."""
    return fn if isinstance(fn, Model) else Model(fn)


def guide(target: Model | Callable | None = None) -> Any:
    """Declare a guide: ``@lvm.guide(my_model)`` (for a given model) or ``@lvm.guide`` alone."""
    if isinstance(target, Model):
        return target.guide
    if target is None:
        return Guide
    return Guide(target)


@dataclass(frozen=True)
class PlateInfo:
    name: str
    size: int
    dim: int | None


@dataclass(frozen=True)
class SiteInfo:
    """What the prototype run found about one site."""

    name: str
    kind: str  # "latent", "observed", "param", "deterministic"
    distribution: str
    discrete: bool
    enumerable: bool
    reparameterized: bool
    support: str
    batch_shape: tuple[int, ...]
    event_shape: tuple[int, ...]
    shape: tuple[int, ...]
    plates: tuple[str, ...]
    location: SourceLocation | None
    argument: str | None = None


class ModelStructure:
    """The sites and plates of one prototype run, and what follows from them (``max_plate_nesting``)."""

    def __init__(self, sites: dict[str, SiteInfo], plates: dict[str, PlateInfo], max_plate_nesting: int):
        self.sites = sites
        self.plates = plates
        self.max_plate_nesting = max_plate_nesting

    def _of(self, kind: str) -> list[SiteInfo]:
        return [s for s in self.sites.values() if s.kind == kind]

    @property
    def latent_sites(self) -> list[SiteInfo]:
        return self._of("latent")

    @property
    def observed_sites(self) -> list[SiteInfo]:
        return self._of("observed")

    @property
    def param_sites(self) -> list[SiteInfo]:
        return self._of("param")

    @property
    def discrete_latents(self) -> list[SiteInfo]:
        return [s for s in self.latent_sites if s.discrete]

    @property
    def continuous_latents(self) -> list[SiteInfo]:
        return [s for s in self.latent_sites if not s.discrete]

    def location(self, site: str) -> SourceLocation | None:
        info = self.sites.get(site)
        return info.location if info is not None else None

    def table(self) -> str:
        """A fixed-width table: one row per site."""
        header = ("site", "kind", "distribution", "support", "batch", "event", "plates", "line")
        rows = [header]
        for s in self.sites.values():
            rows.append(
                (
                    s.name,
                    s.kind + (" (discrete)" if s.discrete and s.kind == "latent" else ""),
                    s.distribution,
                    s.support,
                    str(tuple(s.shape if s.kind == "param" else s.batch_shape)),
                    str(tuple(s.event_shape)),
                    ",".join(s.plates) or "-",
                    f"{s.location.filename.rsplit('/', 1)[-1]}:{s.location.lineno}" if s.location else "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        footer = f"max_plate_nesting = {self.max_plate_nesting}"
        if self.plates:
            footer += "; plates: " + ", ".join(f"{p.name}[{p.size}]" for p in self.plates.values())
        return "\n".join(lines + [footer])

    def __repr__(self) -> str:
        return self.table()


def _support_name(fn: Any) -> str:
    support = getattr(fn, "support", None)
    if support is None:
        return "?"
    while type(support).__name__ == "_IndependentConstraint":
        support = support.base_constraint
    return type(support).__name__.lstrip("_").lower()


def trace_structure(compiled: _Compiled, args: tuple, kwargs: dict) -> ModelStructure:
    """Run ``compiled`` once under a trace and summarise its sites (see :meth:`Model.inspect`)."""
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=[]):
        with run_scope(compiled, preflight=True) as run:
            trace = poutine.trace(compiled.fn).get_trace(*args, **kwargs)
        compiled.site_records = run.sites
        return structure_from_trace(trace, run.sites)


def structure_from_trace(trace: poutine.Trace, records: dict[str, SiteRecord]) -> ModelStructure:
    sites: dict[str, SiteInfo] = {}
    plates: dict[str, PlateInfo] = {}
    nesting = 0
    for name, node in trace.nodes.items():
        if node["type"] == "param":
            value = node["value"]
            record = records.get(name)
            sites[name] = SiteInfo(
                name, "param", "param", False, False, True, _support_name_param(node),
                (), (), tuple(value.shape), (), record.location if record else None,
            )
            continue
        if node["type"] != "sample" or node["infer"].get("is_auxiliary") or site_is_subsample(node):
            continue
        fn = node["fn"]
        frames = [f for f in node["cond_indep_stack"] if f.vectorized]
        for f in node["cond_indep_stack"]:
            if f.name not in plates and f.size is not None:
                plates[f.name] = PlateInfo(f.name, int(f.size), f.dim)
        if frames:
            nesting = max(nesting, max(-f.dim for f in frames))
        record = records.get(name)
        if node["is_observed"]:
            kind = "observed"
        elif getattr(fn, "base_dist", fn).__class__.__name__ == "Delta" and record and record.kind == "deterministic":
            kind = "deterministic"
        else:
            kind = "latent"
        support = getattr(fn, "support", None)
        discrete = bool(support is not None and support.is_discrete)
        sites[name] = SiteInfo(
            name=name,
            kind=kind,
            distribution=distribution_name(fn),
            discrete=discrete,
            enumerable=bool(getattr(fn, "has_enumerate_support", False)),
            reparameterized=bool(getattr(fn, "has_rsample", False)),
            support=_support_name(fn),
            batch_shape=tuple(fn.batch_shape),
            event_shape=tuple(fn.event_shape),
            shape=tuple(node["value"].shape),
            plates=tuple(f.name for f in node["cond_indep_stack"]),
            location=record.location if record else None,
            argument=record.argument if record else None,
        )
    return ModelStructure(sites, plates, nesting)


def _support_name_param(node: dict) -> str:
    constraint = pyro.get_param_store()._constraints.get(node["name"])
    return type(constraint).__name__.lstrip("_").lower() if constraint is not None else "real"


def check_model(obj: Any, what: str = "model") -> Model:
    """Accept a :class:`Model`, or wrap a plain function (site names then come from its source too)."""
    if isinstance(obj, Model):
        return obj
    if isinstance(obj, Guide):
        raise TypeError(f"expected a model, got the guide {obj.__name__}(); pass the model it belongs to")
    if callable(obj) and hasattr(obj, "__code__"):
        return Model(obj)
    raise TypeError(
        f"{what} must be a function decorated with @lvm.model (or a plain Python function), "
        f"got {type(obj).__name__}"
    )

