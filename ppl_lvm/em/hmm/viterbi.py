"""Most probable state paths (Viterbi), with hmmlearn's tie-breaking."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .forward_backward import _safe_log
from .layout import _Buckets, _Layout

__all__ = ["viterbi"]


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
