"""Data that EM reads in chunks: a (memory-mapped) array cut into row ranges, or chunks given one by one.

:func:`chunks` wraps the data; every EM iteration reads it once from the start, one chunk at a time, so only one
chunk (and its temporaries) is in memory at once. Sequences (hidden Markov chains) are never cut: a chunk holds
whole sequences, given as one array with ``lengths`` (hmmlearn's layout) or one by one (``sequences=True``: a
list of sequences, or a function yielding them, grouped into chunks of ``chunk_size`` rows as they are read).
:meth:`Chunks.shard` gives one rank of a data-parallel fit its contiguous part.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .files import MappedPages, NpyFile

__all__ = ["MEMORY_CHUNK_ROWS", "MEMORY_CHUNK_THRESHOLD", "Chunks", "NpyFile", "chunks", "lockstep", "memory_chunks",
           "shard_range"]

#: closed-form EM reads data in memory with more rows than this in chunks of :data:`MEMORY_CHUNK_ROWS` rows
MEMORY_CHUNK_THRESHOLD = 2**20
MEMORY_CHUNK_ROWS = 2**16


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous ``[start, stop)`` of ``n`` items that rank ``rank`` of ``world_size`` reads.

    The first ``n % world_size`` ranks get one item more, so the sizes differ by at most one.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    base, extra = divmod(int(n), int(world_size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _as_chunk(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    return torch.from_numpy(np.array(value, copy=True))  # a copy: a memory-mapped slice must not stay mapped


class Chunks:
    """A re-readable source of data chunks for EM; build it with :func:`chunks`.

    Attributes
    ----------
    n_rows : int or None
        Rows in all (of this shard), when known without reading the data.
    """

    def __init__(self, array: Any = None, chunk_size: int | None = None, lengths: Sequence[int] | None = None,
                 pieces: Sequence | None = None, factory: Callable[[], Any] | None = None,
                 rows: tuple[int, int] | None = None, sequences: tuple[int, int] | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, one_by_one: bool = False,
                 steps: int | None = None) -> None:
        self._array, self.chunk_size, self._pieces, self._factory = array, chunk_size, pieces, factory
        self._transform, self._steps = transform, steps
        self._one_by_one = one_by_one  # the pieces (or the factory's items) are single sequences
        self._lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        self._pages = MappedPages(array)
        if array is not None:
            total = int(array.shape[0])
            if self._lengths is not None:
                n_seq = len(self._lengths)
                self._seq = sequences or (0, n_seq)
                offsets = np.concatenate([[0], np.cumsum(self._lengths)])
                if int(offsets[-1]) != total:
                    raise ValueError(f"sum(lengths)={int(offsets[-1])} != number of rows {total}")
                self._offsets = offsets
                self._rows = (int(offsets[self._seq[0]]), int(offsets[self._seq[1]]))
            else:
                self._rows = rows or (0, total)
        self.n_rows = None if array is None else self._rows[1] - self._rows[0]
        #: set by :func:`memory_chunks`: a fit in memory read in chunks, whose every row's values are kept
        self.per_row = False

    @property
    def in_memory(self) -> bool:
        """Whether the chunks are row ranges of a tensor held in memory (:func:`memory_chunks`)."""
        return isinstance(self._array, torch.Tensor)

    @property
    def tensor(self) -> torch.Tensor:
        """The rows of the tensor in memory that these chunks read (a view)."""
        if not self.in_memory:
            raise ValueError("tensor belongs to chunks of a tensor in memory")
        return self._array[self._rows[0] : self._rows[1]]

    def sample_rows(self, count: int, seed: int = 0) -> torch.Tensor:
        """``count`` rows (all, when fewer) drawn without replacement, in their order, from chunks of a tensor in
        memory."""
        if not self.in_memory or self._lengths is not None:
            raise ValueError("sample_rows draws rows of a tensor in memory without sequences")
        lo, hi = self._rows
        if hi - lo <= count:
            return self._array[lo:hi]
        rows = torch.randperm(hi - lo, generator=torch.Generator().manual_seed(seed))[:count].sort().values
        return self._array[lo + rows]

    @property
    def sequence_range(self) -> tuple[int, int]:
        """``[first, last)``: the sequences of an array with ``lengths`` that these chunks read (of a shard)."""
        if self._array is None or self._lengths is None:
            raise ValueError("sequence_range belongs to chunks of an array given with lengths")
        return self._seq

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[int] | None]]:
        """``(rows, lengths)`` per chunk (``lengths`` None for data without sequences)."""
        if self._transform is None and self._steps is None:
            yield from self._untransformed()
            return
        for index, (x, lengths) in enumerate(self._untransformed()):
            if self._steps is not None:
                x, lengths = self._whole_sequences(index, x, lengths)
            yield (x if self._transform is None else self._transform(x)), lengths

    def _whole_sequences(self, index: int, x: torch.Tensor, lengths: list[int] | None
                         ) -> tuple[torch.Tensor, list[int]]:
        """A chunk of sequences of ``steps`` steps each in hmmlearn's layout (see :meth:`as_sequences`)."""
        steps = self._steps
        if lengths is None:  # one sequence per row: (sequences, steps, ...) -> (sequences * steps, ...)
            if x.dim() < 2 or x.shape[1] != steps:
                raise DataError(f"chunk {index} of the data has shape {tuple(x.shape)}, not (sequences, {steps}, "
                                 f"...): every sequence of a chain written as one DiscreteHMM site has the first "
                                 f"chunk's {steps} steps")
            return x.reshape((-1,) + tuple(x.shape[2:])), [steps] * x.shape[0]
        if any(n != steps for n in lengths):
            raise DataError(f"chunk {index} of the data holds sequences of {sorted(set(lengths) - {steps})} steps: "
                             f"every sequence of a chain written as one DiscreteHMM site has the first chunk's "
                             f"{steps} steps (for sequences of different lengths write the chain with lvm.markov)")
        return x, lengths

    def _untransformed(self) -> Iterator[tuple[torch.Tensor, list[int] | None]]:
        if self._array is not None:
            yield from self._array_chunks()
            return
        source = self._pieces if self._pieces is not None else self._factory()
        if self._one_by_one:
            yield from self._grouped(source)
            return
        for piece in source:
            if isinstance(piece, tuple):
                x, lengths = piece
                yield _as_chunk(x), [int(v) for v in lengths]
            else:
                yield _as_chunk(piece), None

    def _grouped(self, source: Any) -> Iterator[tuple[torch.Tensor, list[int]]]:
        """Sequences read one by one, grouped into chunks of at most ``chunk_size`` rows (at least one sequence)."""
        rows: list[torch.Tensor] = []
        lengths: list[int] = []
        for i, sequence in enumerate(source):
            x = _as_chunk(sequence)
            if x.dim() == 0 or x.shape[0] == 0:
                raise ValueError(f"sequence {i} has no steps (shape {tuple(x.shape)}); every sequence needs at "
                                 "least one")
            if rows and self.chunk_size is not None and sum(lengths) + x.shape[0] > self.chunk_size:
                yield torch.cat(rows), lengths
                rows, lengths = [], []
            rows.append(x)
            lengths.append(int(x.shape[0]))
        if rows:
            yield torch.cat(rows), lengths

    def _array_chunks(self) -> Iterator[tuple[torch.Tensor, list[int] | None]]:
        size = self.chunk_size or max(self.n_rows, 1)
        if self._lengths is None:
            start, stop = self._rows
            for lo in range(start, stop, size):
                yield self._read(lo, min(lo + size, stop)), None
            return
        first, last = self._seq
        seq = first
        while seq < last:
            end = seq + 1  # at least one whole sequence, then as many as fit in chunk_size rows
            while end < last and self._offsets[end + 1] - self._offsets[seq] <= size:
                end += 1
            lo, hi = int(self._offsets[seq]), int(self._offsets[end])
            yield self._read(lo, hi), self._lengths[seq:end].tolist()
            seq = end

    def _read(self, lo: int, hi: int) -> torch.Tensor:
        view = self._array[lo:hi]
        chunk = _as_chunk(view)
        self._pages.release(view)
        return chunk

    def _like(self, **changes: Any) -> Chunks:
        spec = {"array": self._array, "chunk_size": self.chunk_size, "lengths": self._lengths,
                "pieces": self._pieces, "factory": self._factory, "transform": self._transform,
                "one_by_one": self._one_by_one, "steps": self._steps}
        if self._array is not None:
            spec["rows" if self._lengths is None else "sequences"] = self._rows if self._lengths is None else self._seq
        spec.update(changes)
        return Chunks(**spec)

    def transformed(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Chunks:
        """The same chunks, each passed through ``fn`` (e.g. reshaped) when read."""
        return self._like(transform=fn if self._transform is None else (lambda x, f=self._transform: fn(f(x))))

    def as_sequences(self, steps: int) -> Chunks:
        """The same chunks read as whole sequences of ``steps`` steps each, ``(rows of every step, lengths)``:
        a chunk of an array of shape ``(sequences, steps, ...)`` (one sequence per row), or of sequences (each
        checked to have ``steps`` steps)."""
        return self._like(steps=int(steps))

    def shard(self, rank: int, world_size: int) -> Chunks:
        """The part of the data rank ``rank`` of ``world_size`` reads: a contiguous range of rows (of whole
        sequences, balanced by rows, for sequences; of chunks or sequences, for chunks or sequences given as a
        list)."""
        if self._array is not None and self._lengths is None:
            lo, hi = shard_range(self.n_rows, rank, world_size)
            base = self._rows[0]
            return self._like(rows=(base + lo, base + hi))
        if self._array is not None:
            first, last = self._seq
            rows = self._offsets[first : last + 1] - self._offsets[first]
            lo, hi = shard_range(int(rows[-1]), rank, world_size)
            # sequence boundaries nearest to the row range's ends
            s_lo = first + int(np.abs(rows - lo).argmin())
            s_hi = first + int(np.abs(rows - hi).argmin())
            return self._like(sequences=(s_lo, max(s_lo, s_hi)))
        if self._pieces is not None:
            lo, hi = shard_range(len(self._pieces), rank, world_size)
            return self._like(pieces=list(self._pieces)[lo:hi])
        raise ValueError("chunks made from a function cannot be sharded: give each rank a function that yields its "
                         "own part, or pass an array or a list of chunks")

    def __repr__(self) -> str:
        what = f"{self.n_rows} rows in chunks of {self.chunk_size}" if self._array is not None else "given chunks"
        return f"Chunks({what})"


def lockstep(streams: dict[str, Chunks]) -> Iterator[dict[str, torch.Tensor]]:
    """The chunks of several streams read side by side (the rows of a model's per-point arguments).

    Chunk ``i`` of every stream must hold the same number of rows (the same rows of the data); a stream that
    ends before the others, or a chunk of a different size, is refused with the names of the streams.
    """
    names = sorted(streams)
    readers = [iter(streams[name]) for name in names]
    index = 0
    while True:
        parts = [next(reader, None) for reader in readers]
        ended = [name for name, part in zip(names, parts, strict=True) if part is None]
        if len(ended) == len(names):
            return
        if ended:
            raise ValueError(f"the data read chunk by chunk end at different chunks: {ended} end after {index} "
                             f"chunks, {sorted(set(names) - set(ended))} go on; give every argument the same rows")
        rows = {name: int(part[0].shape[0]) for name, part in zip(names, parts, strict=True)}
        if len(set(rows.values())) > 1:
            raise ValueError(f"chunk {index} of the data read chunk by chunk has different numbers of rows per "
                             f"argument ({rows}); give every argument the same chunk_size and number of rows")
        yield {name: part[0] for name, part in zip(names, parts, strict=True)}
        index += 1


def chunks(source: Any, chunk_size: int | None = None, *, lengths: Sequence[int] | None = None,
           sequences: bool = False) -> Chunks:
    """Data for EM read chunk by chunk, never held at once.

    Parameters
    ----------
    source : array-like, str, list or callable
        An array with ``shape`` and row slicing that is read lazily: ``np.load(path, mmap_mode="r")``, an HDF5 or
        zarr dataset, a tensor; a path to a ``.npy`` file (read chunk by chunk with plain file reads, so resident
        memory stays at one chunk, while the pages of a memory map may stay resident as reclaimable page cache);
        a list of chunks (arrays, or
        ``(rows, lengths)`` pairs for sequences); or a function returning an iterable of such chunks (called once
        per pass over the data).
    chunk_size : int, optional
        Rows per chunk of an array (default: one chunk). With ``lengths`` (or ``sequences=True``) a chunk holds
        whole sequences, as many as fit in ``chunk_size`` rows (at least one). Chunks given one by one (a list, a
        function) are read as they come, so ``chunk_size`` is refused for them.
    lengths : sequence of int, optional
        Sequence lengths of an array holding sequences one after the other (hmmlearn's layout).
    sequences : bool
        ``source`` (a list, or a function returning an iterable) gives one whole sequence per item, an array of
        shape ``(T_b, ...)``; consecutive sequences are grouped into chunks of at most ``chunk_size`` rows (at
        least one sequence; default: one chunk), so a stream of sequences is read one group at a time.

    Returns
    -------
    Chunks

    Examples
    --------
    >>> import numpy as np
    >>> data = chunks(np.arange(10.0).reshape(5, 2), chunk_size=2)
    >>> [tuple(x.shape) for x, _ in data]
    [(2, 2), (2, 2), (1, 2)]
    >>> [tuple(x.shape) for x, _ in data.shard(1, 2)]
    [(2, 2)]
    >>> [lengths for _, lengths in chunks([np.zeros(3), np.zeros(4), np.zeros(2)], 6, sequences=True)]
    [[3], [4, 2]]
    """
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if not isinstance(sequences, bool):
        raise ValueError(f"sequences must be True or False, got {sequences!r}")
    if sequences:
        if lengths is not None:
            raise ValueError("sequences=True reads one sequence per item, whose length is its number of rows; "
                             "drop lengths (or pass one array with lengths and sequences=False)")
        if callable(source):
            return Chunks(factory=source, chunk_size=chunk_size, one_by_one=True)
        if isinstance(source, (list, tuple)):
            return Chunks(pieces=list(source), chunk_size=chunk_size, one_by_one=True)
        raise TypeError(f"sequences=True needs a list of sequences or a function returning an iterable of them, got "
                        f"{type(source).__name__}; for one array of sequences back to back pass lengths instead")
    if isinstance(source, (str, os.PathLike)):
        source = NpyFile(source)
    if hasattr(source, "shape") and hasattr(source, "__getitem__"):
        if len(source.shape) == 0:
            raise ValueError("chunks needs an array with one row per data point, got a scalar")
        return Chunks(source, chunk_size, lengths)
    if lengths is not None:
        raise ValueError("lengths describes the rows of one array; chunks given one by one carry their own lengths "
                         "as (rows, lengths) pairs")
    if chunk_size is not None and (callable(source) or isinstance(source, (list, tuple))):
        raise ValueError("chunk_size cuts an array into chunks of rows; chunks given one by one (a list, or a "
                         "function yielding them) are read as they come: drop chunk_size, or pass sequences=True "
                         "to group sequences into chunks of chunk_size rows")
    if callable(source):
        return Chunks(factory=source)
    if isinstance(source, (list, tuple)):
        return Chunks(pieces=list(source))
    raise TypeError(f"chunks needs an array, a .npy path, a list of chunks or a function, got {type(source).__name__}")


def memory_chunks(x: torch.Tensor, float32: bool = False, on_demand: bool = False) -> torch.Tensor | Chunks:
    """``x`` itself, or, with more than :data:`MEMORY_CHUNK_THRESHOLD` rows, ``x`` read in chunks of
    :data:`MEMORY_CHUNK_ROWS` rows: then an EM iteration holds the temporaries of one chunk (its design matrix,
    its (rows, K) log densities), never of all N rows at once. ``float32`` (float32 kernels): in chunks from
    :data:`MEMORY_CHUNK_ROWS` rows on, so that no float32 sum runs over more rows than one chunk's.
    ``on_demand`` (a fit whose result recomputes every row's values on access, :mod:`ppl_lvm.em.rows`): in chunks
    from :data:`MEMORY_CHUNK_ROWS` rows on too, so that the recomputation, in the fit's own chunks, holds one
    chunk's temporaries besides its output."""
    if x.shape[0] <= (MEMORY_CHUNK_ROWS if float32 or on_demand else MEMORY_CHUNK_THRESHOLD):
        return x
    chunked = Chunks(x, MEMORY_CHUNK_ROWS)
    chunked.per_row = True
    return chunked
