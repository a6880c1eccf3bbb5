"""Index maps between hmmlearn's concatenated sequences and padded batches, and length buckets."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


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
