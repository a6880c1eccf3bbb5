"""Discrete emission families: independent Bernoulli features, one categorical symbol, independent Poisson counts."""

from __future__ import annotations

from typing import Any

import torch

from .base import LocalPass, Params, _as_float, _check_dtype, _empty_components, _keep_previous, _warn

__all__ = ["Bernoulli", "Categorical", "Poisson"]


def _mean_statistics(cache: dict, resp: torch.Tensor) -> dict[str, torch.Tensor]:
    """Additive statistics of Bernoulli and Poisson emissions: ``resp_sum`` (K,) and ``s_lin = resp' X`` (K, D)."""
    data = cache["X"]
    resp = resp.to(data.dtype)
    return {"resp_sum": resp.sum(0), "s_lin": resp.T @ data}


def _data_summary(X: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"n": torch.tensor(float(X.shape[0]), dtype=torch.float64), "sum": X.sum(0).to(torch.float64)}


def _weighted_means(stats: dict, data: Any, previous: torch.Tensor | None) -> torch.Tensor:
    """Responsibility-weighted feature means (K, D): the closed-form M-step of Bernoulli and Poisson emissions.

    An empty component keeps its previous parameters (or the data mean), with an :class:`EMDegeneracyWarning`.
    """
    resp_sum, s_lin = stats["resp_sum"], stats["s_lin"]
    nk = resp_sum + 10 * torch.finfo(s_lin.dtype).eps
    means = s_lin / nk.unsqueeze(1)
    empty = _empty_components(resp_sum, data.n)
    if bool(empty.any()):
        _warn(f"{int(empty.sum())} components received no responsibility; keeping previous")
        summary = data.summary()
        means = _keep_previous(means, previous, (summary["sum"] / summary["n"]).to(means.dtype), empty)
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

    def precompute(self, X: Any, summary: dict | None = None) -> dict[str, Any]:
        # summary: the whole data's sums, for a chunk; nothing here depends on them (no centring)
        X = _as_float(X, self.dtype)
        if X.ndim != 2:
            raise ValueError(f"Bernoulli emissions need 2-D data (N, D), got {tuple(X.shape)}")
        if bool(((X != 0) & (X != 1)).any()):
            raise ValueError("Bernoulli data must be 0/1")
        return {"X": X, "n": X.shape[0]}

    def summary(self, X: Any) -> dict[str, torch.Tensor]:
        """Additive data-only sums of a chunk (``n``, ``sum``)."""
        return _data_summary(_as_float(X, self.dtype))

    def statistics(self, resp: torch.Tensor, cache: dict, params: Params | None = None) -> dict[str, torch.Tensor]:
        """Additive expected sufficient statistics (``resp_sum``, ``s_lin``); ``params`` are not needed."""
        return _mean_statistics(cache, resp)

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
        return self.m_step_statistics(self.statistics(resp, cache), params, reg, cache, LocalPass(self, cache, resp))

    def m_step_statistics(self, stats: dict, params: Params | None, reg: float | None, cache: dict,
                          data: Any) -> Params:
        """:meth:`m_step` from the summed :meth:`statistics` of all the data (see ``Gaussian.m_step_statistics``)."""
        reg = self.default_reg if reg is None else float(reg)
        probs = _weighted_means(stats, data, None if params is None else params.get("probs"))
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

    def precompute(self, X: Any, summary: dict | None = None) -> dict[str, Any]:
        # summary: the whole data's sums, for a chunk; nothing here depends on them (no centring)
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
        return self.m_step_statistics(self.statistics(resp, cache, params), params, reg, cache,
                                      LocalPass(self, cache, resp))

    def _n_categories(self, cache: dict | None, params: Params | None) -> int:
        if self.n_categories is not None:
            return int(self.n_categories)
        if params is not None and "probs" in params:
            return int(params["probs"].shape[1])
        if cache is None:
            raise ValueError("Categorical emissions read in chunks need n_categories (or initial probs)")
        return int(cache["X"].max()) + 1

    def summary(self, X: Any) -> dict[str, torch.Tensor]:
        """Additive data-only sums of a chunk: ``n`` and the symbol ``counts`` (needs ``n_categories``)."""
        x = self.precompute(X)["X"]
        n_cat = self._n_categories(None if self.n_categories is not None else {"X": x}, None)
        return {"n": torch.tensor(float(x.shape[0]), dtype=torch.float64),
                "counts": torch.bincount(x, minlength=n_cat).to(torch.float64)}

    def statistics(self, resp: torch.Tensor, cache: dict, params: Params | None = None) -> dict[str, torch.Tensor]:
        """Additive expected sufficient statistics: the expected symbol ``counts`` (K, n_categories).

        The number of categories is ``n_categories``, else that of ``params["probs"]``, else read from the data.
        """
        n_cat = self._n_categories(cache, params)
        dtype = self.dtype
        counts = torch.zeros((n_cat, resp.shape[1]), dtype=dtype).index_add_(0, cache["X"], resp.to(dtype)).T
        return {"counts": counts}

    def m_step_statistics(self, stats: dict, params: Params | None, reg: float | None, cache: dict,
                          data: Any) -> Params:
        """:meth:`m_step` from the summed :meth:`statistics` of all the data (see ``Gaussian.m_step_statistics``)."""
        reg = self.default_reg if reg is None else float(reg)
        dtype = self.dtype
        counts = stats["counts"]
        resp_sum = counts.sum(1)
        empty = _empty_components(resp_sum, data.n)
        probs = counts / (resp_sum + 10 * torch.finfo(dtype).eps).unsqueeze(1)
        if bool(empty.any()):
            _warn(f"{int(empty.sum())} components received no responsibility; keeping previous")
            prev = None if params is None else params.get("probs")
            overall = data.summary()["counts"].to(dtype)
            if overall.numel() < probs.shape[1]:
                overall = torch.nn.functional.pad(overall, (0, probs.shape[1] - overall.numel()))
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

    def precompute(self, X: Any, summary: dict | None = None) -> dict[str, Any]:
        # summary: the whole data's sums, for a chunk; nothing here depends on them (no centring)
        X = _as_float(X, self.dtype)
        if X.ndim == 1:
            X = X.unsqueeze(1)
        if bool((X < 0).any()) or bool((X != X.round()).any()):
            raise ValueError("Poisson data must be non-negative integers")
        return {"X": X, "n": X.shape[0], "lgamma": torch.lgamma(X + 1).sum(-1, keepdim=True)}

    def summary(self, X: Any) -> dict[str, torch.Tensor]:
        """Additive data-only sums of a chunk (``n``, ``sum``)."""
        X = _as_float(X, self.dtype)
        return _data_summary(X.unsqueeze(1) if X.ndim == 1 else X)

    def statistics(self, resp: torch.Tensor, cache: dict, params: Params | None = None) -> dict[str, torch.Tensor]:
        """Additive expected sufficient statistics (``resp_sum``, ``s_lin``); ``params`` are not needed."""
        return _mean_statistics(cache, resp)

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
        return self.m_step_statistics(self.statistics(resp, cache), params, reg, cache, LocalPass(self, cache, resp))

    def m_step_statistics(self, stats: dict, params: Params | None, reg: float | None, cache: dict,
                          data: Any) -> Params:
        """:meth:`m_step` from the summed :meth:`statistics` of all the data (see ``Gaussian.m_step_statistics``)."""
        reg = self.default_reg if reg is None else float(reg)
        rates = _weighted_means(stats, data, None if params is None else params.get("rates"))
        return {"rates": rates.clamp_min(reg)}

    def sample(
        self,
        params: Params,
        component_indices: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        z = torch.as_tensor(component_indices, dtype=torch.long)
        return torch.poisson(params["rates"][z], generator=generator)
