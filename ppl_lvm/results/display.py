"""How a fit is named in words: the objective its loss is minus of, the model and the guide; the Jupyter table.

The report (:mod:`ppl_lvm.report`), the figures (:mod:`ppl_lvm.plots`) and ``Result._repr_html_`` read these names,
so an IWAE fit is called an IWAE bound everywhere, never an ELBO.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from ..outcome import EMOutcome, MCMCOutcome, StochasticEMOutcome

__all__ = ["bound_name", "loss_name", "model_label", "guide_description", "repr_html"]

#: built-in guides by the name ``infer(guide=...)`` takes, in words
BUILT_IN_GUIDES = {
    "normal": "mean-field normal (an independent normal per latent coordinate, built in)",
    "meanfield": "mean-field normal (an independent normal per latent coordinate, built in)",
    "diag": "mean-field normal (an independent normal per latent coordinate, built in)",
    "fullrank": "full-rank multivariate normal over all continuous latents (built in)",
    "mvn": "full-rank multivariate normal over all continuous latents (built in)",
    "delta": "point mass at the MAP estimate (built in; no posterior spread)",
    "map": "point mass at the MAP estimate (built in; no posterior spread)",
}
NO_GUIDE = "none needed: every latent is discrete and summed out exactly"


# ---------------------------------------------------------------------------------------------------- objectives
def bound_name(result: Any) -> str:
    """The quantity a fit maximised, as a reader should call it: ``"ELBO"``, ``"IWAE bound (K=5)"``, ...

    EM: the exact log-likelihood; ``mcem``: a Monte Carlo estimate of log p(x); ``vem``: the ELBO; MCMC: no
    objective (``"none (MCMC draws)"``).
    """
    options = getattr(result, "options", {}) or {}
    method = str(getattr(result, "method", "")).lower()
    if isinstance(result, EMOutcome):
        return "exact log-likelihood"
    if isinstance(result, MCMCOutcome):
        return "none (MCMC draws)"
    if isinstance(result, StochasticEMOutcome):
        return "Monte Carlo estimate of log p(x)" if method == "mcem" else "ELBO"
    k = options.get("num_particles")
    if method == "iwae":
        return f"IWAE bound (K={k})" if k is not None else "IWAE bound"
    if method == "renyi":
        alpha = options.get("alpha", 0.5)
        return f"Renyi bound (alpha={alpha:g}, K={k})" if k is not None else f"Renyi bound (alpha={alpha:g})"
    name = "ELBO"
    beta = options.get("beta", 1.0)
    if callable(beta) or (isinstance(beta, (int, float)) and beta != 1):
        name += " with the KL term weighted by beta" + ("" if callable(beta) else f"={beta:g}")
    free_bits = options.get("free_bits")
    if free_bits:
        name += f" with free bits ({free_bits:g} nats per dimension)"
    return name


def loss_name(result: Any) -> str:
    """What ``result.losses`` hold: ``"negative IWAE bound (K=5)"``; for EM ``"negative total log-likelihood"``."""
    if isinstance(result, EMOutcome):
        return "negative total log-likelihood"
    return f"negative {bound_name(result)}"


# ---------------------------------------------------------------------------------------------------- names
def _first_line(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    line = doc.strip().split("\n\n", 1)[0]
    return " ".join(line.split()).replace("``", "")  # reST literals read as plain text


def _owner(qualname: str) -> str | None:
    """The class or function a nested function was defined in (``VAE`` for ``VAE._build.<locals>.model``)."""
    if ".<locals>." not in qualname:
        return None
    return qualname.split(".<locals>.")[0].split(".")[0]


def model_label(model: Any) -> str:
    """The model function's name, where it was written, and the first line of its docstring.

    A model built inside a class or a factory (``VAE(...).model``) is named by its owner: ``"model of VAE"``.
    """
    if model is None:
        return "not available (a result loaded without its model)"
    name = getattr(model, "__name__", type(model).__name__)
    owner = _owner(getattr(model, "__qualname__", name))
    label = f"{name} of {owner}" if owner else name
    module = getattr(model, "__module__", None)
    if module and module not in ("__main__", "builtins"):
        label += f" ({module})"
    doc = _first_line(model)
    return f"{label}: {doc}" if doc else label


def guide_description(result: Any) -> str:
    """The guide of a fit in words: a built-in family, none (all enumerated), amortised, or the user's own."""
    name = str(getattr(result, "guide_name", "") or "")
    if isinstance(result, MCMCOutcome):
        return "none (MCMC draws from the posterior itself)"
    if isinstance(result, EMOutcome) or name.startswith("none"):
        return NO_GUIDE
    if name.lower() in BUILT_IN_GUIDES:
        return BUILT_IN_GUIDES[name.lower()]
    if name.startswith("user guide"):
        guide = getattr(result, "guide", None)
        function = getattr(guide, "fn", guide)
        bare = getattr(guide, "__name__", None) or name.removeprefix("user guide").strip().rstrip("()") or "guide"
        owner = _owner(getattr(function, "__qualname__", "") or "")
        label = f"the user's {bare}()" + (f" of {owner}" if owner else "")
        doc = _first_line(function)
        return f"{label}: {doc}" if doc else label
    return name


