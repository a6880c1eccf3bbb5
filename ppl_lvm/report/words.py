"""What the numbers of a fit mean, in plain words: convergence, the diagnosis, the choice among candidate models."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..diagnostics import KHAT_BAD
from ..outcome import EMOutcome, MCMCOutcome
from ..results.display import bound_name, guide_description


# ---------------------------------------------------------------------------------------------------- plain words
def _is_em(result: Any) -> bool:
    return isinstance(result, EMOutcome)


def describe_result(result: Any, diagnosis: Any = None, candidates: Mapping[Any, Any] | None = None,
                    fit_warnings: Sequence[str] = (), supplied: bool = False) -> list[tuple[str, str]]:
    """What the numbers mean, as ``(level, sentence)`` with level ``ok``, ``warn`` or ``bad``.

    ``supplied`` says that ``diagnosis`` was handed in (e.g. computed on held-out data) rather than made by
    ``result.diagnose()``, which changes why a missing Pareto k-hat is missing.
    """
    out: list[tuple[str, str]] = []
    if result.interrupted:
        out.append(("warn", f"The fit was interrupted after {result.steps} steps; the parameters are those reached "
                            "so far, not a converged fit."))
    if _is_em(result):
        max_iter = result.options.get("max_iter")
        if result.converged:
            out.append(("ok", f"EM converged after {result.n_iter} iterations (the mean log-likelihood changed by "
                              f"less than tol={result.options.get('tol')})."))
        elif not result.interrupted and result.options.get("tol", 0) is None:
            out.append(("ok", f"EM ran all max_iter={max_iter} iterations, as asked (tol=None: no convergence test)."))
        elif not result.interrupted:
            out.append(("warn", f"EM stopped at max_iter={max_iter} before converging: raise max_iter or tol."))
        n = max(result.n_samples, 1)
        out.append(("ok", f"Exact log-likelihood {result.log_likelihood:.2f} ({result.log_likelihood / n:.3f} per "
                          f"data point, every latent summed out); BIC {result.bic():.1f} and AIC {result.aic():.1f} "
                          f"with {result.n_parameters} free parameters and {result.n_samples} data points."))
        out.append(("ok", "M-steps in closed form (a recognised model)." if result.closed_form else
                    "Generic route: exact E-step, numerical M-step accepted only when it improves the bound."))
        resp = _mixture_responsibilities(result)
        if resp is not None:
            probs = resp.max(1)
            counts = np.bincount(resp.argmax(1), minlength=resp.shape[1])
            uncertain = int((probs < 0.9).sum())
            out.append(("ok", f"Hard assignments per component: {', '.join(str(int(c)) for c in counts)}; "
                              f"{uncertain} of {len(probs)} points ({100 * uncertain / len(probs):.1f}%) have no "
                              "component with posterior probability >= 0.9."))
            empty = [k for k, c in enumerate(counts) if c == 0]
            if empty:
                out.append(("warn", f"Component(s) {empty} hold no point outright: fewer components may do."))
    elif isinstance(result, MCMCOutcome):
        chains = f"{result.num_chains} chain{'s' if result.num_chains != 1 else ''}"
        out.append(("ok", f"{chains} of {result.num_draws} draws after {result.warmup_steps} "
                          f"warm-up steps each; {result.divergences} divergent transitions."))
    else:
        if result.converged:
            out.append(("ok", f"The loss settled (its trend within its noise) after {result.steps} steps."))
        elif not result.interrupted:
            out.append(("warn", f"The loss was still falling after {result.steps} steps: fit longer "
                                "(more steps, or result.fit_more()) for a settled result."))
        out.append(("ok", f"{bound_name(result)} at the returned parameters: {result.elbo:.4g} (method "
                          f"{result.method}; guide: {guide_description(result)})."))
        if all_enumerated(result):
            out.append(("ok", f"Every latent of this model is discrete and summed out, so method='em' fits it "
                              f"exactly: the same log-likelihood {result.method} climbs by gradient steps, with "
                              "closed-form M-steps where the model is recognised, usually higher and in fewer "
                              "iterations."))
    if diagnosis is not None:
        out += _diagnosis_words(diagnosis, result, supplied)
    if candidates:
        out += _selection_words(candidates)
    for line in fit_warnings:
        out.append(("warn", f"Warning during the fit: {line}"))
    return out


def all_enumerated(result: Any) -> bool:
    """Whether every latent of the model is discrete and summed out (the bound is then log p(x) itself)."""
    structure = getattr(result, "structure", None)
    return structure is not None and not structure.continuous_latents


def khat_missing(d: Any, result: Any, supplied: bool) -> str:
    """Why a diagnosis has no Pareto k-hat, in plain words."""
    if d.khat_verdict == "exact":
        return ("Pareto k-hat is not needed: the importance ratios of every data point are constant, so q(z | x) "
                "is the exact posterior and there is no tail to check.")
    if all_enumerated(result):
        return ("Pareto k-hat is not available, and not needed: every latent is discrete and summed out exactly, "
                "so nothing is drawn from a guide and there are no importance ratios p / q whose tail it measures.")
    if supplied:
        return ("Pareto k-hat is not available here: this diagnosis was handed to the report with bounds only, "
                "without the importance ratios log p(x, z) - log q(z | x) of draws from the guide that k-hat is "
                "computed from (result.diagnose() computes them on the training data).")
    if d.is_estimate is None:
        return (f"Pareto k-hat is not available: the guide ({guide_description(result)}) gives no density for its "
                "draws (a point mass, or a guide that samples helper sites), so the importance ratios p / q that "
                "k-hat measures cannot be formed.")
    return ("Pareto k-hat is not available: the importance ratios p / q are the same for every draw (the guide "
            "matches the posterior to rounding), so there is no tail to fit.")


def _diagnosis_words(d: Any, result: Any, supplied: bool = False) -> list[tuple[str, str]]:
    out = []
    if d.khat is None or math.isnan(d.khat):
        out.append(("ok", khat_missing(d, result, supplied)))
    else:
        verdict = d.khat_verdict
        meaning = {"good": "the guide covers the posterior well",
                   "ok": "usable, but importance-sampling estimates converge slowly",
                   "bad": "the importance ratios are heavy-tailed: the ELBO and summaries from the guide are "
                          "unreliable"}[verdict]
        where = ""
        if getattr(d, "khat_kind", None) == "per point":
            n_points = len(d.khat_points)
            n_bad = int(round(d.share_of_points_above(KHAT_BAD) * n_points))
            where = f", the largest over the {n_points} data points; {n_bad} of them above 0.7"
        out.append(("ok" if verdict == "good" else "warn" if verdict == "ok" else "bad",
                    f"Pareto k-hat {d.khat:.2f} ({verdict}{where}: {meaning}; < 0.5 good, <= 0.7 ok)."))
    rungs = d.ladder
    if d.exact_source == "enumeration":
        out.append(("ok", f"Every latent is discrete and summed out exactly, so the {bound_name(result)} is log p(x) "
                          f"itself ({d.exact:.2f}): there is no gap between a bound and log p(x) to show."))
    elif len(rungs) > 1:
        first, last = rungs[0], rungs[-1]
        out.append(("ok", f"Bound ladder: {first[0]} {first[1]:.2f} up to {last[0]} {last[1]:.2f}; the gap "
                          f"{last[1] - first[1]:.2f} nats is what the ELBO leaves on the table."))
    for name, active in d.active_units.items():
        total = len(d.mean_variance[name])
        level = "bad" if active == 0 else "ok"
        out.append((level, f"Local latent '{name}': {active} of {total} dimensions are active (their posterior mean "
                           "varies across data points); inactive ones carry no information about the data."))
    if d.khat is not None and d.khat > KHAT_BAD and d.active_units and getattr(d, "khat_kind", None) != "per point":
        out.append(("ok", "With one latent per data point, k-hat measures the importance ratio of all data points "
                          "jointly, whose tail grows with the number of points: read it together with the per-point "
                          "bounds of the ladder."))
    for message in d.messages:
        out.append(("bad", message))
    return out


def _selection_words(candidates: Mapping[Any, Any]) -> list[tuple[str, str]]:
    bics = {label: fit.bic() for label, fit in candidates.items()}
    ranked = sorted(bics, key=bics.get)
    best = ranked[0]
    text = f"BIC chooses {best} (BIC {bics[best]:.1f})"
    if len(ranked) > 1:
        gap = bics[ranked[1]] - bics[best]
        strength = "strong" if gap > 10 else "positive" if gap > 2 else "weak"
        text += f"; the runner-up {ranked[1]} is {gap:.1f} higher ({strength} evidence, Kass and Raftery)"
    aics = {label: fit.aic() for label, fit in candidates.items()}
    best_aic = min(aics, key=aics.get)
    text += "." if best_aic == best else f"; AIC, which penalises parameters less, prefers {best_aic}."
    return [("ok", text)]


# ---------------------------------------------------------------------------------------------------- mixtures
def _mixture_responsibilities(result: Any) -> np.ndarray | None:
    resp = getattr(result, "responsibilities", None) or {}
    if len(resp) != 1:
        return None
    (value,) = resp.values()
    value = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=float)
    return value if value.ndim == 2 else None
