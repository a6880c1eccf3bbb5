"""Figures of a fit: the loss trace, the bound ladder, Pareto k-hat, responsibilities, posteriors, latent spaces.

Every function returns a :class:`matplotlib.figure.Figure`, draws into an existing Axes when given ``ax=``, saves
the figure when given ``path=`` (PNG, or any format matplotlib infers from the suffix) and never calls
``plt.show()``. matplotlib is imported only when a function is called (``pip install matplotlib``).

=============================  =================================================================================
:func:`plot_loss`              the loss per step and its moving average (VI), the log-likelihood per iteration (EM)
:func:`plot_bound_ladder`      ELBO, IWAE_K, the importance-sampling estimate and the exact log p(x) when known
:func:`plot_khat`              Pareto k-hat of the importance ratios, per batch of draws from the guide
:func:`plot_responsibilities`  the data coloured by the most probable component, faded where it is uncertain
:func:`plot_posterior`         marginal histograms of draws from q for the global latent sites
:func:`plot_latent_space`      the posterior means E_q[z | x] of a local latent in 2-D (PCA beyond two dimensions)
=============================  =================================================================================

ArviZ is not called here: k-hat and the importance weights come from :mod:`ppl_lvm.arviz_export`, the ladder from
:mod:`ppl_lvm.diagnostics`.

Examples
--------
>>> import matplotlib
>>> matplotlib.use("Agg")
>>> import torch, ppl_lvm as lvm
>>> from ppl_lvm import plots
>>> from ppl_lvm.models.mixtures import gaussian_mixture
>>> x = torch.cat([torch.randn(50, 2) - 2, torch.randn(50, 2) + 2])
>>> fit = lvm.infer(gaussian_mixture, {"x": x, "K": 2}, method="em")
>>> fig = plots.plot_responsibilities(fit)            # the data coloured by p(z | x)
>>> fig = plots.plot_loss(fit)                         # the log-likelihood per iteration; path="em.png" saves it
>>> fig.axes[0].get_ylabel()
'log-likelihood (nats)'
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .fit import smoothed_losses

__all__ = [
    "plot_loss",
    "plot_bound_ladder",
    "plot_khat",
    "plot_responsibilities",
    "plot_posterior",
    "plot_latent_space",
]

FIGSIZE = (6.0, 4.0)
DPI = 100
MIN_BATCH = 25  # draws per k-hat: ArviZ's PSIS returns inf for a tail of fewer than 5 of the largest 20%
VERDICT_COLOURS = {"good": "tab:green", "ok": "tab:orange", "bad": "tab:red"}


# ---------------------------------------------------------------------------------------------------- plumbing
def _pyplot() -> Any:
    """matplotlib.pyplot, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "ppl_lvm.plots needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install 'ppl_lvm[plots]')"
        ) from exc
    return plt


def _axes(ax: Any, figsize: tuple[float, float] = FIGSIZE) -> tuple[Any, Any, bool]:
    """(figure, axes, created): a new 6x4 figure at dpi 100, or the figure of the caller's Axes."""
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, dpi=DPI)
        return fig, ax, True
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes (or None for a new figure), got {type(ax).__name__}")
    return ax.figure, ax, False


def _finish(fig: Any, created: bool, path: Any) -> Any:
    if created:
        with warnings.catch_warnings():  # "Tight layout not applied" when labels cannot fit: the figure is still fine
            warnings.filterwarnings("ignore", message=".*[Tt]ight.?layout.*", category=UserWarning)
            fig.tight_layout()
    if path is not None:
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__}")
        fig.savefig(str(path), dpi=DPI)
    return fig


def _check_result(result: Any, what: str) -> None:
    from .results import Result

    if not isinstance(result, Result):
        raise TypeError(f"{what} takes a fit result (what lvm.infer returns), got {type(result).__name__}")


def _is_em(result: Any) -> bool:
    return getattr(result, "method", None) == "em"


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
    if hasattr(value, "to_numpy"):
        return value.to_numpy()
    return np.asarray(value)


def _restarts(result: Any) -> list[Any]:
    """The other restarts of an ``n_init > 1`` fit (``result.restarts`` holds the kept one too)."""
    restarts = getattr(result, "restarts", None) or []
    return [r for r in restarts if r is not result and getattr(r, "seed", None) != result.seed]


