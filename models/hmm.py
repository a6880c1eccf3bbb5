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

from ._checks import check_k, check_measurements

__all__ = ["gaussian_hmm", "gaussian_hmm_vectorized", "categorical_hmm", "pad_sequences"]


def pad_sequences(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack sequences of different lengths into ``(B, T_max, ...)`` with zeros, and their lengths.

    Parameters
    ----------
    sequences : list of Tensor
        Each of shape ``(T_b, ...)``; the trailing shapes must agree.

    Returns
    -------
    padded : Tensor, shape (B, T_max, ...)
    lengths : Tensor of int64, shape (B,)

    Raises
    ------
    ValueError
        An empty list, an empty sequence, or sequences whose trailing shapes differ.

    Examples
    --------
    >>> import torch
    >>> from ppl_lvm.models.hmm import pad_sequences
    >>> x, lengths = pad_sequences([torch.ones(3, 2), torch.ones(5, 2)])
    >>> x.shape, lengths.tolist(), x[0, 3:].abs().sum().item()
    (torch.Size([2, 5, 2]), [3, 5], 0.0)
    """
    sequences = list(sequences)
    if not sequences:
        raise ValueError("pad_sequences needs at least one sequence, got an empty list")
    sequences = [torch.as_tensor(s) for s in sequences]
    if any(s.dim() == 0 or len(s) == 0 for s in sequences):
        raise ValueError("pad_sequences: every sequence must have at least one step (shape (T, ...) with T >= 1)")
    trailing = {tuple(s.shape[1:]) for s in sequences}
    if len(trailing) > 1:
        raise ValueError(f"pad_sequences: sequences must share their trailing shape, got {sorted(trailing)}")
    lengths = torch.tensor([len(s) for s in sequences])
    padded = torch.nn.utils.rnn.pad_sequence(list(sequences), batch_first=True)
    return padded, lengths


def _check_sequences(x, lengths, ndim: int, name: str, expected: str, K) -> None:
    check_k(K, name, "hidden states")
    if not isinstance(x, torch.Tensor) or x.dim() != ndim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: x must be a tensor of shape {expected}, got {shape}; "
                         "pad sequences of different lengths with pad_sequences()")
    if lengths is not None:
        lengths = torch.as_tensor(lengths)
        if lengths.shape != (x.shape[0],) or bool((lengths < 1).any()) or bool((lengths > x.shape[1]).any()):
            raise ValueError(f"{name}: lengths must be {x.shape[0]} integers in [1, {x.shape[1]}] (one per sequence), "
                             f"got {lengths.tolist()}")


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

    Notes
    -----
    ``z_0 ~ Categorical(start)``, ``z_t | z_{t-1} ~ Categorical(trans[z_{t-1}])``,
    ``x_t | z_t ~ N(locs[z_t], diag(scales[z_t]^2))``; steps with ``t >= lengths[b]`` are masked out.

    Examples
    --------
    Two sequences of different lengths that switch between two levels every ten steps:

    >>> import torch, ppl_lvm as lvm
    >>> from ppl_lvm.models.hmm import gaussian_hmm, pad_sequences
    >>> seqs = [torch.randn(n, 1) + 4.0 * (torch.arange(n) % 20 < 10).unsqueeze(-1) for n in (40, 25)]
    >>> x, lengths = pad_sequences(seqs)
    >>> fit = lvm.infer(gaussian_hmm, {"x": x, "lengths": lengths, "K": 2}, method="em", max_iter=50)
    >>> fit.closed_form, fit.responsibilities["z"].shape, fit.map_assignments()["z"].shape
    (True, torch.Size([2, 40, 2]), torch.Size([2, 40]))
    >>> bool((fit.params["locs"].max() - fit.params["locs"].min() - 4.0).abs() < 1.0)
    True
    """
    _check_sequences(x, lengths, 3, "gaussian_hmm", "(B, T, D) floats", K)
    check_measurements(x, "gaussian_hmm")
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
    """An HMM with K hidden states emitting symbols ``0..n_symbols-1``.

    Parameters
    ----------
    x : Tensor of int, shape (B, T)
        Padded symbol sequences.
    lengths : Tensor of int, shape (B,), optional
        True length of each sequence (default: all T).
    K : int
        Number of hidden states.
    n_symbols : int, optional
        Size of the alphabet (default: ``x.max() + 1``).

    Notes
    -----
    ``z_0 ~ Categorical(start)``, ``z_t | z_{t-1} ~ Categorical(trans[z_{t-1}])``,
    ``x_t | z_t ~ Categorical(emission[z_t])``.

    Examples
    --------
    >>> import torch, ppl_lvm as lvm
    >>> from ppl_lvm.models.hmm import categorical_hmm
    >>> x = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]] * 3)
    >>> fit = lvm.infer(categorical_hmm, {"x": x, "K": 2}, method="em", max_iter=50)
    >>> path = fit.map_assignments()["z"]
    >>> path.shape, bool((path[:, :3] != path[:, 3:6]).all())
    (torch.Size([3, 12]), True)
    """
    _check_sequences(x, lengths, 2, "categorical_hmm", "(B, T) integer symbols", K)
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
    long sequences. ``x`` has shape ``(B, T, D)``, every sequence of length T. The hidden path is the site
    ``"states"`` of ``map_assignments()``.

    Examples
    --------
    >>> import torch, ppl_lvm as lvm
    >>> from ppl_lvm.models.hmm import gaussian_hmm_vectorized
    >>> x = torch.randn(3, 30, 2) + 4.0 * (torch.arange(30) % 10 < 5).unsqueeze(-1)
    >>> fit = lvm.infer(gaussian_hmm_vectorized, {"x": x, "K": 2}, method="em", max_iter=50)
    >>> path = fit.map_assignments()["states"]
    >>> fit.closed_form, path.shape, bool((path[:, :5] != path[:, 5:10]).all())
    (True, torch.Size([3, 30]), True)
    """
    _check_sequences(x, None, 3, "gaussian_hmm_vectorized", "(B, T, D) floats", K)
    check_measurements(x, "gaussian_hmm_vectorized")
    n_seq, n_steps, d = x.shape
    start = lvm.param(lambda: torch.ones(K) / K, constraint=constraints.simplex)
    trans = lvm.param(lambda: torch.full((K, K), 1.0 / K), constraint=constraints.simplex)
    locs = lvm.param(lambda: x.reshape(-1, d)[torch.linspace(0, n_seq * n_steps - 1, K).long()].clone())
    scales = lvm.param(lambda: torch.ones(K, d), constraint=constraints.positive)
    # DiscreteHMM's initial state precedes the first emission: the first transition draws z_0 from `start`
    transition = torch.cat([start.expand(1, K, K), trans.expand(n_steps - 1, K, K)]).log()
    with lvm.plate(n_seq) as sequences:  # noqa: F841 - names the plate
        lvm.observe(dist.DiscreteHMM(torch.zeros(K), transition, dist.Normal(locs, scales).to_event(1)), x)
