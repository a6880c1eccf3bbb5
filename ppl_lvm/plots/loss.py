"""The optimisation trace of a fit (loss per step, EM log-likelihood per iteration) and the bound ladder."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..diagnostics import Diagnosis, diagnose
from ..fit_options import smoothed_losses
from ..results.display import bound_name, loss_name
from ._figure import _axes, _check_result, _finish, _is_em


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
    ax.set_ylabel(f"loss ({loss_name(result)}, nats)" + (", log scale" if ax.get_yscale() == "log" else ""),
                  wrap=True)
    state = "converged" if result.converged else "not converged"
    ax.set_title(f"{result.method} fit: {result.steps} steps, {state}\nfinal {bound_name(result)} {result.elbo:.5g}",
                 fontsize=10)
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
    from matplotlib.ticker import MaxNLocator  # matplotlib is optional and slow to import

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole iterations only
    ax.set_ylabel("total log-likelihood (nats)")  # summed over the data points (the history holds means)
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
        if d.exact_source == "enumeration":
            # every latent is summed out: the bound is log p(x) itself, a "gap" would be rounding, never a gap
            text += "\n= log p(x)"
        elif d.exact is not None:
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
    # without k-hat (a guide without a density, or a diagnosis made from bounds only) the title leaves it out; the
    # report says why in words
    khat = "" if d.khat is None else f"; Pareto k-hat {d.khat:.2f}{per_point} ({d.khat_verdict})"
    ax.set_title(f"bound ladder, {d.num_samples} draws from q{khat}", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, created, path)
