"""Sums, broadcasts and agreements over the ranks of a ``torch.distributed`` process group: the data-parallel half
of :mod:`ppl_lvm.em.accumulate` (one process: nothing to do).

A failure on one rank is announced to the others by the flag exchange of :mod:`ppl_lvm.collective`: inside a fit's
set-up before every agreement and broadcast (:func:`~ppl_lvm.collective.checkpoint`) and with the first pass's
size check; in the generic route's passes with every sum (:meth:`Reducer.sum_checked`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..collective import broadcast_object, checked, exchange, flag_device, gather_object, raise_failure, require_group
from ..errors import DistributedError
from ..runtime import clone_param_state

__all__ = ["Reducer"]


class Reducer:
    """Sums statistics over the ranks of a ``torch.distributed`` process group (nothing to do in one process).

    Parameters
    ----------
    distributed : bool
        Reduce over the process group; it must be initialised (``torch.distributed.init_process_group``, which
        ``torchrun`` scripts call first).
    group : ProcessGroup, optional
        The group to reduce over (default: the whole world).
    """

    def __init__(self, distributed: bool = False, group: Any = None) -> None:
        self.distributed = bool(distributed)
        self.group = group
        if self.distributed:
            require_group("method='em'")
        self.rank = dist.get_rank(group) if self.distributed else 0
        self.world_size = dist.get_world_size(group) if self.distributed else 1
        # NCCL reduces GPU tensors only: the statistics travel through the rank's current GPU
        device = flag_device(group) if self.distributed else None
        self._device = device if device is not None and device.type == "cuda" else None

    def sum(self, stats: dict[str, torch.Tensor], check: bool = False) -> dict[str, torch.Tensor]:
        """``stats`` summed over the ranks, key by key: one all-reduce of one float64 buffer.

        ``check``: first make sure every rank sends as many numbers (one more all-reduce; the data summary of a
        fit's first pass is checked, so that ranks holding data of different widths fail with a clear error).
        """
        if not self.distributed:
            return stats
        keys = sorted(stats)
        values = [torch.as_tensor(stats[k]) for k in keys]
        flat = torch.cat([v.reshape(-1).to(torch.float64) for v in values])
        if check:  # inside a fit's set-up, also the exchange that tells whether a rank failed before
            told = checked(None, "summing the first pass over the data", float(flat.numel()), self.group)
            if told.low != told.high:
                raise DistributedError(
                    f"the ranks hold data of different shapes (rank {self.rank}: {flat.numel()} summary numbers, "
                    f"others between {int(told.low)} and {int(told.high)}): every rank must pass data "
                    "with the same columns (and, for categorical data, the same n_categories)")
        if self._device is not None:
            flat = flat.to(self._device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        flat = flat.cpu()
        out, offset = {}, 0
        for key, value in zip(keys, values, strict=True):
            out[key] = flat[offset : offset + value.numel()].reshape(value.shape).to(value.dtype)
            offset += value.numel()
        return out

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (the same bits: a pickled copy)."""
        if not self.distributed:
            return value
        return broadcast_object(value, self.group)

    def sum_checked(self, stats: dict[str, torch.Tensor] | None, error: BaseException | None,
                    what: str) -> dict[str, torch.Tensor]:
        """``stats`` summed over the ranks (:meth:`sum`) once every rank has said that it computed them.

        For passes that may fail on one rank's data (the generic route's E-step and each evaluation of ``Q``):
        first one small all-reduce of a failure flag and the number of values sent. When a rank failed
        (``error``), it raises its own error and every other rank raises a
        :class:`~ppl_lvm.errors.DistributedError` carrying its text (a ``RuntimeError``, so the M-step, which
        stops on an error that reports NaN or invalid values, decides alike on every rank); no rank is left
        waiting for another. Ranks sending different numbers of values are refused.
        """
        if not self.distributed:
            if error is not None:
                raise error
            return stats
        numel = 0.0 if error is not None else float(sum(torch.as_tensor(v).numel() for v in stats.values()))
        told = exchange(error, numel, self.group)
        if told.failed is not None:
            raise_failure(told.failed, error, what, self.group)
        if told.low != told.high:
            raise DistributedError(
                f"the ranks send different numbers of values while {what} (rank {self.rank}: {int(numel)}, others "
                f"between {int(told.low)} and {int(told.high)}): every rank must fit the same model, "
                "with parameters of the same shapes")
        return self.sum(stats)

    def agree(self, value: Any, what: str) -> None:
        """Refuse, on every rank, a ``value`` (a picklable description) that differs between the ranks; of a dict,
        the message shows the entries that differ."""
        if not self.distributed:
            return
        values = gather_object(value, self.group)
        other = next((r for r, v in enumerate(values) if v != values[0]), None)
        if other is not None:
            first, theirs = values[0], values[other]
            if isinstance(first, dict) and isinstance(theirs, dict):  # named values: only those that differ
                names = [n for n in sorted(set(first) | set(theirs)) if first.get(n) != theirs.get(n)]
                first, theirs = ({n: v.get(n) for n in names} for v in (first, theirs))
            raise DistributedError(
                f"the ranks of the data-parallel fit disagree on {what}: rank 0 has {first!r}, rank {other} has "
                f"{theirs!r}. Every rank must call lvm.infer with the same model and options, and data that "
                "differ only in their rows")

    def broadcast_state(self, state: dict) -> dict:
        """Rank 0's parameter values on every rank (a parameter-store state, with the rank's own constraints),
        once the ranks agree on the parameters' names, shapes and dtypes; unchanged in one process."""
        if not self.distributed:
            return state
        self.agree(sorted((n, tuple(v.shape), str(v.dtype)) for n, v in state["params"].items()),
                   "the model's parameters (names, shapes, dtypes)")
        values = self.broadcast({n: v.detach() for n, v in state["params"].items()})
        return clone_param_state({"params": values, "constraints": state["constraints"]})
