"""Initial parameters for mixture and HMM EM.

All randomness goes through a ``torch.Generator`` so a seed fixes the result.
Initial parameters are obtained as sklearn does: build initial
responsibilities, then run one M-step on them.

Methods
-------
``"kmeans"`` (default)
    k-means++ seeding followed by a few Lloyd iterations; hard responsibilities.
``"k-means++"``
    k-means++ seeding, each point assigned to its nearest seed.  (sklearn puts
    a single point in each component, which yields covariances equal to
    ``reg_covar``; assigning every point gives usable covariances.)
``"random"``
    Uniform random responsibilities normalised per row (sklearn's "random").
``"random_from_data"``
    K distinct random points as one-hot responsibilities (sklearn's).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .families import Categorical

__all__ = [
    "initialize_hmm",
    "initialize_mixture",
    "kmeans",
    "kmeans_plusplus",
    "make_generator",
    "nearest_center_responsibilities",
    "params_from_responsibilities",
    "random_responsibilities",
]

Params = dict[str, torch.Tensor]
INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")


def make_generator(seed: int | torch.Generator | None = None) -> torch.Generator:
    """A CPU ``torch.Generator`` from a seed (None = nondeterministic seed)."""
    if isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def _features(X: Any, family: Any, cache: dict | None) -> torch.Tensor:
    """Float feature matrix used for seeding (one-hot for categorical data)."""
    if cache is None:
        cache = family.precompute(X)
    data = cache["X"]
    if isinstance(family, Categorical):
        n_cat = family.n_categories or int(data.max()) + 1
        return torch.nn.functional.one_hot(data, n_cat).to(family.dtype)
    return data


def _sq_dist(points: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Squared distances (M, N); exact differences, not the norm expansion."""
    out = torch.empty((points.shape[0], X.shape[0]), dtype=X.dtype)
    for m in range(points.shape[0]):
        diff = X - points[m]
        out[m] = (diff * diff).sum(-1)
    return out


def kmeans_plusplus(
    X: torch.Tensor,
    n_clusters: int,
    generator: torch.Generator | None = None,
    n_local_trials: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; sklearn's variant).

    Parameters
    ----------
    X : (N, D) float tensor
    n_clusters : int
    generator : torch.Generator, optional
    n_local_trials : int, optional
        Candidates tried per centre (default ``2 + log(K)`` as sklearn).

    Returns
    -------
    centers : (K, D)
    indices : (K,) int64 rows of X used as centres
    """
    n = X.shape[0]
    if n == 0:
        raise ValueError("cannot seed from an empty data set")
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(n_clusters))
    indices = torch.empty(n_clusters, dtype=torch.long)
    first = int(torch.randint(n, (1,), generator=generator))
    indices[0] = first
    closest = _sq_dist(X[first : first + 1], X)[0]
    potential = closest.sum()
    for c in range(1, n_clusters):
        if float(potential) <= 0:
            # Every point coincides with a centre already: reuse random points.
            indices[c] = int(torch.randint(n, (1,), generator=generator))
            continue
        rand = torch.rand(n_local_trials, generator=generator, dtype=X.dtype) * potential
        cand = torch.searchsorted(torch.cumsum(closest, 0), rand).clamp_(max=n - 1)
        dist = torch.minimum(closest.unsqueeze(0), _sq_dist(X[cand], X))
        pots = dist.sum(-1)
        best = int(torch.argmin(pots))
        potential = pots[best]
        closest = dist[best]
        indices[c] = cand[best]
    return X[indices].clone(), indices


def nearest_center_responsibilities(X: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """One-hot (N, K) responsibilities of the nearest centre."""
    labels = torch.argmin(_sq_dist(centers, X), dim=0)
    return torch.nn.functional.one_hot(labels, centers.shape[0]).to(X.dtype)


def kmeans(
    X: torch.Tensor,
    n_clusters: int,
    generator: torch.Generator | None = None,
    max_iter: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means++ seeding plus Lloyd iterations; returns (centers, labels)."""
    centers, _ = kmeans_plusplus(X, n_clusters, generator)
    labels = torch.argmin(_sq_dist(centers, X), dim=0)
    for _ in range(max_iter):
        onehot = torch.nn.functional.one_hot(labels, n_clusters).to(X.dtype)
        counts = onehot.sum(0)
        sums = onehot.T @ X
        # An emptied cluster keeps its centre rather than dividing by zero.
        centers = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp_min(1).unsqueeze(1), centers)
        new_labels = torch.argmin(_sq_dist(centers, X), dim=0)
        if bool((new_labels == labels).all()):
            break
        labels = new_labels
    return centers, labels


