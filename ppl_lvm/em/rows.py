"""Every row's log-likelihood and responsibilities of a fitted mixture whose data are in memory, chunk by chunk.

One computation serves the three places that need these values, so that they answer with the same numbers:

* the end of a closed-form fit (:func:`~ppl_lvm.em.routes.closed_form_fit`): the total log-likelihood at the final
  parameters and, when the result keeps them, every row's ``log p(x_i)`` and responsibilities;
* a result that does not keep them (``keep_responsibilities``, :func:`keeps_rows`): they are recomputed on access
  from the fit's kernels, parameters, data and chunks (:class:`MixtureRows`), bit for bit what the fit would have
  kept;
* a loaded result (:mod:`ppl_lvm.results.load`), from the saved parameters and data.

The rows are computed in the chunks the fit read (:func:`~ppl_lvm.em.stream.memory_chunks`), each centred on the
fit's shift, so a recomputation holds its output and one chunk's temporaries. A fit that recomputes its rows on
access reads its data in chunks of :data:`~ppl_lvm.em.stream.MEMORY_CHUNK_ROWS` rows from that many rows on.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .accumulate import Source
from .mixture import mixture_log_likelihood
from .stream import Chunks, memory_chunks

__all__ = ["KEEP_ROWS_ENTRIES", "MixtureRows", "kernel_family", "keeps_rows"]

#: ``keep_responsibilities="auto"`` keeps every row's values when the responsibilities have at most this many
#: entries (N x K; 2**24 entries are 128 MiB in float64), else recomputes them on access
KEEP_ROWS_ENTRIES = 2**24


def keeps_rows(option: bool | str, n_rows: int, n_components: int) -> bool:
    """Whether a fit of ``n_rows`` rows and ``n_components`` components keeps every row's values
    (``keep_responsibilities``: True, False, or ``"auto"``, by :data:`KEEP_ROWS_ENTRIES`)."""
    if option == "auto":
        return int(n_rows) * int(n_components) <= KEEP_ROWS_ENTRIES
    return bool(option)


def kernel_family(family: Any, dtype: torch.dtype | str | None) -> Any:
    """The emission family the fit's kernels ran in: ``family`` itself in float64 (the default), a copy of it
    computing in ``dtype`` otherwise (a recognised pattern keeps its own family for the result's queries)."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if dtype is None or dtype == torch.float64:
        return family
    family = copy.copy(family)
    family.dtype = dtype
    return family


class MixtureRows:
    """Every row's ``log p(x_i)`` and responsibilities of a fitted mixture, computed chunk by chunk.

    Parameters
    ----------
    family : emission family
        The family the fit's kernels ran in (its dtype is that of the answers).
    params : dict
        The kernels' parameters (``family.complete_params``), the fit's final ones.
    data : Tensor or Chunks
        The kernels' data matrix in memory: in one piece, or in the fit's chunks (:func:`memory_chunks`).
    summary : dict, optional
        The totals every chunk is centred with (the fit's: the whole data's, of every rank in a data-parallel fit);
        None for a tensor in one piece, centred on its own mean.
    latent : str
        The site the responsibilities belong to.

    The answers of :meth:`responsibilities` and :meth:`log_likelihood_per_point` are recomputed on each call,
    except that the same tensor is returned again while the caller still holds the previous one.
    """

    def __init__(self, family: Any, params: dict, data: torch.Tensor | Chunks, summary: dict | None,
                 latent: str) -> None:
        self.family, self.params, self.data, self.summary, self.latent = family, params, data, summary, latent
        self.n = int(data.n_rows if isinstance(data, Chunks) else data.shape[0])
        self._held: dict[str, Any] = {}

    @classmethod
    def from_source(cls, source: Source, params: dict, latent: str) -> MixtureRows:
        """The rows of the data a fit read through ``source``, at the kernels' parameters ``params``."""
        return cls(source.family, params, source.data, source.summary, latent)

    @classmethod
    def of_data(cls, family: Any, params: dict, x: torch.Tensor, latent: str, *, on_demand: bool) -> MixtureRows:
        """The rows of the data matrix ``x`` in the chunks a fit in one process reads it in (a loaded result)."""
        float32 = getattr(family, "dtype", None) == torch.float32
        data = memory_chunks(x, float32=float32, on_demand=on_demand)
        summary = Source(family, data).summary if isinstance(data, Chunks) else None
        return cls(family, params, data, summary, latent)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_held": {}}  # weak references do not pickle; the answers are recomputed

    def caches(self) -> Iterator[dict]:
        """The family cache of every chunk, in order (those of the fit's own reading)."""
        if not isinstance(self.data, Chunks):
            yield self.family.precompute(self.data, summary=self.summary)
            return
        for x, _ in self.data:
            if x.shape[0]:
                yield self.family.precompute(x, summary=self.summary)

    def compute(self, per_point: bool = True, responsibilities: bool = True, caches: Iterable[dict] | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
        """``(log p(x_i) (N,), responsibilities (N, K), total log-likelihood)``; each of the first two None when not
        asked for. The total is the sum of every chunk's float64 sum. ``caches``: the chunks' caches when the
        caller holds them already (the fit's own, the same numbers)."""
        values, resp, total, row = None, None, 0.0, 0
        for cache in self.caches() if caches is None else caches:
            ll, r = mixture_log_likelihood(None, self.family, self.params, cache=cache)
            total += float(ll.sum(dtype=torch.float64))
            if per_point:
                if values is None:
                    values = torch.empty(self.n, dtype=ll.dtype)
                values[row : row + len(ll)] = ll
            if responsibilities:
                if resp is None:
                    resp = torch.empty((self.n,) + tuple(r.shape[1:]), dtype=r.dtype)
                resp[row : row + len(ll)] = r
            row += len(ll)
        return values, resp, total

    def _answer(self, key: str) -> torch.Tensor:
        ref = self._held.get(key)
        value = ref() if ref is not None else None
        if value is None:
            value = self.compute(per_point=key == "per_point", responsibilities=key == "responsibilities")[
                0 if key == "per_point" else 1]
            self._held[key] = weakref.ref(value)
        return value

    def responsibilities(self) -> torch.Tensor:
        """The responsibilities of every row, ``(N, K)``."""
        return self._answer("responsibilities")

    def log_likelihood_per_point(self) -> torch.Tensor:
        """``log p(x_i)`` of every row, ``(N,)``."""
        return self._answer("per_point")
