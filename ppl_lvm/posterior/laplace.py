"""The uncertainty of an EM fit: the observed information and the Laplace approximation at the estimate.

The exact marginal log-likelihood log p(x | theta) (every discrete latent summed out,
:func:`ppl_lvm.em.generic.marginal_log_likelihood`) is a torch function of the model's ``lvm.param`` values. Each
parameter is written in an unconstrained coordinate u by the bijection of its constraint
(``torch.distributions.biject_to``: the log of a positive value, the stick-breaking coordinates of a simplex row,
the logit of a probability, the lower triangle of a Cholesky factor with its diagonal's log). At the estimate
u_hat:

* the **observed information** is I = -d^2 log p(x | u) / du du^T at u_hat, by autograd (float64);
* the **covariance** of u_hat is I^-1 (the inverse observed information);
* the **standard error** of each coordinate of a constrained parameter theta = t(u) is the delta method's
  sqrt(diag(J I^-1 J^T)), with J = dt/du at u_hat (invariant to the choice of unconstrained coordinates at a
  maximum, where the gradient is zero);
* the **Laplace approximation** is u ~ N(u_hat, I^-1), mapped through t: draws of it stand in for a posterior
  under a flat prior in u (``to_arviz()`` of an EM fit labels them so).

An estimate on the boundary of the parameter space (a mixing weight, a probability or a start probability at 0 or 1:
its unconstrained coordinate is infinite or nearly so) is held fixed: its standard errors are NaN, its draws stay at
the estimate, and the rest is conditional on it (:func:`laplace` warns, ``InferenceWarning``). The information of
the remaining coordinates must be positive definite; it is not when a parameter is not identified (it does not
change the likelihood): then :func:`laplace` warns, every standard error is NaN and there are no draws.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro.poutine as poutine
import torch
from torch.distributions import biject_to, transform_to

from ..em.generic.estep import e_step, marginal_log_likelihood
from ..em.hmm.estep import hmm_log_likelihood
from ..em.mixture import mixture_log_likelihood
from ..errors import InferenceWarning

__all__ = ["Laplace", "laplace", "pointwise_log_likelihood"]

#: an information matrix whose smallest eigenvalue is below this fraction of its largest is treated as singular
RCOND = 1e-12
#: an unconstrained coordinate that moves its parameter by less than this per unit sits on the boundary
BOUNDARY = 1e-8
#: how far an infinite unconstrained coordinate (a value exactly on the boundary) is held
SATURATED = 40.0


def _bijection(constraint: Any) -> Any:
    try:
        return biject_to(constraint)
    except NotImplementedError:  # e.g. lower_cholesky: the free coordinates are found from the Jacobian below
        return transform_to(constraint)


def _double(value: Any) -> Any:
    return value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _float64(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: _double(v) for k, v in kwargs.items()}


@dataclass
class Laplace:
    """The observed information of an EM fit and what follows from it (see the module).

    Attributes
    ----------
    names : list of str
        The model's parameters, in the order of the flat coordinate vector.
    shapes : dict of str -> tuple
        Each parameter's (constrained) shape.
    mode : Tensor, shape (P,)
        The estimate's free unconstrained coordinates u_hat (float64).
    information : Tensor, shape (P, P)
        The observed information -d^2 log p(x | u) / du du^T at u_hat.
    gradient : Tensor, shape (P,)
        d log p(x | u) / du at u_hat (zero at an exact maximum; EM stops near it).
    covariance : Tensor or None
        The inverse information; None when the information is not positive definite.
    boundary : dict of str -> Tensor of bool
        Per parameter, its flattened coordinates on the boundary of the support: held at the estimate, standard
        error NaN.
    """

    names: list[str]
    shapes: dict[str, tuple[int, ...]]
    mode: torch.Tensor
    information: torch.Tensor
    gradient: torch.Tensor
    covariance: torch.Tensor | None
    _to_params: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    #: per parameter, which of its flattened coordinates sit on the boundary of the support (standard error NaN)
    boundary: dict[str, torch.Tensor]

    @property
    def positive_definite(self) -> bool:
        return self.covariance is not None

    def params(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """The constrained parameters at free unconstrained coordinates ``u`` (P,)."""
        return self._to_params(u)

    def _flat_params(self, u: torch.Tensor) -> torch.Tensor:
        values = self._to_params(u)
        return torch.cat([values[n].reshape(-1) for n in self.names])

    def parameter_covariance(self) -> torch.Tensor:
        """The delta method's covariance J I^-1 J^T of every constrained coordinate (NaN when I is singular)."""
        size = sum(math.prod(s) for s in self.shapes.values())
        if self.covariance is None:
            return torch.full((size, size), math.nan, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(self._flat_params, self.mode)
        return jac @ self.covariance @ jac.T

    def standard_errors(self) -> dict[str, torch.Tensor]:
        """The standard error of every coordinate of every parameter, in the parameter's shape."""
        se = self.parameter_covariance().diagonal().clamp_min(0).sqrt()
        out, start = {}, 0
        for name in self.names:
            size = math.prod(self.shapes[name])
            values = se[start:start + size].masked_fill(self.boundary[name], math.nan)
            out[name] = values.reshape(self.shapes[name])
            start += size
        return out

    def sample(self, num_samples: int, seed: int) -> dict[str, torch.Tensor]:
        """``num_samples`` draws of every parameter from the Laplace approximation, ``(num_samples, *shape)``."""
        if self.covariance is None:
            raise ValueError("the observed information is not positive definite: the Laplace approximation has "
                             "no draws (see the InferenceWarning of the fit's laplace())")
        generator = torch.Generator().manual_seed(int(seed))
        chol = torch.linalg.cholesky(self.covariance)
        noise = torch.randn((num_samples, len(self.mode)), generator=generator, dtype=torch.float64)
        u = self.mode + noise @ chol.T
        rows = [self._to_params(row) for row in u]
        return {n: torch.stack([r[n] for r in rows]) for n in self.names}


def _coordinates(outcome: Any) -> tuple[list[str], dict, torch.Tensor, Callable, dict]:
    """The free unconstrained coordinates of the model's parameters, the map back to constrained values, and for
    each parameter which of its (flattened) coordinates sit on the boundary of its support."""
    params = getattr(outcome, "params", None) or outcome.constrained_params()
    names = outcome.structure.model_param_names(params)
    constraint_of = outcome.param_state["constraints"]
    transforms = {n: _bijection(constraint_of[n]) for n in names}
    shapes = {n: tuple(params[n].shape) for n in names}
    full, free, boundary = {}, {}, {}
    for n in names:
        u = transforms[n].inv(params[n].detach().double())
        # a value on the boundary (a probability of exactly 1 in float32) has an infinite coordinate: held finite
        u = torch.nan_to_num(u, posinf=SATURATED, neginf=-SATURATED).clamp(-SATURATED, SATURATED)
        full[n] = u

        def flat(v: torch.Tensor, n: str = n) -> torch.Tensor:
            return transforms[n](v.reshape(full[n].shape)).reshape(-1)

        # a coordinate that moves the parameter nowhere (the upper triangle of a Cholesky factor: zero Jacobian at
        # the origin too) is not a coordinate; one that barely moves it at the estimate is saturated: the estimate
        # sits on the boundary, where the curvature says nothing
        at_origin = torch.autograd.functional.jacobian(flat, torch.zeros_like(u).reshape(-1)).abs()
        structural = at_origin.sum(0) == 0
        saturated = ~structural & (torch.autograd.functional.jacobian(flat, u.reshape(-1)).abs().sum(0) < BOUNDARY)
        free[n] = (~structural & ~saturated).nonzero().reshape(-1)
        boundary[n] = at_origin[:, saturated].sum(1) > 0  # the parameter's coordinates a saturated one moves
    sizes = [len(free[n]) for n in names]
    mode = torch.cat([full[n].reshape(-1)[free[n]] for n in names])

    def to_params(u: torch.Tensor) -> dict[str, torch.Tensor]:
        values = {}
        for n, part in zip(names, torch.split(u, sizes), strict=True):
            base = full[n].reshape(-1).clone().to(part.dtype).index_put((free[n],), part)
            values[n] = transforms[n](base.reshape(full[n].shape))
        return values

    return names, shapes, mode, to_params, boundary


def laplace(outcome: Any) -> Laplace:
    """The observed information and Laplace approximation of an EM fit at its estimate (computed once per fit).

    Warns (``InferenceWarning``) when the information is not positive definite; see the module. The warnings are
    given once per fit, and kept in ``outcome.cache["laplace_warnings"]`` for whatever reports on the fit later.
    """
    cached = outcome.cache.get("laplace")
    if cached is not None:
        return cached
    messages = []
    if outcome.model is None or outcome.structure is None:
        raise ValueError("standard errors need the model: load the result with lvm.load(path, model=...)")
    names, shapes, mode, to_params, boundary = _coordinates(outcome)
    on_boundary = {n: int(mask.sum()) for n, mask in boundary.items() if bool(mask.any())}
    if on_boundary:
        where = ", ".join(f"'{n}' ({k} of its coordinates)" for n, k in on_boundary.items())
        messages.append(
            f"EM standard errors: {where} sit on the boundary of the support (a weight or probability of 0 or 1), "
            "where the curvature of the log-likelihood says nothing about their uncertainty: their standard errors "
            "are NaN and their Laplace draws are held at the estimate; the other parameters' are conditional on "
            "them")
    kwargs = _float64(dict(outcome.data.kwargs))
    nesting = outcome.structure.max_plate_nesting

    def log_lik(u: torch.Tensor) -> torch.Tensor:
        with poutine.block():
            return marginal_log_likelihood(poutine.substitute(outcome.model, data=to_params(u)), kwargs, nesting)

    with torch.enable_grad():
        u = mode.clone().requires_grad_(True)
        gradient = torch.autograd.grad(log_lik(u), u)[0].detach()
        information = -torch.autograd.functional.hessian(log_lik, mode)
    information = 0.5 * (information + information.T)
    covariance = None
    eigenvalues = torch.linalg.eigvalsh(information) if len(mode) else torch.ones(1)
    finite = bool(torch.isfinite(information).all())
    if finite and eigenvalues.min() > RCOND * eigenvalues.max().abs():
        covariance = torch.cholesky_inverse(torch.linalg.cholesky(information))
    else:
        smallest = float(eigenvalues.min()) if finite else math.nan
        messages.append(
            f"EM standard errors: the observed information at the estimate is not positive definite (smallest "
            f"eigenvalue {smallest:.3g}): a weight or probability sits at 0 or 1, or a parameter is not identified "
            "by the data. The standard errors are NaN and to_arviz() has no Laplace posterior; fewer components "
            "or states, or more data, usually help")
    found = Laplace(names, shapes, mode, information, gradient, covariance, to_params, boundary)
    outcome.cache["laplace"] = found
    outcome.cache["laplace_warnings"] = messages
    for message in messages:
        warnings.warn(message, InferenceWarning, stacklevel=3)
    return found


def pointwise_log_likelihood(outcome: Any, draws: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """log p(x_i | theta_s) of each draw s and observation i, every latent summed out: ``(S, N)``.

    The observations are the data points of a mixture or of the data plate, the sequences of a hidden Markov chain.
    None when the log-likelihood does not factorise over the data plate (a global discrete latent).
    """
    pattern = outcome.pattern
    count = len(next(iter(draws.values()))) if draws else 0
    rows = []
    for s in range(count):
        values = {n: v[s] for n, v in draws.items()}
        if pattern is not None and hasattr(pattern, "trans"):
            params = pattern.family.complete_params(pattern.to_kernel(values))
            log_emission = pattern.family.log_prob(_double(pattern.data), params)
            rows.append(hmm_log_likelihood(log_emission, [int(v) for v in pattern.lengths], params["startprob"],
                                           params["transmat"]))
        elif pattern is not None:
            params = pattern.family.complete_params(pattern.to_kernel(values))
            x = _double(pattern.matrix(outcome.data.kwargs))
            rows.append(mixture_log_likelihood(x, pattern.family, params)[0])
        else:
            with torch.no_grad(), poutine.block():
                found = e_step(poutine.substitute(outcome.model, data=values), _float64(dict(outcome.data.kwargs)),
                               outcome.structure.max_plate_nesting, max_bytes=None)
            if found.log_likelihood_per_point is None:
                return None
            rows.append(found.log_likelihood_per_point)
    return torch.stack(rows).detach().double() if rows else None
