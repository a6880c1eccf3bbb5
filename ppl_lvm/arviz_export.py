"""Export of fit results to ArviZ groups and netCDF (ArviZ itself is reached through
:mod:`ppl_lvm.posterior.arviz_compat`).

``to_inference_data(result)`` turns a variational fit (svi / meanfield / iwae / renyi) into groups, every one read
from the same replay pass (:mod:`ppl_lvm.posterior.draws`) that :func:`ppl_lvm.diagnostics.diagnose` and
:func:`ppl_lvm.compare` read at the same number of draws and seed:

=========================  ==========================================================================================
``posterior``              draws of every latent site from the fitted guide, dims ``(chain, draw, *site dims)``;
                           discrete enumerated latents are drawn from their exact conditional given the draw
``log_likelihood``         per observed site, log p(x_i | theta_s) with every discrete latent summed out exactly,
                           dims ``(chain, draw, *batch dims of the site)``. Each site is marginalised on its own: a
                           discrete latent it shares with other observations is summed out per point. Omitted (with an
                           ``InferenceWarning``) when discrete latents form a Markov chain (enumeration dims reused),
                           where no per-observation factorisation exists; continuous latents are conditioned on, so
                           for local continuous latents (PPCA, VAE) it is log p(x_i | z_i,s, params)
``posterior_predictive``   replicated observations
``observed_data``          the data, with pandas index / column labels as coordinates
``sample_stats``           ``lp`` = log p(x, theta_s) (discrete latents contracted exactly, chains included),
                           ``log_q`` = log q(theta_s) and ``log_weight = lp - log_q`` when the guide samples the latent
                           sites themselves (not for ``delta`` or guides with helper sites such as ``fullrank``)
=========================  ==========================================================================================

An MCMC fit (``nuts``) gives the same groups from its chains' draws, ``(chain, draw)`` being the sampler's chains
(``az.summary`` / ``az.rhat`` / ``az.ess`` of the ``posterior`` are then R-hat and ESS across them; a mixture's
components are put in chain 0's order in each chain, as restarts are aligned), no
``log_q`` / ``log_weight`` (the draws have no density), and the sampler's ``diverging``, ``step_size`` and
``acceptance_rate`` per draw in ``sample_stats``;

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

import warnings
from typing import Any

import numpy as np
import torch

from .errors import InferenceWarning
from .outcome import EMOutcome, MCMCOutcome
from .posterior import arviz_compat
from .posterior import arviz_dims as ad
from .posterior.alignment import align_chains, align_draw_sets, ordered_restarts
from .posterior.draws import replay
from .posterior.laplace import laplace, pointwise_log_likelihood

__all__ = ["to_inference_data", "save_netcdf", "load_netcdf", "LAPLACE_LABEL"]

#: the ``posterior`` attribute of an EM fit's export: what its draws are
LAPLACE_LABEL = ("laplace approximation at the EM estimate: normal in each parameter's unconstrained coordinates, "
                 "covariance the inverse observed information (a flat prior there), not MCMC draws")


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
    if isinstance(result, MCMCOutcome):
        if restarts:
            raise ValueError("an MCMC fit has no restarts to export: its chains are the chains")
        return arviz_compat.make_groups(_mcmc_groups(result, num_samples, seed, chains))
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
        dims_of[name] = ad.site_dims(structure, name, shapes[name])
    for name, value in found.observed.items():
        shapes[name] = tuple(value.shape)
        dims_of[name] = ad.site_dims(structure, name, shapes[name])
    coords = ad.label_coords(result, dims_of, shapes)
    attrs = ad.attrs(result)
    chain = ["chain", "draw"]

    groups: dict[str, Any] = {}
    groups["posterior"] = ad.dataset(
        {n: (chain + dims_of[n], ad.split(ad.numpy(v), chains)) for n, v in found.draws.items()}, coords, attrs)
    if found.log_lik is not None and observed:
        groups["log_likelihood"] = ad.dataset(
            {o: (chain + ad.site_dims(structure, o, tuple(v.shape[1:])), ad.split(v, chains))
             for o, v in found.log_lik.items()}, coords, attrs)
    groups["posterior_predictive"] = ad.dataset(
        {o: (chain + dims_of[o], ad.split(ad.numpy(found.predictive[o]), chains)) for o in observed}, coords, attrs)
    groups["observed_data"] = ad.dataset(
        {o: (dims_of[o], ad.numpy(v)) for o, v in found.observed.items()}, coords, attrs)
    stats = {"lp": (chain, ad.split(found.lp, chains))}
    if found.log_q is not None:
        stats["log_q"] = (chain, ad.split(found.log_q, chains))
        stats["log_weight"] = (chain, ad.split(found.log_weight, chains))
    groups["sample_stats"] = ad.dataset(stats, coords, attrs)
    return groups


# ---------------------------------------------------------------------------------------------------- MCMC
def _mcmc_groups(result: MCMCOutcome, num_samples: int, seed: int | None, chains: int) -> dict[str, Any]:
    """The groups of an MCMC fit: ``num_samples`` draws evenly spaced over its chains, chain by chain."""
    if chains != result.num_chains:
        raise ValueError(f"chains={chains}: an MCMC fit exports its own {result.num_chains} chains; pass "
                         f"chains={result.num_chains} (result.to_arviz() does)")
    groups = _variational_groups(result, num_samples, seed, chains)
    post = groups["posterior"]
    aligned = align_chains(result, {n: v.values for n, v in post.data_vars.items()})
    groups["posterior"] = post.copy(data=aligned)
    index = np.arange(num_samples) * result.total_draws // num_samples  # as the stored draws are handed out
    stats = groups["sample_stats"]
    for name, values in result.sample_stats.items():
        stats[name] = (("chain", "draw"), ad.split(np.asarray(values).reshape(-1)[index], chains))
    stats.attrs.update({"num_chains": int(result.num_chains), "num_draws": int(result.num_draws),
                        "warmup_steps": int(result.warmup_steps)})
    groups["posterior"].attrs.update(stats.attrs)
    return groups


# ---------------------------------------------------------------------------------------------------- EM
def _generic(name: str, array: np.ndarray) -> list[str]:
    return [f"{name}_dim_{i}" for i in range(array.ndim)]


def _chain_dims(structure: Any, name: str, shape: tuple[int, ...]) -> list[str]:
    """Dims of a padded batch of sequences: (plate of that size, ``time``, ``<name>_dim_i``...)."""
    dims = [f"{name}_dim_{i}" for i in range(len(shape))]
    if len(shape) >= 2:
        plate = next((p for p in structure.plates.values() if p.size == shape[0]), None)
        dims[0] = ad.plate_dim_name(plate.name) if plate is not None else dims[0]
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
    groups = {"posterior": ad.dataset(
        {n: (chain + _generic(n, ad.numpy(v[0])), ad.split(ad.numpy(v), chains)) for n, v in draws.items()}, {}, attrs)}
    if pointwise is not None:
        log_lik = pointwise_log_likelihood(result, draws)
        name, dims = pointwise
        if log_lik is not None and tuple(log_lik.shape[1:]) == tuple(result.log_likelihood_per_point.shape):
            groups["log_likelihood"] = ad.dataset({name: (chain + dims, ad.split(ad.numpy(log_lik), chains))}, coords,
                                                attrs)
    return groups


def _em_groups(result: Any, num_samples: int, seed: int | None, chains: int) -> dict[str, Any]:
    structure = result.structure
    attrs = ad.attrs(result)
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
            dims_of[site.name] = ad.site_dims(structure, site.name, tuple(value.shape))
        elif argument not in observed:  # one argument feeding many sites (a chain x[:, t]): keep it whole
            observed[argument] = value
            dims_of[argument] = _chain_dims(structure, argument, tuple(value.shape))
    shapes = {n: tuple(v.shape) for n, v in observed.items()}

    groups: dict[str, Any] = {}
    point = {n: (_generic(n, ad.numpy(v)), ad.numpy(v)) for n, v in result.params.items()}
    groups["point_estimate"] = ad.dataset(point, {}, attrs)

    resp = {}
    for name, r in result.responsibilities.items():
        array = ad.numpy(r)
        site = structure.sites.get(name)
        batch = tuple(site.batch_shape) if site is not None else ()
        if batch and tuple(array.shape[:-1]) == batch:
            dims = ad.site_dims(structure, name, batch) + [f"{name}_state"]
        elif site is None and array.ndim == 3:  # a hidden Markov chain: (sequence, time, state)
            dims = _chain_dims(structure, name, array.shape[:-1]) + [f"{name}_state"]
        else:
            dims = _generic(name, array)
        resp[name] = (dims, array)
        dims_of.setdefault(name, dims[:-1])
        shapes.setdefault(name, tuple(array.shape[:-1]))
    coords = ad.label_coords(result, dims_of, shapes)
    groups["responsibilities"] = ad.dataset(resp, coords, attrs)

    assignments = {}
    for name, a in result.map_assignments().items():
        array = ad.numpy(a)
        dims = dims_of.get(name) if tuple(array.shape) == shapes.get(name) else None
        assignments[name] = (dims or _generic(name, array), array)
    groups["map_assignments"] = ad.dataset(assignments, coords, attrs)

    history = np.asarray(result.history, dtype=np.float64)
    groups["em_history"] = ad.dataset({"mean_log_likelihood": (["iteration"], history)},
                                    {"iteration": np.arange(len(history))}, attrs)
    per_point = result.log_likelihood_per_point
    point_dims = None
    if per_point is not None and observed:
        first = next(iter(observed))
        array = ad.numpy(per_point)
        dims = dims_of[first][: array.ndim] if tuple(array.shape) == shapes[first][: array.ndim] else None
        point_dims = dims or _generic(first, array)
        groups["pointwise_log_likelihood"] = ad.dataset({first: (point_dims, array)}, coords, attrs)
    if result.params and num_samples:
        groups.update(_laplace_groups(result, num_samples, seed, chains, coords, attrs,
                                      (first, point_dims) if point_dims is not None else None))
    if observed:
        groups["observed_data"] = ad.dataset(
            {n: (dims_of[n], ad.numpy(v)) for n, v in observed.items()}, coords, attrs)
    return groups


# ---------------------------------------------------------------------------------------------------- netCDF
def save_netcdf(idata: Any, path: str) -> str:
    """Write every group to one netCDF file (engine h5netcdf)."""
    return arviz_compat.to_netcdf(idata, path)


def load_netcdf(path: str) -> Any:
    """Read a file written by :func:`save_netcdf` fully into memory (the file is closed afterwards)."""
    return arviz_compat.from_netcdf(path)
