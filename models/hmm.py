"""Hidden Markov models with Gaussian or categorical emissions, for several sequences of different lengths.

Sequences are given padded to a common length, ``x`` of shape ``(B, T, D)`` (Gaussian) or ``(B, T)`` (categorical
symbols), with ``lengths`` of shape ``(B,)``; steps past a sequence's length are masked out. ``method="em"``
recognises these models and runs a vectorised forward-backward (Baum-Welch), the same numbers as hmmlearn.
"""

from __future__ import annotations

import pyro.poutine as poutine
import torch

import ppl_lvm as lvm
from ppl_lvm import constraints, dist

__all__ = ["gaussian_hmm", "gaussian_hmm_vectorized", "categorical_hmm", "pad_sequences"]


def pad_sequences(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack sequences of different lengths into ``(B, T_max, ...)`` with zeros, and their lengths."""
    lengths = torch.tensor([len(s) for s in sequences])
    padded = torch.nn.utils.rnn.pad_sequence(list(sequences), batch_first=True)
    return padded, lengths


@lvm.model
def gaussian_hmm(x: torch.Tensor, lengths: torch.Tensor | None = None, K: int = 3) -> None:
    """An HMM with K hidden states and diagonal-Gaussian emissions.

    Parameters
    ----------
    x : Tensor, shape (B, T, D)
        Padded sequences.
    lengths : Tensor of int, shape (B,), optional
        True length of each sequence (default: all T).
    K : int
        Number of hidden states.
    """
    n_seq, n_steps, d = x.shape
    if lengths is None:
        lengths = torch.full((n_seq,), n_steps)
    start = lvm.param(lambda: torch.ones(K) / K, constraint=constraints.simplex)
    trans = lvm.param(lambda: torch.full((K, K), 1.0 / K), constraint=constraints.simplex)
    locs = lvm.param(lambda: x.reshape(-1, d)[torch.linspace(0, n_seq * n_steps - 1, K).long()].clone())
    scales = lvm.param(lambda: torch.ones(K, d), constraint=constraints.positive)
    with lvm.plate(n_seq) as sequences:  # noqa: F841 - names the plate
        z = None
        for t in lvm.markov(range(n_steps)):
            with poutine.mask(mask=t < lengths):
                z = lvm.latent(dist.Categorical(start if z is None else trans[z]))
                lvm.observe(dist.Normal(locs[z], scales[z]).to_event(1), x[:, t])


@lvm.model
def categorical_hmm(x: torch.Tensor, lengths: torch.Tensor | None = None, K: int = 3, n_symbols: int | None = None) -> None:
    """An HMM with K hidden states emitting symbols ``0..n_symbols-1``; ``x`` is ``(B, T)`` integers."""
    n_seq, n_steps = x.shape
    if lengths is None:
        lengths = torch.full((n_seq,), n_steps)
    c = int(x.max()) + 1 if n_symbols is None else n_symbols
    start = lvm.param(lambda: torch.ones(K) / K, constraint=constraints.simplex)
    trans = lvm.param(lambda: torch.full((K, K), 1.0 / K), constraint=constraints.simplex)
    emission = lvm.param(lambda: torch.distributions.Dirichlet(torch.ones(c)).sample((K,)), constraint=constraints.simplex)
    with lvm.plate(n_seq) as sequences:  # noqa: F841 - names the plate
        z = None
        for t in lvm.markov(range(n_steps)):
            with poutine.mask(mask=t < lengths):
                z = lvm.latent(dist.Categorical(start if z is None else trans[z]))
                lvm.observe(dist.Categorical(emission[z]), x[:, t])


@lvm.model
def gaussian_hmm_vectorized(x: torch.Tensor, K: int = 3) -> None:
    """The Gaussian HMM of :func:`gaussian_hmm` as one ``DiscreteHMM`` site per sequence (equal lengths).

    One site instead of one per time step: tracing the model costs microseconds, not a pass over T, so it suits
    long sequences. ``x`` has shape ``(B, T, D)``, every sequence of length T.
    """
    n_seq, n_steps, d = x.shape
    start = lvm.param(lambda: torch.ones(K) / K, constraint=constraints.simplex)
    trans = lvm.param(lambda: torch.full((K, K), 1.0 / K), constraint=constraints.simplex)
    locs = lvm.param(lambda: x.reshape(-1, d)[torch.linspace(0, n_seq * n_steps - 1, K).long()].clone())
    scales = lvm.param(lambda: torch.ones(K, d), constraint=constraints.positive)
    # DiscreteHMM's initial state precedes the first emission: the first transition draws z_0 from `start`
    transition = torch.cat([start.expand(1, K, K), trans.expand(n_steps - 1, K, K)]).log()
    with lvm.plate(n_seq) as sequences:  # noqa: F841 - names the plate
        lvm.observe(dist.DiscreteHMM(torch.zeros(K), transition, dist.Normal(locs, scales).to_event(1)), x)
