"""Local latents (one value per data point, as in PPCA or a VAE): KL(q(z_i | x_i) || p(z_i)) per latent dimension
averaged over the data, and the active units of Burda et al. 2016 (dimensions whose posterior mean E_q[z_d | x_i]
varies across the data with variance > ``ACTIVE_UNIT_THRESHOLD``), read from a replay pass."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .draws import Replay

__all__ = ["ACTIVE_UNIT_THRESHOLD", "local_latent_stats"]

ACTIVE_UNIT_THRESHOLD = 0.01


def _factorised(fn: Any, shape: tuple[int, ...]) -> Any | None:
    """The elementwise distribution under ``Independent`` wrappers, when it covers the whole site shape."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    if not isinstance(fn, torch.distributions.Distribution) or tuple(fn.event_shape) != ():
        return None
    try:
        return fn.expand(torch.Size(shape)) if tuple(fn.batch_shape) != tuple(shape) else fn
    except (NotImplementedError, RuntimeError, ValueError):
        return None


def _first(value: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The first draw's ``shape``-sized block of a value that may carry a dim of draws in front."""
    if value.dim() < len(shape) or tuple(value.shape[value.dim() - len(shape):]) != shape:
        return None
    return value.reshape((-1,) + shape)[0]


def local_latent_stats(structure: Any, found: Replay) -> tuple[dict, dict, dict]:
    """KL per dimension, Var over data of E_q[z_d], and active units, per local continuous latent site (from the
    first draw's distributions of the pass; its draws when q has no closed-form mean or KL)."""
    kl_per_dim, variance, active = {}, {}, {}
    for info in structure.local_continuous_latents:
        if info.name not in found.local_fns:
            continue
        name, shape, nb = info.name, tuple(info.shape), len(info.batch_shape)
        q_fn, p_fn, q_shape, p_shape = found.local_fns[name]
        q, p = _factorised(q_fn, q_shape), _factorised(p_fn, p_shape)
        mean = None
        try:
            m = _first(q_fn.mean, shape)
            mean = m if m is not None and torch.isfinite(m).all() else None
        except NotImplementedError:
            pass
        kl = None
        if q is not None and p is not None:
            try:
                kl = _first(torch.distributions.kl_divergence(q, p), shape)
            except (NotImplementedError, RuntimeError):
                kl = None
        if kl is None or mean is None:
            z = found.draws[name].to(torch.get_default_dtype())
            if mean is None:
                mean = z.mean(0)
            if kl is None and q is not None and p is not None:  # Monte Carlo, per element
                try:
                    kl = (q.log_prob(z) - p.log_prob(z)).mean(0)
                except (RuntimeError, ValueError):
                    kl = None
        rows = int(np.prod(shape[:nb])) if nb else 1
        mean_rows = mean.detach().reshape(rows, -1).cpu().double().numpy()
        var = mean_rows.var(axis=0, ddof=1) if rows > 1 else np.zeros(mean_rows.shape[1])
        variance[name] = var
        active[name] = int((var > ACTIVE_UNIT_THRESHOLD).sum())
        if kl is not None:
            kl_per_dim[name] = kl.detach().reshape(rows, -1).cpu().double().numpy().mean(axis=0)
        else:
            kl_per_dim[name] = np.full(mean_rows.shape[1], np.nan)
    return kl_per_dim, variance, active
