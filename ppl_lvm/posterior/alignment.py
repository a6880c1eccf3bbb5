"""Label switching: put the components of mixtures and the states of hidden Markov chains in one order.

A mixture's likelihood is invariant to relabelling its K components, so independent restarts (or fits) that find
the same optimum can list its components in different orders, and R-hat, summaries and exports would compare
component 1 of one with component 2 of another. Here every fit is matched to a reference by the optimal assignment
(``scipy.optimize.linear_sum_assignment``) minimising

    cost[i, j] = sum over component-carrying arrays a of  || a_ref[i] - a[j] ||^2 / var(a_ref)

where a component-carrying array is a model parameter or a global latent whose leading dimension is K (weights,
means, scales, Cholesky factors, emission probabilities); a K x K array whose rows sum to one (a transition
matrix) is permuted along both axes and enters the cost through its diagonal. K is the support size of the
model's enumerated discrete latents (all of them must agree), or the last axis of an EM fit's responsibilities.

Limits: a parameter that merely happens to have K rows (a data dimension equal to K) is permuted too; pass
``names=`` to restrict the arrays. Variational fits are aligned at the level of their draws (a guide's
unconstrained parameters, e.g. a stick-breaking simplex, cannot be permuted in general); EM fits and fits whose
unknowns are all ``lvm.param`` sites are aligned at the level of their parameters by :func:`align_result`.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pyro.poutine as poutine
import torch
from torch.distributions import transform_to

from ..outcome import EMOutcome
from ..runtime import run_scope
from . import queries
from .draws import replay

__all__ = ["component_count", "component_axes", "match_components", "permute", "align_result",
           "aligned_restart_draws", "align_chains", "align_draw_sets", "align_draws", "ordered_restarts", "relabel"]


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.numpy().astype(np.float64) if value.is_floating_point() else value.numpy()
    return np.asarray(value)


def component_count(result: Any) -> int | None:
    """K: the number of mixture components / chain states of ``result``'s model, or None when there is none.

    An EM fit reports it in its responsibilities; otherwise the model is run once (parameters of ``result``,
    latents from the guide) and the support sizes of its discrete latent sites (or the state count of a
    ``DiscreteHMM`` site) are read. None when the model has no discrete latent or the sizes disagree.
    """
    responsibilities = getattr(result, "responsibilities", None)
    if responsibilities:
        sizes = {int(r.shape[-1]) for r in responsibilities.values()}
        return sizes.pop() if len(sizes) == 1 else None
    structure = result.structure
    if structure is None or result.model is None:
        return None
    if not structure.discrete_latents and not any("HMM" in s.distribution for s in structure.observed_sites):
        return None
    if "component_count" not in result.cache:  # one run of the model per fit
        result.cache["component_count"] = _component_count(result)
    return result.cache["component_count"]


def _component_count(result: Any) -> int | None:
    kwargs = result.data.kwargs
    with result.activated(), torch.no_grad(), torch.random.fork_rng(devices=[]), run_scope(result.guide):
        queries.prepare_guide(result)
        guide_trace = poutine.trace(result.guide).get_trace(**kwargs)
        trace = poutine.trace(poutine.replay(result.model, trace=guide_trace)).get_trace(**kwargs)
    sizes = set()
    for node in trace.nodes.values():
        if node["type"] != "sample":
            continue
        fn = node["fn"]
        while hasattr(fn, "base_dist") and not hasattr(fn, "transition_logits"):
            fn = fn.base_dist
        if hasattr(fn, "transition_logits"):  # DiscreteHMM
            sizes.add(int(fn.transition_logits.shape[-1]))
        elif not node["is_observed"] and getattr(fn, "has_enumerate_support", False):
            sizes.add(int(fn.enumerate_support(expand=False).shape[0]))
    return sizes.pop() if len(sizes) == 1 else None


def component_axes(value: np.ndarray, k: int) -> tuple[int, ...]:
    """The axes of ``value`` that index components: ``(0,)`` when its leading size is K, ``(0, 1)`` for a K x K
    row-stochastic matrix (transitions), ``()`` otherwise."""
    value = np.asarray(value)
    if value.ndim == 0 or value.shape[0] != k or k < 2:
        return ()
    if value.ndim == 2 and value.shape[1] == k and np.all(value >= 0) and np.allclose(value.sum(-1), 1.0, atol=1e-5):
        return (0, 1)
    return (0,)


def _features(arrays: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Per component-carrying array, a (K, F) matrix of features of each component."""
    out = {}
    for name, value in arrays.items():
        value = np.asarray(value, dtype=np.float64)
        axes = component_axes(value, k)
        if not axes:
            continue
        out[name] = np.diagonal(value)[:, None] if axes == (0, 1) else value.reshape(k, -1)
    return out


