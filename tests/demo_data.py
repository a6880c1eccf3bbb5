"""Data with known structure, shared by the tests (the models that fit them are in ``demo_models.py``).

Every generator takes its sizes and seed as arguments and draws from its own generator (``torch.Generator`` or
``np.random.default_rng``) in a fixed order, so a test gets the same numbers on every run whatever ran before it.
Generators without a ``dtype`` argument (or with ``dtype=None``) draw in the default dtype at the time of the call:
the same seed gives different numbers in float32 and float64, so call them where the test's dtype is already set.
"""

from __future__ import annotations

import numpy as np
import torch

# three well separated centres in the plane (test_restarts, test_alignment)
THREE_CENTERS = ((-4.0, 0.0), (4.0, 0.0), (0.0, 5.0))


def clusters(centers=THREE_CENTERS, per_cluster=10, seed=0, dtype=torch.float64):
    """``per_cluster`` rows of N(c, I) for each centre ``c`` in turn (the rows come ordered by cluster)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.as_tensor(centers, dtype=dtype)
    d = centers.shape[-1]
    return torch.cat([torch.randn(per_cluster, d, generator=g, dtype=dtype) + c for c in centers])


def two_clusters(n=12, seed=0, shift=3.0):
    """``n`` rows of N(-shift, I) then ``n`` rows of N(+shift, I) in the plane, in the default dtype."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(n, 2, generator=g) - shift, torch.randn(n, 2, generator=g) + shift])
    return x.to(torch.get_default_dtype())


def normal_groups(sizes=(150, 100), locs=(-2.5, 2.0), scales=(1.0, 0.7), seed=0, dtype=None, d=None):
    """A mixture ordered by group: ``sizes[k]`` draws of ``scales[k] * N(0, I) + locs[k]``, one-dimensional (shape
    (n,)) when ``d`` is None, else rows of ``d`` columns (shape (n, d))."""
    g = torch.Generator().manual_seed(seed)
    groups = zip(sizes, locs, scales, strict=True)
    shape = (lambda n: (n,)) if d is None else (lambda n: (n, d))
    return torch.cat([s * torch.randn(shape(n), generator=g, dtype=dtype) + m for n, m, s in groups])


def labelled_clusters(centers, n, seed=0, scale=1.0):
    """NumPy rows with uniformly random labels: ``centers[label] + N(0, scale^2)`` (``scale`` per column or one)."""
    rng = np.random.default_rng(seed)
    centers = np.asarray(centers, dtype=float)
    labels = rng.integers(0, len(centers), size=n)
    return centers[labels] + rng.normal(scale=scale, size=(n, centers.shape[1]))


def correlated_clusters(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """``k`` clusters of ``n // k`` rows in ``d`` dimensions, each with its own random linear map (the EM benchmark's
    data; bench/bench_em.py keeps its own copy of this generator)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    parts = [rng.normal(size=(n // k, d)) @ rng.normal(size=(d, d)) * 0.5 + c for c in centers]
    return np.concatenate(parts)


def ppca_data(n=20, d=5, q=2, seed=0, noise=0.5, dtype=None):
    """Rows of z W^T + noise * eps with W (d, q), z (n, q), eps (n, d) standard normal, drawn in that order."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, q, generator=g, dtype=dtype)
    z = torch.randn(n, q, generator=g, dtype=dtype)
    return z @ W.T + noise * torch.randn(n, d, generator=g, dtype=dtype)