# ---------------------------------------------------------------------------------------------------- loss
def plot_loss(result: Any, ax: Any = None, path: Any = None, smoothing: int | None = None) -> Any:
    """The optimisation trace of a fit.

    For a variational fit: the loss (negative ELBO or bound, in nats) at every step in a light line, its
    exponential moving average (the fit loop's own smoothing) in bold, a log-scaled y axis when every loss is
    positive and they span more than a factor of 10, and a vertical line where the fit stopped early. For an EM
    fit: the exact log-likelihood (nats, summed over the data) at every iteration. Restarts kept in
    ``result.restarts`` are drawn faintly behind the kept fit.

    Parameters
    ----------
    result : Result or EMResult
        What :func:`ppl_lvm.infer` returned.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of in a new 6x4 figure.
    path : str or Path, optional
        Save the figure there.
    smoothing : int, optional
        Window (in steps) of the moving average; default: the fit's own ``smoothing`` option.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    TypeError
        If ``result`` is not a fit result.
    ValueError
        If the result holds no history (e.g. loaded from a file without one) or ``smoothing`` is not a positive
        integer.
    """
    _check_result(result, "plot_loss")
    if smoothing is not None and (isinstance(smoothing, bool) or not isinstance(smoothing, int) or smoothing < 1):
        raise ValueError(f"smoothing must be a positive integer (steps), got {smoothing!r}")
    if _is_em(result):
        return _plot_em_history(result, ax, path)
    losses = np.asarray(result.losses, dtype=float)
    if losses.size == 0:
        raise ValueError("plot_loss: the result has no losses (no optimisation step was recorded)")
    fig, ax, created = _axes(ax)
    window = smoothing or int(result.options.get("smoothing", 50) or 50)
    steps = np.arange(1, len(losses) + 1)
    finite = np.isfinite(losses)
    for i, other in enumerate(_restarts(result)):
        other_losses = np.asarray(getattr(other, "losses", []), dtype=float)
        if other_losses.size:
            ax.plot(np.arange(1, len(other_losses) + 1), smoothed_losses(other_losses, window), color="0.6", lw=1,
                    alpha=0.7, label=f"{len(_restarts(result))} other restarts (moving average)" if i == 0 else None)
    ax.plot(steps, losses, color="C0", lw=0.8, alpha=0.35, label="loss per step")
    smooth = smoothed_losses(losses, window)
    ax.plot(steps, smooth, color="C0", lw=2.2, label=f"moving average ({window} steps)")
    positive = finite.any() and np.all(losses[finite] > 0)
    if positive and losses[finite].max() / losses[finite].min() > 10:
        ax.set_yscale("log")
    elif finite.sum() > 20:
        # a few huge losses of the first steps would flatten the rest: show the range of the smoothed curve
        skip = max(1, len(losses) // 50)
        lo = min(np.nanmin(losses[finite]), np.nanmin(smooth))
        hi = max(np.nanpercentile(losses[skip:][np.isfinite(losses[skip:])], 99), np.nanmax(smooth[skip:]))
        if hi > lo:
            pad = 0.05 * (hi - lo)
            ax.set_ylim(lo - pad, hi + pad)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0]) + 1
        ax.axvline(first, color="tab:red", ls="-", lw=1.2, label=f"loss not finite from step {first}")
    max_steps = result.options.get("steps")
    stopped_early = max_steps is not None and result.steps < int(max_steps)
    if stopped_early:
        why = "interrupted" if result.interrupted else ("early stop" if result.converged else "stopped")
        ax.axvline(result.steps, color="k", ls="--", lw=1, label=f"{why} at step {result.steps} of {max_steps}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (negative ELBO, nats)" + (", log scale" if ax.get_yscale() == "log" else ""))
    state = "converged" if result.converged else "not converged"
    ax.set_title(f"{result.method} fit: {result.steps} steps, {state}, final ELBO {result.elbo:.5g}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _finish(fig, created, path)


def _plot_em_history(result: Any, ax: Any, path: Any) -> Any:
    history = np.asarray(result.history, dtype=float)
    if history.size == 0:
        raise ValueError("plot_loss: the EM result has no log-likelihood history")
    n = max(int(getattr(result, "n_samples", 1) or 1), 1)
    fig, ax, created = _axes(ax)
    for i, other in enumerate(_restarts(result)):
        other_history = np.asarray(getattr(other, "history", []), dtype=float)
        if other_history.size:
            ax.plot(np.arange(1, len(other_history) + 1), other_history * n, ".-", color="0.6", ms=2, lw=1,
                    alpha=0.7, label="other restarts" if i == 0 else None)
    iterations = np.arange(1, len(history) + 1)
    kept = "kept restart" if _restarts(result) else "log-likelihood per iteration"
    ax.plot(iterations, history * n, ".-", color="C0", ms=4, lw=1.8, label=kept)
    ax.axhline(result.log_likelihood, color="C2", ls="--", lw=1, label=f"final {result.log_likelihood:.6g}")
    ax.set_xlabel("iteration")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole iterations only
    ax.set_ylabel("log-likelihood (nats)")
    state = "converged" if result.converged else "not converged (max_iter reached)"
    n_init = int(result.options.get("n_init", 1) or 1)
    best_of = f", best of {n_init} restarts" if n_init > 1 else ""
    ax.set_title(f"EM: {result.n_iter} iterations, {state}{best_of}")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _finish(fig, created, path)


# ---------------------------------------------------------------------------------------------------- ladder
def plot_bound_ladder(result_or_diagnosis: Any, ax: Any = None, path: Any = None, **diagnose_options: Any) -> Any:
    """The bound ladder of :func:`ppl_lvm.diagnostics.diagnose`: ELBO, IWAE_K..., IS and the exact log p(x).

    Each rung is a point labelled with its value (and its gap to the exact value when that is known); the exact
    log p(x), when known, is a horizontal line.

    Parameters
    ----------
    result_or_diagnosis : Result or Diagnosis
        A variational fit (``result.diagnose(warn=False, **diagnose_options)`` is called) or a
        :class:`~ppl_lvm.diagnostics.Diagnosis` already computed.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of in a new figure.
    path : str or Path, optional
        Save the figure there.
    **diagnose_options
        Passed to :func:`~ppl_lvm.diagnostics.diagnose` (``num_samples``, ``ladder``, ``seed``, ``exact``).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    TypeError
        If given neither a result nor a diagnosis.
    ValueError
        For an EM fit (exact: there is no bound to compare), or options given together with a diagnosis.
    """
    from .diagnostics import Diagnosis, diagnose

    if isinstance(result_or_diagnosis, Diagnosis):
        if diagnose_options:
            raise ValueError(f"options {sorted(diagnose_options)} are for diagnose(); a Diagnosis is already computed")
        d = result_or_diagnosis
    else:
        _check_result(result_or_diagnosis, "plot_bound_ladder")
        if _is_em(result_or_diagnosis):
            raise ValueError("plot_bound_ladder is for variational fits; an EM fit's log_likelihood is exact "
                             "(plot its history with plot_loss)")
        d = diagnose(result_or_diagnosis, **({"warn": False} | diagnose_options))
    rungs = [(label, value) for label, value in d.ladder if not label.startswith("exact")]
    fig, ax, created = _axes(ax)
    xs = np.arange(len(rungs))
    values = np.array([v for _, v in rungs], dtype=float)
    colours = ["C0" if label == "ELBO" else ("C1" if label.startswith("IWAE") else "C4") for label, _ in rungs]
    ax.scatter(xs, values, c=colours, s=50, zorder=2)
    for x, (_, value) in zip(xs, rungs, strict=True):
        text = f"{value:.5g}"
        if d.exact is not None:
            gap = d.exact - value
            text += f"\ngap {0.0 if abs(gap) < 1e-9 * max(1.0, abs(d.exact)) else gap:.3g}"
        ax.annotate(text, (x, value), textcoords="offset points", xytext=(0, 8), ha="center", va="bottom",
                    fontsize=8)
    if d.exact is not None:
        ax.axhline(d.exact, color="C2", ls="--", lw=1.5, label=f"exact log p(x) = {d.exact:.5g} ({d.exact_source})")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(xs, [label for label, _ in rungs], rotation=20 if len(rungs) > 4 else 0)
    low = np.nanmin(np.append(values, d.exact if d.exact is not None else np.nan))
    high = np.nanmax(np.append(values, d.exact if d.exact is not None else np.nan))
    span = (high - low) or max(abs(high), 1.0) * 1e-3
    ax.set_ylim(low - 0.15 * span, high + 0.35 * span)
    ax.set_xlim(-0.6, len(rungs) - 0.4)
    ax.set_xlabel("estimate (loosest first)")
    ax.set_ylabel("log p(x) estimate (nats)")
    per_point = " max per point" if d.khat_kind == "per point" else ""
    khat = "n/a" if d.khat is None else f"{d.khat:.2f}{per_point} ({d.khat_verdict})"
    ax.set_title(f"bound ladder, {d.num_samples} draws from q; Pareto k-hat {khat}")
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, created, path)


