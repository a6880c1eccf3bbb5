"""Data-parallel variational fits (``svi``, ``meanfield``, ``iwae``, ``renyi`` with ``distributed=True``).

Every rank of an initialised ``torch.distributed`` process group calls ``lvm.infer`` with the same model, options
and seed, and with its own contiguous part of the data rows, in rank order: rank ``r`` holds rows
``[offset_r, offset_r + n_r)`` of the ``N = sum_r n_r`` rows (:func:`~ppl_lvm.em.stream.shard_range` and
``lvm.chunks(...).shard(rank, world_size)`` give these ranges; the offsets are gathered once, so shards may differ
in size).

**The loss is split, not copied.** Write the single-process loss of a step as ``G + sum_i L_i``: ``G`` the terms of
the sites outside the data plate (the global latents' ``log p(theta) - log q(theta)``), ``L_i`` the terms of row
``i`` (its likelihood and local latents) times the minibatch scale ``N / B``. Rank ``r`` computes
``G / W + sum_{i in batch, i in shard r} L_i`` (``W`` the world size: every site outside the data plate is scaled by
``1 / W`` in the model and the guide), so the sum over ranks is the single-process loss, and the gradients are
*summed* with one ``all_reduce`` per step (after backward, before the optimiser step). The optimiser then sees the
same gradient on every rank, so the parameters stay identical (rank 0's starting values are broadcast first, as
DDP does). This is DDP's average of ``W`` copies of a loss ``W`` times as large; summing the global term only once
per step keeps it counted once.

**Randomness.** The seed is the same on every rank. The global minibatch is drawn from a generator seeded alike on
every rank (the same ``B`` of the ``N`` rows as one process with that seed would take); each rank evaluates the rows
of the batch that lie in its shard, scaled by ``N / B`` (a rank with none of them contributes only ``G / W``). The
draws of sites outside the data plate come from torch's shared generator, identical on every rank; the draws of
sites inside the data plate (local latents) come from a generator of the rank's own (seeded by the seed and the
rank, swapped in around those sites), so local noise is independent across ranks and does not shift the shared
stream. With these choices a model whose local latents are enumerated (or absent) follows the single-process loss
curve to float error; with continuous local latents the local noise differs from one process's (independent draws
per rank), which leaves the gradient unbiased. Randomness outside sample sites (dropout in an encoder) draws from
the shared stream and may desynchronise later global draws; the gradient stays unbiased (each rank's global draw is
a draw from ``q``), the parameters stay identical. The swap covers torch's CPU generator: on a CUDA device the local
draws come from the device's generator, seeded alike on every rank, so ranks holding the same number of batch rows
reuse one another's local noise (still unbiased, with noise correlated across ranks), and later global draws may
differ between ranks.

**Decisions are collective.** The losses seen by the convergence rule, the annealing, NaN checks, restarts and
``result.elbo`` are the all-reduced ones, so every rank decides the same. Before a fit every rank checks with the
others that they agree on the method, the options, the model's arguments (shapes but the rows) and the parameters;
an error on one rank (in the set-up or at a step) is announced to all, which raise with it (no rank is left waiting:
the flag exchange of :mod:`ppl_lvm.collective`, before every collective call of the set-up and after every step).
"""

from __future__ import annotations

from typing import Any

import pyro.poutine as poutine
import torch
import torch.distributed as dist
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ..collective import collective, exchange, flag_device, gather_object, known, receive_failure
from ..em.stream import shard_range
from ..errors import DistributedError, FitError, PplLvmError, UnsupportedModelError

__all__ = ["METHODS", "DataParallel", "check_rows_guide", "shard_range"]

#: methods whose fits run data-parallel
METHODS = ("svi", "meanfield", "iwae", "renyi")


def _in_plate(msg: dict, plate: str) -> bool:
    return any(f.name == plate for f in msg["cond_indep_stack"])


