"""The expected complete-data log-likelihood Q and the generalised (L-BFGS) M-step."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import torch

from .estep import EStep
from .factors import _collect_factors, _enum_trace, _in_plate

__all__ = ["Objective", "expected_complete_log_likelihood", "generic_m_step", "maximise_q", "q_of_factors"]


def _align(marg: torch.Tensor, target_dims: str, name: str) -> torch.Tensor:
    dims = getattr(marg, "_pyro_dims", None)
    if dims is None or dims == target_dims:
        return marg
    if sorted(dims) != sorted(target_dims):
        raise ValueError(
            f"site '{name}': the marginal's dims {dims!r} differ from the factor's {target_dims!r}; "
            "the model's structure changed since the E-step"
        )
    return marg.permute([dims.index(d) for d in target_dims])


def expected_complete_log_likelihood(
    model: Callable,
    kwargs: dict[str, Any],
    max_plate_nesting: int,
    marginals: dict[str, torch.Tensor] | EStep,
    *,
    outside_plate: str | None = None,
) -> torch.Tensor:
    """``Q(theta | theta_old) = sum_f sum(marginal_f * log_prob_f(theta))`` at the current parameters.

    Parameters
    ----------
    model, kwargs, max_plate_nesting
        As for :func:`e_step`.
    marginals : dict or EStep
        The marginals of an :func:`e_step` at ``theta_old`` (or the EStep itself).
    outside_plate : str, optional
        Leave out the factors outside this plate (a chunk of the data after the first: the terms outside the
        data plate, such as parameter priors, belong to the first chunk's ``Q`` only).

    Returns
    -------
    torch.Tensor
        Scalar, differentiable w.r.t. the ``pyro.param`` s of the caller's store.  Every sample site counts:
        latent and observed sites, and ``pyro.factor`` terms (e.g. log-priors of parameters).
    """
    if isinstance(marginals, EStep):
        marginals = marginals.marginals
    fs = _collect_factors(model, _enum_trace(model, kwargs, max_plate_nesting))
    inside = None if outside_plate is None else (lambda name: _in_plate(fs.trace, name, outside_plate))
    return q_of_factors(fs.factors, marginals, inside)


def q_of_factors(factors: dict[str, torch.Tensor], marginals: dict[str, torch.Tensor],
                 keep: Callable[[str], bool] | None = None) -> torch.Tensor:
    """``sum_f sum(marginal_f * factor_f)`` over the packed factors (those ``keep(name)`` accepts), terms where
    the marginal is 0 left out (a factor of ``-inf`` there is an impossible configuration, not a NaN)."""
    missing = set(factors) ^ set(marginals)
    if missing:
        raise ValueError(f"marginals and model sites differ: {sorted(missing)}")
    q = None
    for name, term in factors.items():
        if keep is not None and not keep(name):
            continue
        marg = _align(marginals[name], term._pyro_dims, name)
        if marg.shape != term.shape:
            term = term.expand(marg.shape) if term.dim() == marg.dim() else term
            if marg.shape != term.shape:
                raise ValueError(f"site '{name}': marginal shape {tuple(marg.shape)} != factor {tuple(term.shape)}")
        positive = marg > 0
        contrib = (marg * torch.where(positive, term, torch.zeros_like(term))).sum()
        q = contrib if q is None else q + contrib
    if q is None:
        q = torch.zeros(())
    return q


#: ``objective(scale)``: Q at the store's current parameters; with a scale, the gradient of ``-Q / scale`` is
#: also added to the parameters' ``.grad`` (so a sum over chunks accumulates it chunk by chunk)
Objective = Callable[[float | None], torch.Tensor]


def _store_params(params: list[str] | None) -> dict[str, torch.Tensor]:
    store = pyro.get_param_store()
    names = list(store.keys()) if params is None else list(params)
    unknown = [n for n in names if n not in store]
    if unknown:
        raise KeyError(f"no parameter(s) {unknown} in the parameter store")
    return {n: store._params[n] for n in names}


def generic_m_step(
    model: Callable,
    kwargs: dict[str, Any],
    max_plate_nesting: int,
    marginals: dict[str, torch.Tensor] | EStep,
    params: list[str] | None = None,
    max_steps: int = 50,
    lr: float = 1.0,
) -> dict[str, Any]:
    """Generalised M-step: maximise ``Q`` over the unconstrained parameters with L-BFGS (strong Wolfe).

    Starts from the current values; keeps the new values only if ``Q(new) >= Q(old)``, else restores the old
    values exactly (also when the optimiser produced NaN).

    Parameters
    ----------
    model, kwargs, max_plate_nesting, marginals
        As for :func:`expected_complete_log_likelihood`.
    params : list of str, optional
        Parameter names to optimise; default every parameter of the store.
    max_steps : int
        L-BFGS iterations (its ``max_iter``).
    lr : float
        L-BFGS learning rate (1 is right with the strong-Wolfe line search).

    Returns
    -------
    dict
        ``accepted`` (bool), ``q_before``, ``q_after`` (floats; ``q_after`` is Q at the kept values),
        ``steps`` (L-BFGS iterations run), ``nan`` (bool).
    """
    if isinstance(marginals, EStep):
        marginals = marginals.marginals

    def objective(scale: float | None) -> torch.Tensor:
        q = expected_complete_log_likelihood(model, kwargs, max_plate_nesting, marginals)
        if scale is not None and q.requires_grad:
            (-q / scale).backward()
        return q.detach()

    return maximise_q(objective, params, max_steps, lr)


def maximise_q(objective: Objective, params: list[str] | None = None, max_steps: int = 50,
               lr: float = 1.0, q_before: float | None = None) -> dict[str, Any]:
    """The M-step of :func:`generic_m_step` on any ``objective`` (:data:`Objective`), e.g. a sum over chunks.

    ``q_before``: ``objective(None)`` at the current parameters when the caller has it (the E-step's factors
    give it without another run of the model)."""
    leaves = _store_params(params)
    old = {n: p.detach().clone() for n, p in leaves.items()}

    def q_value() -> torch.Tensor:
        with torch.no_grad():
            return objective(None)

    q_before = float(q_value()) if q_before is None else float(q_before)
    tensors = [p for p in leaves.values() if p.requires_grad]
    if not tensors or not math.isfinite(q_before):
        return {"accepted": False, "q_before": q_before, "q_after": q_before, "steps": 0, "nan": True}
    scale = max(1.0, abs(q_before))
    optimizer = torch.optim.LBFGS(
        tensors,
        lr=lr,
        max_iter=max_steps,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        return -objective(scale) / scale

    nan = False
    try:
        with torch.enable_grad():
            optimizer.step(closure)
    except (ValueError, RuntimeError) as exc:  # e.g. a distribution's argument check on a NaN parameter
        if "nan" not in str(exc).lower() and "invalid" not in str(exc).lower():
            raise
        nan = True
    for p in tensors:
        p.grad = None
    state = optimizer.state[optimizer._params[0]]
    steps = int(state.get("n_iter", 0))
    q_after = float("nan")
    if not nan and all(bool(torch.isfinite(p).all()) for p in tensors):
        try:
            q_after = float(q_value())
        except (ValueError, RuntimeError):
            q_after = float("nan")
    nan = nan or not math.isfinite(q_after)
    accepted = (not nan) and q_after >= q_before
    if not accepted:
        with torch.no_grad():
            for n, p in leaves.items():
                p.copy_(old[n])
        q_after = q_before
    return {"accepted": accepted, "q_before": q_before, "q_after": q_after, "steps": steps, "nan": nan}
