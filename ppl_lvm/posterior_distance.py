"""``lvm.compare_posteriors``: how far one fit's posterior is from another's, element by element.

Typical use: a mean-field variational fit against a NUTS fit of the same model, to see where the variational
posterior is shifted (mean difference), too narrow (``sd_ratio`` below 1: mean-field's KL(q || p) is known to
under-estimate marginal variances when the posterior is correlated) or otherwise off (the Wasserstein-1 distance of
the two marginals, in the units of the element; ``scipy.stats.wasserstein_distance`` on the draws).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .outcome import Outcome
from .posterior import queries
from .posterior.alignment import align_draw_sets
from .posterior.stats import row_labels
from .results import Result

__all__ = ["compare_posteriors", "COLUMNS"]

COLUMNS = ["mean_a", "mean_b", "mean_diff", "sd_a", "sd_b", "sd_ratio", "wasserstein"]


def _elements(fit: Outcome, names: list[str], num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """Draws ``(S, *shape)`` of each name: latent sites from the fit's posterior, parameters as one point draw."""
    latents = [n for n in names if n in fit.structure.sites and fit.structure.sites[n].kind == "latent"]
    draws: dict[str, Any] = queries.guide_draws(fit, num_samples, seed, latents) if latents else {}
    if any(n not in draws for n in latents):  # enumerated discrete sites are drawn by running the model
        draws.update({n: v for n, v in queries.sample_posterior(fit, num_samples, seed).items() if n in latents})
    out = {n: v.detach().cpu().double().numpy() for n, v in draws.items()}
    for n in names:
        if n not in out:
            out[n] = fit.params[n].detach().cpu().double().numpy()[None]
    return out


def _names(fit: Outcome) -> list[str]:
    structure = fit.structure
    return [s.name for s in structure.global_latents] + structure.model_param_names(fit.params)


def compare_posteriors(fit_a: Any, fit_b: Any, var_names: list[str] | None = None, num_samples: int = 2000,
                       seed: int = 0) -> Any:
    """Per element of every latent site and parameter: the two fits' means and sds and the Wasserstein-1 distance.

    Parameters
    ----------
    fit_a, fit_b : Result
        Fits of models with the same site names and shapes (usually one model fitted two ways, e.g.
        ``method="meanfield"`` and ``method="nuts"``). A model parameter (``lvm.param``) is a point mass (sd 0).
    var_names : list of str, optional
        Sites and parameters to compare; default: every global latent site and model parameter the two fits share.
    num_samples : int
        Draws from each fit (an MCMC fit's draws are spread evenly over its chains).
    seed : int
        Seed of the draws.

    Returns
    -------
    pandas.DataFrame
        One row per scalar element (``name`` or ``name[i, j]``) with ``mean_a``, ``mean_b``, ``mean_diff``
        (``mean_a - mean_b``), ``sd_a``, ``sd_b``, ``sd_ratio`` (``sd_a / sd_b``; below 1 where fit a is
        narrower) and ``wasserstein`` (W1 of the two marginals, in the element's units). ``attrs`` holds both
        methods and ``num_samples``. A mixture's components in ``fit_b`` are put in ``fit_a``'s order first
        (:mod:`ppl_lvm.posterior.alignment`).

    Raises
    ------
    TypeError
        A fit that is not a result of ``lvm.infer``.
    ValueError
        ``var_names`` not in both fits, or a site whose shapes differ.

    Examples
    --------
    >>> import torch, ppl_lvm as lvm
    >>> from ppl_lvm import dist
    >>> @lvm.model
    ... def normal_mean(x):
    ...     mu = lvm.latent(dist.Normal(0.0, 2.0), name="mu")
    ...     with lvm.plate("data", len(x)):
    ...         lvm.observe(dist.Normal(mu, 1.0), x, name="x")
    >>> x = torch.randn(20) + 1.0
    >>> vi = lvm.infer(normal_mean, x, method="meanfield", steps=300, lr=0.05, seed=0)
    >>> nuts = lvm.infer(normal_mean, x, method="nuts", num_samples=500, warmup_steps=200, seed=0)
    >>> table = lvm.compare_posteriors(vi, nuts)
    >>> list(table.columns)
    ['mean_a', 'mean_b', 'mean_diff', 'sd_a', 'sd_b', 'sd_ratio', 'wasserstein']
    >>> bool(abs(table.loc["mu", "sd_ratio"] - 1) < 0.3)  # one Normal latent: mean-field is exact
    True
    """
    import pandas as pd  # lazy: pandas is needed only for tables
    from scipy.stats import wasserstein_distance  # lazy: scipy.stats takes a while to import

    for label, fit in (("fit_a", fit_a), ("fit_b", fit_b)):
        if not isinstance(fit, Result):
            raise TypeError(f"compare_posteriors: {label} is a {type(fit).__name__}, not a result of lvm.infer")
        queries.require_model(fit)
    queries.check_count("num_samples", num_samples)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    names_a, names_b = _names(fit_a), _names(fit_b)
    if var_names is None:
        names = [n for n in names_a if n in names_b]
        if not names:
            raise ValueError(f"compare_posteriors: the fits share no latent site or parameter (fit_a: {names_a}, "
                             f"fit_b: {names_b})")
    else:
        names = [var_names] if isinstance(var_names, str) else list(var_names)
        known_a = {s.name for s in fit_a.structure.latent_sites} | set(names_a)
        known_b = {s.name for s in fit_b.structure.latent_sites} | set(names_b)
        missing = [n for n in names if n not in known_a or n not in known_b]
        if missing:
            raise ValueError(f"var_names {missing} are not latent sites or parameters of both fits; shared: "
                             f"{sorted(known_a & known_b)}")
    draws_a = _elements(fit_a, names, num_samples, int(seed))
    draws_b = _elements(fit_b, names, num_samples, int(seed))
    draws_a, draws_b = align_draw_sets(fit_a, [fit_a, fit_b], [draws_a, draws_b])
    rows, labels = [], []
    for name in names:
        a, b = draws_a[name], draws_b[name]
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"compare_posteriors: '{name}' has shape {a.shape[1:]} in fit_a and {b.shape[1:]} in "
                             "fit_b; compare fits of the same model")
        labels += row_labels(name, a.shape[1:])
        flat_a, flat_b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        for j in range(flat_a.shape[1]):
            xa, xb = flat_a[:, j], flat_b[:, j]
            sd_a, sd_b = float(xa.std(ddof=1)) if len(xa) > 1 else 0.0, float(xb.std(ddof=1)) if len(xb) > 1 else 0.0
            rows.append({
                "mean_a": float(xa.mean()),
                "mean_b": float(xb.mean()),
                "mean_diff": float(xa.mean() - xb.mean()),
                "sd_a": sd_a,
                "sd_b": sd_b,
                "sd_ratio": sd_a / sd_b if sd_b > 0 else np.nan,
                "wasserstein": float(wasserstein_distance(xa, xb)),
            })
    table = pd.DataFrame(rows, index=labels, columns=COLUMNS, dtype=float)
    table.attrs.update({"method_a": str(fit_a.method), "method_b": str(fit_b.method), "num_samples": num_samples})
    return table
