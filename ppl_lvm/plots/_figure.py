"""Plumbing shared by the figures of :mod:`ppl_lvm.plots`: new or given Axes, saving, checks of the fit, arrays."""

from __future__ import annotations

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
