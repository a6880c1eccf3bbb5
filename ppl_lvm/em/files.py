"""Arrays on disk read by row ranges, keeping resident memory at one chunk (the readers of :mod:`ppl_lvm.em.stream`)."""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

__all__ = ["MappedPages", "NpyFile"]


class NpyFile:
    """A ``.npy`` file read by row ranges with plain file reads (no memory mapping, so no pages stay resident).

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy.dtype
    """

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            self.shape, fortran, self.dtype = read(f)
            self._offset = f.tell()
        if fortran and len(self.shape) > 1:
            raise ValueError(f"{self.path} is stored in Fortran order; save it in C order to read it by rows")
        self._row = int(np.prod(self.shape[1:], dtype=np.int64))

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("NpyFile reads contiguous row ranges only")
        count = max(stop - start, 0) * self._row
        values = np.fromfile(self.path, dtype=self.dtype, count=count,
                             offset=self._offset + start * self._row * self.dtype.itemsize)
        return values.reshape((max(stop - start, 0),) + tuple(self.shape[1:]))


class MappedPages:
    """Hands the pages of a chunk read from a ``numpy.memmap`` back to the kernel (``madvise(MADV_DONTNEED)``).

    The pages of a memory map that were read count in the process's resident memory until the kernel reclaims
    them; releasing each chunk's pages once it is copied keeps resident memory at one chunk (the pages stay in
    the page cache, so a second pass over a file that fits there reads no disk). Only read-only and shared
    writable maps (``mode`` "r", "r+"): a copy-on-write map (``mode="c"``) would lose its changes.
    """

    def __init__(self, array: Any) -> None:
        mapped = getattr(array, "_mmap", None)
        self._map = mapped if isinstance(array, np.memmap) and array.mode in ("r", "r+") and hasattr(
            mmap, "MADV_DONTNEED") and isinstance(mapped, mmap.mmap) else None
        if self._map is not None:
            self._start = np.frombuffer(self._map, dtype=np.uint8).ctypes.data  # the map's first byte

    def release(self, view: np.ndarray) -> None:
        if self._map is None or view.size == 0:
            return
        lo = view.ctypes.data - self._start
        hi = min(lo + view.nbytes, len(self._map))
        lo -= lo % mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
