"""The sigmoid belief network (Neal 1992) with one layer of binary latents, fitted with an amortised Bernoulli guide.

``z_n ~ Bernoulli(sigmoid(b))`` (``K`` independent bits), ``x_n | z_n ~ Bernoulli(sigmoid(W z_n + c))`` (``D``
pixels), ``q(z_n | x_n) = Bernoulli(sigmoid(encoder(x_n)))``. The bits have no reparameterisation: ``method="svi"``
differentiates the guide by the score function with a baseline (``baseline="average"`` or ``"net"``), the setting
of Mnih and Gregor's neural variational inference and learning (2014).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

import ppl_lvm as lvm
from ppl_lvm import dist

from ._checks import positive_int as _positive_int
from ._heldout import importance_log_likelihood

__all__ = ["SigmoidBeliefNet"]

#: the most latent bits for which :meth:`SigmoidBeliefNet.exact_log_likelihood` enumerates all 2**K codes
MAX_EXACT_BITS = 16


class _Generative(nn.Module):
    """The prior logits ``b`` and the decoder ``z -> W z + c`` of p(x | z)."""

    def __init__(self, data_dim: int, latent_dim: int):
        super().__init__()
        self.prior_logits = nn.Parameter(torch.zeros(latent_dim))
        self.decoder = nn.Linear(latent_dim, data_dim)


class SigmoidBeliefNet(nn.Module):
    r"""A one-layer sigmoid belief network with an amortised Bernoulli guide.

    .. math::

        z_{nk} \sim \mathrm{Bernoulli}(\sigma(b_k)), \qquad
        x_{nd} \mid z_n \sim \mathrm{Bernoulli}(\sigma(W_d^\top z_n + c_d)), \qquad
        q_\phi(z_n \mid x_n) = \prod_k \mathrm{Bernoulli}(z_{nk}; \sigma(e_\phi(x_n)_k)).

    ``sbn.model`` is a ppl_lvm model of ``x`` (shape ``(N, data_dim)``, values 0/1) with the latent site ``"z"``
    (shape ``(N, latent_dim)``) and the observed site ``"x"`` in the data plate ``"data"``; the generative
    parameters are the Pyro module ``"generative"``. ``sbn.guide`` is an :class:`ppl_lvm.AmortizedBernoulli` over
    ``"z"`` whose encoder (``sbn.encoder``) is an MLP with ``hidden`` tanh units (linear for ``hidden=()``).

    Parameters
    ----------
    data_dim : int
        D, pixels per row.
    latent_dim : int
        K, latent bits per row.
    hidden : tuple of int
        Hidden-layer widths of the encoder.

    Examples
    --------
    >>> import ppl_lvm as lvm
    >>> from ppl_lvm.datasets import binarized_digits
    >>> x = binarized_digits(threshold=0.5).x_train[:200]
    >>> sbn = SigmoidBeliefNet(64, latent_dim=8, hidden=())
    >>> fit = lvm.infer(sbn.model, x, guide=sbn.guide, steps=40, lr=0.02, seed=0, baseline="average")
    >>> fit.options["score_function_sites"], fit.options["baseline"]
    (['z'], 'average')
    >>> sbn.exact_log_likelihood(x[:3]).shape      # log p(x_n) by summing over the 2**8 codes
    torch.Size([3])
    """

    def __init__(self, data_dim: int, latent_dim: int = 16, hidden: tuple[int, ...] = (64,)):
        super().__init__()
        self.data_dim = _positive_int("data_dim", data_dim)
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.hidden = tuple(_positive_int("every width in hidden", h) for h in hidden)
        sizes = [self.data_dim, *self.hidden, self.latent_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        self.encoder = nn.Sequential(*layers)
        self.generative = _Generative(self.data_dim, self.latent_dim)
        self.model = self._build()
        self.guide = lvm.AmortizedBernoulli(self.encoder, site="z")

    def _build(self):
        sbn = self

        @lvm.model
        def model(x):
            """p(x, z) = Bernoulli(z; sigmoid(b)) Bernoulli(x; sigmoid(W z + c)), one code z per row of ``x``."""
            sbn._check_rows(x, "model")
            lvm.module(sbn.generative, name="generative")
            with lvm.plate(len(x)) as data:  # noqa: F841 - names the plate "data"
                z = lvm.latent(
                    dist.Bernoulli(logits=sbn.generative.prior_logits).expand([len(x), sbn.latent_dim]).to_event(1)
                )
                lvm.observe(dist.Bernoulli(logits=sbn.generative.decoder(z)).to_event(1), x)

        return model

    def _check_rows(self, x, where: str) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[-1] != self.data_dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"SigmoidBeliefNet.{where}: x must be a tensor of shape (N, {self.data_dim}), got {shape}")

    def _log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        prior = dist.Bernoulli(logits=self.generative.prior_logits).to_event(1).log_prob(z)
        return prior + dist.Bernoulli(logits=self.generative.decoder(z)).to_event(1).log_prob(x)

    def exact_log_likelihood(self, x: torch.Tensor, batch_size: int = 200) -> torch.Tensor:
        """log p(x_n) for every row, summing p(x_n, z) over all ``2**latent_dim`` codes (at most
        :data:`MAX_EXACT_BITS` bits), shape ``(N,)``."""
        self._check_rows(x, "exact_log_likelihood")
        if self.latent_dim > MAX_EXACT_BITS:
            raise ValueError(
                f"exact_log_likelihood sums over 2**{self.latent_dim} codes; it is offered up to "
                f"{MAX_EXACT_BITS} bits. Use log_likelihood (importance sampling) instead"
            )
        x = x.to(self.generative.prior_logits.dtype)
        codes = torch.tensor(list(itertools.product((0.0, 1.0), repeat=self.latent_dim)), dtype=x.dtype)
        with torch.no_grad():
            return torch.cat(
                [torch.logsumexp(self._log_joint(rows, codes.unsqueeze(1)), dim=0) for rows in x.split(batch_size)]
            )

    def log_likelihood(
        self, x: torch.Tensor, num_particles: int = 1000, batch_size: int = 100, seed: int = 0
    ) -> torch.Tensor:
        """The importance-weighted estimate of log p(x_n) with the guide as proposal (``K = num_particles``
        draws per row), shape ``(N,)``: a lower bound in expectation that tightens as ``K`` grows."""
        self._check_rows(x, "log_likelihood")
        x = x.to(self.generative.prior_logits.dtype)
        return importance_log_likelihood(self._log_weights, x, num_particles, batch_size, seed)

    def _log_weights(self, rows: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
        """``log p(rows, z_k) - log q(z_k | rows)`` for ``k`` guide draws of the codes, shape ``(k, len(rows))``."""
        probs = torch.sigmoid(self.encoder(rows))
        z = torch.bernoulli(probs.expand(k, *probs.shape), generator=generator)
        return self._log_joint(rows, z) - dist.Bernoulli(probs=probs).to_event(1).log_prob(z)
