"""The one place where the E-step's expected sufficient statistics are summed: over chunks, then over ranks.

Every closed-form EM iteration (mixtures and hidden Markov chains, every emission family) is

1. for each chunk of the data: the chunk's posteriors under the current parameters (responsibilities, or state
   posteriors and expected transitions) and the family's additive statistics of them (``family.statistics``);
2. their sum over the chunks (:meth:`Source.accumulate`);
3. in a data-parallel fit, their sum over the ranks: one ``torch.distributed.all_reduce(SUM)`` of one flat
   float64 buffer holding every statistic and the log-likelihood (:meth:`~ppl_lvm.em.ranks.Reducer.sum`), so
   every rank runs the same M-step on the same numbers and holds identical parameters;
4. the M-step from the totals (``family.m_step_statistics``).

Data held in memory by one process are one chunk whose cache is kept between iterations (the numbers are those of
the in-memory kernels). A streamed fit (:func:`~ppl_lvm.em.stream.chunks`) re-reads every chunk each iteration,
centring every chunk on the same shift (the data mean, from one first pass); a data-parallel fit is a stream over
the rank's shard followed by the all-reduce. Only two rare cases read the data a second time within an iteration
(one more all-reduce each): a Gaussian component whose moment statistics cancel (the two-pass covariance) and an
empty component's fallback (the data covariance).

The generic route (:mod:`ppl_lvm.em.generic`, no closed-form M-step) sums over the same chunks with
:class:`ModelChunks`: the model's arguments, the streamed ones replaced chunk by chunk, and per chunk the
log-likelihood (the E-step) or ``Q`` with its gradient (each evaluation of the M-step's optimiser). In a
data-parallel fit each of these sums, the gradient included, is then summed over the ranks with one all-reduce
(after a small one that tells whether every rank computed its part), so every rank's L-BFGS sees the same values
at every evaluation, takes the same steps and holds the same parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ..data import to_tensor
from ..errors import DataError, DistributedError
from .families.base import add_statistics, local_centred_sums
from .ranks import Reducer
from .stream import Chunks, lockstep

__all__ = ["DataPass", "ModelChunks", "Reducer", "Source", "chunk_statistics"]

#: what a chunk's posterior function returns: the (N, K) posteriors and extra additive sums (log-likelihood, ...)
ChunkPosterior = Callable[[dict, Any, dict], tuple[torch.Tensor, dict]]


def chunk_statistics(family: Any, cache: dict, layout: Any, posterior: ChunkPosterior, params: dict,
                     drop: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One chunk's posteriors and its additive statistics: the family's plus the posterior function's extra sums,
    in float64 (the sums of float32 kernels too are accumulated over the chunks in float64)."""
    resp, extra = posterior(cache, layout, params)
    part = family.statistics(resp, cache, params)
    for key in drop:
        part.pop(key, None)
    part.update(extra)
    return resp, {k: v.to(torch.float64) if v.dtype == torch.float32 else v for k, v in part.items()}


