"""Normal emissions whose mean is linear in the parameters given the state: weighted least squares.

``y_n | z_n = k ~ N(phi_n . coefs_k, variances_k)``: a mixture of linear regressions (or regressions within the
states of a chain). The data matrix holds the response in column 0 and the design ``phi_n`` (F columns) after it;
the recogniser (:mod:`ppl_lvm.em.linear`) reads both from the model as written. The M-step of each component is the
weighted least-squares fit ``coefs_k = (Phi' R_k Phi)^-1 Phi' R_k y`` and the weighted mean squared residual.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import LocalPass, Params, _as_float, _check_dtype, _empty_components, _keep_previous, _warn

__all__ = ["LinearGaussian"]

# The residual sum of squares from the summed moments, y'Ry - coefs'Phi'Ry, loses about eps * y'Ry / RSS
# relative accuracy to cancellation; above this ratio (more than 4 of the 16 digits) that component's residuals are
# summed directly (one more pass over the data), as the Gaussian family does for its covariances.
_CANCELLATION_RATIO = 1e4


class LinearGaussian:
    """Normal emissions with a mean linear in per-component coefficients (weighted least squares).

    Parameters
    ----------
    dtype : torch.dtype, default float64

    Notes
    -----
    Data: ``(N, 1 + F)``, the response then the design. Parameter dict: ``"coefs"`` (K, F), ``"variances"`` (K,).
    ``reg`` in :meth:`m_step` is added to the variances (as scikit-learn's ``reg_covar``, default 1e-6). A
    component whose weighted design is singular gets the minimum-norm least-squares coefficients.
    """

    default_reg = 1e-6
    #: the start of ``method="em"`` unless ``init_params`` says otherwise: the model's own parameter values
    default_init = "params"

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        self.dtype = _check_dtype(dtype)

    def __repr__(self) -> str:
        return "LinearGaussian()"

    def precompute(self, X: Any, summary: dict | None = None) -> dict[str, Any]:
        """The response, the design and the per-row products ``[y^2, y phi, phi phi' (upper triangle), 1]`` whose
        responsibility-weighted sums are the M-step's statistics (one ``(K, N) @ (N, G)`` product)."""
        X = _as_float(X, self.dtype)
        if X.ndim != 2 or X.shape[1] < 2:
            raise ValueError(f"regression emissions need an (N, 1 + F) matrix, response then design, got {tuple(X.shape)}")
        n, f = X.shape[0], X.shape[1] - 1
        y, design = X[:, 0], X[:, 1:]
        iu = torch.triu_indices(f, f)
        products = torch.cat([(y * y).unsqueeze(1), y.unsqueeze(1) * design, design[:, iu[0]] * design[:, iu[1]],
                              torch.ones(n, 1, dtype=X.dtype)], dim=1)
        return {"X": X, "y": y, "design": design, "products": products, "triu": iu, "n": n, "f": f}

    def summary(self, X: Any) -> dict[str, torch.Tensor]:
        """Additive data-only sums of a chunk (``n``, ``sum``)."""
        X = _as_float(X, self.dtype)
        return {"n": torch.tensor(float(X.shape[0]), dtype=torch.float64), "sum": X.sum(0).to(torch.float64)}

    def complete_params(self, params: Params, dtype: torch.dtype | None = None) -> Params:
        out = dict(params)
        dtype = dtype or self.dtype
        for key in ("coefs", "variances", "weights"):
            if key in out:
                out[key] = _as_float(out[key], dtype)
        return out

    def n_parameters(self, params: Params) -> int:
        """Coefficients plus one variance per component."""
        return int(params["coefs"].numel() + params["variances"].numel())

    def log_prob(self, X: Any, params: Params, *, cache: dict | None = None) -> torch.Tensor:
        """``log N(y_n; phi_n . coefs_k, variances_k)``, shape (N, K)."""
        cache = cache if cache is not None else self.precompute(X)
        variances = params["variances"]
        residual = cache["y"].unsqueeze(1) - cache["design"] @ params["coefs"].T
        residual.square_().mul_(-0.5 / variances)
        return residual.add_(-0.5 * (math.log(2 * math.pi) + torch.log(variances)))

    def statistics(self, resp: torch.Tensor, cache: dict, params: Params | None = None) -> dict[str, torch.Tensor]:
        """``moments`` (K, G): the responsibility-weighted sums of :meth:`precompute`'s products (their last column
        the summed responsibilities)."""
        return {"moments": resp.to(cache["products"].dtype).T @ cache["products"]}

    def m_step(self, X: Any, resp: torch.Tensor, params: Params | None = None, reg: float | None = None, *,
               cache: dict | None = None) -> Params:
        cache = cache if cache is not None else self.precompute(X)
        return self.m_step_statistics(self.statistics(resp, cache), params, reg, cache, LocalPass(self, cache, resp))

    def m_step_statistics(self, stats: dict, params: Params | None, reg: float | None, cache: dict,
                          data: Any) -> Params:
        """Weighted least squares of every component from the summed statistics (see ``Gaussian.m_step_statistics``
        for ``cache`` and ``data``)."""
        reg = self.default_reg if reg is None else float(reg)
        f, iu = cache["f"], cache["triu"]
        moments = stats["moments"]
        k = moments.shape[0]
        yy, yphi, resp_sum = moments[:, 0], moments[:, 1 : 1 + f], moments[:, -1]
        gram = torch.empty((k, f, f), dtype=moments.dtype)
        gram[:, iu[0], iu[1]] = moments[:, 1 + f : -1]
        gram[:, iu[1], iu[0]] = moments[:, 1 + f : -1]
        coefs = _solve(gram, yphi)
        nk = resp_sum + 10 * torch.finfo(moments.dtype).eps
        rss = yy - (coefs * yphi).sum(-1)
        bad = yy > _CANCELLATION_RATIO * (rss.abs() + reg * nk)
        if bool(bad.any()):
            idx = torch.nonzero(bad).flatten()
            rss[idx] = data.weighted_sum(lambda c, r: _residual_sums(c, r, coefs, idx))
        variances = rss.clamp_min(0) / nk + reg
        empty = _empty_components(resp_sum, data.n)
        if bool(empty.any()):
            _warn(f"{int(empty.sum())} of {k} components received no responsibility; keeping their previous parameters")
            previous = params or {}
            summary = data.summary()
            mean_y = float(summary["sum"][0] / summary["n"])
            coefs = _keep_previous(coefs, previous.get("coefs"), torch.zeros(f, dtype=coefs.dtype), empty)
            variances = _keep_previous(variances, previous.get("variances"),
                                       torch.tensor(max(mean_y**2, 1.0), dtype=coefs.dtype), empty)
        return {"coefs": coefs, "variances": variances}

    def sample(self, params: Params, component_indices: torch.Tensor, generator: torch.Generator | None = None):
        raise ValueError("a mixture of regressions draws responses given covariates, which sample() does not "
                         "take: draw from the model with the fitted parameters instead (lvm.infer's result, "
                         "predictive draws)")


def _solve(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``gram_k^-1 rhs_k`` for every component; the minimum-norm solution where ``gram_k`` is singular."""
    chol, info = torch.linalg.cholesky_ex(gram)
    out = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
    singular = info != 0
    if bool(singular.any()):
        out[singular] = (torch.linalg.pinv(gram[singular], hermitian=True) @ rhs[singular].unsqueeze(-1)).squeeze(-1)
    return out


def _residual_sums(cache: dict, resp: torch.Tensor, coefs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``sum_n r_nk (y_n - phi_n . coefs_k)^2`` of the components ``idx`` (summed directly: no cancellation)."""
    residual = cache["y"].unsqueeze(1) - cache["design"] @ coefs[idx].T
    return (resp[:, idx].to(residual.dtype) * residual.square()).sum(0)
