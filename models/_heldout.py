"""The importance-weighted log-likelihood estimate that the ready-made VAEs and belief nets share."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._checks import positive_int

__all__ = ["importance_log_likelihood"]

#: ``log_weights(rows, K, generator)``: the log weights of ``K`` guide draws per row, shape ``(K, len(rows))``
LogWeights = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def importance_log_likelihood(log_weights: LogWeights, x: torch.Tensor, num_particles: int, batch_size: int,
                              seed: int) -> torch.Tensor:
    """IWAE_K of every row of ``x``: ``log (1/K) sum_k exp(log_weights(rows, K, generator)[k])``, shape ``(N,)``.

    Parameters
    ----------
    log_weights : callable
        ``log_weights(rows, K, generator)`` draws ``K`` latents per row from the guide with ``generator`` and returns
        their log importance weights ``log p(rows, z_k) - log q(z_k | rows)``, shape ``(K, len(rows))``.
    x : torch.Tensor
        The rows, shape ``(N, data_dim)`` (checked by the caller).
    num_particles : int
        ``K``, the guide draws per row.
    batch_size : int
        Rows per call of ``log_weights`` (memory grows with ``K * batch_size``).
    seed : int
        Seed of the one generator every draw comes from, so that an estimate is repeatable.

    Returns
    -------
    torch.Tensor
        Shape ``(N,)``, without gradient: a lower bound on ``log p(x_n)`` in expectation that tightens as ``K`` grows.

    Raises
    ------
    ValueError
        When ``num_particles`` or ``batch_size`` is not a positive integer.
    """
    k = positive_int("num_particles", num_particles)
    batch_size = positive_int("batch_size", batch_size)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        return torch.cat([torch.logsumexp(log_weights(rows, k, generator), dim=0) - math.log(k)
                          for rows in x.split(batch_size)])
