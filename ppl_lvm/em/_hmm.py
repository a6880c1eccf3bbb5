"""Exact EM for hidden Markov models: forward-backward, Viterbi, M-steps, loop.

Data layout follows hmmlearn: all sequences concatenated along the first axis
plus ``lengths``.  Internally sequences are padded to a (B, T, K) batch; padded
steps get log-emission 0, so they multiply the forward messages by a
row-stochastic matrix and leave every likelihood unchanged.

Forward-backward avoids a Python loop over T (each tiny torch op costs
microseconds, so T ~ 1000 sequential steps would dominate).  The time axis is
cut into chunks of length ``C ~ sqrt(2T/3)`` and, for all chunks at once,

1. the transfer-matrix product of every chunk is formed (C steps; right
   multiplication by the shared transition matrix is one GEMM per step),
2. messages are passed between chunk boundaries (T / C steps, log space),
3. the ordinary scaled forward / backward recursions run inside every chunk
   from those boundary messages (C steps each).

The default ("scaled") variant works in probability space with per-step
normalisation, like hmmlearn's ``implementation="scaling"``, and gets the
expected transition counts from one (K, n) @ (n, K) GEMM.  It is used when every
transition probability is >= 1e-100 and no emission log-ratio exceeds 700 nats
(where scaled messages cannot lose relevant mass); otherwise, or if an
underflow is detected, an exact log-space version of the chunked scan (or, for
very large state spaces, a plain log-space time loop) is used.

Parameter dict: ``"startprob"`` (K,) is the distribution of the *first hidden
state* (hmmlearn's ``startprob_``), ``"transmat"`` (K, K) with rows summing to
1, plus the emission family's entries.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ._mixture import EMDegeneracyWarning, EmissionFamily

__all__ = [
    "HMMEStep",
    "HMMFitResult",
    "fit_hmm",
    "forward_backward",
    "hmm_e_step",
    "hmm_log_likelihood",
    "hmm_n_parameters",
    "transitions_m_step",
    "viterbi",
]

Params = dict[str, torch.Tensor]

# Chunked scan memory cap for its (B, T, K, K) tensors (a few are alive at once).
_MAX_CHUNK_BYTES = 256 * 2**20


# --------------------------------------------------------------------------- layout


class _Layout:
    """Index maps between the concatenated (N, K) layout and the padded batch."""

    def __init__(self, lengths: Sequence[int], n_total: int, chunk: int | None = None) -> None:
        lengths_t = torch.as_tensor(list(lengths), dtype=torch.long)
        if lengths_t.ndim != 1 or lengths_t.numel() == 0:
            raise ValueError("lengths must be a non-empty 1-D sequence of ints")
        if bool((lengths_t <= 0).any()):
            raise ValueError("every sequence must have length >= 1")
        if int(lengths_t.sum()) != n_total:
            raise ValueError(f"sum(lengths)={int(lengths_t.sum())} != number of rows {n_total}")
        self.lengths = lengths_t
        self.n_seq = lengths_t.numel()
        t_max = int(lengths_t.max())
        if chunk is None:
            # ~3C + 2T/C sequential steps in the scaled scan: minimised at sqrt(2T/3).
            chunk = max(1, int(math.ceil(math.sqrt(2 * t_max / 3))))
        self.chunk = chunk
        self.n_chunks = -(-t_max // chunk)
        self.t_pad = self.n_chunks * chunk
        starts = torch.cumsum(lengths_t, 0) - lengths_t
        seq_id = torch.repeat_interleave(torch.arange(self.n_seq), lengths_t)
        time = torch.arange(n_total) - starts[seq_id]
        # Flat position in the padded (B * T_pad) layout of every observation.
        self.pad_index = seq_id * self.t_pad + time
        # Transitions t -> t+1 that lie inside a sequence, in (B * (T_pad-1)) layout.
        inner = time < (lengths_t[seq_id] - 1)
        self.trans_index = (seq_id * (self.t_pad - 1) + time)[inner]
        self.first_index = starts
        self.last_pad = torch.arange(self.n_seq) * self.t_pad + lengths_t - 1

    def pad(self, values: torch.Tensor) -> torch.Tensor:
        """(N, K) -> (B, T_pad, K), zeros in the padding."""
        k = values.shape[1]
        out = values.new_zeros((self.n_seq * self.t_pad, k))
        out.index_copy_(0, self.pad_index, values)
        return out.view(self.n_seq, self.t_pad, k)

    def unpad(self, values: torch.Tensor) -> torch.Tensor:
        """(B, T_pad, K) -> (N, K)."""
        return values.reshape(-1, values.shape[-1]).index_select(0, self.pad_index)


class _Buckets:
    """Sequences grouped by length so that padding wastes at most 2x.

    Within a group the longest sequence is at most twice the shortest; each
    group is processed as one padded batch.  Equal lengths give one group that
    covers the rows in order, so the common case costs no extra copies.
    """

    def __init__(self, lengths: Sequence[int] | None, n_total: int, chunk: int | None = None) -> None:
        lengths_t = torch.as_tensor([n_total] if lengths is None else list(lengths), dtype=torch.long)
        if lengths_t.ndim != 1 or lengths_t.numel() == 0:
            raise ValueError("lengths must be a non-empty 1-D sequence of ints")
        if bool((lengths_t <= 0).any()):
            raise ValueError("every sequence must have length >= 1")
        if int(lengths_t.sum()) != n_total:
            raise ValueError(f"sum(lengths)={int(lengths_t.sum())} != number of rows {n_total}")
        self.n_seq = lengths_t.numel()
        self.n_total = n_total
        starts = torch.cumsum(lengths_t, 0) - lengths_t
        order = torch.argsort(lengths_t, stable=True).tolist()
        groups: list[list[int]] = []
        for seq in order:
            if groups and int(lengths_t[seq]) <= 2 * int(lengths_t[groups[-1][0]]):
                groups[-1].append(seq)
            else:
                groups.append([seq])
        self.groups: list[tuple[torch.Tensor | None, _Layout, torch.Tensor]] = []
        for members in groups:
            seq_ids = torch.as_tensor(sorted(members), dtype=torch.long)
            sub_len = lengths_t[seq_ids]
            if len(groups) == 1:
                rows = None  # identity: all rows, in order
            else:
                offsets = torch.repeat_interleave(starts[seq_ids] - (torch.cumsum(sub_len, 0) - sub_len), sub_len)
                rows = torch.arange(int(sub_len.sum())) + offsets
            self.groups.append((rows, _Layout(sub_len.tolist(), int(sub_len.sum()), chunk), seq_ids))


# --------------------------------------------------------------------------- log-space helpers


def _log_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(exp(a) @ exp(b))`` over the last two axes, exact (no underflow)."""
    return torch.logsumexp(a.unsqueeze(-1) + b.unsqueeze(-3), dim=-2)


