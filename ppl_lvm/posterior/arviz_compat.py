"""The one adapter to ArviZ and xarray: every difference between ArviZ 0.2x (``az.InferenceData``) and 1.x
(``xarray.DataTree``, ``arviz_stats``) is handled here, and no other module imports ArviZ.

ArviZ and xarray are imported lazily, inside the functions: they take about a second to import and only the
export and the statistics of draws need them.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["az", "xr", "arviz_major_version", "make_groups", "psislw", "summary", "rhat", "to_netcdf",
           "from_netcdf"]

_ARVIZ_REFACTOR_NOTICE = r"(?s).*ArviZ is undergoing a major refactor"


def az() -> Any:
    """Import ArviZ, silencing exactly its import-time refactor notice (a FutureWarning in 0.2x)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ARVIZ_REFACTOR_NOTICE, category=FutureWarning)
        import arviz  # lazy: a heavy optional import

    return arviz


def xr() -> Any:
    import xarray  # lazy: imported with ArviZ only when groups are built

    return xarray


def arviz_major_version() -> int:
    return int(az().__version__.split(".")[0])


def make_groups(groups: dict[str, Any]) -> Any:
    """Assemble datasets: ``az.InferenceData`` on ArviZ 0.x, an ``xarray.DataTree`` on ArviZ 1.x."""
    if arviz_major_version() < 1:
        return az().InferenceData(**groups)
    return xr().DataTree.from_dict({f"/{k}": v for k, v in groups.items()})  # pragma: no cover - ArviZ 1.x


def psislw(log_ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSIS of log ratios (..., S): normalised smoothed log weights and k-hat (ArviZ's warnings silenced)."""
    if arviz_major_version() >= 1:  # pragma: no cover - ArviZ 1.x: the sign convention is flipped
        from arviz_stats.base import array_stats

        lw, khat = array_stats.psislw(-log_ratios)
        return np.asarray(lw, dtype=np.float64), np.asarray(khat, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto distribution")
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        lw, khat = az().psislw(log_ratios)
    return np.asarray(lw, dtype=np.float64), np.asarray(khat, dtype=np.float64)


def summary(data: dict[str, np.ndarray]) -> Any:
    """``az.summary`` of ``{name: (chains, draws, *shape)}``, every statistic, unrounded."""
    with warnings.catch_warnings():
        # a coordinate that never varies (e.g. a point estimate) has no sd: ArviZ warns while dividing by zero
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        return az().summary(data, kind="all", round_to="none")


def rhat(name: str, array: np.ndarray) -> np.ndarray:
    """Rank-normalised split R-hat (``az.rhat``) of one array ``(chains, draws, *shape)``, per coordinate."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        value = az().rhat({name: array})[name].values
    return np.asarray(value, dtype=np.float64)


def to_netcdf(idata: Any, path: str) -> str:
    """Write every group to one netCDF file (engine h5netcdf)."""
    if arviz_major_version() < 1:
        return idata.to_netcdf(str(path), engine="h5netcdf")
    idata.to_netcdf(str(path), engine="h5netcdf")  # pragma: no cover - ArviZ 1.x (DataTree)
    return str(path)  # pragma: no cover


def from_netcdf(path: str) -> Any:
    """Read a file written by :func:`to_netcdf` fully into memory (the file is closed afterwards)."""
    if arviz_major_version() < 1:
        with az().rc_context({"data.load": "eager"}):
            return az().from_netcdf(str(path), engine="h5netcdf")
    with xr().open_datatree(str(path), engine="h5netcdf") as tree:  # pragma: no cover - ArviZ 1.x (DataTree)
        return tree.load()  # pragma: no cover
