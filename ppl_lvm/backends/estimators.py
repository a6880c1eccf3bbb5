"""Gradient estimators of the ELBO beyond Pyro's defaults.

``STLTrace_ELBO`` is ``Trace_ELBO`` with the *sticking-the-landing* gradient (Roeder, Wu and Duvenaud, 2017). The
reparameterised gradient of ``E_q[log p(x, z) - log q(z)]`` has two parts: the path through ``z = g(eps, phi)`` and
the score term ``-d/dphi log q_phi(z)`` at fixed ``z``, whose expectation is zero. STL drops the score term by
removing the gradient of ``log q`` at a fixed ``z`` (the sample keeps its path to the guide's parameters). The estimator
stays unbiased; where ``q`` equals the posterior, ``log p(x, z) - log q(z)`` is constant in ``z`` and the gradient is
exactly zero, so a fit whose family contains the posterior settles on it instead of jittering around it.

The loss *value* is the ordinary ELBO; only the surrogate that is differentiated changes, and only at guide sites
with ``rsample``: a site sampled by the score function keeps its score term.

A guide site without ``rsample`` (a discrete latent the guide samples, any non-reparameterisable distribution) is a
*score-function site* (:func:`score_function_sites`); ``method="svi"`` then differentiates by Pyro's
``TraceGraph_ELBO`` with a baseline (:mod:`ppl_lvm.backends.baselines`), STL still applying at the reparameterised
sites (:func:`stick_the_landing`).
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.score_parts import ScoreParts
from pyro.infer import Trace_ELBO
from pyro.poutine.util import site_is_subsample

__all__ = ["ESTIMATORS", "STLTrace_ELBO", "check_estimator", "score_function_sites", "stick_the_landing",
           "stl_obstacle", "upstream_draws"]

#: the values of the ``estimator`` option of ``method="svi"``, each with what it does
ESTIMATORS = {"stl": "sticking the landing: the score term of log q is dropped, lower variance near the optimum",
              "standard": "Pyro's Trace_ELBO gradient"}


def check_estimator(value: Any, choices: dict[str, str] = ESTIMATORS) -> str:
    """Validate ``estimator=`` against ``choices`` (name -> what it does), case-insensitive; returns the name."""
    if not isinstance(value, str) or value.lower() not in choices:
        listed = " or ".join(f"{name!r} ({what})" for name, what in choices.items())
        raise ValueError(f"estimator must be one of {list(choices)}: {listed}; got {value!r}")
    return value.lower()


def _stl_sites(guide_trace: poutine.Trace) -> list[str]:
    """The guide sites whose gradient STL changes: reparameterised, not observed, not a ``Delta`` (a Delta's
    ``log_density`` is a Jacobian of the path, not a score)."""
    return [name for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and site["fn"].has_rsample
            and not isinstance(site["fn"], dist.Delta)]


def score_function_sites(guide_trace: poutine.Trace) -> list[str]:
    """The guide's sample sites without ``rsample``: their gradient is the score function's (REINFORCE)."""
    return [name for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
            and not getattr(site["fn"], "has_rsample", False)]


def stl_obstacle(guide_trace: poutine.Trace) -> str | None:
    """Why STL as written here does not apply to this guide, or ``None`` when it does.

    STL removes ``d/dphi log q_phi(z)`` at a fixed ``z``. That is the score term only when a site's distribution
    depends on the guide's parameters and not on the guide's earlier draws (a hierarchical guide, ``q(b | a)``, would
    lose the path through ``a`` too). Checked once, on a trace of the guide, by autograd.
    """
    earlier: list[tuple[str, torch.Tensor]] = []
    stl_sites = set(_stl_sites(guide_trace))
    scored = score_function_sites(guide_trace)
    if scored and not stl_sites:
        return f"the guide samples every latent by the score function ({scored}): no site has a reparameterised path"
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if name in stl_sites:
            upstream = upstream_draws(site, earlier)
            if upstream:
                return f"the guide's site '{name}' depends on its earlier draws {upstream}"
        if isinstance(site["value"], torch.Tensor) and site["value"].requires_grad:
            earlier.append((name, site["value"]))
    return None


def upstream_draws(site: dict, earlier: list[tuple[str, torch.Tensor]]) -> list[str]:
    """The earlier draws (``(name, value)`` of the guide's previous sites) that ``log q`` of ``site`` at a fixed
    value depends on, by autograd: such a site's distribution is not a function of the parameters alone."""
    if not earlier:
        return []
    at_fixed_z = site["fn"].log_prob(_fixed(site["value"]))
    if not at_fixed_z.requires_grad:
        return []
    grads = torch.autograd.grad(at_fixed_z.sum(), [v for _, v in earlier], allow_unused=True, retain_graph=True)
    return [n for (n, _), g in zip(earlier, grads, strict=True) if g is not None]


class STLTrace_ELBO(Trace_ELBO):
    """``Trace_ELBO`` whose gradient is the sticking-the-landing estimator (same loss value, same arguments).

    At each reparameterised guide site the surrogate's ``log q_phi(z(phi))`` becomes
    ``log q_phi(z(phi)) - log q_phi(stop(z)) + stop(log q_phi(stop(z)))``: the same value, whose gradient is the path
    term alone (the subtracted term's gradient is exactly the score term when the site's distribution depends on
    the parameters only: :func:`stl_obstacle` checks it before a fit). It needs no second run of the guide, so it
    works for autoguides, ``pyro.module`` encoders and user guides alike, at one ``log_prob`` per site.
    """

    def _get_trace(self, model: Any, guide: Any, args: Any, kwargs: Any) -> tuple[poutine.Trace, poutine.Trace]:
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        stick_the_landing(guide_trace)
        return model_trace, guide_trace


def stick_the_landing(guide_trace: poutine.Trace) -> None:
    """Replace, in place, the surrogate term of every reparameterised guide site by its path term alone."""
    for name in _stl_sites(guide_trace):
        site = guide_trace.nodes[name]
        parts = site["score_parts"]
        if not isinstance(parts.entropy_term, torch.Tensor) or not parts.entropy_term.requires_grad:
            continue
        at_fixed_z = site["fn"].log_prob(_fixed(site["value"]))
        score = ScoreParts(at_fixed_z, 0, at_fixed_z).scale_and_mask(site["scale"], site["mask"]).entropy_term
        site["score_parts"] = ScoreParts(parts.log_prob, parts.score_function,
                                         parts.entropy_term - score + score.detach())


def _fixed(value: torch.Tensor) -> torch.Tensor:
    """``value`` cut from its path; a straight-through draw keeps its relaxed value (what its density reads)."""
    fixed = value.detach()
    soft = getattr(value, "_unquantize", None)
    if soft is not None:
        fixed._unquantize = soft.detach()
    return fixed