# ---------------------------------------------------------------------------------------------------- Jupyter
def _fmt(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return "-" if math.isnan(v) else f"{v:.6g}"
    return str(value)


def _rows(result: Any) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("method", result.method), ("model", model_label(result.model))]
    shapes = {k: tuple(v.shape) for k, v in result.data.kwargs.items() if hasattr(v, "shape")}
    if shapes:
        rows.append(("data", ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in shapes.items())))
    if isinstance(result, EMOutcome):
        rows += [
            ("log-likelihood (exact)", result.log_likelihood),
            ("BIC", result.bic()),
            ("AIC", result.aic()),
            ("free parameters", result.n_parameters),
            ("iterations", result.n_iter),
            ("converged", result.converged),
        ]
        return rows
    rows.append(("guide", guide_description(result)))
    if isinstance(result, MCMCOutcome):
        rows += [("chains x draws", f"{result.num_chains} x {result.num_draws}"), ("divergences", result.divergences)]
        return rows
    if isinstance(result, StochasticEMOutcome):
        rows.append(("iterations", result.n_iter))
    else:
        rows.append(("steps", result.steps))
    rows += [(bound_name(result), result.elbo), ("converged", result.converged)]
    return rows


def _param_rows(result: Any, limit: int = 12) -> list[tuple[str, str, str]]:
    out = []
    for name, value in list(getattr(result, "params", {}).items())[:limit]:
        shape = "x".join(map(str, value.shape)) or "scalar"
        flat = value.detach().reshape(-1)
        shown = ", ".join(f"{float(v):.4g}" for v in flat[:4]) + (", ..." if flat.numel() > 4 else "")
        out.append((name, shape, shown))
    return out


def repr_html(result: Any) -> str:
    """A compact HTML table of a fit (what Jupyter shows for ``result``): the facts, then the first parameters."""
    facts = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
        f"<td style='text-align:left'>{html.escape(_fmt(v))}</td></tr>"
        for k, v in _rows(result)
    )
    params = _param_rows(result)
    more = len(getattr(result, "params", {})) - len(params)
    table = ""
    if params:
        body = "".join(
            f"<tr><td style='text-align:left'>{html.escape(n)}</td><td>{html.escape(s)}</td>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for n, s, v in params
        )
        note = f"<caption style='caption-side:bottom'>and {more} more</caption>" if more > 0 else ""
        table = (
            "<table><thead><tr><th>parameter</th><th>shape</th><th>values</th></tr></thead>"
            f"<tbody>{body}</tbody>{note}</table>"
        )
    return (
        f"<div class='ppl-lvm-result'><strong>{html.escape(type(result).__name__)}</strong>"
        f"<table><tbody>{facts}</tbody></table>{table}</div>"
    )
