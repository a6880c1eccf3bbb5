"""A categorical VAE: ``M`` one-hot latent codes of ``K`` categories per row and a neural decoder of Bernoulli pixels.

``c_nm ~ OneHotCategorical(1/K)`` (uniform), ``x_n | c_n ~ Bernoulli(sigmoid(decoder(c_n)))``, and the amortised
guide ``q(c_n | x_n) = prod_m OneHotCategorical(encoder(x_n)_m)``. It is fitted three ways by ``method="svi"``:

* ``guide=vae.guide()``: the score function with a baseline (``baseline="average"`` or ``"net"``);
* ``guide=vae.guide(relaxed=True, temperature=...)``: the Gumbel-softmax relaxation (pathwise gradients);
* ``guide="none"`` with ``M = 1``: no guide at all, the code is summed out exactly (``TraceEnum_ELBO``).

With one code (``M = 1``) the decoder is a table of ``K`` images of pixel probabilities computed by a network: a
mixture of ``K`` products of Bernoullis. :meth:`CategoricalVAE.exact_log_likelihood` sums over all ``K**M`` codes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

import ppl_lvm as lvm
from ppl_lvm import dist

from ._checks import positive_int as _positive_int
from ._heldout import importance_log_likelihood

__all__ = ["MAX_EXACT_CODES", "CategoricalVAE"]

#: the most joint codes ``K**M`` for which :meth:`CategoricalVAE.exact_log_likelihood` enumerates them all
MAX_EXACT_CODES = 4096


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class _Encoder(nn.Module):
    def __init__(self, data_dim: int, num_latents: int, num_categories: int, hidden: Sequence[int]):
        super().__init__()
        self.shape = (num_categories,) if num_latents == 1 else (num_latents, num_categories)
        self.net = _mlp([data_dim, *hidden, num_latents * num_categories])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape(*x.shape[:-1], *self.shape)


class CategoricalVAE(nn.Module):
    r"""A VAE whose latent code is ``M`` categorical variables of ``K`` categories, one-hot encoded.

    .. math::

        c_{nm} \sim \mathrm{OneHotCategorical}(1/K), \qquad
        x_n \mid c_n \sim \mathrm{Bernoulli}(\sigma(f_\theta(c_n))), \qquad
        q_\phi(c_n \mid x_n) = \prod_m \mathrm{OneHotCategorical}(c_{nm}; \mathrm{softmax}(e_\phi(x_n)_m)).

    ``vae.model`` is a ppl_lvm model of ``x`` (shape ``(N, data_dim)``, values 0/1) with the latent site ``"c"``
    (shape ``(N, K)`` for ``M = 1``, else ``(N, M, K)``) and the observed site ``"x"`` in the data plate; the
    decoder and the encoder are the Pyro modules ``"decoder"`` and ``"encoder"``, trained in place.

    Parameters
    ----------
    data_dim : int
        D, pixels per row.
    num_categories : int
        K, categories of each code.
    num_latents : int
        M, categorical codes per row.
    hidden : tuple of int
        Hidden-layer widths (tanh) of the encoder; the decoder uses them in reverse.

    Examples
    --------
    >>> import ppl_lvm as lvm
    >>> from ppl_lvm.datasets import binarized_digits
    >>> x = binarized_digits().x_train[:200]
    >>> vae = CategoricalVAE(64, num_categories=10, hidden=(32,))
    >>> guide = vae.guide(relaxed=True, temperature=lvm.temperature_schedule(1.0, 0.5, steps=29))
    >>> fit = lvm.infer(vae.model, x, guide=guide, steps=30, lr=0.01, seed=0)
    >>> guide.last_temperature == 0.5, fit.options["score_function_sites"]   # relaxed: nothing is scored
    (True, [])
    >>> vae.exact_log_likelihood(x[:4]).shape                                  # log p(x_n), summed over K codes
    torch.Size([4])
    """

    def __init__(self, data_dim: int, num_categories: int = 10, num_latents: int = 1, hidden: Sequence[int] = (128,)):
        super().__init__()
        self.data_dim = _positive_int("data_dim", data_dim)
        self.num_categories = _positive_int("num_categories", num_categories)
        self.num_latents = _positive_int("num_latents", num_latents)
        if isinstance(hidden, str) or not isinstance(hidden, Sequence):
            raise ValueError(f"hidden must be a tuple of layer widths such as (128,), got {hidden!r}")
        self.hidden = tuple(_positive_int("every width in hidden", h) for h in hidden)
        code = self.num_latents * self.num_categories
        self.encoder = _Encoder(self.data_dim, self.num_latents, self.num_categories, self.hidden)
        self.decoder = _mlp([code, *reversed(self.hidden), self.data_dim])
        self.model = self._build()

    def _build(self):
        vae = self

        @lvm.model
        def model(x):
            """p(x, c) = prod_m OneHotCategorical(c_m; 1/K) Bernoulli(x; decoder(c)), one code per row of ``x``."""
            vae._check_rows(x, "model")
            lvm.module(vae.decoder, name="decoder")
            with lvm.plate(len(x)) as data:  # noqa: F841 - names the plate "data"
                c = lvm.latent(vae.prior(x))
                lvm.observe(vae.p_x_given_c(c), x)

        return model

    def prior(self, like: torch.Tensor) -> dist.Distribution:
        """The uniform prior of one row's code (event shape ``(K,)`` or ``(M, K)``)."""
        if self.num_latents == 1:
            return dist.OneHotCategorical(logits=like.new_zeros(self.num_categories))
        return dist.OneHotCategorical(logits=like.new_zeros(self.num_latents, self.num_categories)).to_event(1)

    def p_x_given_c(self, c: torch.Tensor) -> dist.Distribution:
        """p(x | c): independent Bernoulli pixels with logits ``decoder(c)`` (the codes side by side)."""
        shape = c.shape[:-1] if self.num_latents == 1 else c.shape[:-2]
        return dist.Bernoulli(logits=self.decoder(c.reshape(*shape, -1))).to_event(1)

    def guide(
        self, relaxed: bool = False, temperature: float | Callable[[int], float] = 1.0, straight_through: bool = False
    ) -> lvm.AmortizedCategorical:
        """The amortised guide over ``"c"`` with this VAE's encoder: the score function (``relaxed=False``) or the
        Gumbel-softmax (see :class:`ppl_lvm.AmortizedCategorical`)."""
        return lvm.AmortizedCategorical(
            self.encoder, site="c", relaxed=relaxed, temperature=temperature, straight_through=straight_through
        )

    def _check_rows(self, x, where: str) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[-1] != self.data_dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"CategoricalVAE.{where}: x must be a tensor of shape (N, {self.data_dim}), got {shape}")

    def codes(self) -> torch.Tensor:
        """Every joint code, shape ``(K**M, K)`` or ``(K**M, M, K)``."""
        eye = torch.eye(self.num_categories)
        joint = torch.stack(
            [
                torch.stack([eye[i] for i in index])
                for index in itertools.product(range(self.num_categories), repeat=self.num_latents)
            ]
        )
        return joint.squeeze(1) if self.num_latents == 1 else joint

    def exact_log_likelihood(self, x: torch.Tensor, batch_size: int = 200) -> torch.Tensor:
        """log p(x_n) for every row, summing over all ``K**M`` codes (at most :data:`MAX_EXACT_CODES`), ``(N,)``."""
        self._check_rows(x, "exact_log_likelihood")
        if self.num_categories**self.num_latents > MAX_EXACT_CODES:
            raise ValueError(
                f"exact_log_likelihood sums over K**M = {self.num_categories**self.num_latents} "
                f"codes; it is offered up to {MAX_EXACT_CODES}. Use log_likelihood instead"
            )
        dtype = next(self.decoder.parameters()).dtype
        x = x.to(dtype)
        codes = self.codes().to(dtype)
        log_prior = -self.num_latents * math.log(self.num_categories)
        with torch.no_grad():
            return torch.cat(
                [
                    torch.logsumexp(self.p_x_given_c(codes.unsqueeze(1)).log_prob(rows), dim=0) + log_prior
                    for rows in x.split(batch_size)
                ]
            )

    def log_likelihood(
        self, x: torch.Tensor, num_particles: int = 1000, batch_size: int = 100, seed: int = 0
    ) -> torch.Tensor:
        """The importance-weighted estimate of log p(x_n) with the (unrelaxed) guide as proposal, ``(N,)``."""
        self._check_rows(x, "log_likelihood")
        x = x.to(next(self.decoder.parameters()).dtype)
        return importance_log_likelihood(self._log_weights, x, num_particles, batch_size, seed)

    def _log_weights(self, rows: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
        """``log p(rows, c_k) - log q(c_k | rows)`` for ``k`` draws from the unrelaxed guide, ``(k, len(rows))``."""
        q = dist.OneHotCategorical(logits=self.encoder(rows))
        index = torch.multinomial(
            q.probs.reshape(-1, self.num_categories), k, replacement=True, generator=generator
        ).T.reshape(k, *q.batch_shape)
        c = nn.functional.one_hot(index, self.num_categories).to(rows.dtype)
        log_q = q.log_prob(c)
        if self.num_latents > 1:
            log_q = log_q.sum(-1)
        return self.prior(rows).log_prob(c) + self.p_x_given_c(c).log_prob(rows) - log_q
