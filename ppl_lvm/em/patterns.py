"""What the recogniser found: the sites and parameters of a closed-form mixture or hidden Markov chain.

A pattern converts between the model's parameters (the ``lvm.param`` store) and the closed-form kernels'
parameter dicts (:mod:`ppl_lvm.em.families`), in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["HMMPattern", "MixturePattern"]


@dataclass
class MixturePattern:
    """A finite mixture with a closed-form M-step: which site and parameters play which role."""

    latent: str  # the discrete site z
    observed: str  # the observed site x
    data_argument: str  # the model argument holding x
    n_components: int
    family: Any  # an emission family instance
    weights: str  # the param holding the mixing weights
    #: family parameter -> (model param name, how to convert): e.g. {"means": ("locs", "identity")}
    emission: dict[str, tuple[str, str]]
    univariate: bool  # x is (N,) and was reshaped to (N, 1) for the kernels

    #: the kernels' data matrix when it is not one model argument as given: the columns of several observed
    #: sites, or a regression's response and design (read from the model at recognition)
    data: torch.Tensor | None = None

    def data_matrix(self, value: torch.Tensor) -> torch.Tensor:
        return value.reshape(-1, 1) if self.univariate else value

    def matrix(self, kwargs: dict) -> torch.Tensor:
        """The kernels' data matrix of the model's arguments ``kwargs`` (those of the fit)."""
        return self.data if self.data is not None else self.data_matrix(kwargs[self.data_argument])

    # -------------------------------------------------------------- model params <-> kernel params
    def to_kernel(self, store: Any) -> dict[str, torch.Tensor]:
        k = self.n_components
        out = {"weights": store[self.weights].detach().to(torch.float64)}
        for key, (name, how) in self.emission.items():
            value = _read(store, name, k)
            if self.univariate and value.dim() == 1 and key in ("means", "probs", "rates"):
                value = value.unsqueeze(-1)
            if how == "square":
                value = value**2
                if self.univariate and key == "covariances" and value.dim() == 1 and self.family.covariance_type == "diag":
                    value = value.unsqueeze(-1)
            elif how == "cholesky":
                value = value @ value.transpose(-1, -2)
            elif how == "precision":
                value = _inverse(value)
            out[key] = value
        return out

    def to_model(self, params: dict[str, torch.Tensor], store: Any) -> None:
        dtype = store[self.weights].dtype
        store[self.weights] = params["weights"].to(dtype)
        for key, (name, how) in self.emission.items():
            value = params[key]
            if how == "square":
                value = value.clamp_min(0).sqrt()
            elif how == "cholesky":
                value = torch.linalg.cholesky(value)
            elif how == "precision":
                value = _inverse(value)
            _write(store, name, value, self.n_components)


def _inverse(matrix: torch.Tensor) -> torch.Tensor:
    """The inverse of a (batch of) symmetric positive definite matrices, symmetric to rounding."""
    return torch.cholesky_inverse(torch.linalg.cholesky(matrix))


def _read(store: Any, name: str | tuple, k: int) -> torch.Tensor:
    """A parameter in float64, or (a tuple of names: a parameter built per column) their columns side by side."""
    if isinstance(name, str):
        return store[name].detach().to(torch.float64)
    return torch.cat([store[n].detach().to(torch.float64).reshape(k, -1) for n in name], dim=-1)


def _write(store: Any, name: str | tuple, value: torch.Tensor, k: int) -> None:
    """:func:`_read` reversed: ``value`` written back, in each parameter's shape and dtype."""
    if isinstance(name, str):
        store[name] = value.reshape(store[name].shape).to(store[name].dtype)
        return
    value = value.reshape(k, -1)
    col = 0
    for n in name:
        width = store[n].numel() // k
        store[n] = value[:, col : col + width].reshape(store[n].shape).to(store[n].dtype)
        col += width


@dataclass
class HMMPattern:
    """A hidden Markov chain with a closed-form M-step, read from a model written with ``lvm.markov``."""

    latents: list[str]  # z_0 .. z_{T-1}
    observed: list[str]  # x_0 .. x_{T-1}
    n_components: int
    family: Any
    start: str
    trans: str
    emission: dict[str, tuple[str, str]]
    univariate: bool
    lengths: torch.Tensor  # (B,)
    data: torch.Tensor  # all sequences concatenated, hmmlearn's layout
    n_steps: int
    data_argument: str | None = None  # the model argument holding the sequences

    @property
    def latent(self) -> str:
        """The name under which the state posteriors are reported: the chain's site name without its step."""
        return self.latents[0].rsplit("_", 1)[0] if self.latents else "states"

    def step_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows of steps read chunk by chunk (hmmlearn's layout) in the kernels' layout, like :attr:`data`."""
        return rows.reshape(-1, 1) if self.univariate else rows

    def to_kernel(self, store: Any) -> dict[str, torch.Tensor]:
        mixture = MixturePattern(self.latent, "", "", self.n_components, self.family, self.start, self.emission,
                                 self.univariate)
        out = mixture.to_kernel(store)
        out["startprob"] = out.pop("weights")
        out["transmat"] = store[self.trans].detach().to(torch.float64)
        return out

    def to_model(self, params: dict[str, torch.Tensor], store: Any) -> None:
        mixture = MixturePattern(self.latent, "", "", self.n_components, self.family, self.start, self.emission,
                                 self.univariate)
        mixture.to_model({**params, "weights": params["startprob"]}, store)
        store[self.trans] = params["transmat"].to(store[self.trans].dtype)

    def pad(self, concatenated: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(sum of lengths, ...) -> (B, T, ...) padded with ``fill`` past each sequence's length."""
        b = len(self.lengths)
        out = torch.full((b, self.n_steps) + tuple(concatenated.shape[1:]), fill, dtype=concatenated.dtype)
        mask = torch.arange(self.n_steps)[None, :] < self.lengths[:, None]
        out[mask] = concatenated
        return out
