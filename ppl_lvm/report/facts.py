"""The facts table of a fit's section: what was fitted, to what, by which method, and the numbers it ended with."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..outcome import EMOutcome, MCMCOutcome, StochasticEMOutcome
from ..results.display import bound_name, guide_description, loss_name, model_label

__all__ = ["fit_facts", "data_values"]


def data_values(result: Any, data: Any = None) -> np.ndarray | None:
    """The data the figures draw, as a float array: ``data`` when given, else the fit's first observed argument."""
    if data is not None:
        values = getattr(data, "values", data)
        values = values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
        return values.astype(float) if values.dtype.kind in "fiub" else None
    structure = getattr(result, "structure", None)
    if structure is None or not structure.observed_sites:
        return None
    site = structure.observed_sites[0]
    value = result.data.kwargs.get(site.argument or site.name)
    if value is None or not hasattr(value, "detach"):
        return None
    return value.detach().cpu().double().numpy()


def fit_facts(result: Any) -> list[tuple[str, Any]]:
    """``(label, value)`` rows: method and objective, model and guide, data, the final numbers."""
    facts: list[tuple[str, Any]] = [("method", result.method)]
    facts.append(("objective", _objective(result)))
    facts.append(("model", model_label(result.model)))
    shapes = {k: tuple(v.shape) for k, v in result.data.kwargs.items() if hasattr(v, "shape")}
    if shapes:
        facts.append(("data", ", ".join(f"{k}: {' x '.join(map(str, s))}" for k, s in shapes.items())))
    for name, coords in (result.data.coords or {}).items():
        if coords.get("columns"):
            facts.append((f"columns of {name} ({len(coords['columns'])})", ", ".join(map(str, coords["columns"]))))
    others = {k: v for k, v in result.data.kwargs.items() if not hasattr(v, "shape")}
    if others:
        facts.append(("arguments", ", ".join(f"{k}={v!r}" for k, v in others.items())))
    if isinstance(result, EMOutcome):
        facts += [
            ("log-likelihood (exact, total)", result.log_likelihood),
            ("BIC", result.bic()),
            ("AIC", result.aic()),
            ("free parameters", result.n_parameters),
            ("iterations", result.n_iter),
            ("converged", result.converged),
        ]
        if result.options.get("n_init", 1) > 1:
            facts.append(("restarts (n_init), best kept", result.options["n_init"]))
        facts.append(("interrupted", result.interrupted))
        return facts
    facts.append(("guide", guide_description(result)))
    if isinstance(result, MCMCOutcome):
        facts += [
            ("chains x draws", f"{result.num_chains} x {result.num_draws}"),
            ("warm-up steps per chain", result.warmup_steps),
            ("divergences", result.divergences),
        ]
        return facts
    if isinstance(result, StochasticEMOutcome):
        facts.append(("iterations", result.n_iter))
    else:
        facts.append(("steps", result.steps))
    name = bound_name(result)
    facts.append((f"final {name}", result.elbo))
    if result.options.get("n_init", 1) > 1:
        facts.append(("restarts (n_init), best kept", result.options["n_init"]))
    rows = [v.shape[0] for v in result.data.kwargs.values() if hasattr(v, "shape") and len(v.shape) >= 1]
    if rows and rows[0] > 1:
        facts.append((f"final {name} per data row", result.elbo / rows[0]))
    facts += [("converged", result.converged), ("interrupted", result.interrupted)]
    return facts


def _objective(result: Any) -> str:
    if isinstance(result, EMOutcome):
        return "exact log-likelihood, every latent summed out (maximised by EM)"
    if isinstance(result, MCMCOutcome):
        return "none: draws from the posterior by Markov chain Monte Carlo"
    return f"{bound_name(result)}, maximised; the loss is the {loss_name(result)}"
