"""The closed-form M-step of ``vem`` and ``mcem``, for models whose parameters enter Normal sites linearly.

With the draws and their weights fixed, the M-step maximises ``F(theta) = sum_s w_s log p(x, z_s; theta)``. When
every site that depends on the parameters is Normal, with

* the **real** parameters (``lvm.param`` without a constraint) entering only the locations, linearly (``W z + mu``
  in probabilistic PCA and factor analysis, ``mu + b`` in a random-effects model, ``X beta`` in a regression), and
* the **positive** parameters entering only the scales, each scale element a power of one parameter element
  (``sigma``, or ``psi.sqrt()`` for a variance ``psi``),

``F`` is an exact quadratic in the real parameters (one Newton step, from the gradient and the Hessian, lands on
its maximum) and, in ``u = log psi`` for each positive element, of the form ``-A u - B exp(-c u)`` (the maximum is
in closed form once ``A``, ``B`` and ``c`` are read off three gradients). The two blocks are maximised in turn
(expectation conditional maximisation, Meng and Rubin 1993) until ``F`` stops rising: one cycle, when the
locations do not depend on the scales (all the models above).

Nothing about the model is assumed: the forms are checked numerically on ``F`` itself (the Newton step must land
where the quadratic predicts, the gradient there must vanish), and any model that fails a check, or has another
kind of parameter, is left to the L-BFGS M-step, with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from torch.distributions import constraints

__all__ = ["MAX_REAL_COORDINATES", "closed_form_maximise"]

#: the largest number of real parameter coordinates whose Hessian the closed form builds (one gradient each)
MAX_REAL_COORDINATES = 256

#: the relative accuracy the numerical checks of the closed forms ask for (float64)
_TOL = 1e-6


def _grad(objective: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
    with torch.enable_grad():
        value = objective()
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, leaves, strict=True)])
    return float(value.detach()), flat.detach().to(torch.float64)


def _flat(leaves: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in leaves]).to(torch.float64)


def _assign(leaves: list[torch.Tensor], flat: torch.Tensor) -> None:
    with torch.no_grad():
        i = 0
        for p in leaves:
            k = p.numel()
            p.copy_(flat[i:i + k].reshape(p.shape).to(p.dtype))
            i += k


def _real_block(objective: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> tuple[str | None, float]:
    """One Newton step on the real parameters, checked to be the exact maximum of a quadratic; returns why not (or
    None) and the largest gradient coordinate at the start."""
    theta = _flat(leaves)
    with torch.enable_grad():
        out = objective()
        grads = torch.autograd.grad(out, leaves, create_graph=True, allow_unused=True)
        if any(g is None or not g.requires_grad for g in grads):
            return "a real parameter does not enter the objective", math.nan
        flat_g = torch.cat([g.reshape(-1) for g in grads])
        rows = [torch.autograd.grad(flat_g[j], leaves, retain_graph=True, allow_unused=True)
                for j in range(len(theta))]
    value, g = float(out.detach()), flat_g.detach().to(torch.float64)
    hessian = torch.stack([torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1)
                                      for h, p in zip(row, leaves, strict=True)]) for row in rows]).to(torch.float64)
    hessian = 0.5 * (hessian + hessian.T)
    chol, info = torch.linalg.cholesky_ex(-hessian)
    g_max = float(g.abs().max())
    if int(info) != 0:
        return "the objective is not concave in the real parameters (or one of them does not enter it)", g_max
    delta = torch.cholesky_solve(g[:, None], chol)[:, 0]
    _assign(leaves, theta + delta)
    new_value, new_g = _grad(objective, leaves)
    predicted = value + 0.5 * float(g @ delta)
    scale = max(1.0, abs(value))
    if not (abs(new_value - predicted) <= _TOL * scale and float(new_g.abs().max()) <= _TOL * max(1.0, g_max)):
        _assign(leaves, theta)
        return ("the objective is not quadratic in the real parameters (they do not enter Normal locations "
                "linearly)"), g_max
    return None, g_max


def _positive_block(objective: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> str | None:
    """The maximum over ``u = log psi`` of ``-A u - B exp(-c u)`` per element, read off three gradients."""
    u = _flat(leaves)
    grads = []
    for shift in (0.0, 1.0, 2.0):
        _assign(leaves, u + shift)
        grads.append(_grad(objective, leaves)[1])
    g0, g1, g2 = grads
    ratio = (g1 - g2) / (g0 - g1)           # exp(-c)
    k = (g0 - g1) / (1 - ratio)             # c B exp(-c u)
    a = k - g0                              # A
    ok = bool(torch.isfinite(ratio).all()) and bool(((ratio > 0) & (ratio < 1) & (a > 0) & (k > 0)).all())
    if not ok:
        _assign(leaves, u)
        return "the scales are not powers of the positive parameters of Normal sites"
    best = u + torch.log(a / k) / torch.log(ratio)
    _assign(leaves, best)
    g = _grad(objective, leaves)[1]
    if float((g.abs() / a).max()) > _TOL:
        _assign(leaves, u)
        return "the objective is not separable in the positive parameters' elements"
    return None


def closed_form_maximise(objective: Callable[[], torch.Tensor], leaves: dict[str, torch.Tensor],
                         max_cycles: int = 20) -> tuple[dict | None, str]:
    """Maximise ``objective()`` over the parameters' unconstrained leaves in closed form, when its forms allow.

    Returns ``(info, reason)``: ``info`` has ``accepted``, ``before``, ``after`` and ``cycles`` when the closed
    form applied (the leaves then hold the maximum), else ``None`` with the leaves untouched and ``reason`` saying
    why not.
    """
    store = pyro.get_param_store()
    real, positive = [], []
    for name, leaf in leaves.items():
        if not leaf.requires_grad:
            continue
        constraint = store._constraints.get(name, constraints.real)
        if constraint is constraints.real:
            real.append(leaf)
        elif constraint is constraints.positive:
            positive.append(leaf)
        else:
            return None, f"the parameter '{name}' has the constraint {constraint} (only real and positive ones are " \
                         "handled)"
    if not real and not positive:
        return None, "the model has no parameter to maximise"
    if sum(p.numel() for p in real) > MAX_REAL_COORDINATES:
        return None, f"the real parameters have more than {MAX_REAL_COORDINATES} coordinates"
    if any(p.dtype != torch.float64 for p in real + positive):
        return None, "the parameters are not float64 (the checks of the closed form need its precision)"
    start = torch.cat([p.detach().reshape(-1) for p in real + positive]).to(torch.float64)

    def restore() -> None:
        _assign(real + positive, start)

    with torch.no_grad():
        before = float(objective())
    if not math.isfinite(before):
        return None, f"the objective is {before} at the current parameters"
    g_start = None
    for cycles in range(1, max_cycles + 1):  # noqa: B007 - reported
        if real:
            reason, g_max = _real_block(objective, real)
            g_start = g_max if g_start is None else g_start
            if reason is not None:
                restore()
                return None, reason
        reason = _positive_block(objective, positive) if positive else None
        if reason is not None:
            restore()
            return None, reason
        if not (real and positive):  # one block: its maximum is the maximum
            break
        # the positive block moved after the real one: stop when the real parameters are still at their maximum
        if float(_grad(objective, real)[1].abs().max()) <= _TOL * max(1.0, g_start):
            break
    with torch.no_grad():
        after = float(objective())
    if not after >= before - _TOL * 1e-3 * max(1.0, abs(before)):
        restore()
        return None, f"the closed-form step lowered the objective from {before} to {after}"
    return {"accepted": True, "before": before, "after": after, "cycles": cycles}, ""
