"""The checks of a site's value against its distribution, shared by the primitives and the prototype run.

An observation is checked for its dtype, NaN, shape (no silent broadcasting against the data plate or the
distribution's batch shape) and support; each error names the site and the user's source line.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pyro
import torch

from .errors import DataWarning, ModelCheckError
from .naming import ResolvedName
from .runtime import broadcast_shape, current_run

__all__ = ["as_tensor", "check_observation", "check_support", "distribution_name", "explain"]


def _shape(s: torch.Size | tuple) -> str:
    return "(" + ", ".join(str(int(d)) for d in s) + ("," if len(s) == 1 else "") + ")"


def as_tensor(value: Any, name: str, resolved: ResolvedName) -> torch.Tensor:
    """An observed value as a tensor (numpy arrays and scalars converted); anything else is an error at the site."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray) or np.isscalar(value):
        array = np.asarray(value)
        if array.dtype.kind == "f":
            return torch.as_tensor(array, dtype=torch.get_default_dtype())
        return torch.as_tensor(array)
    raise ModelCheckError(
        f"observed value must be a tensor or array, got {type(value).__name__}",
        site=name,
        location=resolved.location,
    )


def check_observation(name: str, fn: Any, value: torch.Tensor, resolved: ResolvedName) -> torch.Tensor:
    """The observed value of site ``name`` checked against ``fn``: dtype, NaN, shape, plates, support."""
    support = None if value.is_floating_point() else getattr(fn, "support", None)
    if support is not None and not support.is_discrete:
        warnings.warn(
            f"site '{name}' ({resolved.location}): integer data given to the continuous distribution "
            f"{distribution_name(fn)}; converted to {torch.get_default_dtype()}.",
            DataWarning,
            stacklevel=3,
        )
        value = value.to(torch.get_default_dtype())
    run = current_run()
    if run is not None and run.preflight:
        batch, event = tuple(fn.batch_shape), tuple(fn.event_shape)
        expected = batch + event
        value_event = tuple(value.shape[len(value.shape) - len(event):]) if event else ()
        problem = len(value.shape) < len(event) or value_event != event
        if not problem:
            value_batch = tuple(value.shape[: len(value.shape) - len(event)])
            try:
                joint = broadcast_shape(value_batch, batch)
            except RuntimeError:
                problem = True
            else:
                # broadcasting that grows both sides (e.g. (N, 1) against (N,)) is almost always a bug
                problem = joint != value_batch and joint != batch
        if value.numel() == 0:
            raise ModelCheckError(
                f"observed value is empty (shape {_shape(value.shape)}); pass at least one data point",
                site=name, location=resolved.location,
            )
        if not problem:
            _check_plates(name, value, len(event), resolved)
            _check_no_broadcast(name, fn, value, len(event), resolved)
            check_support(name, fn, value, resolved.location)
        if problem:
            raise ModelCheckError(
                f"observed value has shape {_shape(value.shape)}, but {distribution_name(fn)} has batch_shape "
                f"{_shape(batch)} and event_shape {_shape(event)}: expected a value of shape "
                f"{_shape(expected)}. Fix: check the data's shape for this site, or make the distribution's "
                "shape match it (index or reshape its parameters, .to_event(n) for vector-valued data, "
                "lvm.plate(...) for independent rows).",
                site=name,
                location=resolved.location,
            )
    return value


def _check_plates(name: str, value: torch.Tensor, event_dim: int, resolved: ResolvedName) -> None:
    batch = value.shape[: value.dim() - event_dim]
    for frame in pyro.poutine.runtime._PYRO_STACK:
        if not isinstance(frame, pyro.poutine.plate_messenger.PlateMessenger) or frame.dim is None:
            continue
        size = frame.subsample_size
        if len(batch) >= -frame.dim and batch[frame.dim] not in (1, size):
            raise ModelCheckError(
                f"observed value has shape {_shape(value.shape)}: size {batch[frame.dim]} at dim {frame.dim}, but "
                f"that dim belongs to plate '{frame.name}' of size {size}. Fix: check the data's length, or the "
                "size given to the plate.",
                site=name,
                location=resolved.location,
            )


