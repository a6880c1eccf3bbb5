"""The variational autoencoder (Kingma and Welling 2014) as a ppl_lvm model with an amortised guide.

The generative model is ``z_n ~ N(0, I)``, ``x_n | z_n ~ Bernoulli(decoder(z_n))`` (or a diagonal Normal with a
learned per-pixel scale); the guide is ``q(z_n | x_n) = N(encoder(x_n))``. Both are ordinary ppl_lvm functions, so
every variational method fits them: ``svi`` (the ELBO), ``meanfield`` (analytic KL, free bits), ``iwae``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

import ppl_lvm as lvm
from ppl_lvm import dist

from ._checks import positive_int as _positive_int
from ._heldout import importance_log_likelihood

__all__ = ["VAE", "LIKELIHOODS"]

LIKELIHOODS = ("bernoulli", "gaussian")
_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU}


def _mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """``x -> (loc, scale)`` of q(z | x): an MLP whose last layer gives the loc and the log-scale."""

    def __init__(self, data_dim: int, latent_dim: int, hidden: Sequence[int], activation: str):
        super().__init__()
        self.net = _mlp([data_dim, *hidden, 2 * latent_dim], activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = self.net(x).chunk(2, dim=-1)
        return loc, log_scale.exp()


class Decoder(nn.Module):
    """``z -> `` logits (Bernoulli) or the mean (Gaussian) of p(x | z); a Gaussian decoder also owns the scale."""

    def __init__(self, data_dim: int, latent_dim: int, hidden: Sequence[int], activation: str, gaussian: bool):
        super().__init__()
        self.net = _mlp([latent_dim, *hidden, data_dim], activation)
        self.log_scale = nn.Parameter(torch.zeros(data_dim)) if gaussian else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()


def _layer_sizes(name: str, value) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{name} must be a tuple of layer widths such as (128, 128) (or () for linear), got {value!r}")
    return tuple(_positive_int(f"every width in {name}", v) for v in value)


class _VAEHelpers:
    """What the one- and two-layer VAEs share: the rows check, q of the first latent, and p(x | first latent)."""

    data_dim: int
    likelihood: str
    encoder: Encoder
    decoder: Decoder

    def _check_rows(self, x, where: str) -> None:
        """Refuse ``x`` unless it is a tensor of shape (N, data_dim) (a model or guide runs this condition inline
        and calls here for the message: it runs at every step of a fit)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[-1] != self.data_dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__}.{where}: x must be a float tensor of shape (N, {self.data_dim}), "
                             f"got {shape}")

    def _p_x(self, z: torch.Tensor) -> dist.Distribution:
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out).to_event(1)
        return dist.Normal(out, self.decoder.scale).to_event(1)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_rows(x, "encode")
        with torch.no_grad():
            return self.encoder(x)

    def _decode(self, z: torch.Tensor, name: str, size: int) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.shape[-1] != size:
            raise ValueError(f"{type(self).__name__}.decode: {name} must be a tensor of shape (..., {size}), got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        with torch.no_grad():
            out = self.decoder(z)
            return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def _draw_x(self, mean: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """x drawn from p(x | z) given its mean ``decode(z)``."""
        if self.likelihood == "bernoulli":
            return torch.bernoulli(mean, generator=generator)
        return mean + self.decoder.scale * torch.randn(mean.shape, generator=generator)


class VAE(_VAEHelpers, nn.Module):
    r"""A variational autoencoder: an MLP decoder p(x | z) and an MLP encoder q(z | x).

    .. math::

        z_n \sim \mathcal N(0, I_L), \qquad x_n \mid z_n \sim \mathrm{Bernoulli}(\sigma(f_\theta(z_n)))
        \ \text{or}\ \mathcal N(f_\theta(z_n), \mathrm{diag}(s^2)), \qquad
        q_\phi(z_n \mid x_n) = \mathcal N(\mu_\phi(x_n), \mathrm{diag}\, \sigma_\phi(x_n)^2).

    ``vae.model`` and ``vae.guide`` are ppl_lvm functions of ``x`` (shape ``(N, data_dim)``) with the latent site
    ``"z"`` (shape ``(N, latent_dim)``) and the observed site ``"x"`` inside the data plate ``"data"``; the
    networks are registered as the Pyro modules ``"decoder"`` and ``"encoder"``. Fitting updates the networks'
    weights in place, so the helpers (:meth:`encode`, :meth:`decode`, :meth:`log_likelihood`, ...) use the
    weights of the latest fit.

    Parameters
    ----------
    data_dim : int
        Dimension D of a data row.
    latent_dim : int
        Dimension L of z.
    hidden : tuple of int
        Hidden-layer widths of the encoder; the decoder uses them in reverse unless ``decoder_hidden`` is given.
        ``()`` gives linear networks (with a Gaussian likelihood the model is then factor analysis).
    likelihood : {"bernoulli", "gaussian"}
        p(x | z): independent Bernoulli pixels (logits from the decoder; data must be 0/1) or a diagonal Normal
        with the decoder's mean and a learned per-dimension scale.
    decoder_hidden : tuple of int, optional
        Hidden-layer widths of the decoder (a stronger or weaker decoder than the encoder).
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
    >>> vae = VAE(64, latent_dim=2, hidden=(32,))
    >>> fit = lvm.infer(vae.model, x, method="svi", guide=vae.guide, batch_size=100, lr=1e-2, steps=30, seed=0)
    >>> bool(fit.losses[-5:].mean() < fit.losses[:5].mean())     # the negative ELBO went down
    True
    >>> loc, scale = vae.encode(x[:3])
    >>> loc.shape, vae.decode(loc).shape, vae.sample(4).shape
    (torch.Size([3, 2]), torch.Size([3, 64]), torch.Size([4, 64]))
    >>> vae.log_likelihood(x[:5], num_particles=100).shape   # importance-weighted log p(x_n), per row
    torch.Size([5])
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int = 2,
        hidden: Sequence[int] = (128, 128),
        likelihood: str = "bernoulli",
        *,
        decoder_hidden: Sequence[int] | None = None,
        activation: str = "tanh",
    ):
        super().__init__()
        self.data_dim = _positive_int("data_dim", data_dim)
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        hidden = _layer_sizes("hidden", hidden)
        decoder_hidden = tuple(reversed(hidden)) if decoder_hidden is None else _layer_sizes("decoder_hidden",
                                                                                              decoder_hidden)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.likelihood = likelihood
        self.hidden, self.decoder_hidden = hidden, decoder_hidden
        self.encoder = Encoder(self.data_dim, self.latent_dim, hidden, activation)
        self.decoder = Decoder(self.data_dim, self.latent_dim, decoder_hidden, activation, likelihood == "gaussian")
        self.model, self.guide = self._build()

    # ------------------------------------------------------------------ the model and the guide
    def _build(self):
        vae = self

        @lvm.model
        def model(x):
            """p(x, z) = N(z; 0, I) p(x | decoder(z)), one z per row of ``x``."""
            if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[-1] != vae.data_dim:  # at every step:
                vae._check_rows(x, "model")  # the check written out, its message by the helper
            lvm.module(vae.decoder, name="decoder")
            prior_loc, prior_scale = x.new_zeros(vae.latent_dim), x.new_ones(vae.latent_dim)
            with lvm.plate(len(x)) as data:  # noqa: F841 - names the plate "data"
                z = lvm.latent(dist.Normal(prior_loc, prior_scale).to_event(1))  # z ~ N(0, I)
                lvm.observe(vae.p_x_given_z(z), x)  # x | z ~ Bernoulli(decoder(z))

        @model.guide
        def guide(x):
            """q(z | x) = N(encoder(x)), amortised over the rows of ``x``."""
            if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[-1] != vae.data_dim:
                vae._check_rows(x, "guide")
            lvm.module(vae.encoder, name="encoder")
            loc, scale = vae.encoder(x)
            with lvm.plate(len(x)) as data:  # noqa: F841 - names the plate "data"
                z = lvm.latent(dist.Normal(loc, scale).to_event(1))
            return z

        return model, guide

    def p_x_given_z(self, z: torch.Tensor) -> dist.Distribution:
        """The likelihood p(x | z) as a distribution with event shape ``(data_dim,)``."""
        return self._p_x(z)

    # ------------------------------------------------------------------ helpers on the current weights
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of q(z | x), each of shape ``(N, latent_dim)`` (no gradient)."""
        return self._encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z): pixel probabilities (Bernoulli) or the Normal mean (Gaussian)."""
        return self._decode(z, "z", self.latent_dim)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x).loc)``: the mean of p(x | z) at the posterior mean of each row."""
        return self.decode(self.encode(x)[0])

    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        """``n`` draws of x from the generative model (z ~ N(0, I), then x | z), shape ``(n, data_dim)``."""
        n = _positive_int("n", n)
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        with torch.no_grad():
            return self._draw_x(self.decode(torch.randn(n, self.latent_dim, generator=generator)), generator)

    def log_likelihood(self, x: torch.Tensor, num_particles: int = 1000, batch_size: int = 100,
                       seed: int = 0) -> torch.Tensor:
        """The importance-weighted estimate IWAE_K of log p(x_n) for every row, shape ``(N,)``.

        ``log (1/K) sum_k p(x_n, z_k) / q(z_k | x_n)`` with ``z_k ~ q(z | x_n)``: a lower bound in expectation
        that tightens to log p(x_n) as ``K = num_particles`` grows (Burda et al. 2016; K = 1000 or more is the
        usual held-out estimate). Rows are processed ``batch_size`` at a time.
        """
        self._check_rows(x, "log_likelihood")
        return importance_log_likelihood(self._log_weights, x, num_particles, batch_size, seed)

    def _log_weights(self, rows: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
        """``log p(rows, z_k) - log q(z_k | rows)`` for ``k`` draws ``z_k ~ q(z | rows)``, shape ``(k, len(rows))``."""
        loc, scale = self.encoder(rows)
        z = loc + scale * torch.randn((k, *loc.shape), generator=generator, dtype=loc.dtype)
        log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)
        return dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + self.p_x_given_z(z).log_prob(rows) - log_q

    def extra_repr(self) -> str:
        return (f"data_dim={self.data_dim}, latent_dim={self.latent_dim}, hidden={self.hidden}, "
                f"decoder_hidden={self.decoder_hidden}, likelihood={self.likelihood!r}")
