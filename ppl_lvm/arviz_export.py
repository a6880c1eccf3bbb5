"""Export of fit results to ArviZ groups and netCDF (ArviZ itself is reached through
:mod:`ppl_lvm.posterior.arviz_compat`).

``to_inference_data(result)`` turns a variational fit (svi / meanfield / iwae / renyi) into groups, every one read
from the same replay pass (:mod:`ppl_lvm.posterior.draws`) that :func:`ppl_lvm.diagnostics.diagnose` and
:func:`ppl_lvm.compare` read at the same number of draws and seed:

=====================  ==========================================================================================
``posterior``          draws of every latent site from the fitted guide, dims ``(chain, draw, *site dims)``;
                       discrete enumerated latents are drawn from their exact conditional given the draw
``log_likelihood``     per observed site, log p(x_i | theta_s) with every discrete latent summed out exactly,
                       dims ``(chain, draw, *batch dims of the site)``. Each site is marginalised on its own: a
                       discrete latent it shares with other observations is summed out per point. Omitted (with an
                       ``InferenceWarning``) when discrete latents form a Markov chain (enumeration dims reused),
                       where no per-observation factorisation exists; continuous latents are conditioned on, so
                       for local continuous latents (PPCA, VAE) it is log p(x_i | z_i,s, params)
``posterior_predictive``  replicated observations
``observed_data``      the data, with pandas index / column labels as coordinates
``sample_stats``       ``lp`` = log p(x, theta_s) (discrete latents contracted exactly, chains included),
                       ``log_q`` = log q(theta_s) and ``log_weight = lp - log_q`` when the guide samples the latent
                       sites themselves (not for ``delta`` or guides with helper sites such as ``fullrank``)
=====================  ==========================================================================================

and an EM fit into

=============================  ======================================================================================
``posterior``                  ``num_samples`` draws of every model parameter from the Laplace approximation at the
                               estimate (:mod:`ppl_lvm.posterior.laplace`: normal in the unconstrained coordinates,
                               covariance the inverse observed information), labelled so in its ``posterior``
                               attribute; omitted, with an ``InferenceWarning``, when the information is singular
``log_likelihood``             log p(x_i | theta_s) of each draw, every latent summed out; the observations are the
                               data points (mixtures, the data plate) or the sequences (hidden Markov chains)
``point_estimate``             the fitted parameters; the log-likelihood, BIC, AIC, convergence and iteration count
                               are its attributes
``responsibilities``           p(z | x) per discrete site
``map_assignments``            the most probable states (Viterbi paths for chains)
``em_history``                 mean log-likelihood per iteration
``pointwise_log_likelihood``   log p(x_i) at the estimate, when the data sit in one plate
``observed_data``              the data
=============================  ======================================================================================

Dimension names: a site's batch dimensions are named after its plates (``len(x)`` becomes ``x_index``, other plate
names are sanitised), remaining dimensions ``<site>_dim_<i>``.

Written for ArviZ 0.23 (``az.InferenceData``); with ArviZ 1.x the same groups become an ``xarray.DataTree``.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pyro
import torch

from ._version import __version__
from .errors import InferenceWarning
from .outcome import EMOutcome, Outcome
from .posterior import arviz_compat
from .posterior.alignment import align_draw_sets, ordered_restarts
from .posterior.draws import replay
from .posterior.laplace import laplace, pointwise_log_likelihood

__all__ = ["to_inference_data", "save_netcdf", "load_netcdf", "LAPLACE_LABEL"]

#: the ``posterior`` attribute of an EM fit's export: what its draws are
LAPLACE_LABEL = ("laplace approximation at the EM estimate: normal in each parameter's unconstrained coordinates, "
                 "covariance the inverse observed information (a flat prior there), not MCMC draws")


# ---------------------------------------------------------------------------------------------------- naming
def _plate_dim_name(plate: str) -> str:
    match = re.fullmatch(r"len\((\w+)\)", plate.replace(" ", ""))
    if match:
        return f"{match.group(1)}_index"
    name = re.sub(r"\W+", "_", plate).strip("_")
    return name or "plate"


def _site_dims(structure: Any, name: str, shape: tuple[int, ...], batch_shape: tuple[int, ...] | None = None
               ) -> list[str]:
    """Dimension names of one site's value (without chain/draw): plates for batch dims, ``<site>_dim_i`` else."""
    info = structure.sites.get(name)
    if batch_shape is None:
        batch_shape = tuple(info.batch_shape) if info is not None else ()
    n_batch = len(batch_shape) if tuple(shape[: len(batch_shape)]) == tuple(batch_shape) else 0
    dims: list[str] = []
    by_dim = {}
    if info is not None:
        for plate in info.plates:
            p = structure.plates.get(plate)
            if p is not None and p.dim is not None:
                by_dim[p.dim] = p
    generic = 0
    for j in range(len(shape)):
        plate = by_dim.get(j - n_batch) if j < n_batch else None
        if plate is not None and plate.size == shape[j]:
            dims.append(_plate_dim_name(plate.name))
        else:
            dims.append(f"{name}_dim_{generic}")
            generic += 1
    return dims


