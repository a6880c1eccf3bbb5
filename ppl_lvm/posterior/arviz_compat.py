"""The one adapter to ArviZ and xarray: every difference between the two designs of ArviZ is handled here, and no
other module imports ArviZ.

=========  ==============================================================================================
design     what is installed
=========  ==============================================================================================
``0.x``    ``arviz`` < 1 (ArviZ 0.2x, the one pip picks on Python 3.11): groups are an ``az.InferenceData``
``1.x``    ``arviz`` >= 1 (Python >= 3.12), or ``arviz-base`` and ``arviz-stats`` >= 0.8 without ``arviz`` (they
           install on Python 3.11 and carry the same design): groups are an ``xarray.DataTree``, statistics come
           from ``arviz_stats``
=========  ==============================================================================================

What the adapter makes equal across the designs: the summary table (ArviZ 0.x's column names ``hdi_3%`` /
``hdi_97%`` for the 94% highest-density interval, ``sd`` with ``ddof=1``), the sign convention of PSIS (log
importance ratios in, normalised log weights and k-hat out), LOO's fields (:func:`loo`), the group listing
(:func:`group_names`, :func:`group`) and netCDF files (engine h5netcdf; both designs read what either wrote). What
stays each design's own: ``ess_tail`` and ``mcse_sd`` (ArviZ 1.x changed their definitions) and the small
differences of its Pareto fit (k-hat agrees to about 0.1 on heavy tails).

ArviZ and xarray are imported lazily, inside the functions: they take about a second to import and only the
export and the statistics of draws need them.
"""

from __future__ import annotations

import functools
import types
import warnings
from typing import Any

import numpy as np

__all__ = ["az", "xr", "design", "make_groups", "group_names", "group", "psislw", "summary", "rhat", "loo",
           "to_netcdf", "from_netcdf", "HDI_PROB"]

_ARVIZ_REFACTOR_NOTICE = r"(?s).*ArviZ is undergoing a major refactor"
_KHAT_NOTICE = "Estimated shape parameter of Pareto distribution"
#: the probability of the summary's highest-density interval (ArviZ 0.x's default, columns hdi_3% / hdi_97%)
HDI_PROB = 0.94
_MISSING = ("ppl_lvm needs ArviZ: `pip install arviz` (ArviZ 0.2x on Python 3.11, 1.x on Python >= 3.12), or "
            "`pip install 'arviz-base>=0.8' 'arviz-stats>=0.8'` for the 1.x design on Python 3.11")


def _import_arviz() -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ARVIZ_REFACTOR_NOTICE, category=FutureWarning)
        import arviz  # lazy: a heavy optional import

    return arviz


@functools.cache
def design() -> str:
    """``"0.x"`` (``az.InferenceData``) or ``"1.x"`` (``xarray.DataTree`` and ``arviz_stats``): see the module."""
    try:
        arviz = _import_arviz()
    except ImportError:
        arviz = None
    if arviz is not None and int(arviz.__version__.split(".")[0]) < 1:
        return "0.x"
    try:
        import arviz_base  # noqa: F401  # lazy: the 1.x design's packages, needed only for export and statistics
        import arviz_stats  # noqa: F401
    except ImportError as err:
        raise ImportError(_MISSING) from err
    return "1.x"


def _legacy() -> bool:
    return design() == "0.x"