def match_components(reference: dict[str, Any], other: dict[str, Any], k: int) -> np.ndarray:
    """The permutation ``perm`` such that component ``perm[i]`` of ``other`` matches component ``i`` of the reference.

    ``reference`` and ``other`` map names to arrays (parameters, posterior means); arrays whose leading size is
    K enter the cost (see the module's docstring). The identity when no array carries components.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    ref = _features({n: _numpy(v) for n, v in reference.items()}, k)
    oth = _features({n: _numpy(v) for n, v in other.items() if n in reference}, k)
    cost = np.zeros((k, k))
    for name, a in ref.items():
        if name not in oth or oth[name].shape != a.shape:
            continue
        b = oth[name]
        scale = float(a.var()) + 1e-12
        cost += ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / scale
    from scipy.optimize import linear_sum_assignment  # imported here: scipy.optimize takes ~0.6 s to import

    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(k, dtype=np.int64)
    perm[rows] = cols
    return perm


def permute(value: Any, perm: np.ndarray, axes: tuple[int, ...]) -> Any:
    """``value`` with its component ``axes`` reordered by ``perm`` (a tensor stays a tensor)."""
    if isinstance(value, torch.Tensor):
        index = torch.as_tensor(perm, device=value.device)
        for axis in axes:
            value = value.index_select(axis, index)
        return value
    value = np.asarray(value)
    for axis in axes:
        value = np.take(value, perm, axis=axis)
    return value


def relabel(labels: Any, perm: np.ndarray) -> Any:
    """Discrete assignments in the reference's labels: old label ``perm[i]`` becomes ``i``.

    Labels may be floating point (a Bernoulli site's draws); the result keeps their dtype."""
    inverse = np.argsort(perm)
    if isinstance(labels, torch.Tensor):
        valid = labels >= 0  # -1 marks padding past a sequence's end
        mapped = torch.as_tensor(inverse, device=labels.device)[labels.clamp(min=0).long()].to(labels.dtype)
        return torch.where(valid, mapped, labels)
    labels = np.asarray(labels)
    return np.where(labels >= 0, inverse[np.clip(labels, 0, None).astype(np.int64)], labels).astype(labels.dtype)


# ---------------------------------------------------------------------------------------------------- results
def _point_arrays(result: Any) -> dict[str, np.ndarray]:
    names = (result.structure.model_param_names(result.params) if result.structure is not None
             else [n for n in result.params if "$$$" not in n])
    return {n: _numpy(result.params[n]) for n in names}


def align_result(result: Any, reference: Any, names: list[str] | None = None) -> Any:
    """A copy of ``result`` whose components are in the order of ``reference`` (same model, same K).

    Permutes the model parameters (constrained values and the parameter store's unconstrained state), the
    responsibilities and (for EM) the recorded data needed for assignments. Only for fits whose unknowns are all
    parameters (EM, or SVI with every latent enumerated); for variational fits with a guide over continuous
    latents use :func:`aligned_restart_draws`, which aligns draws.

    Raises
    ------
    ValueError
        If the fits differ in K, or ``result`` has a guide over continuous latents.
    """
    k = component_count(reference)
    if k is None or component_count(result) != k:
        raise ValueError("align_result needs two fits of a model with the same number K of components / states")
    if result.structure is not None and result.structure.continuous_latents and not isinstance(result, EMOutcome):
        raise ValueError(
            "align_result permutes parameters; this fit has a guide over continuous latents, whose variational "
            "parameters cannot be permuted in general. Use aligned_restart_draws (draws are aligned instead)."
        )
    ref_arrays, arrays = _point_arrays(reference), _point_arrays(result)
    if names is not None:
        ref_arrays = {n: v for n, v in ref_arrays.items() if n in names}
    perm = match_components(ref_arrays, arrays, k)
    aligned = copy.copy(result)
    aligned.restarts = []
    if np.array_equal(perm, np.arange(k)):
        return aligned
    state = {"params": dict(result.param_state["params"]), "constraints": dict(result.param_state["constraints"])}
    params = dict(result.params)
    for name in arrays:
        if names is not None and name not in names:
            continue
        axes = component_axes(arrays[name], k)
        if not axes:
            continue
        params[name] = permute(params[name], perm, axes)
        constraint = state["constraints"].get(name)
        with torch.no_grad():
            unconstrained = transform_to(constraint).inv(params[name]) if constraint is not None else params[name]
        state["params"][name] = unconstrained.detach().clone()
    aligned.params = params
    aligned.param_state = state
    responsibilities = getattr(result, "responsibilities", None)
    if responsibilities:
        aligned.responsibilities = {n: r[..., torch.as_tensor(perm)] for n, r in responsibilities.items()}
    return aligned


def align_draw_sets(result: Any, fits: list[Any], draws: list[dict[str, np.ndarray]],
                    leading: int = 1) -> list[dict[str, np.ndarray]]:
    """Align each fit's draws ``{name: (S, *site)}`` (``leading`` sample axes) to those of ``fits[0]``.

    The permutation of fit r is found from its posterior means and parameters against those of ``fits[0]``;
    discrete latents are relabelled, arrays whose leading site dimension is K permuted. Returns new dicts.
    """
    structure = result.structure
    k = component_count(result) if len(fits) > 1 else None
    if k is None:
        return draws
    means = []
    for fit, d in zip(fits, draws, strict=True):
        summary = {n: v.reshape((-1,) + v.shape[leading:]).mean(0) for n, v in d.items()
                   if n in structure.sites and not structure.sites[n].discrete}
        summary.update(_point_arrays(fit))
        means.append(summary)
    aligned = []
    for d, m in zip(draws, means, strict=True):
        perm = match_components(means[0], m, k)
        out = {}
        for name, value in d.items():
            if name in structure.sites and structure.sites[name].discrete:
                out[name] = relabel(value, perm)
            elif name in m:
                axes = component_axes(m[name], k)
                out[name] = permute(value, perm, tuple(a + leading for a in axes))
            else:
                out[name] = value
        aligned.append(out)
    return aligned


def align_draws(draws: dict[str, Any], k: int, reference: dict[str, Any] | None = None,
                max_iter: int = 10) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Undo label switching within a set of draws ``{name: (S, *site)}``: each draw is matched to a reference.

    The reference is the first draw, then the aligned draws' mean (iterated until no draw changes its
    permutation, at most ``max_iter`` passes), or ``reference`` when given (one pass). Arrays whose leading site
    dimension is K are permuted; others are left alone. A guide that is unimodal (mean-field normal) does not
    switch labels: the restarts need :func:`align_draw_sets`, not this. Useful for draws that do switch (MCMC,
    mixtures of guides, pooled restarts).

    Returns
    -------
    (aligned draws, permutations of shape (S, K))
    """
    arrays = {n: _numpy(v) for n, v in draws.items()}
    if not arrays:
        raise ValueError("align_draws needs at least one array of draws")
    s = next(iter(arrays.values())).shape[0]
    carrying = {n: v for n, v in arrays.items() if component_axes(v.mean(0), k)}
    perms = np.tile(np.arange(k), (s, 1))
    aligned = dict(arrays)
    target = reference if reference is not None else {n: v[0] for n, v in carrying.items()}  # start: draw 0
    for _ in range(max_iter if reference is None else 1):
        # each original draw is matched to the current target directly: no composition of permutations
        new = np.stack([match_components(target, {n: v[i] for n, v in carrying.items()}, k) for i in range(s)])
        changed = not np.array_equal(new, perms)
        perms = new
        for name, value in carrying.items():
            axes = component_axes(value.mean(0), k)
            aligned[name] = np.stack([permute(value[i], perms[i], axes) for i in range(s)])
        if not changed:
            break
        target = {n: aligned[n].mean(0) for n in carrying}
    return aligned, perms


def ordered_restarts(result: Any) -> list[Any]:
    """The kept fit first, then the other restarts in seed order (just the fit without restarts)."""
    if len(result.restarts) <= 1:
        return [result]
    return [result] + [r for r in result.restarts if r is not result]


def aligned_restart_draws(result: Any, num_samples: int, seed: int | None, names: list[str]
                          ) -> dict[str, np.ndarray]:
    """Draws of the global sites ``names`` from each restart's guide, aligned to the kept fit, as chains.

    Returns ``{name: (chains, num_samples, *site shape)}`` with the kept fit as chain 0 (one chain without
    restarts). ``seed=None``: each restart's own seed. Discrete latents among ``names`` are relabelled; other
    arrays carrying K components permuted. A replay pass already made at (num_samples, seed) is read (its guide
    draws are those of ``guide_draws``); otherwise only the guide runs.
    """
    fits = ordered_restarts(result)
    draws = []
    for fit in fits:
        fit_seed = int(fit.seed if seed is None else seed)
        cached = replay(fit, num_samples, fit_seed) if ("replay", num_samples, fit_seed) in fit.cache else None
        if cached is not None:
            sampled = {n: cached.draws[n] for n in names if n in cached.draws}
        else:
            sampled = queries.guide_draws(fit, num_samples, seed=fit_seed, names=names)
        missing = [n for n in names if n not in sampled]
        if missing:  # enumerated sites: drawn from their exact conditional by running the model
            full = replay(fit, num_samples, fit_seed).draws
            sampled.update({n: full[n] for n in missing if n in full})
        draws.append({n: _numpy(v) for n, v in sampled.items()})
    draws = align_draw_sets(result, fits, draws)
    return {n: np.stack([d[n] for d in draws]) for n in draws[0]}


def align_chains(result: Any, chains: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Markov chains ``{name: (chains, draws, *site)}`` of one fit with every chain's components put in the order
    of chain 0 (one permutation per chain, from its means, as :func:`align_draw_sets` aligns restarts).

    Chains of a mixture started apart settle on different labellings of the same posterior mode; aligned, their
    R-hat measures mixing within the mode. Draws that switch labels *within* a chain are left as they are.
    """
    count = next(iter(chains.values())).shape[0] if chains else 0
    if count < 2:
        return chains
    per_chain = [{n: v[c] for n, v in chains.items()} for c in range(count)]
    aligned = align_draw_sets(result, [result] * count, per_chain)
    return {n: np.stack([a[n] for a in aligned]) for n in chains}
