"""Covariance estimates and precision Cholesky factors of the Gaussian family (scikit-learn's formulas)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import _warn

# Cancellation guard for the moment (expanded-square) formulation E[x x'] - mu mu': its rounding error is about
# eps * raw second moment, i.e. eps * ratio relative to the variance.  Above this ratio (more than 4 of the 16
# significant digits lost, a relative error above ~2e-12) that component is recomputed with the two-pass (centred)
# formula sum_i r_ik (x_i - mu_k)(x_i - mu_k)' / n_k instead.  1e8 (8 digits) was too loose: a covariance pinned
# at reg_covar in some direction moves the log-likelihood at first order, by ~1e-8 relative (see
# tests/em/test_monotone_degenerate.py).  Well-separated clusters of ordinary data stay far below it (ratio ~ 10-100).
_CANCELLATION_RATIO = 1e4


def moment_covariances(
    ct: str,
    nk: torch.Tensor,
    mu: torch.Tensor,
    s_quad: torch.Tensor | None,
    triu: torch.Tensor | None,
    reg: float,
    centred_sums: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor],
) -> torch.Tensor:
    """Covariances (plus ``reg``) from the moment statistics ``s_quad``, two-pass where they cancel.

    ``s_quad`` is the sum over the data of ``resp * q(xc)`` (the quadratic block of the design matrix) or None
    when the data gave no moment statistics (the direct strategy), which always uses the two-pass formula.
    ``centred_sums(mu, idx, full)`` returns the two-pass sums ``sum_i r_ik (xc_i - mu_k)(xc_i - mu_k)'``
    (``full``; else their diagonals) of the components ``idx`` over all the data (one more pass over a stream).
    """
    k, d = mu.shape
    if s_quad is None:
        return _two_pass_covariances(centred_sums, nk, mu, ct, reg)
    if ct in ("full", "tied"):
        iu = triu
        second = torch.empty((k, d, d), dtype=mu.dtype)
        second[:, iu[0], iu[1]] = s_quad
        second[:, iu[1], iu[0]] = s_quad
        if ct == "tied":
            total = nk.sum()
            raw = second.sum(0) / total
            cov = raw - (nk[:, None, None] * (mu.unsqueeze(2) * mu.unsqueeze(1))).sum(0) / total
            if bool(_cancels_matrix(raw, cov, reg)):
                return _two_pass_covariances(centred_sums, nk, mu, ct, reg)
        else:
            raw = second / nk[:, None, None]
            cov = raw - mu.unsqueeze(2) * mu.unsqueeze(1)
            bad = _cancels_matrix(raw, cov, reg)
            if bool(bad.any()):
                idx = torch.nonzero(bad).flatten()
                cov[idx] = _two_pass_covariances(centred_sums, nk, mu, "full", 0.0, idx)
        cov.diagonal(dim1=-2, dim2=-1).add_(reg)
        return cov
    if ct == "diag":
        raw = s_quad / nk.unsqueeze(1)
        cov = raw - mu * mu
        bad = _cancels(raw, cov, reg).any(-1)
    else:
        raw = s_quad[:, 0] / nk
        cov = (raw - (mu * mu).sum(-1)) / d
        bad = _cancels(raw, cov * d, reg * d)
    if bool(bad.any()):
        idx = torch.nonzero(bad).flatten()
        cov[idx] = _two_pass_covariances(centred_sums, nk, mu, ct, 0.0, idx)
    return cov + reg


def _cancels(raw: torch.Tensor, centred: torch.Tensor, reg: float) -> torch.Tensor:
    """True where ``centred = raw - mean^2`` lost too many digits to cancellation.

    The rounding error (~eps * raw) only matters relative to the variance that
    is actually used, ``centred + reg``; a feature that is constant within a
    component is fine as long as ``reg`` dominates the error.
    """
    return raw.abs() > _CANCELLATION_RATIO * (centred.abs() + reg)


def _cancels_matrix(raw: torch.Tensor, centred: torch.Tensor, reg: float) -> torch.Tensor:
    """:func:`_cancels` for (batches of) matrices: the error ~eps * max raw diagonal against the smallest variance.

    The smallest variance of a full covariance is its smallest eigenvalue, not its smallest diagonal entry: a
    component on a lower-dimensional set of points (duplicated data) has an eigenvalue ~0 (reg_covar after the
    regularisation) in a direction no diagonal entry shows, where the moment form's error counts ~1/reg_covar.
    """
    scale = torch.diagonal(raw, dim1=-2, dim2=-1).abs().amax(-1)
    smallest = torch.linalg.eigvalsh(centred).amin(-1).clamp_min(0.0)
    return scale > _CANCELLATION_RATIO * (smallest + reg)


def _global_covariance(second: torch.Tensor, n: int, ct: str, reg: float) -> torch.Tensor:
    """The whole data's covariance from ``second = sum_i xc_i xc_i'`` (centred data), plus ``reg``."""
    cov = second / max(n, 1)
    cov.diagonal().add_(reg)
    if ct == "full":
        return cov
    if ct == "diag":
        return cov.diagonal().clone()
    return cov.diagonal().mean()


def _two_pass_covariances(
    sums: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor], nk: torch.Tensor, mu: torch.Tensor, ct: str,
    reg: float, idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Covariances of the components ``idx`` (default all) from centred residuals, sklearn's accurate formulation."""
    if idx is None:
        idx = torch.arange(mu.shape[0])
    nk = nk[idx]
    if ct in ("full", "tied"):
        cov = sums(mu, idx, True)
        if ct == "tied":
            out = cov.sum(0) / nk.sum()
            out.diagonal().add_(reg)
            return out
        cov /= nk[:, None, None]
        cov.diagonal(dim1=-2, dim2=-1).add_(reg)
        return cov
    cov = sums(mu, idx, False) / nk.unsqueeze(1)
    if ct == "spherical":
        return cov.mean(-1) + reg
    return cov + reg


