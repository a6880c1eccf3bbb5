"""Export of fit results to ArviZ: the one module of ppl_lvm that calls ArviZ or xarray.

``to_inference_data(result)`` turns a variational fit (svi / meanfield / iwae / renyi) into groups

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

and an EM fit into ``point_estimate`` (the fitted parameters; no fake one-draw posterior), ``responsibilities``
(p(z | x) per discrete site), ``map_assignments``, ``em_history`` (mean log-likelihood per iteration),
``pointwise_log_likelihood`` (log p(x_i) when available) and ``observed_data``; the log-likelihood, BIC, AIC,
convergence and iteration count are attributes of ``point_estimate``.

Dimension names: a site's batch dimensions are named after its plates (``len(x)`` becomes ``x_index``, other plate
names are sanitised), remaining dimensions ``<site>_dim_<i>``.

Written for ArviZ 0.23 (``az.InferenceData``); with ArviZ 1.x the same groups become an ``xarray.DataTree``.
"""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.mcmc.util import TraceEinsumEvaluator
from pyro.poutine.util import site_is_subsample

from .handlers import enum_dims, enumerating, replay_trace

__all__ = ["to_inference_data", "save_netcdf", "load_netcdf", "arviz_major_version", "importance_log_weights",
           "pointwise_log_weights", "psis_khat", "psis_khat_points", "ratios_vary"]

_ARVIZ_REFACTOR_NOTICE = r"(?s).*ArviZ is undergoing a major refactor"


