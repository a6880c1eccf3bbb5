"""The built-in autoguides on the fast path: their statements run by the interpreter, as their ``forward`` runs them.

A Pyro autoguide calls ``pyro.plate``, ``pyro.param`` (through its ``PyroModule`` attributes) and ``pyro.sample``
directly, so the interpreter does not see it. :func:`autoguide_run` gives, for the autoguides whose ``forward`` is
known here, a function that makes the same statements through a :class:`~ppl_lvm.interpreter.Interpreter`: the same
sites in the prototype trace's order, under the same plates (their dims and sizes from the prototype trace), with the
same distributions built from the same parameters of the store (``PyroModule`` reads its parameters from the store
too), so each ``rsample`` draws the same random numbers in the same order as the guide does on Pyro's path:

* :class:`~ppl_lvm.guides.MeanFieldNormal` (``guide="normal"``, the default): ``Normal(loc, softplus(scale))`` per
  site, pushed through ``biject_to(support)`` of a constrained site;
* :class:`pyro.infer.autoguide.AutoNormal`: the auxiliary ``<site>_unconstrained`` normal, then a ``Delta`` at its
  image with the log-Jacobian as its density;
* :class:`pyro.infer.autoguide.AutoDelta` (``guide="delta"``, ``"map"``): a ``Delta`` at each site's parameter;
* :class:`pyro.infer.autoguide.AutoMultivariateNormal` (``guide="fullrank"``, ``"mvn"``): the auxiliary
  multivariate normal over the packed unconstrained latents, then a ``Delta`` per site as above.

Other autoguides (and subclasses of these, which may change ``forward``), a guide with ``create_plates`` or a master
guide, and a prototype trace taken under subsampling run Pyro throughout, with the reason. Whatever this module
runs is checked against the Pyro step before a fit uses it (:class:`~ppl_lvm.backends.planned.Planner`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import biject_to
from pyro.distributions.util import sum_rightmost
from pyro.infer import autoguide

from ..guides import MeanFieldNormal, _is_identity
from ..interpreter import Interpreter, NotPlannable

__all__ = ["autoguide_run"]

class _Site:
    """A latent site of the prototype trace: its name, plates ``(name, dim, size)``, support transform, event dim."""

    __slots__ = ("name", "frames", "transform", "identity", "event_dim")

    def __init__(self, name: str, site: dict):
        self.name = name
        frames = []
        for f in site["cond_indep_stack"]:
            full = f.full_size or f.size
            if full != f.size:
                raise NotPlannable(f"the autoguide's plate '{f.name}' was subsampled in its prototype trace")
            frames.append((f.name, f.dim, f.size))
        self.frames = tuple(frames)
        self.transform = biject_to(site["fn"].support)
        self.identity = _is_identity(self.transform)
        self.event_dim = site["fn"].event_dim


class _Plates:
    """``with _Plates(interp, frames):`` the interpreter's plates, entered in the autoguide's order."""

    __slots__ = ("entered",)

    def __init__(self, interp: Interpreter, frames: tuple):
        self.entered = [interp.plate(name, size, None, None, dim) for name, dim, size in frames]

    def __enter__(self) -> None:
        for p in self.entered:
            p.__enter__()

    def __exit__(self, *exc: Any) -> None:
        for p in reversed(self.entered):
            p.__exit__(None, None, None)


class _AutoguideRun(abc.ABC):
    """Runs one autoguide's statements through an interpreter (:meth:`__call__`), its sites read once from the
    prototype trace at the first call."""

    def __init__(self, guide: Any):
        self.guide = guide
        self.prefix = guide._pyro_name
        self.sites: list[_Site] | None = None

    def __call__(self, interp: Interpreter) -> None:
        if self.sites is None:
            if self.guide.prototype_trace is None:
                raise NotPlannable("the autoguide has not run yet (no prototype trace)")
            self.sites = [_Site(name, site) for name, site in self.guide.prototype_trace.iter_stochastic_nodes()]
        self.run(interp, self.sites)

    def param(self, interp: Interpreter, name: str) -> torch.Tensor:
        return interp.param(f"{self.prefix}.{name}", None, None, None)

    @abc.abstractmethod
    def run(self, interp: Interpreter, sites: list[_Site]) -> None:
        """Make the guide's statements for ``sites`` through ``interp``."""

    def normal(self, interp: Interpreter, site: _Site) -> dist.Distribution:
        """The site's ``Normal(locs.<site>, scales.<site>)`` over its event dims (``MeanFieldNormal``,
        ``AutoNormal``)."""
        loc = self.param(interp, f"locs.{site.name}")
        scale = self.param(interp, f"scales.{site.name}")
        return dist.Normal(loc, scale).to_event(self.guide._event_dims[site.name])

    @staticmethod
    def at_image(interp: Interpreter, site: _Site, unconstrained: torch.Tensor) -> None:
        """The site's ``Delta`` at the image of ``unconstrained``, the log-Jacobian its density (``AutoNormal`` and
        ``AutoContinuous``)."""
        transform = site.transform
        value = transform(unconstrained)
        log_density = transform.inv.log_abs_det_jacobian(value, unconstrained)
        log_density = sum_rightmost(log_density, log_density.dim() - value.dim() + site.event_dim)
        interp.sample(site.name, dist.Delta(value, log_density=log_density, event_dim=site.event_dim), None, None)


