"""What an engine hands back: the fitted state and its history, as plain values.

Engines (``ppl_lvm.backends``, ``ppl_lvm.em``) return an :class:`Outcome`; the results layer
(:mod:`ppl_lvm.results`) builds the user-facing :class:`~ppl_lvm.Result` from it. The layers between them
(posterior draws, diagnostics, export) read outcomes and dispatch on their type, never on a method's name.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyro
import torch

from .data import BoundData
from .model import Model, ModelStructure

__all__ = ["EMOutcome", "MCMCOutcome", "Outcome", "ResponsibilitiesOnDemand", "StochasticEMOutcome"]


@dataclass
class Outcome:
    """A finished fit of a gradient method (or the common part of any fit).

    Attributes
    ----------
    method : str
        The method name the fit ran under.
    losses : ndarray
        The loss at every step (for EM: minus the total log-likelihood at every iteration).
    converged : bool
        Whether the fit settled by its method's rule.
    steps : int
        Steps (EM: iterations) taken.
    seed : int
        The seed the fit used.
    guide_name : str
        Which guide was used.
    model, guide, data, structure
        The compiled model, the guide callable, the bound data and the model's structure.
    param_state : dict
        The Pyro parameter-store state at the end of the fit.
    options : dict
        The options the fit ran with (after validation and defaults).
    enumerated : list of str
        Discrete latent sites summed out exactly.
    interrupted : bool
        Whether Ctrl-C ended the fit (or its restarts) early.
    restarts : list
        Every restart when ``n_init > 1`` (this fit included, in the order run); empty for a single fit.
    """

    method: str
    losses: np.ndarray
    converged: bool
    steps: int
    seed: int
    guide_name: str
    model: Model | None
    guide: Any
    data: BoundData
    structure: ModelStructure | None
    param_state: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    enumerated: list[str] = field(default_factory=list)
    interrupted: bool = False
    restarts: list[Any] = field(default_factory=list, repr=False)
    #: answers computed once per fit by the layers above (whether draws vectorise, replayed draws); not saved
    cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False, init=False)

    def __getstate__(self) -> dict[str, Any]:
        # the cache holds closures and replayed traces, recomputed on demand: not pickled, as it is not saved
        return {**self.__dict__, "cache": {}}

    @contextmanager
    def activated(self) -> Iterator[None]:
        """Make this fit's parameters the live Pyro parameter store (restored on exit)."""
        with pyro.get_param_store().scope(self.param_state):
            yield

    def constrained_params(self) -> dict[str, torch.Tensor]:
        """Every parameter of the fit by name, constrained, detached copies."""
        with self.activated():
            store = pyro.get_param_store()
            return {name: store[name].detach().clone() for name in list(store.keys())}

    def field_values(self) -> dict[str, Any]:
        """The values of the fields set at construction, by name, as stored (values computed on access are not
        computed: a result is built from them)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}


@dataclass
class EMOutcome(Outcome):
    """A finished exact-enumeration EM fit: the point estimate and the exact log-likelihood.

    Attributes
    ----------
    log_likelihood : float
        Exact log p(x) at the final parameters (every latent summed out).
    history : ndarray
        Mean (per data point) log-likelihood at each iteration's E-step.
    n_iter : int
        Iterations of this fit.
    responsibilities : dict of str -> Tensor
        Posterior probabilities of each discrete latent site (a :class:`ResponsibilitiesOnDemand` when the fit
        does not hold them: ``rows``).
    log_likelihood_per_point : Tensor, optional
        log p(x_i) for every data point, when the data sit in one plate (recomputed on access from ``rows`` when
        the fit does not hold them).
    closed_form : bool
        Whether the closed-form kernels ran (a recognised mixture or chain) or the generic route.
    n_parameters, n_samples : int
        Free parameters and data points, as BIC counts them.
    pattern : object, optional
        The recognised mixture or chain (``None`` on the generic route).
    streams : dict
        Arguments read chunk by chunk (``lvm.chunks``), by name; ``data`` holds their first chunk.
    rows : object, optional
        What recomputes every row's values on access (:class:`ppl_lvm.em.rows.MixtureRows`: ``n``, ``latent``,
        ``responsibilities()``, ``log_likelihood_per_point()``) when the fit does not hold them
        (``keep_responsibilities``); None when it holds them.
    """

    log_likelihood: float = math.nan
    history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_iter: int = 0
    responsibilities: dict[str, torch.Tensor] = field(default_factory=dict)
    log_likelihood_per_point: torch.Tensor | None = field(default=None, repr=False)
    closed_form: bool = False
    n_parameters: int = 0
    n_samples: int = 0
    pattern: Any = None
    streams: dict = field(default_factory=dict)
    rows: Any = field(default=None, repr=False, compare=False)

    def field_values(self) -> dict[str, Any]:
        # log_likelihood_per_point as held (None when recomputed from rows), not recomputed
        return {f.name: self.__dict__.get("_per_point") if f.name == "log_likelihood_per_point" else getattr(self, f.name)
                for f in fields(self) if f.init}


def _get_per_point(self: EMOutcome) -> torch.Tensor | None:
    held = self.__dict__.get("_per_point")
    rows = self.__dict__.get("rows")
    return rows.log_likelihood_per_point() if held is None and rows is not None else held


def _set_per_point(self: EMOutcome, value: torch.Tensor | None) -> None:
    self.__dict__["_per_point"] = value


# the field, held or recomputed from ``rows`` on access (the dataclass's __init__ sets it through the property)
EMOutcome.log_likelihood_per_point = property(_get_per_point, _set_per_point, doc="log p(x_i) of every data point.")


class ResponsibilitiesOnDemand(Mapping):
    """The ``responsibilities`` of a fit that does not hold them: ``{site: (N, K) tensor}`` whose tensor is
    recomputed on access by ``rows`` (the same tensor again while the caller holds the previous one).

    Parameters
    ----------
    rows : object
        See ``EMOutcome.rows``.
    """

    def __init__(self, rows: Any) -> None:
        self.rows = rows

    def __getitem__(self, name: str) -> torch.Tensor:
        if name != self.rows.latent:
            raise KeyError(name)
        return self.rows.responsibilities()

    def __iter__(self) -> Iterator[str]:
        return iter((self.rows.latent,))

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return f"ResponsibilitiesOnDemand({self.rows.latent!r}: {self.rows.n} rows, recomputed on access)"


@dataclass
class MCMCOutcome(Outcome):
    """A finished Markov chain Monte Carlo run: the draws of every sampled latent site, chain by chain.

    The outcome's ``guide`` hands these draws to the posterior layer (it returns stored draws, it has no density),
    so every query of a fit (posterior draws, the replay pass, the ArviZ export) reads them as it reads a guide's.

    Attributes
    ----------
    samples : dict of str -> Tensor
        Draws of every continuous latent site, shape ``(num_chains, num_draws, *site)`` (enumerated discrete
        latents are not sampled: they are summed out, and drawn from their exact conditional when queried).
    sample_stats : dict of str -> ndarray
        Per-draw statistics of the sampler, shape ``(num_chains, num_draws)``: ``diverging``, ``step_size``,
        ``acceptance_rate``, ``potential_energy`` (minus the log density in the sampler's unconstrained space).
    num_chains, num_draws : int
        Chains and draws per chain (after warm-up).
    warmup_steps : int
        Warm-up (adaptation) steps per chain, discarded.
    """

    samples: dict[str, torch.Tensor] = field(default_factory=dict)
    sample_stats: dict[str, np.ndarray] = field(default_factory=dict)
    num_chains: int = 0
    num_draws: int = 0
    warmup_steps: int = 0

    @property
    def total_draws(self) -> int:
        """Draws of all chains together (``num_chains * num_draws``)."""
        return self.num_chains * self.num_draws


@dataclass
class StochasticEMOutcome(Outcome):
    """A finished Monte Carlo EM (``mcem``) or variational EM (``vem``) fit: point estimates of the parameters.

    Attributes
    ----------
    history : ndarray
        Per data point, at the start and after each iteration (``len(history) == n_iter + 1``): for ``vem`` the
        ELBO, for ``mcem`` the importance-sampling estimate of log p(x); each estimated from one fixed set of base
        draws (the same seed every iteration), so its changes are those of the parameters, not of the draws.
    history_se : ndarray
        The Monte Carlo standard error of each ``history`` value (per data point).
    sample_sizes : ndarray
        Draws per data point of each iteration's E-step (``mcem``: the growing schedule; ``vem``: constant).
    n_iter : int
        Iterations run.
    """

    history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    history_se: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sample_sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    n_iter: int = 0
