"""Multivariate Gaussian emissions with scikit-learn ``GaussianMixture`` semantics."""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import LocalPass, Params, _as_float, _check_dtype, _empty_components, _keep_previous, _warn
from .covariance import (
    _covariances_from_precision_cholesky,
    _global_covariance,
    _precision_cholesky,
    _precision_cholesky_from_precisions,
    moment_covariances,
)

__all__ = ["COVARIANCE_TYPES", "Gaussian"]

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")

# Largest mu' P mu (centred mean, precision) for which a log density is computed by expanding the square.
_EXPAND_LIMIT = 1e4

# Above this many bytes the (N, D(D+1)/2) design matrix is not built and the
# direct Cholesky formulation is used.
_MAX_DESIGN_BYTES = 512 * 2**20


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

    def summary(self, X: Any) -> dict[str, torch.Tensor]:
        """Additive data-only sums of a chunk: ``n``, ``sum`` (their totals give the centring shift) and ``direct``
        (1 when this chunk is too large for its design matrix, so it gives no ``s_quad``)."""
        X = _as_float(X, self.dtype)
        if X.ndim != 2:
            raise ValueError(f"Gaussian emissions need 2-D data (N, D), got shape {tuple(X.shape)}")
        direct = self._strategy(X.shape[0], X.shape[1], X.element_size()) == "direct"
        return {"n": torch.tensor(float(X.shape[0]), dtype=torch.float64), "sum": X.sum(0).to(torch.float64),
                "direct": torch.tensor(float(direct), dtype=torch.float64)}

    def _strategy(self, n: int, d: int, itemsize: int) -> str:
        if self.strategy != "auto":
            return self.strategy
        nbytes = n * (self._n_quadratic(d) + d + 1) * itemsize
        return "moments" if nbytes <= _MAX_DESIGN_BYTES else "direct"

    def precompute(self, X: Any, summary: dict | None = None) -> dict[str, Any]:
        """Centre the data and (moments strategy) build the design matrix.

        Centring on the data mean makes the expanded-square formulation
        accurate for data far from the origin.  ``summary``: the totals of
        :meth:`summary` over the whole data, for a chunk of it (every chunk is
        then centred on the same shift, so their statistics add up).
        """
        X = _as_float(X, self.dtype)
        if X.ndim != 2:
            raise ValueError(f"Gaussian emissions need 2-D data (N, D), got shape {tuple(X.shape)}")
        n, d = X.shape
        shift = X.mean(dim=0) if summary is None else (summary["sum"] / summary["n"]).to(X.dtype)
        nq = self._n_quadratic(d)
        cache: dict[str, Any] = {"X": X, "shift": shift, "n": n, "d": d, "nq": nq}
        strategy = self._strategy(n, d, X.element_size())
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
        # Expanding the square costs ~eps * mu'P mu absolute accuracy in the log density (~2e-12 at the
        # threshold); beyond it use the direct form.  (1e7, ~2e-9, made the history of outlier data jitter
        # by ~3e-9 relative at convergence.)
        if bool((mpm > _EXPAND_LIMIT).any()):
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
            # Centred per component (not sklearn's expanded square, which loses ~eps * x'Px absolute accuracy:
            # this route is taken exactly when the means are far from the data mean relative to the spread).
            maha = torch.empty((n, k), dtype=xc.dtype)
            for j in range(k):
                diff = xc - mu[j]
                diff.square_()
                maha[:, j] = diff @ prec[j]
        return maha.mul_(-0.5).add_(const + log_det)

    # ---- M-step -----------------------------------------------------------

    #: statistics a chunk without a design matrix cannot give; dropped everywhere when a summary counts ``direct``
    optional_statistics = ("s_quad",)

    def statistics(self, resp: torch.Tensor, cache: dict, params: Params | None = None) -> dict[str, torch.Tensor]:
        """Additive expected sufficient statistics of the data in ``cache`` under ``resp`` (N, K).

        ``resp_sum`` (K,), ``s_lin`` (K, D) and, with the moments strategy, ``s_quad`` (K, F): the sums of
        ``resp * [q(xc), xc]``, ``xc`` the data centred on the cache's shift.  ``params`` are not needed.
        """
        resp = resp.to(cache["xc"].dtype)
        if cache["strategy"] == "moments":
            nq, d = cache["nq"], cache["d"]
            stats = resp.T @ cache["design"]  # (K, F)
            return {"resp_sum": stats[:, -1], "s_lin": stats[:, nq : nq + d], "s_quad": stats[:, :nq]}
        return {"resp_sum": resp.sum(0), "s_lin": resp.T @ cache["xc"]}

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
        return self.m_step_statistics(self.statistics(resp, cache), params, reg, cache,
                                      LocalPass(self, cache, resp))

    def m_step_statistics(self, stats: dict, params: Params | None, reg: float | None, cache: dict,
                          data: Any) -> Params:
        """:meth:`m_step` from the summed :meth:`statistics` of all the data.

        ``cache`` is one chunk's cache (only its shift, sizes and index tables are read); ``data`` gives
        ``n`` and reads the data again when a component needs it (:class:`~ppl_lvm.em.families.base.LocalPass`
        for data in memory).
        """
        reg = self.default_reg if reg is None else float(reg)
        ct = self.covariance_type
        shift = cache["shift"]
        resp_sum, s_lin = stats["resp_sum"], stats["s_lin"]
        eps10 = 10 * torch.finfo(s_lin.dtype).eps
        nk = resp_sum + eps10
        mu = s_lin / nk.unsqueeze(1)
        k = mu.shape[0]

        empty = _empty_components(resp_sum, data.n)
        cov = moment_covariances(ct, nk, mu, stats.get("s_quad"), cache.get("triu"), reg, data.centred_sums)

        means = mu + shift
        if bool(empty.any()):
            _warn(f"{int(empty.sum())} of {k} components received no responsibility; keeping their previous parameters")
            prev_means = None if params is None else params.get("means")
            prev_cov = None if params is None else params.get("covariances")
            means = _keep_previous(means, prev_means, shift, empty)
            if ct != "tied":
                fallback = _global_covariance(data.second_moment(), data.n, ct, reg)
                cov = _keep_previous(cov, prev_cov, fallback, empty)
        prec_chol, cov = _precision_cholesky(cov, ct, reg=reg, repair=True)
        return {"means": means, "covariances": cov, "precisions_cholesky": prec_chol}

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
