"""Score-function gradients with baselines: ``method="svi"`` when the guide samples a site without ``rsample``.

For such a site ``z ~ q_phi`` the gradient of ``E_q[f(z)]`` is ``E_q[f(z) d/dphi log q_phi(z)]`` (the score function,
or REINFORCE: Williams 1992), unbiased but noisy. Two classical reductions of its variance run here, through Pyro's
``TraceGraph_ELBO``:

* **Rao-Blackwellisation over the dependency structure**: ``f`` is only the *downstream cost* of the site, the
  terms of ``log p(x, z) - log q(z)`` that depend on it (found by provenance tracking through the model and the
  guide; a plate's other rows are not downstream of a row's draw). The others have mean zero against the score
  and only add noise (Schulman et al. 2015).
* **A baseline** ``b``, any quantity independent of the draw, subtracted from the cost: ``E_q[b d log q] = 0``, so
  the estimator stays unbiased, and its variance falls by as much as ``b`` tracks the cost (Greensmith, Bartlett
  and Baxter 2004; Paisley, Blei and Jordan 2012).

``baseline=``:

=============  ===================================================================================================
``"average"``  a decaying running average of each site's downstream cost, kept per element of the site's plates
               (one per data row when the whole data set is fitted at once), ``b <- 0.9 b + 0.1 cost`` after
               each step; no parameters (the default)
``"net"``      the running average plus a learned correction: a small network of the row's observed data (one
               hidden layer of :data:`NET_HIDDEN` tanh units, one output), trained by least squares on what the
               average misses (Mnih and Gregor 2014's input-dependent baseline); for sites in the data plate only
``None``       no baseline: the Rao-Blackwellised score function alone
=============  ===================================================================================================

A guide site's own ``infer={"baseline": {...}}`` (Pyro's format) is kept as it is.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import TraceGraph_ELBO
from torch import nn

from ..errors import UnsupportedModelError
from ..structure import ModelStructure
from .estimators import stick_the_landing

__all__ = ["BASELINES", "NET_HIDDEN", "BaselineNet", "ScoreFunctionELBO", "baseline_nets", "check_baseline"]

#: the values of ``baseline=`` of ``method="svi"``, each with what it does
BASELINES = {
    "average": "a running average of each site's downstream cost",
    "net": "the running average plus a network of the row's data, fitted to what the average misses",
    None: "no baseline",
}

#: the weight of the previous average in the running average (Pyro's ``baseline_beta``)
AVERAGE_BETA = 0.9

#: hidden units of a baseline network
NET_HIDDEN = 32


def check_baseline(value: Any) -> str | None:
    """Validate ``baseline=`` (case-insensitive); returns ``"average"``, ``"net"`` or ``None``."""
    if value is None:
        return None
    if isinstance(value, str) and value.lower() in BASELINES:
        return value.lower()
    listed = ", ".join(f"{name!r} ({what})" for name, what in BASELINES.items())
    raise ValueError(f"baseline must be one of {listed}; got {value!r}")


class BaselineNet(nn.Module):
    """``data row -> scalar``: the learned part of a ``"net"`` baseline (its output layer starts at zero, so the
    baseline starts as the running average)."""

    def __init__(self, features: int, hidden: int = NET_HIDDEN):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def _data_arguments(structure: ModelStructure) -> list[str]:
    plate = structure.data_plate
    return list(dict.fromkeys(s.argument for s in structure.observed_sites if s.argument and plate in s.plates))


def _features(arguments: list[str], kwargs: dict[str, Any]) -> torch.Tensor:
    """The rows of the observed data arguments, flattened and side by side: the input of a baseline network."""
    rows = [kwargs[a] for a in arguments]
    dtype = next((r.dtype for r in rows if r.is_floating_point()), torch.get_default_dtype())
    return torch.cat([r.reshape(r.shape[0], -1).to(dtype) for r in rows], dim=-1)


def baseline_nets(
    kind: str | None, sites: list[str], structure: ModelStructure, kwargs: dict[str, Any]
) -> dict[str, BaselineNet]:
    """One :class:`BaselineNet` per score-function site for ``baseline="net"`` (none otherwise); refuses a site
    outside the data plate, or inside a further plate, where a function of one data row is no baseline."""
    if kind != "net":
        return {}
    plate = structure.data_plate
    arguments = _data_arguments(structure) if plate is not None else []
    for site in sites:
        info = structure.sites.get(site)
        if info is None or plate is None or tuple(info.plates) != (plate,) or not arguments:
            where = f"its plates are {list(info.plates)}" if info is not None else "it is not a site of the model"
            raise UnsupportedModelError(
                f"baseline='net' feeds the observed data row of each data point to a network, but the guide's "
                f"score-function site '{site}' is not one value per data row ({where}; the data plate is "
                f"{plate!r}). Use baseline='average', which needs no data row"
            )
    features = _features(arguments, kwargs)
    return {site: BaselineNet(features.shape[-1]).to(features.dtype) for site in sites}


class ScoreFunctionELBO(TraceGraph_ELBO):
    """``TraceGraph_ELBO`` with this package's baseline at every score-function site, and sticking the landing at
    the reparameterised sites when ``stl`` (the same loss value; only the surrogate changes).

    Parameters
    ----------
    sites : list of str
        The guide's score-function sites.
    baseline : {"average", "net", None}
        See the module's table.
    nets : dict
        ``site -> BaselineNet`` for ``"net"`` (from :func:`baseline_nets`), registered as the Pyro modules
        ``baseline_<site>`` at every step, so they are trained with the fit and kept in its parameters.
    structure : ModelStructure
        The model's structure (which arguments are the data rows, the data plate's dim).
    stl : bool
        Apply :func:`~ppl_lvm.backends.estimators.stick_the_landing` to the guide trace.
    """

    def __init__(
        self,
        sites: list[str],
        baseline: str | None,
        nets: dict[str, BaselineNet],
        structure: ModelStructure,
        stl: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.sites = frozenset(sites)
        self.baseline = baseline
        self.nets = nets
        self.stl = stl
        self._arguments = _data_arguments(structure) if nets else []
        plate = structure.data_plate
        self._plate_dim = structure.plates[plate].dim if nets and plate is not None else -1

    def _get_trace(self, model: Any, guide: Any, args: Any, kwargs: Any) -> tuple[poutine.Trace, poutine.Trace]:
        if self.baseline is not None:
            guide = self._with_baselines(guide, kwargs)
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        if self.stl:
            stick_the_landing(guide_trace)
        return model_trace, guide_trace

    def _with_baselines(self, guide: Any, kwargs: dict[str, Any]) -> Any:
        features = _features(self._arguments, kwargs) if self.nets else None
        trailing = (1,) * (-self._plate_dim - 1)  # the net's one value per row, at the data plate's dim

        def with_baselines(*args: Any, **kw: Any) -> Any:
            modules = {
                name: pyro.module(f"baseline_{name}", net, update_module_params=True) for name, net in self.nets.items()
            }

            def config(msg: dict) -> dict:
                if msg["type"] != "sample" or msg["name"] not in self.sites or "baseline" in msg["infer"]:
                    return {}
                options: dict[str, Any] = {"use_decaying_avg_baseline": True, "baseline_beta": AVERAGE_BETA}
                module = modules.get(msg["name"])
                if module is not None:
                    options["nn_baseline"] = lambda x: module(x).reshape((-1, *trailing))
                    options["nn_baseline_input"] = features
                return {"baseline": options}

            return poutine.infer_config(guide, config)(*args, **kw)

        return with_baselines
