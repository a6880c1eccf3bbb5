"""The table of :meth:`ppl_lvm.results.Result.summary` (and of ``EMResult.summary``): ``az.summary`` statistics of
draws of the global latents from q, R-hat across restarts, and the point estimates of the model's parameters. An
MCMC fit's rows are ``az.summary`` of its chains (R-hat and effective sample sizes across them)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .outcome import EMOutcome, MCMCOutcome
from .posterior import queries
from .posterior.alignment import align_chains, aligned_restart_draws
from .posterior.laplace import laplace
from .posterior.stats import SUMMARY_COLUMNS, rhat_across_restarts, row_labels, summarize_chains, summarize_draws

__all__ = ["summarize", "EM_COLUMNS"]

#: the columns of an EM fit's summary: the estimate, its standard error and the 95% Wald interval
EM_COLUMNS = ["mean", "se", "ci_2.5%", "ci_97.5%"]
_Z95 = 1.959963984540054


def _param_rows(result: Any, names: list[str], columns: list[str]) -> Any:
    import pandas as pd  # lazy: pandas is needed only for tables

    rows, labels = [], []
    for name in names:
        value = result.params[name].detach().cpu().double().numpy()
        labels += row_labels(name, value.shape)
        rows += [{"mean": float(v)} for v in value.reshape(-1)]
    frame = pd.DataFrame(rows, index=labels, columns=columns, dtype=float)
    frame["kind"] = "param"
    return frame


def _em_attrs(result: EMOutcome) -> dict:
    return {
        "method": "em",
        "log_likelihood": float(result.log_likelihood),
        "bic": float(result.bic()),
        "aic": float(result.aic()),
        "n_parameters": int(result.n_parameters),
        "n_samples": int(result.n_samples),
        "n_iter": int(result.n_iter),
        "converged": bool(result.converged),
    }


def summarize(result: Any, num_samples: int = 500, seed: int = 0, var_names: list[str] | None = None) -> Any:
    """One row per scalar coordinate of the global latents (draws from q) and of the model's parameters."""
    import pandas as pd  # lazy: pandas is needed only for tables

    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 8:
        raise ValueError(f"num_samples must be an integer >= 8, got {num_samples!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    structure = result.structure
    em = isinstance(result, EMOutcome)
    if structure is None:
        params = [n for n in result.params if "$$$" not in n]
    else:
        params = structure.model_param_names(result.params)
    latents = [] if em or structure is None else [s.name for s in structure.global_latents]
    if var_names is not None:
        if isinstance(var_names, str):
            var_names = [var_names]
        latent_names = [s.name for s in structure.latent_sites] if structure is not None and not em else []
        known = set(params) | set(latent_names)
        unknown = [v for v in var_names if v not in known]
        if unknown:
            raise ValueError(f"var_names {unknown} are not latent sites or parameters of the model; known: "
                             f"{sorted(known)}")
        params = [p for p in params if p in var_names]
        latents = [v for v in var_names if v in latent_names]
    if em:
        table = _param_rows(result, params, EM_COLUMNS)
        if params and result.model is not None and structure is not None:  # else (loaded without model) NaN
            se = laplace(result).standard_errors()
            table["se"] = np.concatenate([se[name].numpy().reshape(-1) for name in params])
            table["ci_2.5%"] = table["mean"] - _Z95 * table["se"]
            table["ci_97.5%"] = table["mean"] + _Z95 * table["se"]
        table.attrs.update(_em_attrs(result))
        table.attrs["standard_errors"] = "observed information at the estimate (delta method)"
        return table

    if isinstance(result, MCMCOutcome):
        return _mcmc_table(result, num_samples, int(seed), latents)
    chains = aligned_restart_draws(result, num_samples, seed, latents) if latents else {}
    best = {n: v[0] for n, v in chains.items()}  # the kept fit is chain 0
    frames = []
    if best:
        frames.append(summarize_draws(best).assign(kind="latent"))
        frames[0]["r_hat"] = np.nan
        if len(result.restarts) > 1:
            rhat = rhat_across_restarts(chains)
            for name, values in rhat.items():
                for label, value in zip(row_labels(name, values.shape), values.reshape(-1), strict=True):
                    frames[0].loc[label, "r_hat"] = value
    if params:
        frames.append(_param_rows(result, params, SUMMARY_COLUMNS))
    table = pd.concat(frames) if frames else pd.DataFrame(columns=SUMMARY_COLUMNS + ["kind"])
    table.attrs.update({
        "method": result.method,
        "guide": str(result.guide_name),
        "steps": int(result.steps),
        "converged": bool(result.converged),
        "elbo": float(result.elbo),
        "n_init": max(1, len(result.restarts)),
        "num_samples": num_samples,
    })
    return table


def _mcmc_table(result: MCMCOutcome, num_samples: int, seed: int, latents: list[str]) -> Any:
    """``az.summary`` of the chains of the global latents: ``num_samples`` draws evenly spaced over the chains,
    each chain's mixture components put in chain 0's order (:func:`~ppl_lvm.posterior.alignment.align_chains`).
    Enumerated discrete latents are drawn from their exact conditional given each draw (at ``seed``)."""
    import pandas as pd  # lazy: pandas is needed only for tables

    chains = result.num_chains
    if num_samples % chains:
        raise ValueError(f"num_samples must be a multiple of num_chains={chains} (each chain keeps its share), "
                         f"got {num_samples}")
    draws = queries.guide_draws(result, num_samples, seed=seed, names=latents) if latents else {}
    if any(n not in draws for n in latents):  # enumerated sites: not sampled by NUTS, drawn by running the model
        draws.update({n: v for n, v in queries.sample_posterior(result, num_samples, seed).items()
                      if n in latents and n not in draws})
    per_chain = align_chains(result, {
        n: v.detach().cpu().double().numpy().reshape((chains, num_samples // chains) + tuple(v.shape[1:]))
        for n, v in draws.items()})
    table = summarize_chains(per_chain).assign(kind="latent") if per_chain else pd.DataFrame(
        columns=SUMMARY_COLUMNS + ["kind"])
    table.attrs.update({
        "method": result.method,
        "num_chains": chains,
        "num_draws": result.num_draws,
        "warmup_steps": result.warmup_steps,
        "divergences": int(result.sample_stats["diverging"].sum()) if "diverging" in result.sample_stats else 0,
        "converged": bool(result.converged),
        "num_samples": num_samples,
    })
    return table