def _check_no_broadcast(name: str, fn: Any, value: torch.Tensor, event_dim: int, resolved: ResolvedName) -> None:
    """Refuse a value dim that neither a plate nor the distribution's parameters account for.

    Such a dim broadcasts against the plates: data of shape (N, 1) under ``lvm.plate(N)`` would give N x N
    likelihood terms instead of N.
    """
    batch = tuple(value.shape[: value.dim() - event_dim])
    fn_batch = tuple(fn.batch_shape)
    plates = {frame.dim: frame for frame in pyro.poutine.runtime._PYRO_STACK
              if isinstance(frame, pyro.poutine.plate_messenger.PlateMessenger) and frame.dim is not None}
    if not plates:
        return  # no plate to broadcast against: the distribution's batch shape check above applies
    for position in range(-len(batch), 0):
        size = batch[position]
        if size == 1 or position in plates:
            continue
        if len(fn_batch) >= -position and fn_batch[position] == size:
            continue
        around = ", ".join(f"'{f.name}' (size {f.subsample_size}, dim {d})" for d, f in sorted(plates.items()))
        squeezed = tuple(d for d in value.shape if d != 1)
        raise ModelCheckError(
            f"observed value has shape {_shape(value.shape)}: its dim {position} (size {size}) is neither a plate's "
            f"dim nor a dim of {distribution_name(fn)}'s parameters, so it would broadcast against the plates "
            f"around it ({around}) into more likelihood terms than data points. Fix: give a value whose dims match "
            f"the plates (e.g. shape {_shape(squeezed)}: x.squeeze() or x.reshape(...)), or .to_event(n) when the "
            "trailing dims belong to one observation.",
            site=name, location=resolved.location,
        )


def check_support(name: str, fn: Any, value: torch.Tensor, location: Any, chunk_rows: int | None = None) -> None:
    """Refuse observed values outside the distribution's support: how many, the first positions and values.

    ``chunk_rows``: check ``value`` in blocks of this many rows along its first dim (a batch dim), so that no
    temporary is larger than one block; positions are those in the whole ``value``.
    """
    support = getattr(fn, "support", None)
    if support is None:
        return
    rows = value.shape[0] if value.dim() else 1
    step, bad_total, total, shown, values = rows if chunk_rows is None else max(int(chunk_rows), 1), 0, 0, [], []
    for lo in range(0, rows, step):
        part = value[lo : lo + step] if value.dim() else value
        if not part.is_floating_point() and not support.is_discrete:  # as the model's run converts them
            part = part.to(torch.get_default_dtype())
        try:
            ok = support.check(part)
        except (RuntimeError, ValueError, TypeError):
            return  # supports that cannot check this value are left to the distribution's own validation
        total += ok.numel()
        if bool(ok.all()):
            continue
        bad_total += int((~ok).sum())
        if len(shown) < 3 and ok.dim():
            bad = torch.nonzero(~ok.expand(part.shape[: ok.dim()]))[: 3 - len(shown)]
            event = part.dim() - ok.dim()
            for i in bad.tolist():
                values.append(part[tuple(i)].tolist() if event else float(part[tuple(i)]))
                shown.append((i[0] + lo, *i[1:]))
    if bad_total:
        where = ", ".join(f"{tuple(i)} = {v}" for i, v in zip(shown, values, strict=False))
        raise ModelCheckError(
            f"{bad_total} of {total} observed values lie outside the support of {distribution_name(fn)} "
            f"({_support_text(support)}); the first at {where}. Fix: clean or re-encode the data (e.g. categories "
            "as 0..K-1, binary data as 0/1), or choose a distribution whose support contains them.",
            site=name, location=location,
        )


def _support_text(support: Any) -> str:
    while type(support).__name__ == "_IndependentConstraint":
        support = support.base_constraint
    names = {"_Boolean": "0 or 1", "_IntegerGreaterThan": "integers >= {lower_bound}",
             "_IntegerInterval": "integers {lower_bound}..{upper_bound}", "_Simplex": "a probability vector",
             "_GreaterThan": "> {lower_bound}", "_Interval": "between {lower_bound} and {upper_bound}"}
    text = names.get(type(support).__name__, repr(support))
    return text.format(**{k: getattr(support, k) for k in ("lower_bound", "upper_bound") if hasattr(support, k)})


def distribution_name(fn: Any) -> str:
    """The name of a distribution under its wrappers: ``Normal`` for ``Normal(...).to_event(1)``."""
    while type(fn).__name__ in ("Independent", "MaskedDistribution", "ExpandedDistribution"):
        fn = fn.base_dist
    return type(fn).__name__


def explain(exc: Exception) -> str:
    """A Pyro error raised at a site, in words that say what to change."""
    text = str(exc)
    if "Shape mismatch inside plate" in text:
        return (
            f"{text}. The site's batch shape does not match the plate sizes around it: the dimension at the "
            "plate's dim must equal the plate size (or be 1). Fix: check the data's length, or index/reshape the "
            "distribution's parameters."
        )
    if "not broadcastable" in text:
        return f"{text}. Fix: check the data's shape for this site, or use .to_event(n) for vector-valued data."
    return text
