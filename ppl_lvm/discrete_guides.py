"""Amortised guides for discrete local latents: Bernoulli codes and categorical (one-hot) codes.

A discrete ``q(z | x)`` has no reparameterisation: ``method="svi"`` differentiates it by the score function
(Pyro's ``TraceGraph_ELBO``, with a baseline; see :mod:`ppl_lvm.backends.baselines`). A categorical guide can
instead be *relaxed* (``relaxed=True``): during the fit it draws from the Gumbel-softmax (Concrete) distribution
at a temperature ``tau``, a reparameterised density on the simplex whose draws approach one-hot vectors as
``tau -> 0`` (Jang, Gu and Poole 2017; Maddison, Mnih and Teh 2017), and the model's categorical prior at that
site is relaxed to the same temperature, so the fit maximises the ELBO of the relaxed model with pathwise
gradients. Outside a fit (posterior queries, ``result.elbo``) the relaxed guide is the categorical
``q(z | x) = OneHotCategorical(logits)``: the argmax of a Gumbel-softmax draw has exactly that law, whatever the
temperature, so the bounds reported are those of the discrete model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger

from .guides import Amortized
from .runtime import current_fit

__all__ = ["AmortizedBernoulli", "AmortizedCategorical"]


class AmortizedBernoulli(Amortized):
    """An amortised guide of independent bits: ``encoder(data) -> logits``, ``q(z | x) = Bernoulli(logits)``.

    For a local latent site with a Bernoulli prior (a binary code per row, as in a sigmoid belief network). Its
    draws have no reparameterisation: ``method="svi"`` fits it by the score function with a baseline.

    Parameters
    ----------
    encoder : torch.nn.Module
        Maps the data argument (a batch of rows) to the logits of the site, of the site's shape.
    site : str
        The local latent site (Bernoulli in the model).
    data : str, optional
        The model argument fed to the encoder; default: the model's first argument.

    Examples
    --------
    >>> import torch
    >>> guide = AmortizedBernoulli(torch.nn.Linear(64, 8), site="z")
    """

    def _check_site(self, info: Any) -> None:
        if info.support != "boolean":
            raise ValueError(
                f"AmortizedBernoulli: site '{self.site}' has support {info.support!r} "
                f"({info.distribution}); a Bernoulli guide needs a site with values in {{0, 1}}"
            )

    def _distribution(self, logits: torch.Tensor) -> Any:
        return dist.Bernoulli(logits=logits).to_event(self._event_dim)

    def description(self) -> str:
        return f"amortised Bernoulli over '{self.site}'"


class AmortizedCategorical(Amortized):
    """An amortised categorical guide: ``encoder(data) -> logits`` (last dimension: the categories).

    Parameters
    ----------
    encoder : torch.nn.Module
        Maps the data argument (a batch of rows) to logits of shape ``(rows, ..., K)``.
    site : str
        The local latent site: a ``Categorical`` (integer values; score function only) or a
        ``OneHotCategorical`` (one-hot vectors, possibly ``.to_event``'d over several categorical variables).
    relaxed : bool
        Draw from the Gumbel-softmax relaxation during the fit (pathwise gradients; the model's prior at the site
        is relaxed to the same temperature). Needs a ``OneHotCategorical`` site whose value the model uses as a
        vector (``decoder(z)``, ``z @ table``), and ``method="svi"``. ``False``: the score function.
    temperature : float or callable
        The relaxation's temperature: a number, or ``temperature(step) -> float`` with the fit's step counted from
        0 (e.g. :func:`ppl_lvm.temperature_schedule`), evaluated at every step. Only with ``relaxed=True``.
    straight_through : bool
        With ``relaxed=True``: the draw is the one-hot argmax of the relaxed draw in the forward pass, with the
        relaxed draw's gradient in the backward pass (``RelaxedOneHotCategoricalStraightThrough``); the densities
        are those of the relaxed draw.
    data : str, optional
        The model argument fed to the encoder; default: the model's first argument.

    Examples
    --------
    >>> import torch
    >>> import ppl_lvm as lvm
    >>> guide = AmortizedCategorical(torch.nn.Linear(64, 10), site="c", relaxed=True,
    ...                              temperature=lvm.temperature_schedule(1.0, 0.5, steps=500))
    >>> guide.temperature_at(0), round(guide.temperature_at(500), 6)
    (1.0, 0.5)
    """

    def __init__(
        self,
        encoder: torch.nn.Module,
        site: str,
        relaxed: bool = False,
        temperature: float | Callable[[int], float] = 1.0,
        straight_through: bool = False,
        data: str | None = None,
    ):
        super().__init__(encoder, site, data)
        for name, value in (("relaxed", relaxed), ("straight_through", straight_through)):
            if not isinstance(value, bool):
                raise TypeError(f"AmortizedCategorical: {name} must be True or False, got {value!r}")
        if not relaxed and (straight_through or temperature != 1.0):
            given = "straight_through=True" if straight_through else f"temperature={temperature!r}"
            raise ValueError(
                f"AmortizedCategorical: {given} applies to the Gumbel-softmax relaxation only; pass "
                "relaxed=True, or leave it out for the score-function guide"
            )
        if not callable(temperature):
            _check_temperature(temperature, "temperature")
        self.relaxed = relaxed
        self.temperature = temperature
        self.straight_through = straight_through
        self.one_hot = True
        #: the temperature of the latest relaxed draw in a fit (``None`` before one)
        self.last_temperature: float | None = None

    def _check_site(self, info: Any) -> None:
        if info.distribution == "Categorical":
            self.one_hot = False
            self._extra_param_dims = 1
        elif info.support == "onehot":
            self.one_hot = True
            self._extra_param_dims = 0
        else:
            raise ValueError(
                f"AmortizedCategorical: site '{self.site}' is {info.distribution} with support "
                f"{info.support!r}; a categorical guide needs a Categorical or OneHotCategorical site"
            )
        if self.relaxed and not self.one_hot:
            raise ValueError(
                f"AmortizedCategorical(relaxed=True): site '{self.site}' is a Categorical, whose "
                "integer value cannot be relaxed; write it as dist.OneHotCategorical and use the one-hot "
                "vector in the model (decoder(z), z @ table), or use relaxed=False (score function)"
            )

    def temperature_at(self, step: int) -> float:
        """The temperature of step ``step`` (counted from 0)."""
        value = self.temperature(step) if callable(self.temperature) else self.temperature
        return _check_temperature(value, f"temperature({step})")

    def current_temperature(self) -> float | None:
        """The temperature of the fit's current step, or ``None`` outside a fit or for an unrelaxed guide."""
        fit = current_fit()
        return self.temperature_at(fit.step) if self.relaxed and fit is not None else None

    def _distribution(self, logits: torch.Tensor) -> Any:
        extra = max(self._event_dim - 1, 0) if self.one_hot else self._event_dim
        tau = self.current_temperature()
        if tau is None:
            fn = dist.OneHotCategorical(logits=logits) if self.one_hot else dist.Categorical(logits=logits)
        else:
            self.last_temperature = tau
            fn = _relaxed(logits, tau, self.straight_through)
        return fn.to_event(extra) if extra else fn

    def relaxing(self, model: Callable) -> Callable:
        """``model`` with its prior at the site relaxed to the guide's current temperature, inside a fit."""
        return _Relax(self)(model) if self.relaxed else model

    def description(self) -> str:
        if not self.relaxed:
            return f"amortised categorical over '{self.site}'"
        kind = "straight-through Gumbel-softmax" if self.straight_through else "Gumbel-softmax"
        return f"amortised categorical over '{self.site}' ({kind})"


def _check_temperature(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ValueError(f"AmortizedCategorical: {name} must be a positive finite number, got {value!r}")
    return float(value)


def _relaxed(logits: torch.Tensor, tau: float, straight_through: bool) -> Any:
    cls = dist.RelaxedOneHotCategoricalStraightThrough if straight_through else dist.RelaxedOneHotCategorical
    # no support check: a float32 draw clamped away from 0 and 1 (as the straight-through class does) can miss the
    # simplex's tolerance while its density is well defined
    return cls(torch.tensor(tau, dtype=logits.dtype, device=logits.device), logits=logits, validate_args=False)


class _Relax(Messenger):
    """Replace the model's ``OneHotCategorical`` prior at the guide's site by its Gumbel-softmax relaxation at the
    guide's current temperature (inside a fit only), so the relaxed guide's draws have a density under the model."""

    def __init__(self, guide: AmortizedCategorical):
        super().__init__()
        self.guide = guide

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or msg["name"] != self.guide.site or msg["is_observed"]:
            return
        tau = self.guide.current_temperature()
        if tau is None:
            return
        fn, extra = msg["fn"], 0
        while isinstance(fn, dist.Independent):
            extra += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        if not isinstance(fn, dist.OneHotCategorical):
            raise ValueError(
                f"AmortizedCategorical(relaxed=True): the model's site '{msg['name']}' is "
                f"{type(fn).__name__} in this run; a relaxed guide needs a OneHotCategorical there"
            )
        relaxed = _relaxed(fn.logits, tau, self.guide.straight_through)
        msg["fn"] = relaxed.to_event(extra) if extra else relaxed
