"""Forward-backward recursions on padded batches: log-space loop, chunked log-space scan, chunked scaled scan.

See :mod:`ppl_lvm.em.hmm` for the chunking scheme.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["forward_backward"]

# Chunked scan memory cap for its (B, T, K, K) tensors (a few are alive at once).
_MAX_CHUNK_BYTES = 256 * 2**20


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
