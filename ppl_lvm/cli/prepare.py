"""What ``ppl-lvm fit`` does to a data table before binding it: z-scored columns (``--standardize``), and the
warning for columns on very different scales when the model's fit depends on them."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data import bind_data
from ..errors import PplLvmError
from .inputs import BuiltinModel, CLIError

__all__ = ["SCALE_RATIO", "check_arguments", "clean_message", "scale_warning", "standardize"]

#: columns whose standard deviations differ by more than this factor are "on very different scales"
SCALE_RATIO = 10.0

def _values(loaded: Any) -> np.ndarray:
    return np.asarray(loaded.to_numpy() if hasattr(loaded, "to_numpy") else loaded, dtype=float)


# ---------------------------------------------------------------------------------------------------- standardize
def standardize(loaded: Any, entry: BuiltinModel | None, model_name: str) -> tuple[Any, dict[str, Any]]:
    """Z-score every column (mean 0, standard deviation 1 with divisor N, as scikit-learn's ``StandardScaler``).

    Returns the scaled data (a table's columns renamed ``"name (standardised)"``) and the scaling, so that the
    original units are ``x = mean + scale * z``.
    """
    if entry is not None and entry.discrete:  # z-scoring them would break their likelihood
        raise CLIError(f"--standardize z-scores continuous measurements; {model_name} models "
                       f"{entry.discrete}, which must stay as they are: drop --standardize")
    if isinstance(loaded, dict):
        raise CLIError("--standardize needs one table; choose the array of the .npz file with --key")
    values = _values(loaded)
    if values.ndim not in (1, 2):
        raise CLIError(f"--standardize needs a table (rows x columns), got an array of shape {values.shape}")
    table = values.reshape(len(values), -1)
    mean, scale = table.mean(0), table.std(0)
    names = [str(c) for c in loaded.columns] if hasattr(loaded, "columns") else [f"column {i}" for i in range(len(mean))]
    constant = [n for n, s in zip(names, scale, strict=True) if s == 0]  # NaN data are refused when bound, by position
    if constant:
        raise CLIError(f"--standardize cannot scale the constant column(s) {', '.join(map(repr, constant))}: "
                       "leave them out with --columns")
    scaled = ((table - mean) / scale).reshape(values.shape)
    if hasattr(loaded, "columns"):
        import pandas as pd  # pandas is slow to import and only tables need it

        scaled = pd.DataFrame(scaled, columns=[f"{n} (standardised)" for n in names], index=loaded.index)
    scaling = {"columns": names, "mean": mean.tolist(), "scale": scale.tolist(),
               "rule": "original = mean + scale * standardised (scale: standard deviation with divisor N)"}
    return scaled, scaling


# ---------------------------------------------------------------------------------------------------- scales
def _why_scale_matters(entry: BuiltinModel | None, args: dict[str, Any], gradient: bool) -> str | None:
    """Why rescaling one column changes this fit (not only its units), or None when it does not."""
    if entry is None:
        return None
    if entry.function == "ppca":
        return "ppca gives every column one shared noise variance, so the widest columns take over its components"
    if entry.function == "gaussian_mixture":
        if args.get("covariance_type") == "spherical":
            return "a spherical mixture gives every column of a component one shared variance"
        return ("its k-means start measures distances in the columns' units, so the widest columns decide where "
                "the components start")
    if entry.function == "gaussian_hmm":
        return ("its k-means start measures distances in the columns' units, so the widest columns decide where "
                "the states start")
    if entry.function == "factor_analysis" and gradient:
        return "a gradient fit takes steps of one size in every column's units"
    return None


def scale_warning(loaded: Any, entry: BuiltinModel | None, args: dict[str, Any], gradient: bool,
                  source: str) -> str | None:
    """A plain-words warning when the columns' standard deviations differ by more than :data:`SCALE_RATIO` for a
    model whose fit depends on the columns' scales; None otherwise."""
    why = _why_scale_matters(entry, args, gradient)
    if why is None or isinstance(loaded, dict):
        return None
    values = _values(loaded)
    if values.ndim != 2 or values.shape[1] < 2 or not np.isfinite(values).all():
        return None
    sd = values.std(0)
    names = [str(c) for c in loaded.columns] if hasattr(loaded, "columns") else [f"column {i}" for i in range(len(sd))]
    spread = [(s, n) for s, n in zip(sd, names, strict=True) if s > 0]
    if len(spread) < 2:
        return None
    (low, low_name), (high, high_name) = min(spread), max(spread)
    if high <= SCALE_RATIO * low:
        return None
    return (f"the columns of {source} are on very different scales: standard deviations from {low:.3g} "
            f"({low_name}) to {high:.3g} ({high_name}), {high / low:.0f} times apart; {why}. Rerun with --standardize "
            "to z-score the columns first")


# ---------------------------------------------------------------------------------------------------- arguments
def clean_message(exc: BaseException) -> str:
    """An exception's message on one line, without the table of trace shapes Pyro appends to errors in a model."""
    text = str(exc).split("Trace Shapes:")[0]
    return " ".join(text.split()) or type(exc).__name__


def check_arguments(model: Any, data: dict[str, Any], args: dict[str, Any]) -> None:
    """Run the model once on the bound data (its prototype run) before the fit, so that a bad ``--arg`` value ends
    with one line naming the values given instead of an error from inside the model."""
    try:
        model.inspect(**bind_data(model, data).kwargs)
    except (PplLvmError, CLIError):
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the model's first run is bad input
        given = " ".join(f"--arg {k}={v!r}" for k, v in args.items())
        where = f"{model.__name__}() with {given}" if given else f"{model.__name__}()"
        detail = clean_message(exc) if isinstance(exc, (ValueError, TypeError)) else \
            f"the model failed on its first run: {type(exc).__name__}: {clean_message(exc)}"
        raise CLIError(f"{where}: {detail}") from exc