@functools.cache
def az() -> Any:
    """The ArviZ namespace users call (``az.summary``, ``az.loo``, ``az.plot_trace`` where plots are installed).

    On the 0.x design and with ``arviz`` 1.x installed, the ``arviz`` module itself; with only ``arviz-base`` and
    ``arviz-stats`` (and ``arviz-plots`` when present), a namespace holding their public names, as ``arviz`` 1.x
    gathers them. Importing it silences exactly ArviZ 0.2x's import-time refactor notice.
    """
    if design() == "0.x":
        return _import_arviz()
    try:
        return _import_arviz()
    except ImportError:
        pass
    import arviz_base  # lazy: see design()
    import arviz_stats

    namespace = types.ModuleType("arviz", "arviz-base and arviz-stats gathered under one name, as arviz 1.x does")
    parts = [arviz_base, arviz_stats]
    try:
        import arviz_plots  # lazy: optional, only for plots

        parts.append(arviz_plots)
    except ImportError:
        pass
    for part in parts:
        for name in getattr(part, "__all__", None) or [n for n in dir(part) if not n.startswith("_")]:
            setattr(namespace, name, getattr(part, name))
    namespace.__version__ = arviz_base.__version__
    return namespace


def xr() -> Any:
    import xarray  # lazy: imported with ArviZ only when groups are built

    return xarray


# ---------------------------------------------------------------------------------------------------- groups
def make_groups(groups: dict[str, Any]) -> Any:
    """Assemble datasets: ``az.InferenceData`` on the 0.x design, an ``xarray.DataTree`` on 1.x."""
    if _legacy():
        return az().InferenceData(**groups)
    return xr().DataTree.from_dict({f"/{k}": v for k, v in groups.items()})


def group_names(idata: Any) -> list[str]:
    """The groups held (``posterior``, ``log_likelihood``, ...), in either design."""
    if hasattr(idata, "children"):  # a DataTree
        return list(idata.children)
    return list(idata.groups())


def group(idata: Any, name: str) -> Any:
    """One group as an ``xarray.Dataset`` (its attributes included), in either design."""
    if name not in group_names(idata):
        raise KeyError(f"no group {name!r}; the groups are {group_names(idata)}")
    node = idata[name]
    return node.to_dataset() if hasattr(node, "to_dataset") else node


