"""How the ranks of a data-parallel fit tell one another that one of them failed: the one flag exchange.

Every rank of a ``torch.distributed`` process group must make the same collective calls in the same order; a rank
that raises skips its next ones and leaves the others waiting in them. So every place where a rank may fail alone
ends with one small all-reduce (:func:`exchange`, MAX of three float64 numbers: the failed rank plus one, and a size
with its negative, so that ranks sending different numbers of values are found in the same call), and when a rank
failed every rank learns its error's text from it (one broadcast, only then). The failing rank raises its own error;
the others raise :class:`~ppl_lvm.errors.DistributedError` with the text :func:`failure_message` writes (a
``RuntimeError``). Both layers that fit data-parallel use it: the EM kernels' sums over ranks
(:mod:`ppl_lvm.em.ranks`) and the variational fits' steps (:mod:`ppl_lvm.backends.distributed`).

**The set-up of a fit.** Before a fit's first iteration a rank does local work (binding and checking its shard,
recognising the model, a start drawn on rank 0) between collective calls (agreements, broadcasts of the start, the
first pass's sums). Inside :func:`set_up` every such call is preceded by an exchange (:func:`checkpoint`, which the
collective helpers here and in both layers call), and an error leaving the block on one rank is announced by the
same exchange: whichever collective call the other ranks wait in, they meet it there and raise. :func:`started`
ends the set-up with one exchange just before the iterations (whose own sums are not checked: their failures are
found by the flagged passes of the generic EM route and the variational steps); :func:`restarting` begins the set-up
of the next restart. An error raised on every rank alike (an agreement refused) is exchanged once more and each rank
raises its own. Without a process group of several ranks the set-up exchanges nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import DistributedError

__all__ = ["Exchanged", "broadcast_object", "checked", "checkpoint", "collective", "exchange", "failure_message",
           "failure_text", "flag_device", "gather_object", "in_group", "is_known", "known", "raise_failure",
           "receive_failure", "require_group", "restarting", "set_up", "stage", "started"]

#: set on an error every rank already knows of (announced, or raised because another rank failed)
_KNOWN = "_ppl_lvm_known_to_every_rank"


def in_group() -> bool:
    """Whether an initialised process group of more than one rank is there to talk to."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def require_group(what: str) -> None:
    """Refuse ``distributed=True`` without an initialised process group, naming the fix."""
    if not (dist.is_available() and dist.is_initialized()):
        raise DistributedError(
            f"distributed=True ({what}) needs an initialised torch.distributed process group, and none is: call "
            "torch.distributed.init_process_group('gloo') (CPU) or ('nccl') (GPU) first in every process, or start "
            "the script with torchrun (e.g. torchrun --nproc-per-node 2 script.py)"
        )


def flag_device(group: Any = None) -> torch.device:
    """Where the group's collective tensors live: the rank's current GPU under NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def failure_message(rank: int, what: str, text: str) -> str:
    """What the other ranks raise when rank ``rank`` failed while ``what`` with the error ``text``."""
    return f"rank {rank} of the data-parallel fit failed while {what}: {text}"


def failure_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


#: ids of the last errors marked known that take no attribute (an exception class with ``__slots__``)
_UNMARKABLE: list[int] = []


def known(error: BaseException) -> BaseException:
    """Mark ``error`` as known to every rank (no more exchanges for it); returns it."""
    try:
        setattr(error, _KNOWN, True)
    except (AttributeError, TypeError):
        _UNMARKABLE.append(id(error))
        del _UNMARKABLE[:-16]
    return error


def is_known(error: BaseException) -> bool:
    """Whether every rank already knows of ``error`` (:func:`known`)."""
    return bool(getattr(error, _KNOWN, False)) or id(error) in _UNMARKABLE


@dataclass(frozen=True)
class Exchanged:
    """What one exchange told: the failed rank (``None``: none) and the smallest and largest size sent."""

    failed: int | None
    low: float
    high: float


def exchange(error: BaseException | None, size: float = 0.0, group: Any = None) -> Exchanged:
    """The flag exchange: one all-reduce (MAX) of ``[rank + 1 if error else 0, size, -size]`` over ``group``.

    A failed rank's size does not count (it sends none). With several failed ranks the highest is named.
    """
    rank = dist.get_rank(group)
    size = 0.0 if error is not None else float(size)
    flags = torch.tensor([rank + 1.0 if error is not None else 0.0, size, -size], dtype=torch.float64,
                         device=flag_device(group))
    dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
    flags = flags.cpu()
    failed = int(flags[0].item()) - 1
    return Exchanged(failed if failed >= 0 else None, -float(flags[2].item()), float(flags[1].item()))


def receive_failure(failed: int, payload: Any, group: Any = None) -> Any:
    """After an exchange that named rank ``failed``: that rank's ``payload`` on every rank (one broadcast)."""
    box = [payload if dist.get_rank(group) == failed else None]
    source = failed if group is None else dist.get_global_rank(group, failed)
    dist.broadcast_object_list(box, src=source, group=group)
    return box[0]


