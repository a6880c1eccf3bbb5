"""Plumbing shared by the figures of :mod:`ppl_lvm.plots`: new or given Axes, saving, checks of the fit, arrays."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..outcome import EMOutcome
from ..results import Result

FIGSIZE = (6.0, 4.0)
DPI = 100


# ---------------------------------------------------------------------------------------------------- plumbing
def _pyplot() -> Any:
    """matplotlib.pyplot, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt  # matplotlib is optional and slow to import
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
    from matplotlib.axes import Axes  # matplotlib is optional and slow to import

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
    if not isinstance(result, Result):
        raise TypeError(f"{what} takes a fit result (what lvm.infer returns), got {type(result).__name__}")


def _is_em(result: Any) -> bool:
    return isinstance(result, EMOutcome)


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
    if hasattr(value, "to_numpy"):
        return value.to_numpy()
    return np.asarray(value)


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


# ---------------------------------------------------------------------------------------------------- projections
def pca_2d(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``values`` (N, D) on their first two principal components, and the share of the total variance
    each component explains, shape (2,)."""
    centred = values - values.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    share = singular**2 / max(float((singular**2).sum()), 1e-300)
    return centred @ vt[:2].T, np.pad(share[:2], (0, max(0, 2 - len(share))))


def looks_standardised(values: np.ndarray, tol: float = 0.05) -> bool:
    """Whether every column has mean 0 and standard deviation 1 (to ``tol``): data in standard units, no unit."""
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or len(values) < 2:
        return False
    return bool(np.all(np.abs(values.mean(0)) < tol) and np.all(np.abs(values.std(0) - 1.0) < tol))


def standardised_name(name: str) -> str:
    """A column name for standardised data: its unit in brackets dropped, "(standardised)" said instead."""
    return re.sub(r"\s*[\(\[][^\)\]]*[\)\]]\s*$", "", name) + " (standardised)"