def _log_vecmat(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``log(exp(v) @ exp(m))`` for a batch of row vectors."""
    return torch.logsumexp(v.unsqueeze(-1) + m, dim=-2)


def _log_matvec(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``log(exp(m) @ exp(v))`` for a batch of column vectors."""
    return torch.logsumexp(m + v.unsqueeze(-2), dim=-1)


def _safe_log(p: torch.Tensor) -> torch.Tensor:
    # log(0) = -inf is intended (structural zeros in startprob / transmat).
    return torch.log(p)


# --------------------------------------------------------------------------- forward-backward


def _forward_backward_loop(
    log_start: torch.Tensor, log_trans: torch.Tensor, emis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference log-space forward-backward, one time step at a time.

    Parameters
    ----------
    emis : (B, T, K) padded log emissions.

    Returns
    -------
    alpha, beta : (B, T, K)
    """
    b, t_len, k = emis.shape
    alpha = torch.empty_like(emis)
    beta = torch.empty_like(emis)
    alpha[:, 0] = log_start + emis[:, 0]
    for t in range(1, t_len):
        alpha[:, t] = _log_vecmat(alpha[:, t - 1], log_trans) + emis[:, t]
    beta[:, -1] = 0.0
    for t in range(t_len - 2, -1, -1):
        beta[:, t] = _log_matvec(log_trans, emis[:, t + 1] + beta[:, t + 1])
    return alpha, beta


def _forward_backward_chunked(
    log_start: torch.Tensor, log_trans: torch.Tensor, emis: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-level scan version of :func:`_forward_backward_loop` (same output)."""
    b, t_pad, k = emis.shape
    n_chunks = t_pad // chunk
    # Transfer matrices M_t[i, j] = log A_ij + log p(x_t | j); M_0 has every row
    # equal to log pi + log p(x_0 | .), so a uniform "state before t=0" works.
    trans = log_trans + emis.unsqueeze(2)  # (B, T, K, K)
    trans[:, 0] = (log_start + emis[:, 0]).unsqueeze(1)
    trans = trans.view(b, n_chunks, chunk, k, k)

    # Within-chunk prefix products Q_s = M_0 ... M_s (all chunks at once).
    prefix = torch.empty_like(trans)
    prefix[:, :, 0] = trans[:, :, 0]
    for s in range(1, chunk):
        prefix[:, :, s] = _log_matmul(prefix[:, :, s - 1], trans[:, :, s])
    full = prefix[:, :, -1]  # (B, nC, K, K) product over each whole chunk

    # Forward messages entering each chunk.
    enter = emis.new_empty((b, n_chunks, k))
    enter[:, 0] = -math.log(k)
    for c in range(1, n_chunks):
        enter[:, c] = _log_vecmat(enter[:, c - 1], full[:, c - 1])
    alpha = torch.logsumexp(enter.unsqueeze(2).unsqueeze(-1) + prefix, dim=-2)

    # Within-chunk suffix products S_s = M_{s+1} ... M_{C-1} (S_{C-1} = I).
    beta = torch.empty_like(alpha)
    leave = emis.new_empty((b, n_chunks, k))
    leave[:, -1] = 0.0
    for c in range(n_chunks - 1, 0, -1):
        leave[:, c - 1] = _log_matvec(full[:, c], leave[:, c])
    beta[:, :, -1] = leave
    if chunk > 1:
        suffix = torch.empty_like(trans[:, :, 1:])  # index s for s = 0..C-2
        suffix[:, :, -1] = trans[:, :, -1]
        for s in range(chunk - 3, -1, -1):
            suffix[:, :, s] = _log_matmul(trans[:, :, s + 1], suffix[:, :, s + 1])
        beta[:, :, :-1] = torch.logsumexp(suffix + leave.unsqueeze(2).unsqueeze(3), dim=-1)
    return alpha.view(b, t_pad, k), beta.view(b, t_pad, k)


def _scaled_ok(transmat: torch.Tensor, emis: torch.Tensor) -> bool:
    """Whether the probability-space (scaled) recursion is safe.

    Scaled messages drop contributions smaller than ~1e-308 of the current
    mass.  That is harmless when every transition has non-negligible
    probability (the dropped mass is always dominated by mass flowing in
    through transitions) and no emission underflows outright; otherwise use
    exact log space.
    """
    if not bool((transmat >= 1e-100).all()):
        return False
    spread = emis.amax(-1) - emis.amin(-1)
    return bool((spread <= 700.0).all())


@dataclass
class _Scaled:
    """Scaled forward-backward output (probability space).

    ``alpha_hat`` rows sum to 1 and ``log alpha = log(alpha_hat) + log_norm``;
    ``beta_hat`` rows sum to 1 up to an unstored per-step factor, which
    cancels in the posteriors.  ``emis_prob`` is ``exp(emis - max_k emis)``.
    """

    alpha_hat: torch.Tensor
    log_norm: torch.Tensor
    beta_hat: torch.Tensor
    emis_prob: torch.Tensor


def _forward_backward_scaled(
    startprob: torch.Tensor, transmat: torch.Tensor, emis: torch.Tensor, chunk: int
) -> _Scaled:
    """Chunked scaled forward-backward in probability space.

    Four short sequential loops instead of one over T: (1) the transfer
    product of every chunk, all chunks at once -- right-multiplying by the
    shared A is one GEMM per step; (2) messages between chunk boundaries
    (log space, exact); (3)/(5) the ordinary scaled recursion inside every
    chunk, all chunks at once, started from the boundary messages; (4) the
    backward boundary pass reusing the products of (1).
    """
    b, t_pad, k = emis.shape
    n_chunks = t_pad // chunk
    emis_max = emis.amax(-1)
    prob = torch.exp(emis - emis_max.unsqueeze(-1)).view(b, n_chunks, chunk, k)
    emis_max = emis_max.view(b, n_chunks, chunk)
    chunk_offset = emis_max.sum(-1)  # (B, nC)
    first = startprob * prob[:, 0, 0]  # (B, K): pi * p(x_0 | .)

    # (1) transfer product of each chunk, rows normalised to max 1.
    prod = transmat * prob[:, :, 0].unsqueeze(2)  # (B, nC, K, K)
    prod[:, 0] = first.unsqueeze(1)
    row = prod.amax(-1, keepdim=True)
    prod.div_(row)
    row_log = row.log_().squeeze(-1)  # (B, nC, K)
    for s in range(1, chunk):
        prod = (prod.view(-1, k) @ transmat).view(b, n_chunks, k, k)
        prod.mul_(prob[:, :, s].unsqueeze(2))
        row = prod.amax(-1, keepdim=True)
        prod.div_(row)
        row_log += row.log_().squeeze(-1)
    row_log += chunk_offset.unsqueeze(-1)

    # (2) forward boundary messages (log alpha just before each chunk).
    enter = emis.new_empty((b, n_chunks, k))
    enter[:, 0] = -math.log(k)
    for c in range(1, n_chunks):
        w = enter[:, c - 1] + row_log[:, c - 1]
        w_max = w.amax(-1, keepdim=True)
        v = torch.bmm(torch.exp(w - w_max).unsqueeze(1), prod[:, c - 1]).squeeze(1)
        enter[:, c] = v.log_() + w_max

    # (3) scaled forward inside every chunk.
    e_max = enter.amax(-1, keepdim=True)
    x = torch.exp(enter - e_max)
    x_sum = x.sum(-1, keepdim=True)
    x.div_(x_sum)
    start_log = (e_max + x_sum.log()).squeeze(-1)  # (B, nC)
    alpha_hat = emis.new_empty((b, n_chunks, chunk, k))
    step_log = emis.new_empty((b, n_chunks, chunk))
    for s in range(chunk):
        y = (x.view(-1, k) @ transmat).view(b, n_chunks, k)
        if s == 0:
            y[:, 0] = startprob  # the dummy state before t = 0 leads to pi
        y.mul_(prob[:, :, s])
        total = y.sum(-1, keepdim=True)
        y.div_(total)
        step_log[:, :, s] = total.squeeze(-1)
        alpha_hat[:, :, s] = y
        x = y
    step_log.log_().add_(emis_max)
    log_norm = torch.cumsum(step_log, dim=-1).add_(start_log.unsqueeze(-1))

    # (4) backward boundary messages (log beta at each chunk's last step).
    leave = emis.new_empty((b, n_chunks, k))
    leave[:, -1] = 0.0
    for c in range(n_chunks - 1, 0, -1):
        l_max = leave[:, c].amax(-1, keepdim=True)
        v = torch.bmm(prod[:, c], torch.exp(leave[:, c] - l_max).unsqueeze(-1)).squeeze(-1)
        leave[:, c - 1] = v.log_() + row_log[:, c] + l_max

    # (5) scaled backward inside every chunk.
    beta_hat = emis.new_empty((b, n_chunks, chunk, k))
    x = torch.exp(leave - leave.amax(-1, keepdim=True))
    x.div_(x.sum(-1, keepdim=True))
    beta_hat[:, :, -1] = x
    trans_t = transmat.T
    for s in range(chunk - 2, -1, -1):
        y = ((x * prob[:, :, s + 1]).view(-1, k) @ trans_t).view(b, n_chunks, k)
        y.div_(y.sum(-1, keepdim=True))
        beta_hat[:, :, s] = y
        x = y
    return _Scaled(
        alpha_hat.view(b, t_pad, k),
        log_norm.view(b, t_pad),
        beta_hat.view(b, t_pad, k),
        prob.view(b, t_pad, k),
    )


def forward_backward(
    log_startprob: torch.Tensor,
    log_transmat: torch.Tensor,
    log_emission_padded: torch.Tensor,
    *,
    method: str = "auto",
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-space forward and backward messages for a padded batch.

    Parameters
    ----------
    log_startprob : (K,)
    log_transmat : (K, K)
    log_emission_padded : (B, T, K)
        Padding must be 0 (log 1) after each sequence's end.
    method : {"auto", "chunked", "loop"}
    chunk : int, optional
        Chunk length for the chunked scan (default ``ceil(sqrt(T))``);
        ``T`` must be a multiple of it.

    Returns
    -------
    log_alpha, log_beta : (B, T, K)
        ``log p(x_0..x_t, z_t)`` and ``log p(x_{t+1}.. | z_t)``.
    """
    b, t_len, k = log_emission_padded.shape
    if method == "auto":
        nbytes = 4 * b * t_len * k * k * log_emission_padded.element_size()
        method = "chunked" if nbytes <= _MAX_CHUNK_BYTES and t_len > 1 else "loop"
    if method == "loop":
        return _forward_backward_loop(log_startprob, log_transmat, log_emission_padded)
    if chunk is None:
        chunk = max(1, int(math.ceil(math.sqrt(t_len))))
    if t_len % chunk:
        extra = chunk - t_len % chunk
        padded = torch.nn.functional.pad(log_emission_padded, (0, 0, 0, extra))
        alpha, beta = _forward_backward_chunked(log_startprob, log_transmat, padded, chunk)
        return alpha[:, :t_len], beta[:, :t_len]
    return _forward_backward_chunked(log_startprob, log_transmat, log_emission_padded, chunk)


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


# --------------------------------------------------------------------------- Viterbi


def viterbi(
    log_emission: torch.Tensor,
    lengths: Sequence[int] | None,
    startprob: torch.Tensor,
    transmat: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Most probable state path (max-product), ties broken as hmmlearn.

    hmmlearn (``_hmmc.viterbi``) picks the *first* maximiser for the final
    state (``std::max_element``) but, in the traceback, compares
    ``(value, index)`` pairs, so ties there go to the *last* maximiser of
    ``lattice[t, i] + log A[i, z_{t+1}]``.  The same rules and the same
    arithmetic are used here, so the paths coincide.

    Returns
    -------
    log_prob : (B,) log-probability of the best path of each sequence
    states : (N,) int64, concatenated layout
    """
    buckets = _Buckets(lengths, log_emission.shape[0], chunk=1)
    dtype = log_emission.dtype
    log_start = _safe_log(startprob.to(dtype))
    log_trans = _safe_log(transmat.to(dtype))
    if len(buckets.groups) == 1:
        return _viterbi_group(log_emission, log_start, log_trans, buckets.groups[0][1])
    log_prob = log_emission.new_empty(buckets.n_seq)
    states = torch.empty(log_emission.shape[0], dtype=torch.long)
    for rows, layout, seq_ids in buckets.groups:
        lp, st = _viterbi_group(log_emission.index_select(0, rows), log_start, log_trans, layout)
        log_prob[seq_ids] = lp
        states[rows] = st
    return log_prob, states


def _viterbi_group(
    log_emission: torch.Tensor, log_start: torch.Tensor, log_trans: torch.Tensor, layout: _Layout
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`viterbi` for one padded batch of similar-length sequences.

    The lattice recursion stays sequential (its rounding must match hmmlearn's
    for ties to resolve identically), but with preallocated time-major
    buffers.  Backpointers are then computed for all steps at once and the
    traceback is done by pointer jumping (log2 T gathers) instead of T steps.
    """
    emis = layout.pad(log_emission).transpose(0, 1).contiguous()  # (T, B, K)
    t_pad, b, k = emis.shape
    lattice = torch.empty_like(emis)
    torch.add(log_start, emis[0], out=lattice[0])
    buf = emis.new_empty((b, k, k))
    for t in range(1, t_pad):
        torch.add(lattice[t - 1].unsqueeze(2), log_trans, out=buf)
        torch.amax(buf, dim=1, out=lattice[t])
        lattice[t].add_(emis[t])

    end = layout.lengths - 1  # (B,)
    seq = torch.arange(b)
    last = lattice[end, seq]  # (B, K)
    final = last.argmax(dim=1)  # first maximiser, as std::max_element
    log_prob = last.gather(1, final.unsqueeze(1)).squeeze(1)

    # back[t, b, j] = state at t given state j at t + 1: the *last* maximiser of
    # lattice[t, i] + log A[i, j] (hmmlearn's (value, index) pair comparison).
    back = torch.empty((t_pad, b, k), dtype=torch.long)
    back[-1] = torch.arange(k)
    trans_rev = log_trans.flip(0)  # rows i reversed
    block = max(1, 2**22 // (b * k * k))
    for t0 in range(0, t_pad - 1, block):
        t1 = min(t0 + block, t_pad - 1)
        scores = lattice[t0:t1].flip(-1).unsqueeze(-1) + trans_rev  # (t, B, K_i reversed, K_j)
        back[t0:t1] = (k - 1) - scores.argmax(dim=2)
    # Steps at or after a sequence's end map every state to itself, so the
    # composed map from T_pad - 1 down to the end is the identity.
    times = torch.arange(t_pad).unsqueeze(1)
    back = torch.where((times >= end).unsqueeze(-1), torch.arange(k), back)
    # Pointer jumping: maps[t] sends the state at target[t] to the state at t.
    target = torch.clamp(torch.arange(t_pad) + 1, max=t_pad - 1)
    maps = back
    while bool((target < t_pad - 1).any()):
        maps = torch.gather(maps, 2, maps[target])
        target = target[target]
    path = maps.gather(2, final.view(1, b, 1).expand(t_pad, b, 1)).squeeze(-1)  # (T, B)
    states = path.T.reshape(-1).index_select(0, layout.pad_index)
    return log_prob, states


# --------------------------------------------------------------------------- M-step


def transitions_m_step(
    start_sum: torch.Tensor,
    xi_sum: torch.Tensor,
    previous: Params | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form start-probability and transition-matrix updates.

    Rows of ``xi_sum`` with no expected transitions keep their previous values
    (hmmlearn would leave a zero row) and raise :class:`EMDegeneracyWarning`.

    Returns
    -------
    startprob : (K,), transmat : (K, K)
    """
    startprob = start_sum / start_sum.sum()
    row = xi_sum.sum(1, keepdim=True)
    empty = (row <= 0).squeeze(1)
    transmat = xi_sum / torch.where(row > 0, row, torch.ones_like(row))
    if bool(empty.any()):
        k = xi_sum.shape[0]
        prev = None if previous is None else previous.get("transmat")
        transmat = transmat.clone()
        fallback = prev.to(transmat.dtype) if prev is not None else torch.full((k, k), 1.0 / k, dtype=transmat.dtype)
        transmat[empty] = fallback[empty]
        # A sequence set made only of length-1 sequences has no transitions at
        # all: that is expected, not degenerate.
        if bool((row > 0).any()):
            warnings.warn(
                f"{int(empty.sum())} states have no expected outgoing transitions; "
                "keeping their previous transition rows",
                EMDegeneracyWarning,
                stacklevel=2,
            )
    return startprob, transmat


def hmm_n_parameters(family: EmissionFamily, params: Params) -> int:
    """Free parameters: emissions + (K - 1) start + K (K - 1) transitions (hmmlearn)."""
    k = int(params["transmat"].shape[0])
    return int(family.n_parameters(params)) + (k - 1) + k * (k - 1)


# --------------------------------------------------------------------------- loop


@dataclass
class HMMFitResult:
    """Outcome of :func:`fit_hmm`.

    Attributes
    ----------
    params : dict of torch.Tensor
        Final parameters (after the last M-step).
    history : list of float
        Total log-likelihood (summed over sequences) of each iteration's
        E-step, i.e. hmmlearn's ``monitor_.history``.
    converged : bool
    n_iter : int
    """

    params: Params
    history: list[float] = field(default_factory=list)
    converged: bool = False
    n_iter: int = 0


def fit_hmm(
    X: Any,
    lengths: Sequence[int] | None,
    family: EmissionFamily,
    init_params: Params,
    max_iter: int = 100,
    tol: float = 1e-2,
    reg: float | None = None,
    *,
    cache: dict | None = None,
    method: str = "auto",
    callback: Any = None,
) -> HMMFitResult:
    """Fit an HMM by exact EM (Baum-Welch).

    Parameters
    ----------
    X : array-like
        All sequences concatenated, in the family's data format.
    lengths : sequence of int, optional
        Sequence lengths; ``None`` = a single sequence.
    family : EmissionFamily
    init_params : dict
        ``"startprob"`` (K,), ``"transmat"`` (K, K) and the family's parameters.
    max_iter : int, default 100
    tol : float, default 1e-2
        hmmlearn's criterion: stop when the total log-likelihood improves by
        less than ``tol`` (signed, so a decrease also stops).
    reg : float, optional
        Family regularisation (default ``family.default_reg``).  Use 0 with
        hmmlearn's ``covars_prior=0`` for identical numbers.
    method : {"auto", "scaled", "log", "loop"}
        Forward-backward implementation (see :func:`hmm_e_step`).
    callback : callable, optional
        ``callback(n_iter, log_likelihood, params)``; returning True stops.

    Returns
    -------
    HMMFitResult
    """
    if reg is None:
        reg = family.default_reg
    if cache is None:
        cache = family.precompute(X)
    params = family.complete_params(dict(init_params))
    dtype = next(
        (v.dtype for v in params.values() if isinstance(v, torch.Tensor) and v.is_floating_point()),
        torch.float64,
    )
    params["startprob"] = torch.as_tensor(params["startprob"], dtype=dtype)
    params["transmat"] = torch.as_tensor(params["transmat"], dtype=dtype)
    n_total = int(cache["n"])
    buckets = _Buckets(lengths, n_total)
    result = HMMFitResult(params=params)
    for n_iter in range(1, max_iter + 1):
        log_em = family.log_prob(X, params, cache=cache)
        stats = hmm_e_step(log_em, None, params["startprob"], params["transmat"], method=method, buckets=buckets)
        total = float(stats.log_likelihood.sum())
        new = family.m_step(X, stats.gamma, params, reg, cache=cache)
        new["startprob"], new["transmat"] = transitions_m_step(stats.start_sum, stats.xi_sum, params)
        params = new
        result.history.append(total)
        result.n_iter = n_iter
        if callback is not None and callback(n_iter, total, params):
            break
        if len(result.history) >= 2 and result.history[-1] - result.history[-2] < tol:
            result.converged = True
            break
    result.params = params
    return result
