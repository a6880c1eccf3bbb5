"""Emission families for exact EM: log-density matrices and closed-form M-steps.

Every family exposes the same small interface (see
:class:`ppl_lvm.em._mixture.EmissionFamily`):

``precompute(X) -> cache``
    Data-only quantities reused every iteration (design matrices, ``lgamma``
    terms).  Optional: every method computes it when ``cache`` is omitted.
``log_prob(X, params, cache=None) -> (N, K)``
    ``log p(x_n | component k)``.
``m_step(X, resp, params=None, reg=None, cache=None) -> params``
    Weighted maximum likelihood given responsibilities (mixtures) or state
    posteriors (HMMs).  ``params`` are the previous parameters, used only to
    repair degenerate components.  ``reg`` is family specific (see classes).
``n_parameters(params) -> int``
    Free emission parameters (mixing weights / transitions not included).
``sample(params, component_indices, generator) -> tensor``
``complete_params(params) -> params``
    Validate user parameters, convert them to tensors and fill derived entries.

Parameters are plain ``dict[str, Tensor]`` named as scikit-learn / hmmlearn
name them (without the trailing underscore).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from ._mixture import EMDegeneracyWarning

__all__ = [
    "COVARIANCE_TYPES",
    "Bernoulli",
    "Categorical",
    "Gaussian",
    "Poisson",
    "get_family",
]

Params = dict[str, torch.Tensor]
COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")

# Cancellation guard for the moment (expanded-square) formulation: when the raw
# second moment exceeds the variance by this factor more than ~8 of the 16
# significant digits are lost, so that component is recomputed with the
# two-pass (centred) formula instead.
_CANCELLATION_RATIO = 1e8
# Above this many bytes the (N, D(D+1)/2) design matrix is not built and the
# direct Cholesky formulation is used.
_MAX_DESIGN_BYTES = 512 * 2**20


def _as_float(X: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    dtype = dtype or torch.get_default_dtype()
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float64
    if isinstance(X, torch.Tensor):
        return X.to(dtype) if X.dtype != dtype else X
    return torch.as_tensor(X, dtype=dtype)


def _check_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError("dtype must be torch.float32 or torch.float64")
    return dtype


def _empty_components(resp_sum: torch.Tensor, n_samples: int) -> torch.Tensor:
    # "Empty" = less responsibility than rounding noise on a sum of n ones.
    return resp_sum < n_samples * torch.finfo(resp_sum.dtype).eps


def _warn(msg: str) -> None:
    warnings.warn(msg, EMDegeneracyWarning, stacklevel=3)


def _keep_previous(
    new: torch.Tensor, previous: torch.Tensor | None, fallback: torch.Tensor, empty: torch.Tensor
) -> torch.Tensor:
    """Replace the rows of ``new`` flagged in ``empty`` by ``previous`` (or ``fallback``)."""
    source = previous if previous is not None and previous.shape == new.shape else None
    out = new.clone()
    for k in torch.nonzero(empty).flatten().tolist():
        out[k] = source[k] if source is not None else fallback
    return out


# --------------------------------------------------------------------------- Gaussian


class Gaussian:
    """Multivariate Gaussian emissions, sklearn ``GaussianMixture`` semantics.

    Parameters
    ----------
    covariance_type : {"full", "diag", "spherical", "tied"}
    dtype : torch.dtype, default float64
        Data and parameters are converted to it.
    strategy : {"auto", "moments", "direct"}
        How log-densities and M-step statistics are computed.
        ``"moments"`` precomputes the design matrix ``[q(x), x, 1]`` of centred
        data (``q`` = the quadratic monomials needed by the covariance type) so
        that each E-step is one ``(N, F) @ (F, K)`` matmul and each M-step one
        ``(K, N) @ (N, F)`` matmul; ``"direct"`` computes sklearn's
        ``||(x - mu) L||^2`` with one batched matmul.  ``"auto"`` picks
        moments unless the design matrix would exceed 512 MiB.

    Notes
    -----
    Parameter dict: ``"means"`` (K, D), ``"covariances"`` and
    ``"precisions_cholesky"`` with shapes (K, D, D) full, (D, D) tied, (K, D)
    diag, (K,) spherical -- sklearn's ``covariances_`` /
    ``precisions_cholesky_``.  ``complete_params`` also accepts
    ``"precisions"`` (sklearn's ``precisions_init``).  ``reg`` in
    :meth:`m_step` is sklearn's ``reg_covar`` (added to the diagonal).
    """

    default_reg = 1e-6

    def __init__(
        self,
        covariance_type: str = "full",
        strategy: str = "auto",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}")
        if strategy not in ("auto", "moments", "direct"):
            raise ValueError("strategy must be 'auto', 'moments' or 'direct'")
        self.covariance_type = covariance_type
        self.strategy = strategy
        self.dtype = _check_dtype(dtype)

    def __repr__(self) -> str:
        return f"Gaussian(covariance_type={self.covariance_type!r})"

    # ---- data cache -------------------------------------------------------

    def _n_quadratic(self, n_features: int) -> int:
        return {
            "full": n_features * (n_features + 1) // 2,
            "tied": n_features * (n_features + 1) // 2,
            "diag": n_features,
            "spherical": 1,
        }[self.covariance_type]

    def precompute(self, X: Any) -> dict[str, Any]:
        """Centre the data and (moments strategy) build the design matrix.

        Centring on the data mean makes the expanded-square formulation
        accurate for data far from the origin.
        """
        X = _as_float(X, self.dtype)
        if X.ndim != 2:
            raise ValueError(f"Gaussian emissions need 2-D data (N, D), got shape {tuple(X.shape)}")
        n, d = X.shape
        shift = X.mean(dim=0)
        nq = self._n_quadratic(d)
        cache: dict[str, Any] = {"X": X, "shift": shift, "n": n, "d": d, "nq": nq}
        strategy = self.strategy
        if strategy == "auto":
            nbytes = n * (nq + d + 1) * X.element_size()
            strategy = "moments" if nbytes <= _MAX_DESIGN_BYTES else "direct"
        cache["strategy"] = strategy
        if strategy == "moments":
            design = torch.empty((n, nq + d + 1), dtype=X.dtype)
            xc = design[:, nq : nq + d]
            torch.sub(X, shift, out=xc)
            design[:, -1] = 1.0
            if self.covariance_type in ("full", "tied"):
                iu = torch.triu_indices(d, d)
                cache["triu"] = iu
                torch.mul(xc[:, iu[0]], xc[:, iu[1]], out=design[:, :nq])
            elif self.covariance_type == "diag":
                torch.mul(xc, xc, out=design[:, :nq])
            else:
                torch.sum(xc * xc, dim=1, keepdim=True, out=design[:, :nq])
            cache["design"] = design
            cache["xc"] = xc
        else:
            cache["xc"] = X - shift
        return cache

    def _cache(self, X: Any, cache: dict | None) -> dict:
        return cache if cache is not None else self.precompute(X)

    # ---- parameters -------------------------------------------------------

    def complete_params(self, params: Params, dtype: torch.dtype | None = None) -> Params:
        """Convert to tensors and fill ``covariances`` / ``precisions_cholesky``.

        Accepts any one of ``"covariances"``, ``"precisions"`` (sklearn's
        ``precisions_init``) or ``"precisions_cholesky"``.
        """
        out = dict(params)
        dtype = dtype or self.dtype
        means = _as_float(out["means"], dtype)
        out["means"] = means
        for key in ("weights", "covariances", "precisions", "precisions_cholesky"):
            if key in out and out[key] is not None:
                out[key] = _as_float(out[key], dtype)
        ct = self.covariance_type
        if "precisions_cholesky" not in out:
            if "precisions" in out:
                out["precisions_cholesky"] = _precision_cholesky_from_precisions(out["precisions"], ct)
            elif "covariances" in out:
                out["precisions_cholesky"] = _precision_cholesky(out["covariances"], ct)[0]
            else:
                raise ValueError("Gaussian params need 'covariances', 'precisions' or 'precisions_cholesky'")
        if "covariances" not in out:
            out["covariances"] = _covariances_from_precision_cholesky(out["precisions_cholesky"], ct)
        out.pop("precisions", None)
        return out

    def n_parameters(self, params: Params) -> int:
        """Means plus covariance parameters (sklearn ``_n_parameters`` minus weights)."""
        k, d = params["means"].shape
        cov = {
            "full": k * d * (d + 1) / 2.0,
            "diag": k * d,
            "tied": d * (d + 1) / 2.0,
            "spherical": k,
        }[self.covariance_type]
        return int(cov + k * d)

    # ---- log densities ----------------------------------------------------

    def log_prob(self, X: Any, params: Params, *, cache: dict | None = None) -> torch.Tensor:
        """Log density of every point under every component, shape (N, K)."""
        cache = self._cache(X, cache)
        if "precisions_cholesky" not in params:
            params = self.complete_params(params)
        means = params["means"]
        prec_chol = params["precisions_cholesky"]
        if cache["strategy"] == "moments":
            coef = self._log_prob_coefficients(means - cache["shift"], prec_chol, cache)
            if coef is not None:
                return cache["design"] @ coef
        return self._log_prob_direct(cache["xc"], means - cache["shift"], prec_chol)

    def _log_prob_coefficients(self, mu: torch.Tensor, prec_chol: torch.Tensor, cache: dict) -> torch.Tensor | None:
        """(F, K) matrix with ``design @ coef == log_prob`` for centred means ``mu``.

        Returns None when ``mu' P mu`` is so large that expanding the square
        would cancel away too many digits.
        """
        ct = self.covariance_type
        k, d = mu.shape
        const = -0.5 * d * math.log(2 * math.pi)
        if ct in ("full", "tied"):
            prec = prec_chol @ prec_chol.transpose(-1, -2)
            if ct == "tied":
                prec = prec.expand(k, d, d)
                log_det = torch.log(torch.diagonal(prec_chol)).sum().expand(k)
            else:
                log_det = torch.log(torch.diagonal(prec_chol, dim1=-2, dim2=-1)).sum(-1)
            iu = cache["triu"]
            quad = prec[:, iu[0], iu[1]] * torch.where(iu[0] == iu[1], -0.5, -1.0).to(mu.dtype)
            lin = (prec @ mu.unsqueeze(-1)).squeeze(-1)
            mpm = (lin * mu).sum(-1)
        elif ct == "diag":
            prec = prec_chol * prec_chol
            log_det = torch.log(prec_chol).sum(-1)
            quad = -0.5 * prec
            lin = prec * mu
            mpm = (lin * mu).sum(-1)
        else:
            prec = prec_chol * prec_chol
            log_det = d * torch.log(prec_chol)
            quad = (-0.5 * prec).unsqueeze(1)
            lin = prec.unsqueeze(1) * mu
            mpm = prec * (mu * mu).sum(-1)
        # Expanding the square costs ~eps * mu'P mu' absolute accuracy in the
        # log density (7e-9 at the threshold); beyond it use the direct form.
        if bool((mpm > 1e7).any()):
            return None
        bias = const + log_det - 0.5 * mpm
        return torch.cat([quad, lin, bias.unsqueeze(1)], dim=1).T.contiguous()

    def _log_prob_direct(self, xc: torch.Tensor, mu: torch.Tensor, prec_chol: torch.Tensor) -> torch.Tensor:
        """sklearn's formulation, all components in one matmul."""
        ct = self.covariance_type
        n, d = xc.shape
        k = mu.shape[0]
        const = -0.5 * d * math.log(2 * math.pi)
        if ct in ("full", "tied"):
            if ct == "tied":
                log_det = torch.log(torch.diagonal(prec_chol)).sum().expand(k)
                chol = prec_chol.expand(k, d, d)
            else:
                log_det = torch.log(torch.diagonal(prec_chol, dim1=-2, dim2=-1)).sum(-1)
                chol = prec_chol
            # (D, K*D): column block k is L_k, so one GEMM gives every x L_k.
            stacked = chol.permute(1, 0, 2).reshape(d, k * d)
            y = xc @ stacked
            y -= (mu.unsqueeze(1) @ chol).reshape(1, k * d)
            y.square_()
            maha = y.view(n, k, d).sum(-1)
        else:
            if ct == "diag":
                prec = prec_chol * prec_chol
                log_det = torch.log(prec_chol).sum(-1)
            else:
                prec = (prec_chol * prec_chol).unsqueeze(1).expand(k, d)
                log_det = d * torch.log(prec_chol)
            maha = (xc * xc) @ prec.T
            maha -= 2.0 * (xc @ (mu * prec).T)
            maha += (mu * mu * prec).sum(-1)
        return maha.mul_(-0.5).add_(const + log_det)

    # ---- M-step -----------------------------------------------------------

    def m_step(
        self,
        X: Any,
        resp: torch.Tensor,
        params: Params | None = None,
        reg: float | None = None,
        *,
        cache: dict | None = None,
    ) -> Params:
        """Weighted MLE of means and covariances (sklearn's M-step).

        Parameters
        ----------
        X : (N, D) data
        resp : torch.Tensor, shape (N, K)
        params : dict, optional
            Previous parameters; an empty component keeps its previous mean and
            covariance (a warning is issued).
        reg : float, optional
            ``reg_covar`` added to the covariance diagonal (default 1e-6).

        Returns
        -------
        dict with ``means``, ``covariances``, ``precisions_cholesky``.
        """
        cache = self._cache(X, cache)
        reg = self.default_reg if reg is None else float(reg)
        ct = self.covariance_type
        n, d, nq = cache["n"], cache["d"], cache["nq"]
        shift = cache["shift"]
        xc = cache["xc"]
        resp = resp.to(xc.dtype)
        eps10 = 10 * torch.finfo(xc.dtype).eps

        if cache["strategy"] == "moments":
            stats = resp.T @ cache["design"]  # (K, F)
            resp_sum = stats[:, -1]
            s_lin = stats[:, nq : nq + d]
            s_quad = stats[:, :nq]
        else:
            resp_sum = resp.sum(0)
            s_lin = resp.T @ xc
            s_quad = None
        nk = resp_sum + eps10
        mu = s_lin / nk.unsqueeze(1)
        k = mu.shape[0]

        empty = _empty_components(resp_sum, n)
        cov = self._covariances(xc, resp, nk, mu, s_quad, cache, reg)

        means = mu + shift
        if bool(empty.any()):
            _warn(f"{int(empty.sum())} of {k} components received no responsibility; keeping their previous parameters")
            prev_means = None if params is None else params.get("means")
            prev_cov = None if params is None else params.get("covariances")
            means = _keep_previous(means, prev_means, shift, empty)
            if ct != "tied":
                fallback = _global_covariance(xc, ct, reg)
                cov = _keep_previous(cov, prev_cov, fallback, empty)
        prec_chol, cov = _precision_cholesky(cov, ct, reg=reg, repair=True)
        return {"means": means, "covariances": cov, "precisions_cholesky": prec_chol}

    def _covariances(
        self,
        xc: torch.Tensor,
        resp: torch.Tensor,
        nk: torch.Tensor,
        mu: torch.Tensor,
        s_quad: torch.Tensor | None,
        cache: dict,
        reg: float,
    ) -> torch.Tensor:
        ct = self.covariance_type
        k, d = mu.shape
        if s_quad is None:
            return _two_pass_covariances(xc, resp, nk, mu, ct, reg)
        if ct in ("full", "tied"):
            iu = cache["triu"]
            second = torch.empty((k, d, d), dtype=mu.dtype)
            second[:, iu[0], iu[1]] = s_quad
            second[:, iu[1], iu[0]] = s_quad
            if ct == "tied":
                total = nk.sum()
                raw = second.sum(0) / total
                cov = raw - (nk[:, None, None] * (mu.unsqueeze(2) * mu.unsqueeze(1))).sum(0) / total
                if _cancels(torch.diagonal(raw), torch.diagonal(cov), reg).any():
                    return _two_pass_covariances(xc, resp, nk, mu, ct, reg)
            else:
                raw = second / nk[:, None, None]
                cov = raw - mu.unsqueeze(2) * mu.unsqueeze(1)
                bad = _cancels(torch.diagonal(raw, dim1=-2, dim2=-1), torch.diagonal(cov, dim1=-2, dim2=-1), reg).any(
                    -1
                )
                if bool(bad.any()):
                    idx = torch.nonzero(bad).flatten()
                    cov[idx] = _two_pass_covariances(xc, resp[:, idx], nk[idx], mu[idx], "full", 0.0)
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
            cov[idx] = _two_pass_covariances(xc, resp[:, idx], nk[idx], mu[idx], ct, 0.0)
        return cov + reg

    # ---- sampling ---------------------------------------------------------

    def sample(
        self,
        params: Params,
        component_indices: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw one point per entry of ``component_indices``, shape (n, D)."""
        params = self.complete_params(params)
        means = params["means"]
        cov = params["covariances"]
        z = torch.as_tensor(component_indices, dtype=torch.long)
        eps = torch.randn((z.shape[0], means.shape[1]), generator=generator, dtype=means.dtype)
        ct = self.covariance_type
        if ct == "full":
            chol = torch.linalg.cholesky(cov)
            return means[z] + (chol[z] @ eps.unsqueeze(-1)).squeeze(-1)
        if ct == "tied":
            return means[z] + eps @ torch.linalg.cholesky(cov).T
        if ct == "diag":
            return means[z] + eps * cov[z].sqrt()
        return means[z] + eps * cov[z].sqrt().unsqueeze(1)


def _cancels(raw: torch.Tensor, centred: torch.Tensor, reg: float) -> torch.Tensor:
    """True where ``centred = raw - mean^2`` lost too many digits to cancellation.

    The rounding error (~eps * raw) only matters relative to the variance that
    is actually used, ``centred + reg``; a feature that is constant within a
    component is fine as long as ``reg`` dominates the error.
    """
    return raw.abs() > _CANCELLATION_RATIO * (centred.abs() + reg)


def _global_covariance(xc: torch.Tensor, ct: str, reg: float) -> torch.Tensor:
    n, d = xc.shape
    cov = (xc.T @ xc) / max(n, 1)
    cov.diagonal().add_(reg)
    if ct == "full":
        return cov
    if ct == "diag":
        return cov.diagonal().clone()
    return cov.diagonal().mean()


def _two_pass_covariances(
    xc: torch.Tensor, resp: torch.Tensor, nk: torch.Tensor, mu: torch.Tensor, ct: str, reg: float
) -> torch.Tensor:
    """Covariances from centred residuals, sklearn's accurate formulation."""
    k, d = mu.shape
    if ct in ("full", "tied"):
        cov = torch.empty((k, d, d), dtype=xc.dtype)
        for j in range(k):
            diff = xc - mu[j]
            cov[j] = (resp[:, j].unsqueeze(0) * diff.T) @ diff
        if ct == "tied":
            out = cov.sum(0) / nk.sum()
            out.diagonal().add_(reg)
            return out
        cov /= nk[:, None, None]
        cov.diagonal(dim1=-2, dim2=-1).add_(reg)
        return cov
    cov = torch.empty((k, d), dtype=xc.dtype)
    for j in range(k):
        diff = xc - mu[j]
        cov[j] = (resp[:, j] @ (diff * diff)) / nk[j]
    if ct == "spherical":
        return cov.mean(-1) + reg
    return cov + reg


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
            _warn(f"singular covariance repaired by adding {jitter:.3g} to its diagonal")
        eye = torch.eye(d, dtype=cov.dtype).expand_as(chol)
        prec_chol = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2)
        return prec_chol, cov
    if bool((cov <= 0).any()):
        if not repair:
            raise ValueError("Variances must be positive; increase reg_covar")
        floor = max(reg, 1e-10)
        _warn(f"non-positive variance replaced by {floor:.3g}")
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


# --------------------------------------------------------------------------- discrete


def _weighted_means(cache: dict, resp: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """Responsibility-weighted feature means (K, D): the closed-form M-step of Bernoulli and Poisson emissions.

    An empty component keeps its previous parameters (or the data mean), with an :class:`EMDegeneracyWarning`.
    """
    data = cache["X"]
    resp = resp.to(data.dtype)
    resp_sum = resp.sum(0)
    nk = resp_sum + 10 * torch.finfo(data.dtype).eps
    means = (resp.T @ data) / nk.unsqueeze(1)
    empty = _empty_components(resp_sum, cache["n"])
    if bool(empty.any()):
        _warn(f"{int(empty.sum())} components received no responsibility; keeping previous")
        means = _keep_previous(means, previous, data.mean(0), empty)
    return means


class Bernoulli:
    """Independent Bernoulli features (binary data, shape (N, D)).

    Parameter dict: ``{"probs": (K, D)}``.  ``reg`` clamps probabilities to
    ``[reg, 1 - reg]`` (default 1e-10) so ``log`` never sees 0; the clamped
    value is the constrained maximiser, so EM stays monotone.
    """

    default_reg = 1e-10

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        self.dtype = _check_dtype(dtype)

    def __repr__(self) -> str:
        return "Bernoulli()"

    def precompute(self, X: Any) -> dict[str, Any]:
        X = _as_float(X, self.dtype)
        if X.ndim != 2:
            raise ValueError(f"Bernoulli emissions need 2-D data (N, D), got {tuple(X.shape)}")
        if bool(((X != 0) & (X != 1)).any()):
            raise ValueError("Bernoulli data must be 0/1")
        return {"X": X, "n": X.shape[0]}

    def complete_params(self, params: Params, dtype: torch.dtype | None = None) -> Params:
        out = dict(params)
        out["probs"] = _as_float(out["probs"], dtype or self.dtype)
        if "weights" in out:
            out["weights"] = _as_float(out["weights"], out["probs"].dtype)
        return out

    def n_parameters(self, params: Params) -> int:
        return int(params["probs"].numel())

    def log_prob(self, X: Any, params: Params, *, cache: dict | None = None) -> torch.Tensor:
        cache = cache if cache is not None else self.precompute(X)
        p = params["probs"]
        log1m = torch.log1p(-p)
        return torch.addmm(log1m.sum(-1).unsqueeze(0), cache["X"], (torch.log(p) - log1m).T)

    def m_step(
        self,
        X: Any,
        resp: torch.Tensor,
        params: Params | None = None,
        reg: float | None = None,
        *,
        cache: dict | None = None,
    ) -> Params:
        cache = cache if cache is not None else self.precompute(X)
        reg = self.default_reg if reg is None else float(reg)
        probs = _weighted_means(cache, resp, None if params is None else params.get("probs"))
        # In float32 1 - 1e-10 rounds to 1: never clamp closer than eps.
        eps = max(reg, float(torch.finfo(probs.dtype).eps))
        return {"probs": probs.clamp(eps, 1.0 - eps)}

    def sample(
        self,
        params: Params,
        component_indices: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        z = torch.as_tensor(component_indices, dtype=torch.long)
        return torch.bernoulli(params["probs"][z], generator=generator)


class Categorical:
    """One categorical symbol per observation (integers ``0..n_categories-1``).

    Data: shape (N,) or (N, 1) integers (hmmlearn's ``CategoricalHMM`` layout).
    Parameter dict: ``{"probs": (K, n_categories)}`` (hmmlearn's
    ``emissionprob_``).  ``reg`` floors probabilities (then renormalised).
    """

    default_reg = 1e-10

    def __init__(self, n_categories: int | None = None, dtype: torch.dtype = torch.float64) -> None:
        self.n_categories = n_categories
        self.dtype = _check_dtype(dtype)

    def __repr__(self) -> str:
        return f"Categorical(n_categories={self.n_categories})"

    def precompute(self, X: Any) -> dict[str, Any]:
        x = torch.as_tensor(X)
        if x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 1:
            raise ValueError("Categorical data must have shape (N,) or (N, 1)")
        if x.is_floating_point():
            if bool((x != x.round()).any()):
                raise ValueError("Categorical symbols must be integers")
        x = x.long()
        if x.numel() and int(x.min()) < 0:
            raise ValueError("Categorical symbols must be non-negative")
        n_cat = self.n_categories
        if n_cat is not None and x.numel() and int(x.max()) >= n_cat:
            raise ValueError(f"symbol {int(x.max())} >= n_categories={n_cat}")
        return {"X": x, "n": x.shape[0]}

    def complete_params(self, params: Params, dtype: torch.dtype | None = None) -> Params:
        out = dict(params)
        out["probs"] = _as_float(out["probs"], dtype or self.dtype)
        if "weights" in out:
            out["weights"] = _as_float(out["weights"], out["probs"].dtype)
        return out

    def n_parameters(self, params: Params) -> int:
        k, c = params["probs"].shape
        return int(k * (c - 1))

    def log_prob(self, X: Any, params: Params, *, cache: dict | None = None) -> torch.Tensor:
        cache = cache if cache is not None else self.precompute(X)
        return torch.log(params["probs"]).T.index_select(0, cache["X"])

    def m_step(
        self,
        X: Any,
        resp: torch.Tensor,
        params: Params | None = None,
        reg: float | None = None,
        *,
        cache: dict | None = None,
    ) -> Params:
        cache = cache if cache is not None else self.precompute(X)
        reg = self.default_reg if reg is None else float(reg)
        x = cache["X"]
        k = resp.shape[1]
        if self.n_categories is not None:
            n_cat = self.n_categories
        elif params is not None and "probs" in params:
            n_cat = params["probs"].shape[1]
        else:
            n_cat = int(x.max()) + 1
        dtype = self.dtype
        counts = torch.zeros((n_cat, k), dtype=dtype).index_add_(0, x, resp.to(dtype)).T
        resp_sum = counts.sum(1)
        empty = _empty_components(resp_sum, cache["n"])
        probs = counts / (resp_sum + 10 * torch.finfo(dtype).eps).unsqueeze(1)
        if bool(empty.any()):
            _warn(f"{int(empty.sum())} components received no responsibility; keeping previous")
            prev = None if params is None else params.get("probs")
            overall = torch.bincount(x, minlength=n_cat).to(dtype)
            probs = _keep_previous(probs, prev, overall / overall.sum(), empty)
        if reg > 0:
            probs = probs.clamp_min(reg)
            probs = probs / probs.sum(1, keepdim=True)
        return {"probs": probs}

    def sample(
        self,
        params: Params,
        component_indices: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        z = torch.as_tensor(component_indices, dtype=torch.long)
        if z.numel() == 0:
            return torch.empty(0, dtype=torch.long)
        return torch.multinomial(params["probs"][z], 1, generator=generator).squeeze(1)


class Poisson:
    """Independent Poisson counts, shape (N, D).

    Parameter dict: ``{"rates": (K, D)}`` (hmmlearn's ``lambdas_``).  ``reg``
    floors the rates (default 1e-10) so ``log`` stays finite.
    """

    default_reg = 1e-10

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        self.dtype = _check_dtype(dtype)

    def __repr__(self) -> str:
        return "Poisson()"

    def precompute(self, X: Any) -> dict[str, Any]:
        X = _as_float(X, self.dtype)
        if X.ndim == 1:
            X = X.unsqueeze(1)
        if bool((X < 0).any()) or bool((X != X.round()).any()):
            raise ValueError("Poisson data must be non-negative integers")
        return {"X": X, "n": X.shape[0], "lgamma": torch.lgamma(X + 1).sum(-1, keepdim=True)}

    def complete_params(self, params: Params, dtype: torch.dtype | None = None) -> Params:
        out = dict(params)
        out["rates"] = _as_float(out["rates"], dtype or self.dtype)
        if "weights" in out:
            out["weights"] = _as_float(out["weights"], out["rates"].dtype)
        return out

    def n_parameters(self, params: Params) -> int:
        return int(params["rates"].numel())

    def log_prob(self, X: Any, params: Params, *, cache: dict | None = None) -> torch.Tensor:
        cache = cache if cache is not None else self.precompute(X)
        rates = params["rates"]
        out = cache["X"] @ torch.log(rates).T
        out -= rates.sum(-1)
        out -= cache["lgamma"]
        return out

    def m_step(
        self,
        X: Any,
        resp: torch.Tensor,
        params: Params | None = None,
        reg: float | None = None,
        *,
        cache: dict | None = None,
    ) -> Params:
        cache = cache if cache is not None else self.precompute(X)
        reg = self.default_reg if reg is None else float(reg)
        rates = _weighted_means(cache, resp, None if params is None else params.get("rates"))
        return {"rates": rates.clamp_min(reg)}

    def sample(
        self,
        params: Params,
        component_indices: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        z = torch.as_tensor(component_indices, dtype=torch.long)
        return torch.poisson(params["rates"][z], generator=generator)


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
