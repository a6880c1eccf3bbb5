"""The HMM E-step: state posteriors and expected transition counts over several sequences."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .forward_backward import _forward_backward_scaled, _safe_log, _scaled_ok, forward_backward
from .layout import _Buckets, _Layout

__all__ = ["HMMEStep", "hmm_e_step", "hmm_log_likelihood"]


@dataclass
class HMMEStep:
    """Sufficient statistics of one E-step.

    Attributes
    ----------
    log_likelihood : (B,) exact log p(sequence) per sequence
    gamma : (N, K) state posteriors, concatenated layout
    xi_sum : (K, K) expected transition counts summed over sequences and time
    start_sum : (K,) posteriors of the first state summed over sequences
    """

    log_likelihood: torch.Tensor
    gamma: torch.Tensor
    xi_sum: torch.Tensor
    start_sum: torch.Tensor


def hmm_e_step(
    log_emission: torch.Tensor,
    lengths: Sequence[int] | None,
    startprob: torch.Tensor,
    transmat: torch.Tensor,
    *,
    method: str = "auto",
    buckets: _Buckets | None = None,
) -> HMMEStep:
    """Forward-backward over several sequences.

    Parameters
    ----------
    log_emission : torch.Tensor, shape (N, K)
        ``log p(x_t | z_t = k)`` for all sequences concatenated.
    lengths : sequence of int, optional
        Sequence lengths (hmmlearn convention); ``None`` = one sequence.
    startprob : (K,) first-state distribution; transmat : (K, K).
    method : {"auto", "scaled", "log", "loop"}
        "scaled": chunked probability-space scan (fast; falls back to "log"
        if it detects underflow); "log": exact log-space chunked scan (or the
        loop for very large K); "loop": log-space time loop (reference).
        "auto" = "scaled" when safe (see module docstring), else "log".

    Returns
    -------
    HMMEStep
    """
    if buckets is None:
        buckets = _Buckets(lengths, log_emission.shape[0])
    dtype = log_emission.dtype
    startprob = startprob.to(dtype)
    transmat = transmat.to(dtype)
    if len(buckets.groups) == 1:
        return _e_step_group(log_emission, startprob, transmat, method, buckets.groups[0][1])
    k = log_emission.shape[1]
    log_lik = log_emission.new_empty(buckets.n_seq)
    gamma = log_emission.new_empty(log_emission.shape)
    xi_sum = log_emission.new_zeros((k, k))
    start_sum = log_emission.new_zeros(k)
    for rows, layout, seq_ids in buckets.groups:
        part = _e_step_group(log_emission.index_select(0, rows), startprob, transmat, method, layout)
        log_lik[seq_ids] = part.log_likelihood
        gamma[rows] = part.gamma
        xi_sum += part.xi_sum
        start_sum += part.start_sum
    return HMMEStep(log_lik, gamma, xi_sum, start_sum)


def _e_step_group(
    log_emission: torch.Tensor, startprob: torch.Tensor, transmat: torch.Tensor, method: str, layout: _Layout
) -> HMMEStep:
    """:func:`hmm_e_step` for one padded batch of similar-length sequences."""
    emis = layout.pad(log_emission)
    b, t_pad, k = emis.shape
    if method == "auto":
        method = "scaled" if _scaled_ok(transmat, emis) else "log"
    if method == "scaled":
        stats = _e_step_scaled(startprob, transmat, emis, layout)
        if stats is not None:
            return stats
        method = "log"  # underflow detected: redo exactly in log space
    log_start = _safe_log(startprob)
    log_trans = _safe_log(transmat)
    # "log" lets forward_backward pick the chunked scan or, when its (B, T, K, K)
    # tensors would be too large, the plain time loop.
    alpha, beta = forward_backward(
        log_start,
        log_trans,
        emis,
        method="auto" if method == "log" else method,
        chunk=layout.chunk,
    )
    # Read the likelihood at each sequence's true end (padding would only add
    # rounding).
    last_alpha = alpha.reshape(-1, k).index_select(0, layout.last_pad)
    log_lik = torch.logsumexp(last_alpha, dim=-1)

    log_gamma = layout.unpad(alpha + beta)
    # Normalise per frame (as hmmlearn does) rather than subtracting log_lik:
    # identical in exact arithmetic, more robust in floating point.
    log_gamma -= torch.logsumexp(log_gamma, dim=-1, keepdim=True)
    gamma = log_gamma.exp_()

    xi_sum = emis.new_zeros((k, k))
    if t_pad > 1 and layout.trans_index.numel():
        seq_ll = log_lik.repeat_interleave(t_pad - 1)
        a_all = alpha[:, :-1].reshape(-1, k)
        eb_all = (emis[:, 1:] + beta[:, 1:]).reshape(-1, k)
        # Exact log-space xi, in blocks so the (rows, K, K) temporary stays small.
        block = max(1, 2**22 // (k * k))
        for start in range(0, layout.trans_index.numel(), block):
            idx = layout.trans_index[start : start + block]
            a_prev = a_all.index_select(0, idx) - seq_ll.index_select(0, idx).unsqueeze(1)
            log_xi = a_prev.unsqueeze(2) + log_trans + eb_all.index_select(0, idx).unsqueeze(1)
            xi_sum += log_xi.exp_().sum(0)
    start_sum = gamma.index_select(0, layout.first_index).sum(0)
    return HMMEStep(log_lik, gamma, xi_sum, start_sum)


def _e_step_scaled(
    startprob: torch.Tensor, transmat: torch.Tensor, emis: torch.Tensor, layout: _Layout
) -> HMMEStep | None:
    """E-step statistics from the scaled recursion; None if anything underflowed."""
    b, t_pad, k = emis.shape
    chunk = layout.chunk
    if t_pad % chunk:
        emis = torch.nn.functional.pad(emis, (0, 0, 0, chunk - t_pad % chunk))
    sc = _forward_backward_scaled(startprob, transmat, emis, chunk)
    t_all = emis.shape[1]
    log_lik = sc.log_norm.reshape(-1).index_select(0, torch.arange(b) * t_all + layout.lengths - 1)
    flat_index = (layout.pad_index // t_pad) * t_all + layout.pad_index % t_pad
    alpha_hat = sc.alpha_hat.reshape(-1, k)
    beta_hat = sc.beta_hat.reshape(-1, k)
    gamma = alpha_hat.index_select(0, flat_index) * beta_hat.index_select(0, flat_index)
    norm = gamma.sum(-1, keepdim=True)
    gamma.div_(norm)
    # xi_t(i, j) = alpha_hat_{t-1}(i) A_ij p_t(j) beta_hat_t(j) / z_t, each
    # xi_t summing to 1, so the sum over t is one (K, n) @ (n, K) GEMM.
    rows = layout.trans_index  # position t-1 in (B, T_pad - 1) layout
    seq = rows // (t_pad - 1) if t_pad > 1 else rows
    prev_pos = seq * t_all + rows % max(t_pad - 1, 1)
    if rows.numel():
        u = alpha_hat.index_select(0, prev_pos)
        v = beta_hat.index_select(0, prev_pos + 1) * sc.emis_prob.reshape(-1, k).index_select(0, prev_pos + 1)
        z = ((u @ transmat) * v).sum(-1, keepdim=True)
        v.div_(z)
        xi_sum = transmat * (u.T @ v)
        bad_z = not bool(torch.isfinite(z).all() and (z > 0).all())
    else:
        xi_sum = emis.new_zeros((k, k))
        bad_z = False
    if bad_z or not bool(torch.isfinite(log_lik).all() and (norm > 0).all()):
        return None
    start_sum = gamma.index_select(0, layout.first_index).sum(0)
    return HMMEStep(log_lik, gamma, xi_sum, start_sum)


def hmm_log_likelihood(
    log_emission: torch.Tensor,
    lengths: Sequence[int] | None,
    startprob: torch.Tensor,
    transmat: torch.Tensor,
) -> torch.Tensor:
    """Exact log-likelihood per sequence, shape (B,)."""
    return hmm_e_step(log_emission, lengths, startprob, transmat).log_likelihood