def _unbounded(reg: float) -> str:
    """What a repaired covariance means for the numbers a fit reports."""
    if reg > 0:
        return ""
    return ("; with reg_covar=0 a component can sit on identical points, where the likelihood is unbounded: the "
            "log-likelihood, BIC and AIC of this fit measure the repair, not the data. Use reg_covar > 0 (the "
            "default is 1e-6) or remove duplicated points")


def _precision_cholesky(
    cov: torch.Tensor, ct: str, reg: float = 0.0, repair: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's ``_compute_precision_cholesky`` (upper-triangular inverse factor).

    With ``repair``, a non-positive-definite covariance gets growing diagonal
    jitter (with an :class:`EMDegeneracyWarning`) instead of an error.
    Returns ``(precisions_cholesky, covariances)`` (covariances possibly repaired).
    """
    if ct in ("full", "tied"):
        d = cov.shape[-1]
        chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()):
            if not repair:
                raise ValueError("Covariance matrix is not positive definite; increase reg_covar")
            cov = cov.clone()
            bad = (info != 0) if cov.ndim == 3 else None
            scale = torch.diagonal(cov, dim1=-2, dim2=-1).abs().mean().clamp_min(1.0)
            jitter = max(reg, 1e-10) * float(scale)
            for _ in range(60):
                target = cov[bad] if bad is not None else cov
                target = target + jitter * torch.eye(d, dtype=cov.dtype)
                c2, info2 = torch.linalg.cholesky_ex(target)
                if bool((info2 == 0).all()):
                    break
                jitter *= 10.0
            if bad is not None:
                cov[bad] = target
            else:
                cov = target
            chol, info = torch.linalg.cholesky_ex(cov)
            _warn(f"singular covariance repaired by adding {jitter:.3g} to its diagonal" + _unbounded(reg))
        eye = torch.eye(d, dtype=cov.dtype).expand_as(chol)
        prec_chol = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2)
        return prec_chol, cov
    if bool((cov <= 0).any()):
        if not repair:
            raise ValueError("Variances must be positive; increase reg_covar")
        floor = max(reg, 1e-10)
        _warn(f"non-positive variance replaced by {floor:.3g}" + _unbounded(reg))
        cov = cov.clamp_min(floor)
    return 1.0 / torch.sqrt(cov), cov


def _precision_cholesky_from_precisions(prec: torch.Tensor, ct: str) -> torch.Tensor:
    """sklearn's ``_compute_precision_cholesky_from_precisions`` (flip trick)."""
    if ct in ("full", "tied"):
        flipped = torch.flip(prec, dims=(-2, -1))
        return torch.flip(torch.linalg.cholesky(flipped), dims=(-2, -1))
    return torch.sqrt(prec)


def _covariances_from_precision_cholesky(prec_chol: torch.Tensor, ct: str) -> torch.Tensor:
    if ct in ("full", "tied"):
        prec = prec_chol @ prec_chol.transpose(-1, -2)
        return torch.linalg.inv(prec)
    return 1.0 / (prec_chol * prec_chol)