def _label_coords(result: Outcome, dims_of: dict[str, list[str]], shapes: dict[str, tuple[int, ...]]) -> dict:
    """Coordinates from pandas labels: the data plate gets the index, an observed site's first event dim the columns."""
    coords: dict[str, list] = {}
    labels = getattr(result.data, "coords", {}) or {}
    structure = result.structure
    for site in structure.observed_sites:
        lab = labels.get(site.argument or site.name)
        if not lab or site.name not in dims_of:
            continue
        dims, shape = dims_of[site.name], shapes[site.name]
        nb = len(site.batch_shape)
        if "index" in lab and nb >= 1 and shape[0] == len(lab["index"]):
            coords.setdefault(dims[0], list(lab["index"]))
        if "columns" in lab and len(shape) > nb and shape[nb] == len(lab["columns"]):
            coords.setdefault(dims[nb], list(lab["columns"]))
    return coords


def _numpy(value: torch.Tensor) -> np.ndarray:
    array = value.detach().cpu().numpy()
    return array.astype(np.int64) if array.dtype.kind in "iub" else array.astype(np.float64)


def _split(array: np.ndarray, chains: int) -> np.ndarray:
    """Independent draws (S, ...) as (chains, S // chains, ...)."""
    return array.reshape((chains, array.shape[0] // chains) + array.shape[1:])


def _dataset(variables: dict[str, tuple[list[str], np.ndarray]], coords: dict, attrs: dict | None = None) -> Any:
    xr = arviz_compat.xr()
    used = {d for dims, _ in variables.values() for d in dims}
    return xr.Dataset(
        dict(variables.items()),
        coords={k: v for k, v in coords.items() if k in used},
        attrs=dict(attrs or {}),
    )


def _attrs(result: Outcome) -> dict:
    return {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "creation_library": "ppl_lvm",
        "creation_library_version": __version__,
        "method": str(result.method),
        "guide": str(result.guide_name),
        "steps": int(result.steps),
        "converged": int(bool(result.converged)),
        "seed": int(result.seed),
    }


# ---------------------------------------------------------------------------------------------------- SVI / IWAE
def to_inference_data(result: Any, num_samples: int = 500, seed: int | None = None, chains: int = 1,
                      restarts: bool | None = None) -> Any:
    """The fit as ArviZ groups (``az.InferenceData`` on ArviZ 0.x, ``xarray.DataTree`` on 1.x).

    Parameters
    ----------
    result : Result or EMResult
        A variational fit (svi, meanfield, iwae, renyi) or an EM fit (its ``posterior`` holds ``num_samples`` draws
        of the Laplace approximation, ``restarts`` is unused: the kept fit is exported).
    num_samples : int
        Draws from the fitted guide (per restart when the restarts are exported), or of an EM fit's Laplace
        approximation.
    seed : int, optional
        Seed of the draws (default: the fit's seed).
    chains : int
        The draws from q are independent; ``chains > 1`` splits them into that many equal chains (``num_samples``
        must be a multiple) so that ``az.summary``'s R-hat, which needs two chains, is computed; with one chain
        ArviZ reports R-hat as NaN and logs a shape-validation message.
    restarts : bool, optional
        For a fit with ``n_init > 1`` (default: True then): one chain per restart, the kept fit first, components
        aligned to it (:mod:`ppl_lvm.posterior.alignment`), so that R-hat compares the optima the restarts found. Pooling
        the chains of different optima inflates LOO: :func:`ppl_lvm.compare` exports the kept fit alone
        (``restarts=False``).
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not isinstance(chains, int) or chains < 1 or num_samples % chains:
        raise ValueError(f"chains must be a positive integer dividing num_samples={num_samples}, got {chains!r}")
    if isinstance(result, EMOutcome):
        return arviz_compat.make_groups(_em_groups(result, num_samples, seed, chains))
    if restarts is None:
        restarts = len(getattr(result, "restarts", [])) > 1
    if restarts and len(getattr(result, "restarts", [])) > 1:
        if chains != 1:
            raise ValueError("with restarts exported as chains, leave chains=1 (each restart is one chain)")
        return arviz_compat.make_groups(_restart_groups(result, num_samples, seed))
    return arviz_compat.make_groups(_variational_groups(result, num_samples, seed, chains))


def _restart_groups(result: Any, num_samples: int, seed: int | None) -> dict[str, Any]:
    """One chain per restart, the kept fit first, the posterior's components aligned to it."""
    xr = arviz_compat.xr()
    fits = ordered_restarts(result)
    per_fit = [_variational_groups(fit, num_samples, seed, 1) for fit in fits]
    posteriors = [{n: v.values[0] for n, v in g["posterior"].data_vars.items()} for g in per_fit]
    aligned = align_draw_sets(result, fits, posteriors)
    for groups, values in zip(per_fit, aligned, strict=True):
        post = groups["posterior"]
        groups["posterior"] = post.copy(data={n: values[n][None] for n in post.data_vars})
    out: dict[str, Any] = {}
    for name in per_fit[0]:
        if name == "observed_data":
            out[name] = per_fit[0][name]
            continue
        joined = xr.concat([g[name] for g in per_fit], dim="chain", combine_attrs="override")
        out[name] = joined.assign_coords(chain=np.arange(len(per_fit)))
    out["posterior"].attrs["restart_seeds"] = [int(f.seed) for f in fits]
    return out


def _variational_groups(result: Any, num_samples: int, seed: int | None, chains: int = 1) -> dict[str, Any]:
    """The groups of a variational fit, read from the replay pass of ``num_samples`` draws at ``seed``."""
    structure = result.structure
    found = replay(result, num_samples, seed)
    observed = list(found.observed)
    if found.no_log_lik is not None and observed:
        warnings.warn(f"to_arviz: no log_likelihood group; pointwise log-likelihoods need each observation's "
                      f"discrete latents summed out independently ({found.no_log_lik})", InferenceWarning,
                      stacklevel=4)
    dims_of: dict[str, list[str]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, value in found.draws.items():
        shapes[name] = tuple(value.shape[1:])
        dims_of[name] = _site_dims(structure, name, shapes[name])
    for name, value in found.observed.items():
        shapes[name] = tuple(value.shape)
        dims_of[name] = _site_dims(structure, name, shapes[name])
    coords = _label_coords(result, dims_of, shapes)
    attrs = _attrs(result)
    chain = ["chain", "draw"]

    groups: dict[str, Any] = {}
    groups["posterior"] = _dataset(
        {n: (chain + dims_of[n], _split(_numpy(v), chains)) for n, v in found.draws.items()}, coords, attrs)
    if found.log_lik is not None and observed:
        groups["log_likelihood"] = _dataset(
            {o: (chain + _site_dims(structure, o, tuple(v.shape[1:])), _split(v, chains))
             for o, v in found.log_lik.items()}, coords, attrs)
    groups["posterior_predictive"] = _dataset(
        {o: (chain + dims_of[o], _split(_numpy(found.predictive[o]), chains)) for o in observed}, coords, attrs)
    groups["observed_data"] = _dataset(
        {o: (dims_of[o], _numpy(v)) for o, v in found.observed.items()}, coords, attrs)
    stats = {"lp": (chain, _split(found.lp, chains))}
    if found.log_q is not None:
        stats["log_q"] = (chain, _split(found.log_q, chains))
        stats["log_weight"] = (chain, _split(found.log_weight, chains))
    groups["sample_stats"] = _dataset(stats, coords, attrs)
    return groups


# ---------------------------------------------------------------------------------------------------- EM
def _generic(name: str, array: np.ndarray) -> list[str]:
    return [f"{name}_dim_{i}" for i in range(array.ndim)]


def _chain_dims(structure: Any, name: str, shape: tuple[int, ...]) -> list[str]:
    """Dims of a padded batch of sequences: (plate of that size, ``time``, ``<name>_dim_i``...)."""
    dims = [f"{name}_dim_{i}" for i in range(len(shape))]
    if len(shape) >= 2:
        plate = next((p for p in structure.plates.values() if p.size == shape[0]), None)
        dims[0] = _plate_dim_name(plate.name) if plate is not None else dims[0]
        dims[1] = "time"
    return dims


def _laplace_groups(result: Any, num_samples: int, seed: int | None, chains: int, coords: dict, attrs: dict,
                    pointwise: tuple[str, list[str]] | None) -> dict[str, Any]:
    """``posterior``: draws of the Laplace approximation at the estimate; ``log_likelihood``: log p(x_i | theta_s)."""
    approximation = laplace(result)
    if not approximation.positive_definite:  # laplace() has warned
        return {}
    draws = approximation.sample(num_samples, result.seed if seed is None else seed)
    attrs = {**attrs, "posterior": LAPLACE_LABEL, "seed_of_draws": int(result.seed if seed is None else seed)}
    chain = ["chain", "draw"]
    groups = {"posterior": _dataset(
        {n: (chain + _generic(n, _numpy(v[0])), _split(_numpy(v), chains)) for n, v in draws.items()}, {}, attrs)}
    if pointwise is not None:
        log_lik = pointwise_log_likelihood(result, draws)
        name, dims = pointwise
        if log_lik is not None and tuple(log_lik.shape[1:]) == tuple(result.log_likelihood_per_point.shape):
            groups["log_likelihood"] = _dataset({name: (chain + dims, _split(_numpy(log_lik), chains))}, coords,
                                                attrs)
    return groups


def _em_groups(result: Any, num_samples: int, seed: int | None, chains: int) -> dict[str, Any]:
    structure = result.structure
    attrs = _attrs(result)
    bic, aic = result.bic(), result.aic()
    attrs.update({
        "log_likelihood": float(result.log_likelihood),
        "bic": float(bic),
        "aic": float(aic),
        "n_iter": int(result.n_iter),
        "n_parameters": int(result.n_parameters),
        "n_samples": int(result.n_samples),
        "closed_form": int(bool(result.closed_form)),
    })
    observed: dict[str, torch.Tensor] = {}
    dims_of: dict[str, list[str]] = {}
    for site in structure.observed_sites:
        argument = site.argument or site.name
        value = result.data.kwargs.get(argument)
        if not isinstance(value, torch.Tensor):
            continue
        if tuple(value.shape) == tuple(site.shape):
            observed[site.name] = value
            dims_of[site.name] = _site_dims(structure, site.name, tuple(value.shape))
        elif argument not in observed:  # one argument feeding many sites (a chain x[:, t]): keep it whole
            observed[argument] = value
            dims_of[argument] = _chain_dims(structure, argument, tuple(value.shape))
    shapes = {n: tuple(v.shape) for n, v in observed.items()}

    groups: dict[str, Any] = {}
    point = {n: (_generic(n, _numpy(v)), _numpy(v)) for n, v in result.params.items()}
    groups["point_estimate"] = _dataset(point, {}, attrs)

    resp = {}
    for name, r in result.responsibilities.items():
        array = _numpy(r)
        site = structure.sites.get(name)
        batch = tuple(site.batch_shape) if site is not None else ()
        if batch and tuple(array.shape[:-1]) == batch:
            dims = _site_dims(structure, name, batch) + [f"{name}_state"]
        elif site is None and array.ndim == 3:  # a hidden Markov chain: (sequence, time, state)
            dims = _chain_dims(structure, name, array.shape[:-1]) + [f"{name}_state"]
        else:
            dims = _generic(name, array)
        resp[name] = (dims, array)
        dims_of.setdefault(name, dims[:-1])
        shapes.setdefault(name, tuple(array.shape[:-1]))
    coords = _label_coords(result, dims_of, shapes)
    groups["responsibilities"] = _dataset(resp, coords, attrs)

    assignments = {}
    for name, a in result.map_assignments().items():
        array = _numpy(a)
        dims = dims_of.get(name) if tuple(array.shape) == shapes.get(name) else None
        assignments[name] = (dims or _generic(name, array), array)
    groups["map_assignments"] = _dataset(assignments, coords, attrs)

    history = np.asarray(result.history, dtype=np.float64)
    groups["em_history"] = _dataset({"mean_log_likelihood": (["iteration"], history)},
                                    {"iteration": np.arange(len(history))}, attrs)
    per_point = result.log_likelihood_per_point
    point_dims = None
    if per_point is not None and observed:
        first = next(iter(observed))
        array = _numpy(per_point)
        dims = dims_of[first][: array.ndim] if tuple(array.shape) == shapes[first][: array.ndim] else None
        point_dims = dims or _generic(first, array)
        groups["pointwise_log_likelihood"] = _dataset({first: (point_dims, array)}, coords, attrs)
    if result.params and num_samples:
        groups.update(_laplace_groups(result, num_samples, seed, chains, coords, attrs,
                                      (first, point_dims) if point_dims is not None else None))
    if observed:
        groups["observed_data"] = _dataset(
            {n: (dims_of[n], _numpy(v)) for n, v in observed.items()}, coords, attrs)
    return groups


# ---------------------------------------------------------------------------------------------------- netCDF
def save_netcdf(idata: Any, path: str) -> str:
    """Write every group to one netCDF file (engine h5netcdf)."""
    return arviz_compat.to_netcdf(idata, path)


def load_netcdf(path: str) -> Any:
    """Read a file written by :func:`save_netcdf` fully into memory (the file is closed afterwards)."""
    return arviz_compat.from_netcdf(path)