def _az() -> Any:
    """Import ArviZ, silencing exactly its import-time refactor notice (a FutureWarning in 0.2x)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ARVIZ_REFACTOR_NOTICE, category=FutureWarning)
        import arviz

    return arviz


def arviz_major_version() -> int:
    return int(_az().__version__.split(".")[0])


def _xr() -> Any:
    import xarray

    return xarray


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


def _label_coords(result: Any, dims_of: dict[str, list[str]], shapes: dict[str, tuple[int, ...]]) -> dict:
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
    xr = _xr()
    used = {d for dims, _ in variables.values() for d in dims}
    return xr.Dataset(
        dict(variables.items()),
        coords={k: v for k, v in coords.items() if k in used},
        attrs=dict(attrs or {}),
    )


def _attrs(result: Any) -> dict:
    import ppl_lvm

    attrs = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "creation_library": "ppl_lvm",
        "creation_library_version": getattr(ppl_lvm, "__version__", "0"),
        "method": str(result.method),
        "guide": str(result.guide_name),
        "steps": int(result.steps),
        "converged": int(bool(result.converged)),
        "seed": int(result.seed),
    }
    return attrs


def _make(groups: dict[str, Any]) -> Any:
    """Assemble the groups: ``az.InferenceData`` on ArviZ 0.x, an ``xarray.DataTree`` on ArviZ 1.x."""
    az = _az()
    if arviz_major_version() < 1:
        return az.InferenceData(**groups)
    xr = _xr()  # pragma: no cover - ArviZ 1.x
    return xr.DataTree.from_dict({f"/{k}": v for k, v in groups.items()})  # pragma: no cover


# ---------------------------------------------------------------------------------------------------- SVI / IWAE
class _LogJoint(TraceEinsumEvaluator):
    """log p(x, theta) with the enumerated sites contracted exactly (Markov chains included).

    As ``TraceEnum_ELBO``: an enumerated site enters with its unmasked log-probability (a masked, padded step of a
    chain still sums to one over its states), everything else with the masked one.
    """

    def _get_log_factors(self, model_trace: poutine.Trace) -> OrderedDict:
        model_trace.compute_log_prob()
        model_trace.pack_tensors()
        log_probs: OrderedDict = OrderedDict()
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample" and not site_is_subsample(site):
                enumerated = site["infer"].get("_enumerate_dim") is not None
                term = site["packed"]["unscaled_log_prob" if enumerated else "log_prob"]
                log_probs.setdefault(self.ordering[name], []).append(term)
        return log_probs


class _Unsupported(Exception):
    pass


def _pointwise(trace: poutine.Trace, obs: str, enumerated: list[str], structure: Any) -> torch.Tensor:
    """log p(x_i | draw) of one observed site, the discrete latents it depends on summed out exactly."""
    nesting = structure.max_plate_nesting
    node = trace.nodes[obs]
    terms = [node["log_prob"]]
    dims = enum_dims(node["log_prob"], nesting)
    enum_nodes = {n: trace.nodes[n] for n in enumerated if n in trace.nodes}
    site_dim: dict[str, set[int]] = {n: enum_dims(nd["value"], nesting) for n, nd in enum_nodes.items()}
    seen: dict[int, str] = {}
    for name, ds in site_dim.items():
        for d in ds:
            if d in seen:  # an enumeration dim reused (a Markov chain): not a plain sum
                raise _Unsupported(f"discrete sites '{seen[d]}' and '{name}' share an enumeration dim")
            seen[d] = name
    included: set[str] = set()
    changed = True
    while changed:  # the discrete sites the observation depends on, directly or through other discrete sites
        changed = False
        for name, nd in enum_nodes.items():
            if name not in included and site_dim[name] & dims:
                included.add(name)
                terms.append(nd["unscaled_log_prob"])  # unmasked, as TraceEnum_ELBO: states sum to one
                dims |= enum_dims(nd["unscaled_log_prob"], nesting)
                changed = True
    obs_plates = set(structure.sites[obs].plates) if obs in structure.sites else set()
    for name in included:
        info = structure.sites.get(name)
        if info is not None and not set(info.plates) <= obs_plates:
            raise _Unsupported(f"discrete site '{name}' lies in a plate the observation '{obs}' is not in")
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    if total.dim() > nesting:
        total = torch.logsumexp(total, dim=tuple(range(total.dim() - nesting))) if dims else total.reshape(
            total.shape[total.dim() - nesting:]
        )
    batch = tuple(structure.sites[obs].batch_shape) if obs in structure.sites else tuple(node["fn"].batch_shape)
    while total.dim() > len(batch) and total.shape[0] == 1:
        total = total[0]
    return torch.broadcast_to(total, batch)


def _log_q(result: Any, values: dict[str, torch.Tensor]) -> float | None:
    """log q(theta) of the guide at a draw, when the guide samples exactly the replayed sites (no helper sites)."""
    if "delta" in str(result.guide_name).lower() or "map" in str(result.guide_name).lower():
        return None
    trace = poutine.trace(poutine.replay(result.guide, trace=replay_trace(values))).get_trace(**result.data.kwargs)
    sites = [n for n, nd in trace.nodes.items()
             if nd["type"] == "sample" and not nd["is_observed"] and not site_is_subsample(nd)]
    if set(sites) != set(values):
        return None
    return float(trace.log_prob_sum())


def to_inference_data(result: Any, num_samples: int = 500, seed: int | None = None, chains: int = 1,
                      restarts: bool | None = None) -> Any:
    """The fit as ArviZ groups (``az.InferenceData`` on ArviZ 0.x, ``xarray.DataTree`` on 1.x).

    Parameters
    ----------
    result : Result or EMResult
        A variational fit (svi, meanfield, iwae, renyi) or an EM fit (``num_samples``, ``seed``, ``chains`` unused).
    num_samples : int
        Draws from the fitted guide (per restart when the restarts are exported).
    seed : int, optional
        Seed of the draws (default: the fit's seed).
    chains : int
        The draws from q are independent; ``chains > 1`` splits them into that many equal chains (``num_samples``
        must be a multiple) so that ``az.summary``'s R-hat, which needs two chains, is computed; with one chain
        ArviZ reports R-hat as NaN and logs a shape-validation message.
    restarts : bool, optional
        For a fit with ``n_init > 1`` (default: True then): one chain per restart, the kept fit first, components
        aligned to it (:mod:`ppl_lvm.alignment`), so that R-hat compares the optima the restarts found. Pooling
        the chains of different optima inflates LOO: :func:`ppl_lvm.compare` exports the kept fit alone
        (``restarts=False``).
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not isinstance(chains, int) or chains < 1 or num_samples % chains:
        raise ValueError(f"chains must be a positive integer dividing num_samples={num_samples}, got {chains!r}")
    if result.method == "em":
        return _make(_em_groups(result))
    if restarts is None:
        restarts = len(getattr(result, "restarts", [])) > 1
    if restarts and len(getattr(result, "restarts", [])) > 1:
        if chains != 1:
            raise ValueError("with restarts exported as chains, leave chains=1 (each restart is one chain)")
        return _make(_restart_groups(result, num_samples, seed))
    return _make(_variational_groups(result, num_samples, seed, chains))


def _restart_groups(result: Any, num_samples: int, seed: int | None) -> dict[str, Any]:
    """One chain per restart, the kept fit first, the posterior's components aligned to it."""
    from .alignment import align_draw_sets, ordered_restarts

    xr = _xr()
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


def _variational_groups(result: Any, num_samples: int, seed: int | None, chains: int = 1, light: bool = False,
                        pointwise_ll: bool = True) -> dict[str, Any]:
    """The groups of a variational fit. ``light``: draw only the guide's sites (enumerated discrete latents are
    not drawn) and skip the posterior predictive; ``pointwise_ll=False`` skips the log_likelihood group."""
    from .runtime import run_scope

    model = result._require_model()
    structure = result.structure
    nesting = structure.max_plate_nesting
    enumerated = list(result.enumerated)
    kwargs = result.data.kwargs
    observed = [s.name for s in structure.observed_sites]

    draws = result.guide_draws(num_samples, seed=seed) if light else result.sample_posterior(num_samples, seed=seed)
    replayed = [n for n in draws if n not in enumerated]

    pointwise: dict[str, list[torch.Tensor]] = {o: [] for o in observed}
    lp: list[float] = []
    log_q: list[float | None] = []
    observed_values: dict[str, torch.Tensor] = {}
    unsupported: str | None = None
    with result.activated(), torch.no_grad(), run_scope(result.guide):
        result._prepare_guide()
        pyro.set_rng_seed(result.seed if seed is None else seed)
        for s in range(num_samples):
            values = {n: draws[n][s] for n in replayed}
            fn = poutine.replay(enumerating(model, enumerated) if enumerated else model, trace=replay_trace(values))
            if enumerated:
                fn = poutine.enum(fn, first_available_dim=-1 - nesting)
            trace = poutine.trace(fn).get_trace(**kwargs)
            trace.compute_log_prob()
            if s == 0:
                observed_values = {o: trace.nodes[o]["value"] for o in observed}
            if unsupported is None and pointwise_ll:
                try:
                    for o in observed:
                        pointwise[o].append(_pointwise(trace, o, enumerated, structure))
                except _Unsupported as exc:
                    unsupported = str(exc)
            if enumerated:  # log p(x, theta) with the enumerated sites contracted exactly (also Markov chains)
                lp.append(float(_LogJoint(trace, True, nesting).log_prob(trace)))
            else:
                lp.append(float(trace.log_prob_sum()))
            log_q.append(_log_q(result, values))
    if unsupported is not None and pointwise_ll:
        from .errors import InferenceWarning

        warnings.warn(f"to_arviz: no log_likelihood group; pointwise log-likelihoods need each observation's "
                      f"discrete latents summed out independently ({unsupported})", InferenceWarning, stacklevel=3)

    dims_of: dict[str, list[str]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, value in list(draws.items()) + list(observed_values.items()):
        shapes[name] = tuple(value.shape[1:]) if name in draws else tuple(value.shape)
        dims_of[name] = _site_dims(structure, name, shapes[name])
    coords = _label_coords(result, dims_of, shapes)
    attrs = _attrs(result)
    chain = ["chain", "draw"]

    groups: dict[str, Any] = {}
    groups["posterior"] = _dataset(
        {n: (chain + dims_of[n], _split(_numpy(v), chains)) for n, v in draws.items()}, coords, attrs)
    if unsupported is None and observed and pointwise_ll:
        ll = {}
        for o in observed:
            values = torch.stack(pointwise[o])
            ll[o] = (chain + _site_dims(structure, o, tuple(values.shape[1:])), _split(_numpy(values), chains))
        groups["log_likelihood"] = _dataset(ll, coords, attrs)
    if not light:
        predictive = result.posterior_predictive(num_samples, seed=seed)
        groups["posterior_predictive"] = _dataset(
            {o: (chain + dims_of[o], _split(_numpy(predictive[o]), chains)) for o in observed if o in predictive},
            coords, attrs)
    groups["observed_data"] = _dataset(
        {o: (dims_of[o], _numpy(v)) for o, v in observed_values.items()}, coords, attrs)
    stats = {"lp": (chain, _split(np.asarray(lp, dtype=np.float64), chains))}
    if all(q is not None for q in log_q):
        q = _split(np.asarray(log_q, dtype=np.float64), chains)
        stats["log_q"] = (chain, q)
        stats["log_weight"] = (chain, stats["lp"][1] - q)
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


def _em_groups(result: Any) -> dict[str, Any]:
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
    if per_point is not None and observed:
        first = next(iter(observed))
        array = _numpy(per_point)
        dims = dims_of[first][: array.ndim] if tuple(array.shape) == shapes[first][: array.ndim] else None
        groups["pointwise_log_likelihood"] = _dataset(
            {first: (dims or _generic(first, array), array)}, coords, attrs)
    if observed:
        groups["observed_data"] = _dataset(
            {n: (dims_of[n], _numpy(v)) for n, v in observed.items()}, coords, attrs)
    return groups


# ---------------------------------------------------------------------------------------------------- netCDF
def save_netcdf(idata: Any, path: str) -> str:
    """Write every group to one netCDF file (engine h5netcdf)."""
    if arviz_major_version() < 1:
        return idata.to_netcdf(str(path), engine="h5netcdf")
    idata.to_netcdf(str(path), engine="h5netcdf")  # pragma: no cover - ArviZ 1.x (DataTree)
    return str(path)  # pragma: no cover


def load_netcdf(path: str) -> Any:
    """Read a file written by :func:`save_netcdf` fully into memory (the file is closed afterwards)."""
    az = _az()
    if arviz_major_version() < 1:
        with az.rc_context({"data.load": "eager"}):
            return az.from_netcdf(str(path), engine="h5netcdf")
    xr = _xr()  # pragma: no cover - ArviZ 1.x (DataTree)
    with xr.open_datatree(str(path), engine="h5netcdf") as tree:  # pragma: no cover
        return tree.load()  # pragma: no cover



# ---------------------------------------------------------------------------------------------------- diagnostics
def importance_log_weights(result: Any, num_samples: int = 1000, seed: int | None = None,
                           pointwise: bool = False) -> np.ndarray | None:
    """log w_s = log p(x, theta_s) - log q(theta_s) over draws from the guide (discrete locals summed out).

    Parameters
    ----------
    result : Result
        A variational fit.
    num_samples : int
        Draws S from the guide.
    seed : int, optional
        Seed of the draws (default: the fit's seed).
    pointwise : bool
        False: the joint weights ``(S,)``, the ``log_weight`` of :func:`to_inference_data`'s ``sample_stats`` (the
        same draws when no discrete latent is enumerated). True: the per-point weights ``(S, N)``,
        log w_is = log p(x_i, z_is) - log q(z_is | x_i) over the N points of the data plate, whose sum over i is
        the joint weight; available only when the weights factorise over the points (every latent local, see
        :func:`pointwise_log_weights`), None otherwise.

    Returns
    -------
    ndarray or None
        None also when the guide has no density for its draws (``delta``, guides with helper sites).
    """
    if not isinstance(pointwise, bool):
        raise ValueError(f"pointwise must be True or False, got {pointwise!r}")
    if pointwise:
        return pointwise_log_weights(result, num_samples, seed)
    stats = _variational_groups(result, num_samples, seed, light=True, pointwise_ll=False)["sample_stats"]
    if "log_weight" not in stats:
        return None
    return np.asarray(stats["log_weight"].values, dtype=np.float64).reshape(-1)


def data_plate(result: Any) -> str | None:
    """The plate of the data points: the outermost plate every observed site lies in (None when there is none)."""
    structure = result.structure
    observed = structure.observed_sites
    if not observed:
        return None
    common = set.intersection(*(set(s.plates) for s in observed))
    dims = [(structure.plates[p].dim, p) for p in common if p in structure.plates and structure.plates[p].dim is not None]
    return min(dims)[1] if dims else None


def _point_term(term: torch.Tensor, nesting: int, dim: int, n: int) -> torch.Tensor | None:
    """A site's log-probability summed over every plate dim but the data plate's (enumeration dims, left of the
    plates, kept); None when it has no data-plate dim (a global factor: the weights do not factorise)."""
    if term.dim() < nesting:
        term = term.reshape((1,) * (nesting - term.dim()) + tuple(term.shape))
    if term.shape[dim] != n:
        if not bool((term == 0).all()):
            return None
        term = torch.zeros(term.shape[: term.dim() - nesting] + (1,) * nesting, dtype=term.dtype)
    others = [d for d in range(-nesting, 0) if d != dim]
    return term.sum(dim=others, keepdim=True) if others else term


def pointwise_log_weights(result: Any, num_samples: int = 1000, seed: int | None = None) -> np.ndarray | None:
    """Per-point importance log-weights ``(S, N)``: log w_is = log p(x_i, z_is) - log q(z_is | x_i).

    For a model whose latents are all local (inside the data plate: PPCA, a VAE, a mixture's assignments) the
    joint weight log p(x, z_s) - log q(z_s | x) is the sum over the N points of these, each site's log-probability
    summed over its dims other than the data plate's. Enumerated discrete latents are summed out exactly per point
    (they must lie in the data plate alone). The draws are those of :func:`importance_log_weights`.

    Returns None when the weights do not factorise over points (a latent or a factor outside the data plate, a
    discrete latent in a plate nested in the data plate, a Markov chain of discrete latents, no data plate) or
    when the guide has no density for its draws (``delta``, guides with helper sites).
    """
    from .runtime import run_scope

    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if "delta" in str(result.guide_name).lower() or "map" in str(result.guide_name).lower():
        return None
    model = result._require_model()
    structure = result.structure
    plate = data_plate(result)
    if plate is None:
        return None
    dim, n = structure.plates[plate].dim, structure.plates[plate].size
    nesting = structure.max_plate_nesting
    enumerated = list(result.enumerated)
    for name in enumerated:
        info = structure.sites.get(name)
        if info is None or set(info.plates) != {plate}:
            return None
    kwargs = result.data.kwargs
    draws = result.guide_draws(num_samples, seed=seed)
    replayed = [name for name in draws if name not in enumerated]
    out = np.empty((num_samples, n), dtype=np.float64)
    with result.activated(), torch.no_grad(), run_scope(result.guide):
        result._prepare_guide()
        pyro.set_rng_seed(result.seed if seed is None else seed)
        for s in range(num_samples):
            values = {name: draws[name][s] for name in replayed}
            fn = poutine.replay(enumerating(model, enumerated) if enumerated else model, trace=replay_trace(values))
            if enumerated:
                fn = poutine.enum(fn, first_available_dim=-1 - nesting)
            trace = poutine.trace(fn).get_trace(**kwargs)
            trace.compute_log_prob()
            total = torch.zeros((1,) * nesting, dtype=torch.float64)
            seen: set[int] = set()
            for node in trace.nodes.values():
                if node["type"] != "sample" or site_is_subsample(node):
                    continue
                is_enum = node["infer"].get("_enumerate_dim") is not None
                if is_enum:
                    ds = enum_dims(node["value"], nesting)
                    if ds & seen:  # an enumeration dim reused: a Markov chain, not a product over points
                        return None
                    seen |= ds
                term = _point_term(node["unscaled_log_prob" if is_enum else "log_prob"].double(), nesting, dim, n)
                if term is None:
                    return None
                total = total + term
            if total.dim() > nesting:
                total = torch.logsumexp(total, dim=tuple(range(total.dim() - nesting)))
            guide_trace = poutine.trace(poutine.replay(result.guide, trace=replay_trace(values))).get_trace(**kwargs)
            guide_trace.compute_log_prob()
            sites = [name for name, node in guide_trace.nodes.items()
                     if node["type"] == "sample" and not node["is_observed"] and not site_is_subsample(node)]
            if set(sites) != set(values):
                return None
            for name in sites:
                term = _point_term(guide_trace.nodes[name]["log_prob"].double(), nesting, dim, n)
                if term is None or term.dim() > nesting:
                    return None
                total = total - term
            if total.numel() != n:
                return None
            out[s] = total.reshape(-1).cpu().numpy()
    return out


def psis_khat(log_weights: np.ndarray) -> float:
    """Pareto k-hat of PSIS applied to importance log-ratios ``log_weights`` (one dimension of draws)."""
    log_weights = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    if arviz_major_version() < 1:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto distribution")
            _, khat = _az().psislw(log_weights)
        return float(np.asarray(khat))
    from arviz_stats.base import array_stats  # pragma: no cover - ArviZ 1.x: the sign convention is flipped

    _, khat = array_stats.psislw(-log_weights)  # pragma: no cover
    return float(np.asarray(khat))  # pragma: no cover


RATIO_RTOL = 1e-6


def ratios_vary(log_weights: np.ndarray) -> np.ndarray:
    """Whether importance log-ratios ``(S, ...)`` vary over the draws by more than rounding: a spread above
    ``RATIO_RTOL`` times their magnitude (per trailing coordinate). Ratios constant to rounding mean q is the exact
    posterior there; PSIS fitted to their rounding noise gives any k-hat, up to inf (measured on PPCA with its
    exact posterior as guide: joint k-hat inf from a spread of 1e-13)."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    finite = np.where(np.isfinite(log_weights), log_weights, 0.0)
    scale = np.maximum(1.0, np.max(np.abs(finite), axis=0))
    spread = np.ptp(log_weights, axis=0)
    return ~(spread <= RATIO_RTOL * scale)  # a NaN or inf spread counts as varying


def psis_khat_points(log_weights: np.ndarray) -> np.ndarray:
    """Pareto k-hat per point of per-point importance log-ratios ``(S, N)``: an array ``(N,)``, NaN for a point
    whose ratios are constant to rounding (:func:`ratios_vary`: q is exact there)."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    if log_weights.ndim != 2 or log_weights.shape[0] < 2:
        raise ValueError(f"log_weights must be (draws >= 2, points), got shape {log_weights.shape}")
    varies = ratios_vary(log_weights)
    khat = np.full(log_weights.shape[1], np.nan)
    if varies.any():
        _, k = _psis(np.ascontiguousarray(log_weights[:, varies].T))
        khat[varies] = k
    return khat


# ---------------------------------------------------------------------------------------------------- summaries
SUMMARY_COLUMNS = ["mean", "sd", "hdi_3%", "hdi_97%", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]


def summarize_draws(draws: dict[str, np.ndarray]) -> Any:
    """``az.summary`` of independent draws ``{name: (S, *shape)}``, unrounded, one row per scalar coordinate.

    The draws are split into two chains so that ArviZ computes the Monte Carlo errors and effective sample sizes
    (with one chain it logs a shape-validation message); their ``r_hat`` is only a check of the sampler and is
    returned as the column ``r_hat`` for the caller to replace.
    """
    import pandas as pd

    if not draws:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    data = {}
    for name, array in draws.items():
        array = np.asarray(array, dtype=np.float64)
        if array.shape[0] < 8:
            raise ValueError(f"summaries need at least 8 draws, got {array.shape[0]} for '{name}'")
        usable = array.shape[0] - array.shape[0] % 2
        data[name] = _split(array[:usable], 2)
    with warnings.catch_warnings():
        # a coordinate that never varies (e.g. a point estimate) has no sd: ArviZ warns while dividing by zero
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        table = _az().summary(data, kind="all", round_to="none")
    return table[SUMMARY_COLUMNS]


def rhat_of_chains(chains: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rank-normalised split R-hat (``az.rhat``) of ``{name: (chains, draws, *shape)}``, per coordinate."""
    out = {}
    for name, array in chains.items():
        array = np.asarray(array, dtype=np.float64)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning)
            value = _az().rhat({name: array})[name].values
        out[name] = np.asarray(value, dtype=np.float64)
    return out


# ---------------------------------------------------------------------------------------------------- LOO
def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(top, axis=axis) + np.log(np.sum(np.exp(a - top), axis=axis))


def _psis(log_ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSIS of log ratios ``(N, S)``: normalised smoothed log weights ``(N, S)`` and k-hat ``(N,)``."""
    if arviz_major_version() >= 1:  # pragma: no cover - ArviZ 1.x: the sign convention is flipped
        from arviz_stats.base import array_stats

        return array_stats.psislw(-log_ratios)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto distribution")
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        lw, khat = _az().psislw(log_ratios)
    return np.asarray(lw, dtype=np.float64), np.atleast_1d(np.asarray(khat, dtype=np.float64))


def psis_loo(log_lik: np.ndarray, log_weight: np.ndarray | None = None) -> dict[str, Any]:
    """PSIS-LOO from pointwise log-likelihoods ``(S, N)`` of draws theta_s.

    Without ``log_weight`` the draws are taken as posterior draws (``az.loo``'s estimate, reff = 1: the draws are
    independent). With ``log_weight`` = log p(x, theta_s) - log q(theta_s) the draws come from an approximation
    q and each leave-one-out importance ratio is p(theta_s | x_-i) / q(theta_s), proportional to
    exp(log_weight_s - log p(x_i | theta_s)): the approximate-posterior correction of Magnusson et al. (2019),
    smoothed by PSIS per point. ``lppd`` (behind ``p_loo``) then uses the PSIS-smoothed full-data weights
    p(theta_s | x) / q(theta_s).

    Returns ``elpd_loo``, ``se``, ``p_loo``, ``elpd_i`` (N,), ``pareto_k`` (N,), ``good_k`` and ``warning``
    (some k above ``good_k`` = min(1 - 1 / log10 S, 0.7)).
    """
    log_lik = np.asarray(log_lik, dtype=np.float64)
    if log_lik.ndim != 2 or log_lik.shape[0] < 2:
        raise ValueError(f"log_lik must be (draws >= 2, points), got shape {log_lik.shape}")
    s, n = log_lik.shape
    ll = log_lik.T  # (N, S)
    if log_weight is None:
        lw, khat = _psis(-ll)
        lppd_i = _logsumexp(ll, axis=1) - np.log(s)
    else:
        log_weight = np.asarray(log_weight, dtype=np.float64).reshape(-1)
        if log_weight.shape != (s,):
            raise ValueError(f"log_weight must have one value per draw ({s}), got shape {log_weight.shape}")
        lw, khat = _psis(log_weight[None, :] - ll)
        full, _ = _psis(log_weight[None, :])
        lppd_i = _logsumexp(full + ll, axis=1)
    elpd_i = _logsumexp(lw + ll, axis=1)
    good_k = min(1 - 1 / np.log10(s), 0.7)
    return {
        "elpd_loo": float(elpd_i.sum()),
        "se": float(np.sqrt(n * np.var(elpd_i))),
        "p_loo": float(lppd_i.sum() - elpd_i.sum()),
        "elpd_i": elpd_i,
        "pareto_k": khat,
        "good_k": float(good_k),
        "warning": bool(np.any(khat > good_k)),
    }


def loo_inputs(result: Any, num_samples: int, seed: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Pointwise log-likelihoods ``(S, N)`` (every observed site's points concatenated) and the log weights
    log p(x, theta_s) - log q(theta_s) ``(S,)`` (None when the guide has no density) of the kept fit's draws.

    Raises ``ValueError`` when the model has no per-observation log-likelihood (a Markov chain of discrete latents).
    """
    from .errors import InferenceWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="to_arviz: no log_likelihood group", category=InferenceWarning)
        try:
            groups = _variational_groups(result, num_samples, seed, light=True)
        except InferenceWarning as exc:
            raise ValueError(f"no PSIS-LOO for this fit: {exc}") from exc
    if "log_likelihood" not in groups:
        raise ValueError("no PSIS-LOO for this fit: the model has no observed site")
    ll = groups["log_likelihood"]
    log_lik = np.concatenate([ll[v].values.reshape(num_samples, -1) for v in ll.data_vars], axis=1)
    stats = groups["sample_stats"]
    log_weight = stats["log_weight"].values.reshape(-1) if "log_weight" in stats else None
    return log_lik, log_weight