def random_responsibilities(
    n_samples: int,
    n_components: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Uniform random responsibilities normalised per row (sklearn's "random")."""
    resp = torch.rand((n_samples, n_components), generator=generator, dtype=dtype)
    return resp / resp.sum(1, keepdim=True)


def params_from_responsibilities(
    X: Any,
    family: Any,
    resp: torch.Tensor,
    reg: float | None = None,
    *,
    cache: dict | None = None,
) -> Params:
    """One M-step from initial responsibilities, weights included (as sklearn).

    Weights are ``nk / sum(nk)``; sklearn divides by ``n_samples`` instead,
    which is the same for row-normalised responsibilities but leaves
    unnormalised weights after ``random_from_data`` (one point per component).
    """
    if cache is None:
        cache = family.precompute(X)
    params = family.m_step(X, resp, None, reg, cache=cache)
    nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps
    params["weights"] = nk / nk.sum()
    return params


def _initial_responsibilities(
    X: Any,
    family: Any,
    n_components: int,
    init: str,
    generator: torch.Generator,
    cache: dict,
) -> torch.Tensor:
    feats = _features(X, family, cache)
    n = feats.shape[0]
    dtype = feats.dtype if feats.is_floating_point() else torch.float64
    if init == "random":
        return random_responsibilities(n, n_components, generator, dtype)
    if init == "random_from_data":
        if n_components > n:
            raise ValueError("random_from_data needs n_components <= n_samples")
        idx = torch.randperm(n, generator=generator)[:n_components]
        resp = torch.zeros((n, n_components), dtype=dtype)
        resp[idx, torch.arange(n_components)] = 1.0
        return resp
    if init == "k-means++":
        centers, _ = kmeans_plusplus(feats, n_components, generator)
        return nearest_center_responsibilities(feats, centers)
    if init == "kmeans":
        _, labels = kmeans(feats, n_components, generator)
        return torch.nn.functional.one_hot(labels, n_components).to(dtype)
    raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")


def initialize_mixture(
    X: Any,
    family: Any,
    n_components: int,
    init: str = "kmeans",
    *,
    seed: int | torch.Generator | None = None,
    params: Params | None = None,
    reg: float | None = None,
    cache: dict | None = None,
) -> Params:
    """Initial mixture parameters.

    Parameters
    ----------
    X : data in the family's format
    family : emission family instance
    n_components : int
    init : {"kmeans", "k-means++", "random", "random_from_data"}
    seed : int or torch.Generator, optional
        Fixes the initialisation.
    params : dict, optional
        User-given parameters; returned completed (``weights`` default to
        uniform) and no random initialisation is done.
    reg : float, optional
        Family regularisation for the initial M-step.

    Returns
    -------
    dict: ``"weights"`` (K,) plus the family's parameters.
    """
    if params is not None:
        out = family.complete_params(dict(params))
        if "weights" not in out:
            first = next(v for v in out.values() if isinstance(v, torch.Tensor))
            out["weights"] = torch.full((n_components,), 1.0 / n_components, dtype=first.dtype)
        return out
    if cache is None:
        cache = family.precompute(X)
    gen = make_generator(seed)
    resp = _initial_responsibilities(X, family, n_components, init, gen, cache)
    return params_from_responsibilities(X, family, resp, reg, cache=cache)


def initialize_hmm(
    X: Any,
    family: Any,
    n_components: int,
    init: str = "kmeans",
    *,
    seed: int | torch.Generator | None = None,
    params: Params | None = None,
    reg: float | None = None,
    cache: dict | None = None,
    self_transition: float = 0.0,
) -> Params:
    """Initial HMM parameters: emissions as for a mixture, uniform start.

    The transition matrix is ``self_transition * I + (1 - self_transition) / K``
    (uniform by default: the first E-step then behaves like a mixture's and
    EM learns the transitions from posterior co-occurrences).
    User-given ``params`` are completed and returned.
    """
    if params is not None:
        out = family.complete_params(dict(params))
    else:
        if cache is None:
            cache = family.precompute(X)
        out = initialize_mixture(X, family, n_components, init, seed=seed, reg=reg, cache=cache)
        if isinstance(family, Categorical) and init in ("kmeans", "k-means++"):
            # clusters of one-hot symbols give (nearly) one-hot emission rows, a fixed point EM hardly leaves:
            # blend each row half-and-half with the overall symbol frequencies
            freq = _features(X, family, cache).mean(0)
            out["probs"] = 0.5 * out["probs"] + 0.5 * freq.to(out["probs"].dtype)
    out.pop("weights", None)
    dtype = next(
        (v.dtype for v in out.values() if isinstance(v, torch.Tensor) and v.is_floating_point()),
        torch.float64,
    )
    k = n_components
    if "startprob" not in out:
        out["startprob"] = torch.full((k,), 1.0 / k, dtype=dtype)
    if "transmat" not in out:
        out["transmat"] = self_transition * torch.eye(k, dtype=dtype) + (1.0 - self_transition) / k * torch.ones(
            (k, k), dtype=dtype
        )
    out["startprob"] = torch.as_tensor(out["startprob"], dtype=dtype)
    out["transmat"] = torch.as_tensor(out["transmat"], dtype=dtype)
    return out
