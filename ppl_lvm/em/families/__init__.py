"""Emission families for exact EM: log-density matrices and closed-form M-steps.

Every family exposes the same small interface (see
:class:`ppl_lvm.em.mixture.EmissionFamily`):

``precompute(X) -> cache``
    Data-only quantities reused every iteration (design matrices, ``lgamma``
    terms).  Optional: every method computes it when ``cache`` is omitted.
``log_prob(X, params, cache=None) -> (N, K)``
    ``log p(x_n | component k)``.
``m_step(X, resp, params=None, reg=None, cache=None) -> params``
    Weighted maximum likelihood given responsibilities (mixtures) or state
    posteriors (HMMs).  ``params`` are the previous parameters, used only to
    repair degenerate components.  ``reg`` is family specific (see classes).
    It is ``m_step_statistics(statistics(resp, cache), ...)``:
``summary(X) -> dict``
    Additive data-only sums of a chunk (``n``, ``sum``, symbol counts): the
    common centring of every chunk and the fallback of an empty component.
``statistics(resp, cache, params=None) -> dict``
    Additive expected sufficient statistics of a chunk; summed over chunks
    and ranks in one place, :mod:`ppl_lvm.em.accumulate`.
``m_step_statistics(stats, params, reg, cache, data) -> params``
    The M-step from the totals; ``data`` (``LocalPass`` in memory,
    ``accumulate.DataPass`` for a stream) reads the data again in the rare
    cases that need it (cancelling moments, empty components).
``n_parameters(params) -> int``
    Free emission parameters (mixing weights / transitions not included).
``sample(params, component_indices, generator) -> tensor``
``complete_params(params) -> params``
    Validate user parameters, convert them to tensors and fill derived entries.

Parameters are plain ``dict[str, Tensor]`` named as scikit-learn / hmmlearn
name them (without the trailing underscore).
"""

from __future__ import annotations

from typing import Any

from .base import Params
from .discrete import Bernoulli, Categorical, Poisson
from .gaussian import COVARIANCE_TYPES, Gaussian
from .regression import LinearGaussian

__all__ = [
    "COVARIANCE_TYPES",
    "Bernoulli",
    "Categorical",
    "Gaussian",
    "LinearGaussian",
    "Params",
    "Poisson",
    "get_family",
]


def get_family(name: str, **kwargs: Any) -> Any:
    """Family instance by name: gaussian, bernoulli, categorical or poisson."""
    families = {
        "gaussian": Gaussian,
        "bernoulli": Bernoulli,
        "categorical": Categorical,
        "poisson": Poisson,
    }
    try:
        return families[name.lower()](**kwargs)
    except KeyError:
        raise ValueError(f"unknown family {name!r}; choose from {sorted(families)}") from None