# ---------------------------------------------------------------------------------------------------- k-hat
def plot_khat(result: Any, num_batches: int = 10, ax: Any = None, path: Any = None, num_samples: int | None = None,
              seed: int = 0, per_point: bool = False) -> Any:
    """Pareto k-hat of the importance ratios log p(x, theta) - log q(theta), per batch of draws from the guide.

    The draws (discrete local latents summed out, as in the ArviZ export's ``log_weight``) are split into
    ``num_batches`` equal batches; each batch's k-hat (PSIS, Yao et al. 2018) is a point coloured by its verdict
    (green < 0.5 good, orange <= 0.7 ok, red > 0.7 bad), with the 0.5 and 0.7 thresholds as lines and the k-hat of
    all draws together as a dashed line. Scattered batch values say how far a single k-hat can be trusted.

    Parameters
    ----------
    result : Result
        A variational fit whose guide has a density for its draws (not ``delta``, not a guide with helper sites).
    num_batches : int
        Number of batches of draws (>= 1).
    ax : matplotlib.axes.Axes, optional
        Draw here instead of in a new figure.
    path : str or Path, optional
        Save the figure there.
    num_samples : int, optional
        Draws from the guide in all; default ``50 * num_batches``. Each batch needs at least 25 (PSIS fits a
        Pareto tail to the largest 20% of the ratios and gives up with fewer than 5).
    seed : int
        Seed of the draws.
    per_point : bool
        For a model whose latents are all local (PPCA, a VAE): instead of batches, the k-hat of each data point's
        ratios log p(x_i, z_i) - log q(z_i | x_i) over all ``num_samples`` draws (those of ``result.diagnose()``),
        points sorted by k-hat; ``num_batches`` is then unused.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        For an EM fit, a fit with nothing sampled (every latent enumerated), a guide without a density, or fewer
        than 25 draws per batch; with ``per_point``, a model whose weights do not factorise over the data points.
    """
    from .arviz_export import importance_log_weights, psis_khat
    from .diagnostics import KHAT_BAD, KHAT_GOOD

    _check_result(result, "plot_khat")
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive integer, got {num_batches!r}")
    if num_samples is None:
        num_samples = 50 * num_batches
    if per_point:  # one batch: all draws, per data point
        num_batches = 1
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < MIN_BATCH * num_batches:
        raise ValueError(f"num_samples must be an integer >= {MIN_BATCH} * num_batches = {MIN_BATCH * num_batches} "
                         f"(PSIS fits the largest 20% of the ratios and needs at least {MIN_BATCH} draws per batch), "
                         f"got {num_samples!r}")
    if _is_em(result):
        raise ValueError("plot_khat is for variational fits; an EM fit samples nothing (its posterior is exact)")
    if not result.structure.continuous_latents:
        raise ValueError("plot_khat: every latent of this model is enumerated exactly, nothing is sampled from a "
                         "guide, so there are no importance ratios (the fit's log p(x) is exact)")
    if per_point:
        return _plot_khat_points(result, num_samples, seed, ax, path)
    log_w = importance_log_weights(result, num_samples, seed)
    if log_w is None:
        raise ValueError(f"plot_khat: the guide {result.guide_name!r} has no density for its draws (a delta/MAP "
                         f"guide, or one that samples helper sites); refit with guide='normal' or an amortised guide")
    batches = np.array_split(log_w, num_batches)
    khats = np.array([psis_khat(b) if np.ptp(b) > 0 else math.nan for b in batches])
    overall = psis_khat(log_w) if np.ptp(log_w) > 0 else math.nan
    fig, ax, created = _axes(ax)
    xs = np.arange(1, num_batches + 1)
    verdicts = np.where(khats < KHAT_GOOD, "good", np.where(khats <= KHAT_BAD, "ok", "bad"))
    for verdict, colour in VERDICT_COLOURS.items():
        mask = (verdicts == verdict) & np.isfinite(khats)
        if mask.any():
            ax.scatter(xs[mask], khats[mask], color=colour, s=45, zorder=3, label=f"{verdict} ({mask.sum()})")
    ax.axhline(KHAT_GOOD, color=VERDICT_COLOURS["ok"], lw=1, ls=":", label=f"{KHAT_GOOD}: good below")
    ax.axhline(KHAT_BAD, color=VERDICT_COLOURS["bad"], lw=1, ls=":", label=f"{KHAT_BAD}: unreliable above")
    ax.axhspan(-10, KHAT_GOOD, color=VERDICT_COLOURS["good"], alpha=0.06, lw=0)
    ax.axhspan(KHAT_GOOD, KHAT_BAD, color=VERDICT_COLOURS["ok"], alpha=0.08, lw=0)
    ax.axhspan(KHAT_BAD, 1e3, color=VERDICT_COLOURS["bad"], alpha=0.06, lw=0)
    if math.isfinite(overall):
        ax.axhline(overall, color="k", lw=1.2, ls="--", label=f"all {num_samples} draws: {overall:.2f}")
    finite = khats[np.isfinite(khats)]
    top = max([KHAT_BAD + 0.2, overall if math.isfinite(overall) else 0.0, *(finite if finite.size else [0.0])])
    bottom = min([0.0, *(finite if finite.size else [0.0])])
    ax.set_ylim(bottom - 0.05, top + 0.05 * (top - bottom) + 0.1)
    ax.set_xticks(xs)
    ax.set_xlabel(f"batch of {len(batches[0])} draws from q")
    ax.set_ylabel("Pareto k-hat")
    ax.set_title(f"Pareto k-hat of q per batch of draws ({result.method})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, created, path)


def _plot_khat_points(result: Any, num_samples: int, seed: int, ax: Any, path: Any) -> Any:
    from .arviz_export import importance_log_weights, psis_khat_points
    from .diagnostics import KHAT_BAD, KHAT_GOOD

    point_w = importance_log_weights(result, num_samples, seed, pointwise=True)
    if point_w is None:
        raise ValueError("plot_khat(per_point=True): the importance weights do not factorise over the data points "
                         "(a global latent, or a guide without a density); use per_point=False")
    khats = np.sort(psis_khat_points(point_w))
    fig, ax, created = _axes(ax)
    xs = np.arange(1, len(khats) + 1)
    verdicts = np.where(khats < KHAT_GOOD, "good", np.where(khats <= KHAT_BAD, "ok", "bad"))
    for verdict, colour in VERDICT_COLOURS.items():
        mask = (verdicts == verdict) & np.isfinite(khats)
        if mask.any():
            ax.scatter(xs[mask], khats[mask], color=colour, s=12, zorder=3, label=f"{verdict} ({mask.sum()})")
    ax.axhline(KHAT_GOOD, color=VERDICT_COLOURS["ok"], lw=1, ls=":", label=f"{KHAT_GOOD}: good below")
    ax.axhline(KHAT_BAD, color=VERDICT_COLOURS["bad"], lw=1, ls=":", label=f"{KHAT_BAD}: unreliable above")
    finite = khats[np.isfinite(khats)]
    top = max([KHAT_BAD + 0.2, *(finite if finite.size else [0.0])])
    bottom = min([0.0, *(finite if finite.size else [0.0])])
    ax.set_ylim(bottom - 0.05, top + 0.05 * (top - bottom) + 0.1)
    ax.set_xlabel(f"data point (sorted by k-hat; {num_samples} draws from q each)")
    ax.set_ylabel("Pareto k-hat")
    ax.set_title(f"Pareto k-hat of q(z_i | x_i) per data point ({result.method})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, created, path)


# ---------------------------------------------------------------------------------------------------- responsibilities
def _data_argument(result: Any, plates: Sequence[str] = ()) -> tuple[str, Any]:
    """(argument name, value) of the observed data: the observed site sharing ``plates``, else the first one."""
    observed = result.structure.observed_sites
    if not observed:
        raise ValueError("the model observes nothing, so there is no data to plot")
    site = next((s for s in observed if set(plates) <= set(s.plates)), observed[0])
    argument = site.argument or site.name
    if argument not in result.data.kwargs:
        raise ValueError(f"the observed site '{site.name}' is not fed by a data argument; pass x=")
    return argument, result.data.kwargs[argument]


def _column_names(result: Any, argument: str, x: Any, width: int) -> list[str]:
    columns = getattr(x, "columns", None)
    if columns is not None and len(columns) == width:
        return [str(c) for c in columns]
    labels = (getattr(result.data, "coords", {}) or {}).get(argument, {})
    if x is None and len(labels.get("columns", [])) == width:
        return list(labels["columns"])
    return [f"{argument}[{d}]" for d in range(width)]


def _discrete_site(result: Any, site: str | None) -> Any:
    discrete = result.structure.discrete_latents
    if not discrete:
        raise ValueError("plot_responsibilities needs a discrete latent (a component assignment such as z), but "
                         "this model has none; for continuous local latents use plot_latent_space")
    if site is None:
        return discrete[0]
    for info in discrete:
        if info.name == site:
            return info
    raise ValueError(f"site {site!r} is not a discrete latent of the model; its discrete latents: "
                     f"{[s.name for s in discrete]}")


def _vi_responsibilities(result: Any, site: str, kwargs: dict, num_samples: int, seed: int) -> torch.Tensor:
    """p(z_i = k | x) of a variational fit, exact given the globals: E_q[p(z | x, theta)] over draws theta ~ q.

    The discrete site is summed out by the exact E-step of :mod:`ppl_lvm.em` with the continuous latents
    conditioned on each draw (one pass when the model has none: the result is exact).
    """
    import pyro.poutine as poutine

    from .em.generic import e_step, site_marginal
    from .runtime import run_scope

    continuous = [s.name for s in result.structure.continuous_latents]
    draws = result.sample_posterior(num_samples, seed=seed) if continuous else {}
    passes = num_samples if continuous else 1
    nesting = result.structure.max_plate_nesting
    total = None
    with result.activated(), torch.no_grad(), run_scope(result.guide):
        for s in range(passes):
            model = poutine.condition(result.model, data={n: draws[n][s] for n in continuous}) if continuous \
                else result.model
            marginal = site_marginal(e_step(model, kwargs, nesting, max_bytes=None), site)
            total = marginal if total is None else total + marginal
    return total / passes


def plot_responsibilities(result: Any, x: Any = None, dims: tuple[int, int] = (0, 1), ax: Any = None,
                          path: Any = None, site: str | None = None, num_samples: int = 100, seed: int = 0) -> Any:
    """The data coloured by their most probable component, faded and smaller where the assignment is uncertain.

    Two or more data columns: a scatter of columns ``dims``. One column: the value against
    max_k p(z = k | x), which shows where components overlap.

    Parameters
    ----------
    result : EMResult or Result
        An EM fit (its ``responsibilities``, or ``predict_proba(x)`` for new data) or a variational fit with the
        discrete latent enumerated; for the latter p(z | x) is computed exactly given the continuous latents and
        averaged over ``num_samples`` draws of them from q (one exact pass when there are none).
    x : array-like, optional
        Data to plot, (N, D) or (N,); default: the data of the fit.
    dims : tuple of int
        The two data columns of the scatter (ignored for one-column data).
    ax : matplotlib.axes.Axes, optional
        Draw here instead of in a new figure.
    path : str or Path, optional
        Save the figure there.
    site : str, optional
        The discrete latent; default: the model's first.
    num_samples, seed : int
        Draws of the continuous latents from q (variational fits only).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If the model has no discrete latent, the responsibilities are not one row per data point (a hidden
        Markov chain), ``dims`` does not name two different columns of the data, or new data ``x`` is given for
        an EM fit that is not a recognised mixture or a variational fit with local continuous latents.
    """
    from .data import to_tensor
    from .diagnostics import _local_sites

    _check_result(result, "plot_responsibilities")
    if _is_em(result):
        chains = {n: r for n, r in result.responsibilities.items() if r.dim() == 3}
        if chains and (site is None or site in chains):
            name, r = next(iter(chains.items())) if site is None else (site, chains[site])
            raise ValueError(f"plot_responsibilities plots one point per data row, but '{name}' is a hidden Markov "
                             f"chain (responsibilities of shape {tuple(r.shape)}: sequence, time, state); plot "
                             f"result.map_assignments() over time instead")
    info = _discrete_site(result, site)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    argument, fitted = _data_argument(result, info.plates)
    data = fitted if x is None else to_tensor(x, argument)
    if _is_em(result):
        resp = result.responsibilities.get(info.name) if x is None else result.predict_proba(data)
        if resp is None:
            raise ValueError(f"the EM result has no responsibilities for site '{info.name}'; it has them for "
                             f"{sorted(result.responsibilities)} (pass site=)")
    else:
        if x is not None and _local_sites(result.structure):
            raise ValueError("new data x: the guide holds the local continuous latents of the fitted rows only; "
                             "plot the fitted data (x=None)")
        kwargs = dict(result.data.kwargs) | {argument: data}
        resp = _vi_responsibilities(result, info.name, kwargs, num_samples, seed)
    resp = _numpy(resp)
    values = _numpy(data)
    if values.ndim == 1:
        values = values[:, None]
    if resp.ndim != 2 or values.ndim != 2 or resp.shape[0] != values.shape[0]:
        raise ValueError(f"plot_responsibilities plots one point per data row, but site '{info.name}' has "
                         f"responsibilities of shape {tuple(resp.shape)} for data of shape {tuple(values.shape)} "
                         f"(a hidden Markov chain? plot result.map_assignments() over time instead)")
    width = values.shape[1]
    if width >= 2:
        dims = tuple(dims)
        if len(dims) != 2 or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) for d in dims) \
                or dims[0] == dims[1] or not all(-width <= d < width for d in dims):
            raise ValueError(f"dims must be two different column indices of the data (0..{width - 1}), got {dims!r}")
    names = _column_names(result, argument, x, width)
    k = resp.shape[1]
    best = resp.argmax(1)
    certainty = resp.max(1)
    fig, ax, created = _axes(ax)
    from matplotlib.colors import to_rgba

    palette = [to_rgba(f"C{j}") for j in range(k)] if k <= 10 else list(_pyplot().get_cmap("tab20")(np.arange(k) % 20))
    colours = np.array([palette[j] for j in best])
    colours[:, 3] = 0.15 + 0.85 * (certainty - 1.0 / k) / (1.0 - 1.0 / k) if k > 1 else 1.0
    sizes = 8 + 32 * certainty
    if width >= 2:
        px, py = values[:, dims[0]], values[:, dims[1]]
        ax.set_xlabel(names[dims[0]])
        ax.set_ylabel(names[dims[1]])
    else:
        px, py = values[:, 0], certainty
        ax.set_xlabel(names[0])
        ax.set_ylabel("max_k p(z = k | x)")
        ax.axhline(1.0 / k, color="0.5", lw=0.8, ls=":")  # the floor: all components equally probable
        ax.set_ylim(1.0 / k - 0.05, 1.03)
    ax.scatter(px, py, c=colours, s=sizes, edgecolors="none")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=palette[j], label=f"{info.name} = {j} ({int((best == j).sum())})")
               for j in range(k)]
    handles.append(Line2D([], [], marker="o", ls="", color="0.5", alpha=0.25, markersize=4,
                          label="faint/small: uncertain"))
    ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.8)
    uncertain = int((certainty < 0.9).sum())
    ax.set_title(f"most probable {info.name} ({result.method}); {uncertain} of {len(best)} points with "
                 f"max p < 0.9", fontsize=10)
    ax.grid(alpha=0.3)
    return _finish(fig, created, path)


