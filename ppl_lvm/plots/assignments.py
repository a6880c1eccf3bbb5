"""The responsibilities of a fit: the data coloured by their most probable component."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyro.poutine as poutine
import torch

from ..data import to_tensor
from ..em.generic import e_step, site_marginal
from ..runtime import run_scope
from ._figure import (
    _axes,
    _check_result,
    _data_argument,
    _finish,
    _is_em,
    _numpy,
    _pyplot,
    looks_standardised,
    pca_2d,
    standardised_name,
)


# ---------------------------------------------------------------------------------------------------- responsibilities
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
                          path: Any = None, site: str | None = None, num_samples: int = 100, seed: int = 0,
                          projection: str | None = None) -> Any:
    """The data coloured by their most probable component, faded and smaller where the assignment is uncertain.

    Two or more data columns: a scatter of columns ``dims``, or with ``projection="pca"`` of the data's first two
    principal components (each axis says the share of variance it explains). One column: the value against
    max_k p(z = k | x), which shows where components overlap. Axes of standardised data (every column with mean 0
    and standard deviation 1) say so and drop the unit of the column's name.

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
    projection : {None, "pca"}
        ``"pca"``: draw the first two principal components of the data instead of two of its columns (``dims`` is
        then unused).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If the model has no discrete latent, the responsibilities are not one row per data point (a hidden
        Markov chain), ``dims`` does not name two different columns of the data, or new data ``x`` is given for
        an EM fit that is not a recognised mixture or a variational fit with local continuous latents, or
        ``projection`` is not None or ``"pca"``.
    """
    _check_result(result, "plot_responsibilities")
    if projection not in (None, "pca"):
        raise ValueError(f"projection must be None (two data columns) or 'pca', got {projection!r}")
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
        if x is not None and result.structure.local_continuous_latents:
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
    if looks_standardised(values):
        names = [standardised_name(n) for n in names]
    k = resp.shape[1]
    best = resp.argmax(1)
    certainty = resp.max(1)
    fig, ax, created = _axes(ax)
    from matplotlib.colors import to_rgba  # matplotlib is optional and slow to import

    palette = [to_rgba(f"C{j}") for j in range(k)] if k <= 10 else list(_pyplot().get_cmap("tab20")(np.arange(k) % 20))
    colours = np.array([palette[j] for j in best])
    colours[:, 3] = 0.15 + 0.85 * (certainty - 1.0 / k) / (1.0 - 1.0 / k) if k > 1 else 1.0
    sizes = 8 + 32 * certainty
    if width >= 2 and projection == "pca":
        coords, share = pca_2d(values)
        px, py = coords[:, 0], coords[:, 1]
        units = " of the standardised data" if looks_standardised(values) else ""
        ax.set_xlabel(f"PC 1{units} ({100 * share[0]:.0f}% of variance, {width} columns)")
        ax.set_ylabel(f"PC 2 ({100 * share[1]:.0f}% of variance)")
    elif width >= 2:
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
    from matplotlib.lines import Line2D  # matplotlib is optional and slow to import

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