class Source:
    """The data of one closed-form EM fit as chunks with their family caches, and the sums over them.

    Parameters
    ----------
    family : emission family
    data : tensor or Chunks
        Data in memory (one chunk) or :class:`~ppl_lvm.em.stream.Chunks`.
    lengths : sequence of int, optional
        Sequence lengths of data in memory (chains); chunks carry their own.
    layout : callable, optional
        ``layout(lengths, n_rows)``: what a chunk's posterior function receives besides the cache (the chains'
        length buckets); default: the lengths themselves.
    reducer : Reducer, optional
        Sum over ranks too (a data-parallel fit).
    cache : dict, optional
        ``family.precompute(data)`` of data in memory in one process, when already computed.
    """

    def __init__(self, family: Any, data: Any, lengths: Any = None, *, layout: Callable | None = None,
                 reducer: Reducer | None = None, cache: dict | None = None) -> None:
        self.family = family
        self.reducer = reducer or Reducer()
        self.streamed = isinstance(data, Chunks)
        self._data, self._lengths = data, lengths
        self._layout = layout or (lambda lens, n: lens)
        self._last_resp: torch.Tensor | None = None
        self._drop: tuple[str, ...] = ()
        if not self.streamed and not self.reducer.distributed:
            self.summary = None
            self._cache = cache if cache is not None else family.precompute(data)
            self.template = self._cache
            self.n = int(self._cache["n"])
            self._chunk_layout = self._layout(lengths, self.n)
            return
        first, total = None, None
        for i, (x, _) in enumerate(self._raw()):
            if x.shape[0] == 0:
                continue
            first = x[:1] if first is None else first
            try:
                part = family.summary(x)
            except ValueError as exc:  # e.g. a symbol past the categories the model was sized for
                raise DataError(f"chunk {i} of the data (rows {x.shape[0]}): {exc}. A model fitted on data read "
                                "chunk by chunk is built on its first chunk (the first sequence of a chain): pass "
                                "sizes read from the data, such as the number of symbols, as arguments") from exc
            if not all(bool(torch.isfinite(v).all()) for v in part.values()):
                raise DataError(f"chunk {i} of the data (rows {x.shape[0]}) holds NaN or infinite values; drop or "
                                "impute them before fitting")
            total = add_statistics(total, part)
        if total is None:
            raise DistributedError(f"rank {self.reducer.rank} holds no data: give every rank at least one row "
                                   "(shard with lvm.chunks(...).shard(rank, world_size))")
        self.summary = self.reducer.sum(total, check=True)
        self.n = int(self.summary["n"].item())
        if float(self.summary.get("direct", torch.zeros(())).item()) > 0:
            self._drop = tuple(getattr(family, "optional_statistics", ()))
        self.template = family.precompute(first, summary=self.summary)
        if not self.streamed:
            self._cache = family.precompute(data, summary=self.summary)
            self._chunk_layout = self._layout(lengths, int(self._cache["n"]))

    # -------------------------------------------------------------- reading
    @property
    def data(self) -> Any:
        """The data as given: a tensor in memory or :class:`~ppl_lvm.em.stream.Chunks`."""
        return self._data

    def _raw(self) -> Iterator[tuple[Any, Any]]:
        if self.streamed:
            yield from self._data
        else:
            yield self._data, self._lengths

    def chunks(self) -> Iterator[tuple[dict, Any]]:
        """``(cache, layout)`` of every chunk of this rank, in order."""
        if not self.streamed:
            yield self._cache, self._chunk_layout
            return
        for x, lengths in self._data:
            if x.shape[0]:
                yield self.family.precompute(x, summary=self.summary), self._layout(lengths, x.shape[0])

    def local_data(self) -> tuple[Any, dict]:
        """Data (and cache) to seed a data-driven start from: the data in memory; read in chunks, a chunk's worth of
        rows drawn at random (seed 0) from a tensor in memory (:func:`~ppl_lvm.em.stream.memory_chunks`), else the
        first chunk."""
        if not self.streamed:
            return self._data, self._cache
        if self._data.per_row:
            x = self._data.sample_rows(self._data.chunk_size)
            return x, self.family.precompute(x)
        x, _ = next(x for x in self._data if x[0].shape[0])
        return x, self.family.precompute(x)

    # -------------------------------------------------------------- the sums
    def accumulate(self, posterior: ChunkPosterior, params: dict) -> dict[str, torch.Tensor]:
        """The E-step: the family's statistics plus the posterior function's extra sums, over every chunk and rank."""
        total = None
        for cache, layout in self.chunks():
            resp, part = chunk_statistics(self.family, cache, layout, posterior, params, self._drop)
            total = add_statistics(total, part)
            self._last_resp = resp if not self.streamed else None
        return self.reducer.sum(total)

    def data_pass(self, posterior: ChunkPosterior, params: dict) -> DataPass:
        """What the M-step may read again within this iteration (see :class:`DataPass`)."""
        return DataPass(self, posterior, params)


