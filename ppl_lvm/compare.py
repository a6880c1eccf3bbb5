"""``lvm.compare``: rank fits of competing models on the same data, in the style of ``az.compare``.

* **EM fits** (point estimates) are ranked by BIC (``-2 log L + p log N``, lower is better) with AIC alongside and
  the Schwarz weights exp(-BIC / 2), normalised.
* **Variational fits** are ranked by the PSIS-LOO estimate of the expected log pointwise predictive density
  (``elpd_loo``, higher is better), computed from ``num_samples`` draws of the kept fit's guide (restarts are not
  pooled: chains from different optima would inflate LOO). When the guide has a density, the draws from q are
  corrected towards the posterior (Magnusson et al. 2019): each leave-one-out importance ratio is
  p(theta_s | x_-i) / q(theta_s), proportional to exp(log p(x, theta_s) - log q(theta_s) - log p(x_i | theta_s)),
  and is Pareto-smoothed per point (``correction = "psis(p/q)"``). Guides without a density (``delta``, ``fullrank``)
  use the draws as they are (``az.loo``'s estimate, ``correction = "none"``); a point estimate (every draw equal)
  gets the plug-in log-likelihood with ``p_loo = 0`` and ``warning = True``. Pseudo-BMA weights
  exp(elpd_loo), normalised. ``log_evidence`` is the importance-sampling estimate of log p(x) from the same draws,
  logsumexp(log w) - log S, the IWAE bound with K = S (exact when every latent is enumerated).

EM and variational fits are not ranked together: their criteria differ (BIC penalises a point estimate, LOO
measures predictive density under the approximate posterior); :func:`compare` refuses a mix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .outcome import EMOutcome
from .posterior.draws import loo_inputs
from .posterior.stats import psis_loo
from .results import Result

__all__ = ["compare"]

EM_COLUMNS = ["rank", "bic", "d_bic", "aic", "d_aic", "log_likelihood", "n_parameters", "weight"]
VI_COLUMNS = ["rank", "elpd_loo", "p_loo", "elpd_diff", "weight", "se", "dse", "warning", "max_pareto_k",
              "log_evidence", "correction", "method"]


def _validate(results: Any) -> dict[str, Any]:
    if not isinstance(results, dict) or not results:
        raise TypeError("compare expects a non-empty dict {name: result}, e.g. {'K=2': fit2, 'K=3': fit3}")
    for name, result in results.items():
        if not isinstance(result, Result):
            raise TypeError(f"compare: {name!r} is a {type(result).__name__}, not a result of lvm.infer")
    kinds = {name: isinstance(result, EMOutcome) for name, result in results.items()}
    if len(set(kinds.values())) > 1:
        em = sorted(n for n, k in kinds.items() if k)
        vi = sorted(n for n, k in kinds.items() if not k)
        raise ValueError(
            f"compare cannot rank EM fits {em} together with variational fits {vi}: EM fits are ranked by BIC, "
            "variational fits by PSIS-LOO, and the two scales are not comparable. Compare each group on its own, "
            "e.g. lvm.compare({k: v for k, v in results.items() if isinstance(v, lvm.EMResult)})."
        )
    return results


def compare(results: dict[str, Any], num_samples: int = 500, seed: int | None = 0) -> Any:
    """Rank fits of models of the same data: EM fits by BIC, variational fits by PSIS-LOO.

    Parameters
    ----------
    results : dict of str -> Result
        The fits by name, all EM or all variational, of the same data.
    num_samples : int
        Draws from each variational fit's guide for LOO (unused for EM): the replay pass that ``to_arviz`` and
        ``diagnose`` read at the same number of draws and seed (500 draws at seed 0 by default, as ``diagnose``).
    seed : int, optional
        Seed of the draws (None: each fit's seed).

    Returns
    -------
    pandas.DataFrame
        One row per fit, best first (``rank`` 0). EM: ``bic``, ``d_bic`` (to the best), ``aic``, ``d_aic``,
        ``log_likelihood``, ``n_parameters``, ``weight``. Variational: ``elpd_loo``, ``p_loo``, ``elpd_diff``,
        ``weight``, ``se``, ``dse`` (standard error of the pointwise difference to the best), ``warning``,
        ``max_pareto_k``, ``log_evidence``, ``correction``, ``method``. ``attrs["criterion"]`` names the ranking.

    Raises
    ------
    TypeError
        If ``results`` is not a dict of results.
    ValueError
        For a mix of EM and variational fits, fits of data of different sizes, or a model without pointwise
        log-likelihoods (a hidden Markov chain: compare those by ``log_evidence()`` / BIC instead).

    Examples
    --------
    >>> import torch, ppl_lvm as lvm
    >>> from ppl_lvm.models.mixtures import gaussian_mixture
    >>> x = torch.cat([torch.randn(40, 2) - 3, torch.randn(40, 2) + 3]).double()
    >>> fits = {f"K={k}": lvm.infer(gaussian_mixture, {"x": x, "K": k}, method="em") for k in (1, 2, 3)}
    >>> lvm.compare(fits).index[0]
    'K=2'
    """
    results = _validate(results)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 10:
        raise ValueError(f"num_samples must be an integer >= 10, got {num_samples!r}")
    if isinstance(next(iter(results.values())), EMOutcome):
        return _compare_em(results)
    return _compare_vi(results, num_samples, seed)


def _compare_em(results: dict[str, Any]) -> Any:
    import pandas as pd  # pandas is imported on first use: import ppl_lvm stays fast

    sizes = {name: r.n_samples for name, r in results.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"compare needs fits of the same data; the numbers of data points differ: {sizes}")
    rows = {name: {"bic": r.bic(), "aic": r.aic(), "log_likelihood": r.log_likelihood,
                   "n_parameters": r.n_parameters} for name, r in results.items()}
    table = pd.DataFrame.from_dict(rows, orient="index").sort_values("bic", kind="stable")
    table["d_bic"] = table["bic"] - table["bic"].min()
    table["d_aic"] = table["aic"] - table["aic"].min()
    weights = np.exp(-0.5 * table["d_bic"].to_numpy())
    table["weight"] = weights / weights.sum()
    table["rank"] = np.arange(len(table))
    table.attrs["criterion"] = "bic"
    return table[EM_COLUMNS]


def _loo_row(result: Any, num_samples: int, seed: int | None) -> dict[str, Any]:
    log_lik, log_weight = loo_inputs(result, num_samples, seed)
    row: dict[str, Any] = {"method": result.method}
    if log_weight is not None and np.all(np.isfinite(log_weight)):
        row["log_evidence"] = float(np.logaddexp.reduce(log_weight) - math.log(len(log_weight)))
    else:
        row["log_evidence"] = math.nan
    if np.all(np.ptp(log_lik, axis=0) == 0):  # a point estimate: nothing to leave out
        elpd_i = log_lik[0]
        row.update(elpd_loo=float(elpd_i.sum()), se=float(np.sqrt(len(elpd_i) * np.var(elpd_i))), p_loo=0.0,
                   warning=True, max_pareto_k=math.nan, correction="point estimate")
        if not np.isfinite(row["log_evidence"]) and not result.structure.continuous_latents:
            row["log_evidence"] = float(result.log_evidence())
        return {**row, "elpd_i": elpd_i}
    # a guide whose log weights are all equal is the posterior itself: the correction would change nothing
    corrected = log_weight is not None and np.all(np.isfinite(log_weight)) and np.ptp(log_weight) > 0
    loo = psis_loo(log_lik, log_weight if corrected else None)
    row.update(elpd_loo=loo["elpd_loo"], se=loo["se"], p_loo=loo["p_loo"], warning=loo["warning"],
               max_pareto_k=float(np.max(loo["pareto_k"])), correction="psis(p/q)" if corrected else "none")
    return {**row, "elpd_i": loo["elpd_i"]}


def _compare_vi(results: dict[str, Any], num_samples: int, seed: int | None) -> Any:
    import pandas as pd  # pandas is imported on first use: import ppl_lvm stays fast

    rows = {}
    for name, result in results.items():
        try:
            rows[name] = _loo_row(result, num_samples, seed)
        except ValueError as exc:
            raise ValueError(f"compare: {name!r}: {exc}") from exc
    sizes = {name: len(r["elpd_i"]) for name, r in rows.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"compare needs fits of the same data; the numbers of pointwise terms differ: {sizes}")
    order = sorted(rows, key=lambda n: -rows[n]["elpd_loo"])
    best = rows[order[0]]
    n = len(best["elpd_i"])
    for name in order:
        diff = best["elpd_i"] - rows[name]["elpd_i"]
        rows[name]["elpd_diff"] = best["elpd_loo"] - rows[name]["elpd_loo"]
        rows[name]["dse"] = float(np.sqrt(n * np.var(diff)))
    elpd = np.array([rows[name]["elpd_loo"] for name in order])
    weights = np.exp(elpd - elpd.max())
    table = pd.DataFrame.from_dict({name: {k: v for k, v in rows[name].items() if k != "elpd_i"} for name in order},
                                   orient="index")
    table["weight"] = weights / weights.sum()
    table["rank"] = np.arange(len(table))
    table.attrs["criterion"] = "elpd_loo"
    table.attrs["num_samples"] = num_samples
    return table[VI_COLUMNS]
