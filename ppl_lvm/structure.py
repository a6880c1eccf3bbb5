"""What one prototype run of a model says about it: its sites, its plates, and the one answer to which plate
holds the data, which latents are local (one value per data point) and which are global, and which parameters
belong to the model.

Every layer above asks :class:`ModelStructure`; none re-derives these facts from traces of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
from pyro.poutine.util import site_is_subsample

from .errors import SourceLocation
from .runtime import SiteRecord
from .site_checks import distribution_name

__all__ = ["ModelStructure", "PlateInfo", "SiteInfo", "structure_from_trace"]


@dataclass(frozen=True)
class PlateInfo:
    name: str
    size: int
    dim: int | None


@dataclass(frozen=True, slots=True)
class SiteInfo:
    """What the prototype run found about one site (slots: a chain of 10^5 steps has 2 x 10^5 of them)."""

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
        self._lists: dict[Any, list[SiteInfo]] = {}  # the site lists below, made once (a chain has 10^5 sites)

    def _of(self, kind: str, discrete: bool | None = None) -> list[SiteInfo]:
        lists = self.__dict__.setdefault("_lists", {})  # (a structure unpickled from before the cache has none)
        found = lists.get((kind, discrete))
        if found is None:
            found = lists[(kind, discrete)] = [s for s in self.sites.values() if s.kind == kind
                                                     and (discrete is None or s.discrete == discrete)]
        return list(found)  # a copy for the caller to keep or change

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
        return self._of("latent", True)

    @property
    def continuous_latents(self) -> list[SiteInfo]:
        return self._of("latent", False)

    # ------------------------------------------------------------------ the one answer to these questions
    @property
    def data_plate(self) -> str | None:
        """The plate of the data points: the outermost vectorised plate around every observed site.

        ``None`` when there is no observed site or no plate common to all of them.
        """
        observed = self.observed_sites
        if not observed:
            return None
        common = set.intersection(*(set(s.plates) for s in observed))
        dims = [(self.plates[p].dim, p) for p in common if p in self.plates and self.plates[p].dim is not None]
        return min(dims)[1] if dims else None

    @property
    def n_data(self) -> int | None:
        """The size of the data plate (``None`` without one)."""
        plate = self.data_plate
        return self.plates[plate].size if plate is not None else None

    def is_local(self, name: str) -> bool:
        """Whether site ``name`` has one value per data point (it lies inside the data plate)."""
        plate = self.data_plate
        info = self.sites.get(name)
        return plate is not None and info is not None and plate in info.plates

    @property
    def local_latents(self) -> list[SiteInfo]:
        """Latent sites inside the data plate (an assignment, a per-point code)."""
        return [s for s in self.latent_sites if self.is_local(s.name)]

    @property
    def global_latents(self) -> list[SiteInfo]:
        """Latent sites outside the data plate (one value for the whole data set); all of them without one."""
        return [s for s in self.latent_sites if not self.is_local(s.name)]

    @property
    def local_continuous_latents(self) -> list[SiteInfo]:
        return [s for s in self.local_latents if not s.discrete]

    def model_param_names(self, available: Any = None) -> list[str]:
        """The model's ``lvm.param`` sites (neither guide parameters nor ``lvm.module`` weights).

        With ``available`` (a container of parameter names), only those present in it.
        """
        return [s.name for s in self.param_sites
                if "$$$" not in s.name and (available is None or s.name in available)]

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