# ---------------------------------------------------------------------------------------------------- posterior
def _kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    """A Gaussian kernel density estimate with Silverman's bandwidth (None when the draws do not vary)."""
    sd = values.std(ddof=1) if len(values) > 1 else 0.0
    iqr = np.subtract(*np.percentile(values, [75, 25]))
    spread = min(sd, iqr / 1.34) if iqr > 0 else sd
    if not spread > 0:
        return None
    h = 0.9 * spread * len(values) ** (-0.2)
    z = (grid[:, None] - values[None, :]) / h
    return np.exp(-0.5 * z**2).sum(1) / (len(values) * h * math.sqrt(2 * math.pi))


def _coordinates(name: str, draws: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(title, draws) per scalar coordinate of one site: ``site[i, j]``."""
    shape = draws.shape[1:]
    if not shape:
        return [(name, draws)]
    return [(f"{name}[{', '.join(map(str, index))}]", draws[(slice(None), *index)]) for index in np.ndindex(*shape)]


def plot_posterior(result: Any, var_names: Sequence[str] | str | None = None, ax: Any = None, path: Any = None,
                   num_samples: int = 1000, seed: int = 0, max_panels: int = 36) -> Any:
    """Marginal posteriors from q: a grid of small panels, a histogram and density estimate per scalar coordinate.

    Parameters
    ----------
    result : Result
        A variational fit.
    var_names : str or sequence of str, optional
        Latent sites to show; default: every global latent (local latents, one per data point, are left out).
    ax : matplotlib.axes.Axes or sequence of Axes, optional
        One Axes per coordinate (e.g. from ``plt.subplots``), or a single Axes when one coordinate is shown.
    path : str or Path, optional
        Save the figure there.
    num_samples, seed : int
        Draws from q.
    max_panels : int
        At most this many coordinates are drawn (the title says when some were left out).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        For an EM fit (point estimates, no posterior), a model without global latents (its globals are
        parameters), a name that is not a latent site, or ``ax`` with too few Axes.
    """
    from .diagnostics import _local_sites

    _check_result(result, "plot_posterior")
    if _is_em(result):
        raise ValueError("plot_posterior shows draws from a variational posterior; an EM fit has point estimates "
                         "(result.params) and exact responsibilities (plot_responsibilities)")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    if isinstance(max_panels, bool) or not isinstance(max_panels, int) or max_panels < 1:
        raise ValueError(f"max_panels must be a positive integer, got {max_panels!r}")
    structure = result.structure
    latents = [s.name for s in structure.latent_sites]
    if var_names is None:
        local = {s.name for s in _local_sites(structure)}
        observed_plates = {p for s in structure.observed_sites for p in s.plates}
        names = [s.name for s in structure.latent_sites
                 if s.name not in local and not (s.discrete and set(s.plates) & observed_plates)]
        if not names:
            raise ValueError(f"plot_posterior: the model has no global latent sites (its latents {latents} are "
                             f"local, one per data point; its global quantities are parameters, point estimates in "
                             f"result.params). Pass var_names=[...] to show local latents, or use "
                             f"plot_latent_space")
    else:
        names = [var_names] if isinstance(var_names, str) else list(var_names)
        unknown = [n for n in names if n not in latents]
        if unknown or not names:
            raise ValueError(f"var_names {unknown or names} are not latent sites of the model; its latent sites: "
                             f"{latents} (parameters are point estimates in result.params)")
    draws = result.sample_posterior(num_samples, seed=seed)
    panels: list[tuple[str, np.ndarray, bool]] = []
    for name in names:
        discrete = structure.sites[name].discrete
        panels += [(title, values, discrete) for title, values in _coordinates(name, _numpy(draws[name]))]
    total = len(panels)
    panels = panels[:max_panels]
    plt = _pyplot()
    created = ax is None
    if ax is None:
        cols = min(len(panels), 4)
        rows = math.ceil(len(panels) / cols)
        fig, grid = plt.subplots(rows, cols, figsize=(max(min(2.6 * cols + 0.6, 12), 4.0), 2.0 * rows + 0.8), dpi=DPI,
                                 squeeze=False)
        axes = list(grid.ravel())
        for extra in axes[len(panels):]:
            extra.set_visible(False)
    else:
        from matplotlib.axes import Axes

        axes = [ax] if isinstance(ax, Axes) else list(np.ravel(np.asarray(ax, dtype=object)))
        if len(axes) < len(panels) or not all(isinstance(a, Axes) for a in axes):
            raise ValueError(f"ax must hold at least one matplotlib Axes per coordinate shown ({len(panels)}); "
                             f"pass var_names to show fewer, or ax=None for a new grid")
        fig = axes[0].figure
    for a, (title, values, discrete) in zip(axes, panels, strict=False):
        values = values.astype(float)
        if discrete:
            states, counts = np.unique(values, return_counts=True)
            a.bar(states, counts / len(values), color="C0", alpha=0.7, width=0.8)
            a.set_ylabel("probability", fontsize=8)
        else:
            lo, hi = values.min(), values.max()
            if hi > lo:
                a.hist(values, bins=30, density=True, color="C0", alpha=0.35)
                grid_x = np.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 200)
                density = _kde(values, grid_x)
                if density is not None:
                    a.plot(grid_x, density, color="C0", lw=1.5)
            else:
                a.axvline(lo, color="C0", lw=2)
                half = 0.1 * max(abs(lo), 1.0)
                a.set_xlim(lo - half, lo + half)
                a.text(0.5, 0.5, "point mass", transform=a.transAxes, ha="center", fontsize=8, color="0.4",
                       bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})
            a.axvline(values.mean(), color="k", lw=0.8, ls="--")
        a.set_title(f"{title}\nmean {values.mean():.3g}, sd {values.std():.2g}", fontsize=9)
        a.tick_params(labelsize=7)
        a.locator_params(axis="x", nbins=5)
        a.set_yticks([])
    if created:
        what = "" if total <= max_panels else f" (first {max_panels} of {total} coordinates; choose var_names=)"
        fig.suptitle(f"posterior draws from q ({result.method}, {num_samples} draws){what}", fontsize=10)
    return _finish(fig, created, path)


# ---------------------------------------------------------------------------------------------------- latent space
def _posterior_means(result: Any, site: str, kwargs: dict | None, num_samples: int, seed: int) -> np.ndarray:
    """E_q[z | x] per data point: the mean of the guide's distribution, else the mean of draws."""
    import pyro
    import pyro.poutine as poutine

    from .runtime import run_scope

    shape = None
    with result.activated(), torch.no_grad(), run_scope(result.guide):
        result._prepare_guide()
        pyro.set_rng_seed(seed)
        trace = poutine.trace(result.guide).get_trace(**(kwargs if kwargs is not None else result.data.kwargs))
    node = trace.nodes.get(site)
    if node is not None and node["type"] == "sample":
        shape = tuple(node["value"].shape)
        try:
            mean = node["fn"].mean
            if tuple(mean.shape) == shape and bool(torch.isfinite(mean).all()):
                return _numpy(mean)
        except NotImplementedError:
            pass
    if kwargs is not None:
        raise ValueError(f"E_q[{site} | x] of new data needs a guide whose distribution of '{site}' has a mean")
    return _numpy(result.sample_posterior(num_samples, seed=seed)[site]).mean(0)


def plot_latent_space(result: Any, x: Any = None, labels: Any = None, site: str = "z", ax: Any = None,
                      path: Any = None, num_samples: int = 200, seed: int = 0) -> Any:
    """The posterior means E_q[z_i | x_i] of a local latent as a 2-D scatter, coloured by ``labels``.

    With more than two latent dimensions the means are projected on their first two principal components (the
    axis labels say so, with the share of variance each explains).

    Parameters
    ----------
    result : Result
        A variational fit with a local continuous latent (PPCA, factor analysis, a VAE).
    x : array-like, optional
        New data (N, D), encoded by an amortised guide; default: the fitted data.
    labels : array-like, optional
        One label per data point: integers, strings or booleans give a legend (one colour per class), other
        numbers a colour bar.
    site : str
        The local latent site.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of in a new figure.
    path : str or Path, optional
        Save the figure there.
    num_samples, seed : int
        Draws from q when the guide's distribution has no closed-form mean.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If ``site`` is not a local continuous latent with one vector per data point, its dimension is 1 (no 2-D
        view exists), ``labels`` has the wrong length, or new data ``x`` is given for a guide with per-point
        parameters (not amortised).
    """
    from pyro.infer.autoguide import AutoGuide

    from .data import to_tensor
    from .diagnostics import _local_sites

    _check_result(result, "plot_latent_space")
    if _is_em(result):
        raise ValueError("plot_latent_space needs a continuous local latent from a variational fit; for the "
                         "discrete assignments of an EM fit use plot_responsibilities")
    structure = result.structure
    local = {s.name: s for s in _local_sites(structure)}
    if site not in local:
        raise ValueError(f"site {site!r} is not a local continuous latent (one value per data point); the model's "
                         f"local continuous latents: {sorted(local)}")
    info = local[site]
    shape = tuple(info.shape)
    nb = len(info.batch_shape)
    if nb != 1 or len(shape) != 2:
        raise ValueError(f"plot_latent_space needs '{site}' to be one vector per data point, shape (N, latent_dim); "
                         f"it has shape {shape}")
    if shape[1] < 2:
        raise ValueError(f"'{site}' has latent_dim {shape[1]}: a 2-D latent space needs at least two dimensions "
                         f"(plot_posterior(result, var_names=['{site}']) shows one-dimensional latents)")
    kwargs = None
    if x is not None:
        if isinstance(result.guide, AutoGuide):
            raise ValueError(f"new data x: the guide {result.guide_name!r} has one set of parameters per fitted data "
                             f"point, so it cannot encode new rows; use an amortised guide (lvm.AmortizedNormal or an "
                             f"encoder) or plot the fitted data (x=None)")
        argument, _ = _data_argument(result, info.plates)
        kwargs = dict(result.data.kwargs) | {argument: to_tensor(x, argument)}
    means = _posterior_means(result, site, kwargs, num_samples, seed)
    if means.ndim != 2:
        raise ValueError(f"E_q[{site} | x] has shape {means.shape}; expected (N, latent_dim)")
    n, q = means.shape
    if q > 2:
        centred = means - means.mean(0)
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        coords = centred @ vt[:2].T
        share = singular**2 / max(float((singular**2).sum()), 1e-300)
        xlabel = f"PC 1 of E_q[{site} | x] ({100 * share[0]:.0f}% of variance, latent_dim {q})"
        ylabel = f"PC 2 of E_q[{site} | x] ({100 * share[1]:.0f}%)"
    else:
        coords = means
        xlabel, ylabel = f"E_q[{site}_0 | x]", f"E_q[{site}_1 | x]"
    fig, ax, created = _axes(ax)
    point_size = 12 if n > 500 else 22
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=point_size, alpha=0.7, color="C0", edgecolors="none")
    else:
        values = _numpy(labels).reshape(-1) if not isinstance(labels, str) else None
        if values is None or len(values) != n:
            raise ValueError(f"labels must hold one value per data point ({n}), got "
                             f"{'a string' if values is None else len(values)}")
        categorical = values.dtype.kind in "iubUSO"
        if categorical:
            classes = list(dict.fromkeys(sorted(values.tolist())))
            cmap = "tab10" if len(classes) <= 10 else "tab20"
            colours = _pyplot().get_cmap(cmap)
            for j, c in enumerate(classes):
                mask = values == c
                ax.scatter(coords[mask, 0], coords[mask, 1], s=point_size, alpha=0.75, edgecolors="none",
                           color=colours(j % colours.N), label=str(c))
            ax.legend(title="label", fontsize=8, title_fontsize=8, markerscale=1.5, loc="upper left",
                      bbox_to_anchor=(1.01, 1.0), borderaxespad=0, ncol=1 if len(classes) <= 12 else 2)
        else:
            sc = ax.scatter(coords[:, 0], coords[:, 1], c=values.astype(float), cmap="viridis", s=point_size,
                            alpha=0.8, edgecolors="none")
            fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    which = "new data" if x is not None else "fitted data"
    ax.set_title(f"posterior means of '{site}' ({result.method}, {n} points, {which})", fontsize=10)
    ax.grid(alpha=0.3)
    return _finish(fig, created, path)
