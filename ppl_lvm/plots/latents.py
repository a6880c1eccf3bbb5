"""The latents of a variational fit: marginal posteriors of global latents, the latent space of a local one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide

from ..data import to_tensor
from ..posterior.queries import prepare_guide
from ..runtime import run_scope
from ._figure import DPI, _axes, _check_result, _data_argument, _finish, _is_em, _numpy, _pyplot


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
        local = {s.name for s in structure.local_continuous_latents}
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
        from matplotlib.axes import Axes  # matplotlib is optional and slow to import

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
    shape = None
    with result.activated(), torch.no_grad(), run_scope(result.guide):
        prepare_guide(result)
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
    _check_result(result, "plot_latent_space")
    if _is_em(result):
        raise ValueError("plot_latent_space needs a continuous local latent from a variational fit; for the "
                         "discrete assignments of an EM fit use plot_responsibilities")
    structure = result.structure
    local = {s.name: s for s in structure.local_continuous_latents}
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
