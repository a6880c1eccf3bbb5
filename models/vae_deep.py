"""A variational autoencoder with two stochastic layers (Burda, Grosse and Salakhutdinov 2016, section 5).

The generative model is ``z2_n ~ N(0, I)``, ``z1_n | z2_n ~ N(prior_net(z2_n))``, ``x_n | z1_n ~ Bernoulli(
decoder(z1_n))`` (or a diagonal Normal with a learned per-pixel scale); the guide runs the other way,
``q(z1_n | x_n) q(z2_n | z1_n)``. Both are ordinary ppl_lvm functions, fitted by ``svi``, ``iwae`` (with
``estimator="dreg"`` too) and ``meanfield``. With ``meanfield`` only the top layer's KL is analytic:
``KL(q(z2 | z1) || N(0, I))`` is a closed form given the drawn ``z1``, while the prior of ``z1`` depends on ``z2``,
which the guide draws after ``z1`` and from it, so ``E_q[log q(z1 | x) - log p(z1 | z2)]`` has no closed form and
``meanfield`` estimates it by Monte Carlo (it warns, naming the site).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import ppl_lvm as lvm
from ppl_lvm import dist

from ._checks import positive_int as _positive_int
from ._heldout import importance_log_likelihood
from .vae import _ACTIVATIONS, LIKELIHOODS, Decoder, Encoder, _layer_sizes, _VAEHelpers

__all__ = ["TwoLayerVAE"]


class TwoLayerVAE(_VAEHelpers, nn.Module):
    r"""A VAE with two stochastic layers: ``x <- z1 <- z2``, with the guide ``q(z1 | x) q(z2 | z1)``.

    .. math::

        z_2 \sim \mathcal N(0, I), \quad z_1 \mid z_2 \sim \mathcal N(\mu_\theta(z_2), \mathrm{diag}\,
        \sigma_\theta(z_2)^2), \quad x \mid z_1 \sim \mathrm{Bernoulli}(\sigma(f_\theta(z_1))),
        \qquad q_\phi(z_1, z_2 \mid x) = \mathcal N(z_1; \mu_\phi(x), \sigma_\phi(x)^2)\,
        \mathcal N(z_2; \nu_\phi(z_1), \tau_\phi(z_1)^2).

    ``model`` and ``guide`` are ppl_lvm functions of ``x`` (shape ``(N, data_dim)``) with the latent sites ``"z1"``
    ``(N, latent_dims[0])`` and ``"z2"`` ``(N, latent_dims[1])`` and the observed site ``"x"`` in the data plate
    ``"data"``. The networks are the Pyro modules ``"decoder"`` (p(x | z1)), ``"prior_net"`` (p(z1 | z2)),
    ``"encoder"`` (q(z1 | x)) and ``"encoder2"`` (q(z2 | z1)); fitting trains them in place.

    The guide's ``z2`` depends on its draw of ``z1``: ``iwae`` with ``estimator="dreg"`` then takes the doubly
    reparameterised gradient through both layers, and ``meanfield`` has an analytic KL for ``z2`` only (see the module
    docstring).

    Parameters
    ----------
    data_dim : int
        Dimension D of a data row.
    latent_dims : tuple of two ints
        Dimensions of z1 (next to the data) and z2 (the top layer).
    hidden : tuple of int
        Hidden widths of the networks between x and z1 (the encoder; the decoder uses them reversed).
    hidden2 : tuple of int
        Hidden widths of the networks between z1 and z2 (q(z2 | z1); p(z1 | z2) uses them reversed).
    likelihood : {"bernoulli", "gaussian"}
        p(x | z1), as in :class:`~ppl_lvm.models.vae.VAE`.
    activation : {"tanh", "relu", "softplus", "elu"}
        Non-linearity between layers.

    Raises
    ------
    ValueError
        For a non-positive dimension, a bad layer list, or an unknown likelihood or activation.

    Examples
    --------
    >>> import ppl_lvm as lvm
    >>> from ppl_lvm.datasets import binarized_digits
    >>> x = binarized_digits().x_train[:200]
    >>> vae = TwoLayerVAE(64, latent_dims=(8, 4), hidden=(32,), hidden2=(16,))
    >>> fit = lvm.infer(vae.model, x, method="iwae", guide=vae.guide, num_particles=5, batch_size=100, lr=1e-2,
    ...                 steps=30, seed=0)
    >>> bool(fit.losses[-5:].mean() < fit.losses[:5].mean())
    True
    >>> vae.sample(4).shape, vae.log_likelihood(x[:5], num_particles=100).shape
    (torch.Size([4, 64]), torch.Size([5]))
    """

    def __init__(
        self,
        data_dim: int,
        latent_dims: Sequence[int] = (16, 8),
        hidden: Sequence[int] = (128, 128),
        hidden2: Sequence[int] = (64, 64),
        likelihood: str = "bernoulli",
        *,
        activation: str = "tanh",
    ):
        super().__init__()
        self.data_dim = _positive_int("data_dim", data_dim)
        if isinstance(latent_dims, (str, bytes)) or not isinstance(latent_dims, Sequence) or len(latent_dims) != 2:
            raise ValueError(f"latent_dims must be two positive integers (z1, z2) such as (16, 8), got {latent_dims!r}")
        self.latent_dims = (_positive_int("latent_dims[0]", latent_dims[0]),
                            _positive_int("latent_dims[1]", latent_dims[1]))
        hidden, hidden2 = _layer_sizes("hidden", hidden), _layer_sizes("hidden2", hidden2)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.likelihood, self.hidden, self.hidden2 = likelihood, hidden, hidden2
        d1, d2 = self.latent_dims
        self.encoder = Encoder(self.data_dim, d1, hidden, activation)  # q(z1 | x)
        self.encoder2 = Encoder(d1, d2, hidden2, activation)  # q(z2 | z1)
        self.prior_net = Encoder(d2, d1, tuple(reversed(hidden2)), activation)  # p(z1 | z2)
        self.decoder = Decoder(self.data_dim, d1, tuple(reversed(hidden)), activation, likelihood == "gaussian")
        self.model, self.guide = self._build()

    def _build(self):
        vae = self

        @lvm.model
        def model(x):
            """p(x, z1, z2) = N(z2; 0, I) N(z1; prior_net(z2)) p(x | decoder(z1)), one (z1, z2) per row."""
            vae._check_rows(x, "model")
            lvm.module(vae.prior_net, name="prior_net")
            lvm.module(vae.decoder, name="decoder")
            d2 = vae.latent_dims[1]
            with lvm.plate(len(x)) as data:  # noqa: F841 - names the plate "data"
                z2 = lvm.latent(dist.Normal(x.new_zeros(d2), x.new_ones(d2)).to_event(1))  # z2 ~ N(0, I)
                z1 = lvm.latent(dist.Normal(*vae.prior_net(z2)).to_event(1))  # z1 | z2 ~ N(prior_net(z2))
                lvm.observe(vae.p_x_given_z1(z1), x)  # x | z1 ~ Bernoulli(decoder(z1))

        @model.guide
        def guide(x):
            """q(z1, z2 | x) = N(z1; encoder(x)) N(z2; encoder2(z1)), amortised over the rows of ``x``."""
            vae._check_rows(x, "guide")
            lvm.module(vae.encoder, name="encoder")
            lvm.module(vae.encoder2, name="encoder2")
            loc, scale = vae.encoder(x)
            with lvm.plate(len(x)) as data:  # noqa: F841 - names the plate "data"
                z1 = lvm.latent(dist.Normal(loc, scale).to_event(1), name="z1")
                lvm.latent(dist.Normal(*vae.encoder2(z1)).to_event(1), name="z2")

        return model, guide

    def p_x_given_z1(self, z1: torch.Tensor) -> dist.Distribution:
        """The likelihood p(x | z1) as a distribution with event shape ``(data_dim,)``."""
        return self._p_x(z1)

    # ------------------------------------------------------------------ helpers on the current weights
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of q(z1 | x), each of shape ``(N, latent_dims[0])`` (no gradient)."""
        return self._encode(x)

    def decode(self, z1: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z1): pixel probabilities (Bernoulli) or the Normal mean (Gaussian)."""
        return self._decode(z1, "z1", self.latent_dims[0])

    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        """``n`` draws of x from the generative model (z2, then z1 | z2, then x | z1), shape ``(n, data_dim)``."""
        n = _positive_int("n", n)
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        with torch.no_grad():
            z2 = torch.randn(n, self.latent_dims[1], generator=generator)
            loc, scale = self.prior_net(z2)
            return self._draw_x(self.decode(loc + scale * torch.randn(loc.shape, generator=generator)), generator)

    def log_likelihood(self, x: torch.Tensor, num_particles: int = 1000, batch_size: int = 100,
                       seed: int = 0) -> torch.Tensor:
        """The importance-weighted estimate IWAE_K of log p(x_n) for every row, shape ``(N,)``.

        ``log (1/K) sum_k p(x_n, z1_k, z2_k) / (q(z1_k | x_n) q(z2_k | z1_k))`` with ``(z1_k, z2_k)`` drawn from the
        guide: a lower bound in expectation that tightens to log p(x_n) as ``K = num_particles`` grows. Rows are
        processed ``batch_size`` at a time (memory grows with ``K * batch_size``).
        """
        self._check_rows(x, "log_likelihood")
        return importance_log_likelihood(self._log_weights, x, num_particles, batch_size, seed)

    def _log_weights(self, rows: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
        """``log p(rows, z1_k, z2_k) - log q(z1_k, z2_k | rows)`` for ``k`` guide draws, shape ``(k, len(rows))``."""
        loc1, scale1 = self.encoder(rows)
        z1 = loc1 + scale1 * torch.randn((k, *loc1.shape), generator=generator, dtype=loc1.dtype)
        loc2, scale2 = self.encoder2(z1)
        z2 = loc2 + scale2 * torch.randn(loc2.shape, generator=generator, dtype=loc2.dtype)
        log_q = dist.Normal(loc1, scale1).log_prob(z1).sum(-1) + dist.Normal(loc2, scale2).log_prob(z2).sum(-1)
        prior_loc, prior_scale = self.prior_net(z2)
        log_p = (dist.Normal(0.0, 1.0).log_prob(z2).sum(-1) + dist.Normal(prior_loc, prior_scale).log_prob(z1).sum(-1)
                 + self.p_x_given_z1(z1).log_prob(rows))
        return log_p - log_q

    def extra_repr(self) -> str:
        return (f"data_dim={self.data_dim}, latent_dims={self.latent_dims}, hidden={self.hidden}, "
                f"hidden2={self.hidden2}, likelihood={self.likelihood!r}")