def raise_failure(failed: int, error: BaseException | None, what: str, group: Any = None) -> None:
    """After an exchange that named rank ``failed``: a failed rank re-raises its ``error``, the others raise
    :class:`~ppl_lvm.errors.DistributedError` with what the failed rank was doing and its error's text
    (:func:`failure_message`)."""
    told = receive_failure(failed, None if error is None else (what, failure_text(error)), group)
    if error is not None:
        raise known(error)
    raise known(DistributedError(failure_message(failed, *told)))


def checked(error: BaseException | None, what: str, size: float = 0.0, group: Any = None) -> Exchanged:
    """:func:`exchange`, then :func:`raise_failure` when a rank failed; returns the sizes when none did."""
    told = exchange(error, size, group)
    if told.failed is not None:
        raise_failure(told.failed, error, what, group)
    return told


@contextlib.contextmanager
def collective(what: str, group: Any = None) -> Iterator[None]:
    """Run a block on every rank and let every rank know whether it failed anywhere (one exchange at its end).

    A rank that raised re-raises its own error; the others raise :class:`~ppl_lvm.errors.DistributedError`
    naming that rank and its error, instead of waiting for it in the next collective call. The block must make no
    collective call of its own (one that checks first, such as :func:`gather_object`, is allowed).
    """
    require_group(what)
    error: BaseException | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - announced to the other ranks, then re-raised
        if is_known(exc):
            raise
        error = exc
    checked(error, what, group=group)


# ---------------------------------------------------------------------------------------------- the set-up phase
@dataclass
class _SetUp:
    what: str
    open: bool = True


_CURRENT: contextvars.ContextVar[_SetUp | None] = contextvars.ContextVar("ppl_lvm_set_up", default=None)


@contextlib.contextmanager
def set_up(what: str, active: bool = True) -> Iterator[None]:
    """The set-up of a data-parallel fit: until :func:`started`, a failure on one rank is raised on every rank.

    Inactive (nothing exchanged) when ``active`` is false, without a process group of several ranks, or inside
    another ``set_up`` (the outer one announces). Leaving the block while the set-up is still open is one more
    exchange (so that no rank goes on while another failed).
    """
    if not active or not in_group() or _CURRENT.get() is not None:
        with stage(what):
            yield
        return
    phase = _SetUp(what)
    token = _CURRENT.set(phase)
    error: BaseException | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - announced to the other ranks, then re-raised
        if not phase.open or is_known(exc):
            raise
        error = exc
    finally:
        _CURRENT.reset(token)
    if phase.open:
        checked(error, phase.what)


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    """Name what the open set-up is doing (the text the other ranks read when this rank fails in it)."""
    phase = _CURRENT.get()
    if phase is None:
        yield
        return
    before, phase.what = phase.what, what
    try:
        yield
    finally:
        phase.what = before


def checkpoint(group: Any = None) -> None:
    """Before a collective call in an open set-up: raise here, on every rank, when a rank failed before it."""
    phase = _CURRENT.get()
    if phase is not None and phase.open:
        checked(None, phase.what, group=group)


def started(group: Any = None) -> None:
    """The set-up is over (every rank has come this far without an error); the iterations begin."""
    phase = _CURRENT.get()
    if phase is not None and phase.open:
        checked(None, phase.what, group=group)
        phase.open = False


def restarting(what: str) -> None:
    """The set-up of another restart begins (after the previous restart's last collective call)."""
    phase = _CURRENT.get()
    if phase is not None:
        phase.open, phase.what = True, what


def gather_object(value: Any, group: Any = None) -> list[Any]:
    """Every rank's ``value`` (``all_gather_object``), after a :func:`checkpoint`."""
    checkpoint(group)
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, value, group=group)
    return out


def broadcast_object(value: Any, group: Any = None) -> Any:
    """Rank 0's ``value`` on every rank (a pickled copy), after a :func:`checkpoint`."""
    checkpoint(group)
    box = [value if dist.get_rank(group) == 0 else None]
    dist.broadcast_object_list(box, src=0 if group is None else dist.get_global_rank(group, 0), group=group)
    return box[0]