class DataPass:
    """The whole data, read again for a rare M-step need, with the responsibilities of this iteration's E-step.

    The interface of :class:`~ppl_lvm.em.families.base.LocalPass` (``n``, ``summary()``, ``centred_sums``,
    ``second_moment()``, ``weighted_sum``), over every chunk and rank. Every rank calls these at the same point, since the M-step
    decides from reduced totals.
    """

    def __init__(self, source: Source, posterior: ChunkPosterior, params: dict) -> None:
        self.source, self.posterior, self.params, self.n = source, posterior, params, source.n

    def summary(self) -> dict[str, torch.Tensor]:
        if self.source.summary is None:
            return self.source.family.summary(self.source._cache["X"])
        return self.source.summary

    def _sum(self, part: Callable[[dict, Any], torch.Tensor]) -> torch.Tensor:
        total = None
        for cache, layout in self.source.chunks():
            value = part(cache, layout)
            total = value if total is None else total + value
        return self.source.reducer.sum({"value": total})["value"]

    def centred_sums(self, mu: torch.Tensor, idx: torch.Tensor, full: bool) -> torch.Tensor:
        def part(cache: dict, layout: Any) -> torch.Tensor:
            resp = self.source._last_resp
            if resp is None:
                resp = self.posterior(cache, layout, self.params)[0]
            return local_centred_sums(cache["xc"], resp.to(cache["xc"].dtype), mu, idx, full)

        return self._sum(part)

    def second_moment(self) -> torch.Tensor:
        return self._sum(lambda cache, layout: cache["xc"].T.to(torch.float64) @ cache["xc"].to(torch.float64))

    def weighted_sum(self, part: Callable[[dict, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``part(cache, resp)`` summed over every chunk and rank (a family's own second pass)."""
        def chunk(cache: dict, layout: Any) -> torch.Tensor:
            resp = self.source._last_resp
            if resp is None:
                resp = self.posterior(cache, layout, self.params)[0]
            return part(cache, resp)

        return self._sum(chunk)


class ModelChunks:
    """A model's arguments with the streamed ones read chunk by chunk, side by side, and the sums over the chunks.

    Parameters
    ----------
    kwargs : dict
        The model's arguments; a streamed argument's value is the first chunk's (the prototype), whose dtype every
        chunk is converted to (integer data feeding a continuous likelihood become floats once, like in memory).
    streams : dict of str to Chunks, optional
        The arguments read chunk by chunk (:func:`~ppl_lvm.em.stream.chunks`); every chunk of them holds the same
        rows. None or empty: the data in memory, one chunk.
    """

    def __init__(self, kwargs: dict[str, Any], streams: dict[str, Chunks] | None = None,
                 reducer: Reducer | None = None) -> None:
        self.kwargs = dict(kwargs)
        self.streams = dict(streams or {})
        self.streamed = bool(self.streams)
        self.reducer = reducer or Reducer()
        #: a data-parallel fit: the chunks are this rank's shard, the sums are over every rank
        self.distributed = self.reducer.distributed

    def chunks(self) -> Iterator[tuple[int, dict[str, Any], int | None]]:
        """``(index, the model's arguments for this chunk, its rows)``; rows None for data in memory."""
        if not self.streamed:
            yield 0, self.kwargs, None
            return
        for index, part in enumerate(lockstep(self.streams)):
            rows = next(iter(part.values())).shape[0]
            if rows == 0:
                continue
            values = {}
            for name, x in part.items():
                value = to_tensor(x, f"{name} (chunk {index})")
                values[name] = value.to(self.kwargs[name].dtype) if value.dtype != self.kwargs[name].dtype else value
            yield index, {**self.kwargs, **values}, int(rows)

    def total(self, part: Callable[[int, dict[str, Any], int | None], dict[str, torch.Tensor]],
              gradients: Sequence[torch.Tensor] = (), what: str = "evaluating the generic EM route"
              ) -> dict[str, torch.Tensor]:
        """``part(index, kwargs, rows)`` summed key by key over the chunks, then over the ranks.

        In a data-parallel fit the sums and the ``.grad`` of ``gradients`` (accumulated by ``part``, e.g. by the
        backward pass of each chunk's ``Q``; none counts as zeros) are summed over the ranks in one all-reduce,
        and the gradients written back, so every rank holds the same totals; a failure on one rank is raised on
        every rank (:meth:`Reducer.sum_checked`, which ``what`` tells).
        """
        if not self.distributed:
            total = None
            for index, kwargs, rows in self.chunks():
                total = add_statistics(total, part(index, kwargs, rows))
            return total
        total, error = None, None
        try:
            for index, kwargs, rows in self.chunks():
                total = add_statistics(total, part(index, kwargs, rows))
            if total is None:
                raise DistributedError(f"rank {self.reducer.rank} holds no data: give every rank at least one row "
                                       "(shard with lvm.chunks(...).shard(rank, world_size))")
            total.update({f"grad:{i:06d}": torch.zeros_like(t) if t.grad is None else t.grad
                          for i, t in enumerate(gradients)})
        except Exception as exc:  # noqa: BLE001 - announced to the other ranks, then re-raised
            error = exc
        total = self.reducer.sum_checked(total, error, what)
        for i, t in enumerate(gradients):
            t.grad = total.pop(f"grad:{i:06d}")
        return total
