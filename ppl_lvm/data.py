"""Data in, once: conversion of tensors, arrays, pandas objects and dicts to the model's arguments, and checks.

Continuous data become the torch default dtype (float32 data stay float32 where the method's kernels read them as
given: ``keep_float32``), integer data stay ``long`` (the model's prototype run later tells
which integer arrays feed a continuous likelihood; :func:`ppl_lvm.infer` converts those with a warning). NaN and
infinite values are refused with their count and first positions. Index and column labels of pandas objects are
kept for the ArviZ export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import DataError

__all__ = ["BoundData", "bind_data", "row_arguments", "to_tensor"]


@dataclass
class BoundData:
    """The model's arguments after conversion, plus the labels they came with."""

    args: tuple
    kwargs: dict[str, Any]
    #: argument name -> {"index": [...], "columns": [...]} for pandas inputs
    coords: dict[str, dict[str, list]] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.kwargs.items() if isinstance(v, torch.Tensor)}


def _labels(obj: Any) -> dict[str, list]:
    labels: dict[str, list] = {}
    index = getattr(obj, "index", None)
    if index is not None:
        labels["index"] = [str(i) for i in index]
    columns = getattr(obj, "columns", None)
    if columns is not None:
        labels["columns"] = [str(c) for c in columns]
    return labels


def to_tensor(value: Any, name: str, keep_float32: bool = False) -> torch.Tensor:
    """Convert one data value; refuse what cannot be a numeric tensor.

    Floating data become torch's default dtype; with ``keep_float32``, float32 data stay float32 (a tensor is then
    not copied).
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach()  # data simulated from a model may still carry its autograd graph
    else:
        dtypes = getattr(value, "dtypes", None)
        if hasattr(dtypes, "items"):  # a DataFrame: name the columns that are not numbers
            text = [str(c) for c, t in dtypes.items() if getattr(t, "kind", "O") not in "biuf"]
            if text:
                raise DataError(f"data '{name}' has non-numeric column(s) {text}; drop them or encode categories as "
                                "integers (e.g. frame[col].astype('category').cat.codes)")
        if hasattr(value, "to_numpy"):  # pandas Series / DataFrame
            value = value.to_numpy()
        try:
            array = np.asarray(value)
        except Exception as exc:  # noqa: BLE001 - any failure means "not array-like"
            hint = ""
            if "inhomogeneous" in str(exc):
                hint = (" (rows of different lengths: pad them to one length and pass the lengths, e.g. "
                        "ppl_lvm.models.hmm.pad_sequences(sequences) for sequences of different lengths)")
            raise DataError(f"data '{name}' cannot be converted to an array{hint}: {exc}") from exc
        if array.dtype == object or array.dtype.kind in "USMmV":
            raise DataError(
                f"data '{name}' has non-numeric dtype {array.dtype}; select numeric columns or encode "
                "categories as integers"
            )
        # a copy: pandas hands out read-only views, and the data must not alias the caller's array
        tensor = torch.from_numpy(np.array(array, copy=True, order="C"))
    if tensor.dim() > 0 and tensor.numel() == 0:
        raise DataError(f"data '{name}' is empty (shape {tuple(tensor.shape)}); pass at least one data point")
    if tensor.dtype == torch.bool:
        tensor = tensor.to(torch.long)
    if tensor.is_floating_point():
        if not (keep_float32 and tensor.dtype == torch.float32):
            tensor = tensor.to(torch.get_default_dtype())
        n_nan, n_inf, positions = _non_finite(tensor)
        if n_nan or n_inf:
            shown = ", ".join(str(list(p)) for p in positions)
            raise DataError(
                f"data '{name}' contains {n_nan} NaN and {n_inf} infinite value(s) (first at {shown}); "
                "drop or impute those entries before fitting"
            )
    elif tensor.is_complex():
        raise DataError(f"data '{name}' is complex; ppl_lvm fits real-valued data")
    else:
        tensor = tensor.to(torch.long)
    return tensor


#: rows per block of the checks that read every row (their temporaries are one block's, not the data's size)
CHECK_ROWS = 2**16


def _non_finite(tensor: torch.Tensor, shown: int = 5) -> tuple[int, int, list[tuple[int, ...]]]:
    """``(NaN count, infinite count, first positions)`` of ``tensor``, read in blocks of :data:`CHECK_ROWS` rows."""
    if tensor.dim() == 0:
        tensor = tensor.reshape(1, 1)
        scalar = True
    else:
        scalar = False
    n_nan = n_inf = 0
    positions: list[tuple[int, ...]] = []
    for lo in range(0, tensor.shape[0], CHECK_ROWS):
        block = tensor[lo : lo + CHECK_ROWS]
        finite = torch.isfinite(block)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(block).sum())
        n_nan += nan
        n_inf += int(finite.numel() - finite.sum()) - nan
        for p in (~finite).nonzero()[: shown - len(positions)].tolist():
            positions.append(() if scalar else (p[0] + lo, *p[1:]))
    return n_nan, n_inf, positions


def row_arguments(tensors: dict[str, Any], n: int | None = None) -> tuple[int | None, list[str]]:
    """The data rows: ``(n, names)`` of the tensor arguments whose first dim has ``n`` entries.

    ``n=None``: the longest first dim among the tensor arguments (``(None, [])`` without one). What a minibatch
    slices and what the prototype run of many rows traces a slice of (:func:`ppl_lvm.model.trace_structure`).
    """
    lengths = [v.shape[0] for v in tensors.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    if n is None:
        if not lengths:
            return None, []
        n = max(lengths)
    return n, [k for k, v in tensors.items() if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n]


def _convert(value: Any, name: str, keep_float32: bool) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (torch.Tensor, np.ndarray, list, tuple)) or hasattr(value, "to_numpy"):
        return to_tensor(value, name, keep_float32)
    return value  # anything else (a module, a callable) is passed through untouched


def bind_data(model: Any, data: Any, keep_float32: bool = False) -> BoundData:
    """Map ``data`` onto the model's arguments.

    A dict binds by argument name; a tuple binds positionally; anything else binds to the first argument.
    ``keep_float32``: float32 data stay float32 (:func:`to_tensor`).
    """
    names = list(model.signature.parameters)
    if data is None:
        return BoundData((), {})
    if isinstance(data, dict):
        unknown = [k for k in data if k not in names]
        if unknown:
            raise DataError(
                f"data has key(s) {unknown} that are not arguments of {model.__name__}(); "
                f"its arguments are {names}"
            )
        items = dict(data)
    elif isinstance(data, tuple):
        if len(data) > len(names):
            raise DataError(f"{model.__name__}() takes {len(names)} arguments, data has {len(data)}")
        items = dict(zip(names, data, strict=False))
    else:
        if not names:
            raise DataError(f"{model.__name__}() takes no arguments, so it cannot be given data")
        items = {names[0]: data}
    kwargs: dict[str, Any] = {}
    coords: dict[str, dict[str, list]] = {}
    for key, value in items.items():
        if hasattr(value, "to_numpy"):
            coords[key] = _labels(value)
        kwargs[key] = _convert(value, key, keep_float32)
    return BoundData((), kwargs, coords)