# ---------------------------------------------------------------------------------------------------- statistics
def psislw(log_ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSIS of log importance ratios (..., S): normalised smoothed log weights and k-hat (ArviZ's warnings
    silenced; k-hat is returned for the caller to judge)."""
    log_ratios = np.asarray(log_ratios, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_KHAT_NOTICE)
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        if _legacy():
            lw, khat = az().psislw(log_ratios.copy())
        else:
            lw, khat = _psislw_stats(log_ratios)
    return np.asarray(lw, dtype=np.float64), np.asarray(khat, dtype=np.float64)


def _psislw_stats(log_ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSIS through arviz_stats, which takes the negated ratios (it smooths -log_lik for LOO), returns unnormalised
    weights and refuses a tail of equal values: such a row keeps its raw weights and gets ArviZ 0.x's k-hat, inf."""
    from arviz_stats.base import array_stats  # lazy: see design()

    try:
        lw, khat = array_stats.psislw(-log_ratios)
    except ValueError:
        rows = log_ratios.reshape(-1, log_ratios.shape[-1])
        lw, khat = np.array(rows), np.full(len(rows), np.inf)
        for i, row in enumerate(rows):
            try:
                lw[i], khat[i] = array_stats.psislw(-row)
            except ValueError:  # "All tail values are the same"
                pass
        lw, khat = lw.reshape(log_ratios.shape), khat.reshape(log_ratios.shape[:-1])
    lw = np.asarray(lw, dtype=np.float64)
    return lw - np.logaddexp.reduce(lw, axis=-1, keepdims=True), np.asarray(khat, dtype=np.float64)


SUMMARY_COLUMNS = ["mean", "sd", "hdi_3%", "hdi_97%", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]


def summary(data: dict[str, np.ndarray]) -> Any:
    """ArviZ's summary of ``{name: (chains, draws, *shape)}``, every statistic, unrounded, in the columns
    ``SUMMARY_COLUMNS`` on both designs (see the module for what is made equal)."""
    with warnings.catch_warnings():
        # a coordinate that never varies (e.g. a point estimate) has no sd: ArviZ warns while dividing by zero
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        if _legacy():
            return az().summary(data, kind="all", round_to="none", hdi_prob=HDI_PROB)[SUMMARY_COLUMNS]
        import arviz_stats  # lazy: see design()
        from arviz_stats.base import array_stats

        table = arviz_stats.summary(data, kind="all", round_to="none")
        flat = {name: np.asarray(a, dtype=np.float64).reshape((-1,) + np.shape(a)[2:]) for name, a in data.items()}
        # arviz-stats 0.8's summary labels an equal-tailed interval as "hdi" whatever ci_kind asks: the HDI is
        # computed here with its own hdi function, and sd with ddof=1 as ArviZ 0.x and scipy's users expect
        hdi = np.concatenate([np.asarray(array_stats.hdi(v, HDI_PROB, axis=0)).reshape(-1, 2) for v in flat.values()])
        sd = np.concatenate([np.std(v, axis=0, ddof=1).reshape(-1) for v in flat.values()])
    table = table.assign(**{"hdi_3%": hdi[:, 0], "hdi_97%": hdi[:, 1], "sd": sd})
    return table[SUMMARY_COLUMNS]


def rhat(name: str, array: np.ndarray) -> np.ndarray:
    """Rank-normalised split R-hat of one array ``(chains, draws, *shape)``, per coordinate."""
    array = np.asarray(array, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        if _legacy():
            value = az().rhat({name: array})[name].values
        else:
            from arviz_stats.base import array_stats  # lazy: see design()

            value = array_stats.rhat(array, chain_axis=0, draw_axis=1, method="rank")
    return np.asarray(value, dtype=np.float64)


def loo(idata: Any, var_name: str | None = None, reff: float | None = None) -> dict[str, Any]:
    """ArviZ's PSIS-LOO of the ``log_likelihood`` group (``az.loo`` on 0.x, ``arviz_stats.loo`` on 1.x).

    Returns ``elpd_loo``, ``se``, ``p_loo``, ``elpd_i`` (one value per observation), ``pareto_k``, ``good_k`` and
    ``warning`` (some k above ``good_k``); ArviZ's own k-hat warning is silenced, ``warning`` carries it. ``reff``
    (relative efficiency of the draws) defaults to ArviZ's estimate from the chains.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_KHAT_NOTICE)
        if _legacy():
            out = az().loo(idata, pointwise=True, var_name=var_name, reff=reff)
            fields = {"elpd_loo": out["elpd_loo"], "se": out["se"], "p_loo": out["p_loo"], "elpd_i": out["loo_i"],
                      "pareto_k": out["pareto_k"], "warning": out["warning"], "good_k": out["good_k"]}
        else:
            import arviz_stats  # lazy: see design()

            out = arviz_stats.loo(idata, pointwise=True, var_name=var_name, reff=reff)
            fields = {"elpd_loo": out.elpd, "se": out.se, "p_loo": out.p, "elpd_i": out.elpd_i,
                      "pareto_k": out.pareto_k, "warning": out.warning, "good_k": out.good_k}
    for key in ("elpd_i", "pareto_k"):
        fields[key] = np.asarray(fields[key], dtype=np.float64).reshape(-1)
    for key in ("elpd_loo", "se", "p_loo", "good_k"):
        fields[key] = float(fields[key])
    fields["warning"] = bool(fields["warning"])
    return fields


# ---------------------------------------------------------------------------------------------------- netCDF
def to_netcdf(idata: Any, path: str) -> str:
    """Write every group to one netCDF file (engine h5netcdf)."""
    idata.to_netcdf(str(path), engine="h5netcdf")
    return str(path)


def from_netcdf(path: str) -> Any:
    """Read a file written by :func:`to_netcdf` (in either design) fully into memory; the file is closed after."""
    if _legacy():
        with az().rc_context({"data.load": "eager"}):
            return az().from_netcdf(str(path), engine="h5netcdf")
    with xr().open_datatree(str(path), engine="h5netcdf") as tree:
        return tree.load()
