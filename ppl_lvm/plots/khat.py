"""Pareto k-hat of the importance ratios of a variational fit, per batch of draws or per data point."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..diagnostics import KHAT_BAD, KHAT_GOOD
from ..posterior.draws import importance_log_weights
from ..posterior.stats import psis_khat, psis_khat_points
from ._figure import _axes, _check_result, _finish, _is_em

MIN_BATCH = 25  # draws per k-hat: ArviZ's PSIS returns inf for a tail of fewer than 5 of the largest 20%
VERDICT_COLOURS = {"good": "tab:green", "ok": "tab:orange", "bad": "tab:red"}


# ---------------------------------------------------------------------------------------------------- k-hat
def plot_khat(result: Any, num_batches: int = 10, ax: Any = None, path: Any = None, num_samples: int | None = None,
              seed: int | None = 0, per_point: bool = False) -> Any:
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
    seed : int, optional
        Seed of the draws (None: the fit's seed). The importance weights are read from the replay pass of
        :mod:`ppl_lvm.posterior.draws`, the one ``diagnose`` and ``to_arviz`` read at the same draws and seed.
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


def _plot_khat_points(result: Any, num_samples: int, seed: int | None, ax: Any, path: Any) -> Any:
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