class _Shares(Messenger):
    """A rank's share of the loss: sites outside the data plate scaled by 1/W; the rows of the data plate masked
    out when the rank holds none of the batch; the draws of sites inside the data plate from the rank's generator."""

    def __init__(self, parallel: DataParallel):
        super().__init__()
        self.parallel = parallel
        self._swapped: list[torch.Tensor] = []

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or site_is_subsample(msg):
            return
        parallel = self.parallel
        if not _in_plate(msg, parallel.plate):
            msg["scale"] = msg["scale"] / parallel.world_size
            return
        if parallel.empty:
            msg["mask"] = False
        if msg["value"] is None and not msg["is_observed"]:
            self._swapped.append(torch.get_rng_state())
            torch.set_rng_state(parallel.rank_state)

    def _postprocess_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and self._swapped and _in_plate(msg, self.parallel.plate) \
                and not msg["is_observed"] and not site_is_subsample(msg):
            self.parallel.rank_state = torch.get_rng_state()
            torch.set_rng_state(self._swapped.pop())


class DataParallel:
    """One data-parallel fit's view of the process group: the shards, the batch, the sums and the checks.

    Built on every rank at the same point with :meth:`start`, which checks that the ranks agree.

    Attributes
    ----------
    rank, world_size : int
    plate : str
        The data plate (its rows are sharded).
    n_local, n_total, offset : int
        This rank's rows, all rows, and the global index of this rank's first row.
    """

    def __init__(self, plate: str, n_local: int, sizes: list[int], seed: int):
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.plate, self.n_local = plate, int(n_local)
        self.n_total = int(sum(sizes))
        self.offset = int(sum(sizes[: self.rank]))
        self.empty = False  # this step's batch has none of this rank's rows
        self.reset_stream(seed)
        self._device = flag_device()

    @classmethod
    def start(cls, backend: Any, problem: Any, loop: Any, method: dict) -> DataParallel:
        """Check, together with the other ranks, that the fit can run data-parallel; refuse it clearly if not."""
        with collective("checking that the ranks agree on the model, data and options"):
            structure = problem.structure
            if backend.name not in METHODS:
                raise UnsupportedModelError(f"distributed=True runs methods {list(METHODS)} and 'em'; method "
                                            f"{backend.name!r} runs in one process: drop distributed=True")
            if method.get("free_bits") is not None:
                raise UnsupportedModelError(
                    "free_bits floors the KL per latent dimension averaged over the whole batch, which does not "
                    "split into a sum over ranks; drop free_bits or distributed=True")
            plate = structure.data_plate
            if plate is None:
                raise UnsupportedModelError(
                    "distributed=True shards the rows of the data plate, and the model has none: wrap the likelihood "
                    "in `with lvm.plate(N):` over the data rows")
            n_local = int(structure.plates[plate].size)
            signature = {"method": backend.name, "model": problem.model.__name__,
                         "options": _options_signature(loop, method),
                         "data": _data_signature(problem.data.kwargs, n_local),
                         "guide": _guide_signature(problem.guide)}
        gathered = gather_object((signature, n_local, _fingerprint(problem.data.kwargs, n_local)))
        if len(gathered) > 1 and all(g[1:] == gathered[0][1:] for g in gathered):
            raise DistributedError(
                f"every rank passed the same {n_local} data rows: with distributed=True each rank passes its own part "
                "of the rows (e.g. x[lo:hi] with lo, hi = ppl_lvm.em.stream.shard_range(len(x), rank, world_size), "
                "or lvm.chunks(path).shard(rank, world_size)), else every row would count once per rank")
        for key in signature:
            values = [g[0][key] for g in gathered]
            if any(v != values[0] for v in values):
                raise DistributedError(
                    f"the ranks of the data-parallel fit disagree on the {key}: rank 0 has {values[0]!r}, rank "
                    f"{next(r for r, v in enumerate(values) if v != values[0])} has "
                    f"{next(v for v in values if v != values[0])!r}. Every rank must call lvm.infer with the same "
                    "model, guide and options, and data that differ only in their rows")
        sizes = [g[1] for g in gathered]
        if min(sizes) < 1:
            raise DistributedError(f"rank {sizes.index(min(sizes))} holds no data rows: give every rank at least "
                                   "one row (shard with lvm.chunks(x).shard(rank, world_size) or shard_range)")
        if loop.batch_size is not None and loop.batch_size > sum(sizes):
            raise ValueError(f"batch_size={loop.batch_size} is larger than the number of data rows of all ranks "
                             f"({sum(sizes)})")
        return cls(plate, n_local, sizes, int(loop.seed))

    # ------------------------------------------------------------------ randomness
    def reset_stream(self, seed: int) -> None:
        """The rank's own generator for local draws, seeded by ``seed`` and the rank (a restart's seed)."""
        self.rank_state = torch.Generator().manual_seed(int(seed) * 1_000_003 + 7_919 * (self.rank + 1)).get_state()

    def wrap(self, fn: Any) -> Any:
        """``fn`` (model or guide) computing this rank's share of the loss."""
        return _Shares(self)(fn)

    # ------------------------------------------------------------------ the batch
    def local_rows(self, idx: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, float, float]:
        """This rank's part of the global batch ``idx`` (global row indices): its local indices, the full size to
        give the subsampled plate (so that its scale is ``N / B``) and the factor of a loss scaled by hand."""
        mine = idx[(idx >= self.offset) & (idx < self.offset + self.n_local)] - self.offset
        self.empty = mine.numel() == 0
        if self.empty:  # one row stands in, masked out: the rank adds only its share of the global terms
            return torch.zeros(1, dtype=idx.dtype), self.n_total / batch_size, 0.0
        return mine, self.n_total / batch_size * mine.numel(), 1.0

    def full_data(self) -> None:
        self.empty = False

    # ------------------------------------------------------------------ the sums
    def check_step(self, error: BaseException | None, params: dict[str, torch.Tensor], step: int) -> None:
        """After a step's backward pass, on every rank: did any rank fail, and do all send as many gradients?"""
        numel = float(sum(p.numel() for p in params.values()))
        told = exchange(error, numel)
        if told.failed is not None:
            kind, text = receive_failure(told.failed, None if error is None else self._failure(error, step))
            if error is not None:
                known(error)
                return  # the failing rank raises its own error, as in one process
            message = f"rank {told.failed} of the data-parallel fit failed at step {step}: {text}"
            raise known(FitError(message, step=step) if kind == "fit" else DistributedError(message))
        if told.low != told.high:
            raise DistributedError(f"the ranks' parameters differ at step {step} (rank {self.rank}: {int(numel)} "
                                   f"numbers, others up to {int(told.high)}): the model or guide creates "
                                   "parameters that depend on the rank's data")

    @staticmethod
    def _failure(error: BaseException, step: int) -> tuple[str, str]:
        # the fit loop turns a failure after step 1 into a FitError (restarts drop it); the others are raised as is
        as_fit = step > 1 and isinstance(error, (ValueError, RuntimeError)) and not isinstance(error, PplLvmError)
        return ("fit" if as_fit or isinstance(error, FitError) else "raw"), f"{type(error).__name__}: {error}"

    def reduce(self, params: dict[str, torch.Tensor], loss: float) -> float:
        """Sum the gradients of ``params`` (in name order) and the loss over the ranks; returns the total loss."""
        names = sorted(params)
        grads = [params[n].grad if params[n].grad is not None else torch.zeros_like(params[n]) for n in names]
        flat = torch.cat([g.reshape(-1).to(device=self._device, dtype=torch.float64) for g in grads]
                         + [torch.tensor([loss], dtype=torch.float64, device=self._device)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for name in names:
            p = params[name]
            p.grad = flat[offset : offset + p.numel()].reshape(p.shape).to(device=p.device, dtype=p.dtype)
            offset += p.numel()
        return float(flat[-1].item())

    def total(self, value: float) -> float:
        """``value`` summed over the ranks."""
        box = torch.tensor([value], dtype=torch.float64, device=self._device)
        dist.all_reduce(box, op=dist.ReduceOp.SUM)
        return float(box.item())

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on some rank (a callback's request to stop)."""
        return self.total(1.0 if flag else 0.0) > 0

    def broadcast_params(self, store: Any) -> None:
        """Rank 0's parameters on every rank, after checking that every rank has the same names and shapes."""
        names = sorted(store._params)
        shapes = [(n, tuple(store._params[n].shape)) for n in names]
        gathered = gather_object(shapes)
        for rank, other in enumerate(gathered):
            if other != shapes:
                raise DistributedError(
                    f"rank {rank} has other parameters than rank {self.rank} ({_difference(shapes, other)}): "
                    "every rank must fit the same model and guide; parameters must not depend on the rank's rows "
                    "(per-row variational parameters are refused: use an amortised guide)")
        if not names:
            return
        values = [store._params[n].detach() for n in names]
        flat = torch.cat([v.reshape(-1).to(device=self._device, dtype=torch.float64) for v in values])
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for value in values:
                value.copy_(flat[offset : offset + value.numel()].reshape(value.shape))
                offset += value.numel()


def _difference(mine: list, other: list) -> str:
    a, b = dict(mine), dict(other)
    names = sorted(set(a) ^ set(b)) or sorted(n for n in a if a[n] != b.get(n))
    return ", ".join(f"{n}: {a.get(n)} vs {b.get(n)}" for n in names[:4])


def _fingerprint(kwargs: dict, n_local: int) -> tuple[float, ...]:
    """Sums of the rows' values: equal on every rank when every rank was given the same rows (a common slip)."""
    return tuple(float(v.detach().double().sum()) for _, v in sorted(kwargs.items())
                 if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n_local)


def _options_signature(loop: Any, method: dict) -> list[tuple[str, str]]:
    skip = {"callbacks", "progress", "device"}
    items = [(k, repr(v)) for k, v in sorted(vars(loop).items()) if k not in skip and not callable(v)]
    items.append(("callbacks", str(len(loop.callbacks))))
    items.extend((f"method:{k}", repr(v)) for k, v in sorted(method.items()))
    return items


def _data_signature(kwargs: dict, n_local: int) -> list[tuple[str, str]]:
    out = []
    for name, value in sorted(kwargs.items()):
        if isinstance(value, torch.Tensor):
            rows = value.dim() > 0 and value.shape[0] == n_local
            shape = ("rows",) + tuple(value.shape[1:]) if rows else tuple(value.shape)
            out.append((name, f"{value.dtype} {shape}"))
        elif isinstance(value, (int, float, str, bool, type(None))):
            out.append((name, repr(value)))
        else:
            out.append((name, type(value).__name__))
    return out


def _guide_signature(guide: Any) -> str:
    if guide is None or isinstance(guide, str):
        return repr(guide)
    return type(guide).__name__ + ":" + str(getattr(guide, "__name__", ""))


def check_rows_guide(gtrace: poutine.Trace, plate: str, guide_name: str) -> None:
    """Refuse a guide with its own variational parameters per data row (they would differ across ranks)."""
    if "amortised" in guide_name or "user guide" in guide_name:
        return
    for name, node in gtrace.nodes.items():
        if node["type"] == "sample" and not site_is_subsample(node) and plate in [f.name for f in
                                                                                 node["cond_indep_stack"]]:
            raise UnsupportedModelError(
                f"distributed=True with the {guide_name!r} guide: site '{name}' is a local latent with its own "
                "variational parameters per data row, which would live on one rank only; use an amortised guide "
                "(lvm.AmortizedNormal or a guide with an encoder), or fit in one process")