class _MeanFieldNormalRun(_AutoguideRun):
    def run(self, interp, sites):
        for site in sites:
            with _Plates(interp, site.frames):
                base = self.normal(interp, site)
                fn = base if site.identity else dist.TransformedDistribution(base, site.transform.with_cache())
                interp.sample(site.name, fn, None, None)


class _AutoNormalRun(_AutoguideRun):
    def run(self, interp, sites):
        for site in sites:
            with _Plates(interp, site.frames):
                unconstrained = interp.sample(site.name + "_unconstrained", self.normal(interp, site), None,
                                              {"is_auxiliary": True})
                self.at_image(interp, site, unconstrained)


class _AutoDeltaRun(_AutoguideRun):
    def run(self, interp, sites):
        for site in sites:
            with _Plates(interp, site.frames):
                interp.sample(site.name, dist.Delta(self.param(interp, site.name), event_dim=site.event_dim), None,
                              None)


class _AutoMultivariateNormalRun(_AutoguideRun):
    def run(self, interp, sites):
        scale_tril = self.param(interp, "scale")[..., None] * self.param(interp, "scale_tril")
        posterior = dist.MultivariateNormal(self.param(interp, "loc"), scale_tril=scale_tril)
        latent = interp.sample(f"_{self.prefix}_latent", posterior, None, {"is_auxiliary": True})
        for site, (_, unconstrained) in zip(sites, self.guide._unpack_latent(latent), strict=True):
            with _Plates(interp, site.frames):
                self.at_image(interp, site, unconstrained)


#: the autoguides run here (exact types: a subclass may change ``forward``): their runs and how users name them
_RUNS: dict[type, tuple[type[_AutoguideRun], str]] = {
    MeanFieldNormal: (_MeanFieldNormalRun, "'normal'"),
    autoguide.AutoNormal: (_AutoNormalRun, "AutoNormal"),
    autoguide.AutoDelta: (_AutoDeltaRun, "'delta'"),
    autoguide.AutoMultivariateNormal: (_AutoMultivariateNormalRun, "'fullrank'"),
}


def autoguide_run(guide: Any) -> tuple[Callable[[Interpreter], None] | None, str | None]:
    """For a Pyro autoguide: the function running its statements through an interpreter, or ``None`` and why it
    cannot; ``(None, None)`` for any other guide (the interpreter runs it itself)."""
    if not isinstance(guide, autoguide.AutoGuide):
        return None, None
    name = type(guide).__name__
    run, _ = _RUNS.get(type(guide), (None, None))
    if run is None:
        known = ", ".join(label for _, label in _RUNS.values())
        return None, (f"the guide is a Pyro autoguide ({name}), which the interpreter does not run (it runs the "
                      f"autoguides {known})")
    if guide.master is not None or guide.create_plates is not None:
        return None, f"the autoguide {name} is part of a guide list or creates its own plates (create_plates)"
    return run(guide), None
