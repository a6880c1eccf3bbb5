"""Reading and writing result files without executing code (the results layer builds results from them).

A result file is a ``torch.save`` archive holding only tensors, numbers, strings, lists and dicts, read back with
``torch.load(weights_only=True)``: a file crafted to run code on unpickling is refused. Constraints are stored by
name (with their arguments) and rebuilt from a fixed table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pyro.distributions import constraints

from .errors import PplLvmError

__all__ = ["FORMAT_VERSION", "read_result_file", "save_result"]

FORMAT_VERSION = 2  # 2: checksums of every tensor and of the metadata; 1 (no checksums) still loads

_SIMPLE = {
    "real": constraints.real,
    "positive": constraints.positive,
    "nonnegative": constraints.nonnegative,
    "simplex": constraints.simplex,
    "unit_interval": constraints.unit_interval,
    "lower_cholesky": constraints.lower_cholesky,
    "corr_cholesky": constraints.corr_cholesky,
    "positive_definite": constraints.positive_definite,
    "real_vector": constraints.real_vector,
    "ordered_vector": constraints.ordered_vector,
    "softplus_positive": constraints.softplus_positive,
    "softplus_lower_cholesky": constraints.softplus_lower_cholesky,
    "boolean": constraints.boolean,
}


def _encode_constraint(c: Any) -> dict:
    for key, value in _SIMPLE.items():
        if c is value:
            return {"kind": key}
    if isinstance(c, constraints.independent):
        return {"kind": "independent", "base": _encode_constraint(c.base_constraint),
                "event_dim": c.reinterpreted_batch_ndims}
    if isinstance(c, constraints.interval):
        return {"kind": "interval", "low": float(c.lower_bound), "high": float(c.upper_bound)}
    if isinstance(c, constraints.greater_than):
        return {"kind": "greater_than", "low": float(c.lower_bound)}
    if isinstance(c, constraints.less_than):
        return {"kind": "less_than", "high": float(c.upper_bound)}
    raise PplLvmError(f"cannot save a parameter with constraint {c!r}")


def _decode_constraint(d: dict) -> Any:
    kind = d["kind"]
    if kind in _SIMPLE:
        return _SIMPLE[kind]
    if kind == "independent":
        return constraints.independent(_decode_constraint(d["base"]), int(d["event_dim"]))
    if kind == "interval":
        return constraints.interval(d["low"], d["high"])
    if kind == "greater_than":
        return constraints.greater_than(d["low"])
    if kind == "less_than":
        return constraints.less_than(d["high"])
    raise PplLvmError(f"unknown constraint kind {kind!r} in result file")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return repr(value)


def save_result(result: Any, path: str) -> None:
    state = result.param_state
    data_tensors = {k: v.detach().cpu() for k, v in result.data.kwargs.items() if isinstance(v, torch.Tensor)}
    data_other = {k: v for k, v in result.data.kwargs.items()
                  if not isinstance(v, torch.Tensor) and isinstance(v, (int, float, str, bool, type(None)))}
    meta = {
        "format": FORMAT_VERSION,
        "method": result.method,
        "converged": result.converged,
        "steps": result.steps,
        "seed": result.seed,
        "guide_name": result.guide_name,
        "enumerated": list(result.enumerated),
        "interrupted": result.interrupted,
        "options": _jsonable(result.options),
        "model": getattr(result.model, "__name__", None),
        "constraints": {k: _encode_constraint(c) for k, c in state["constraints"].items()},
        "data_other": data_other,
        "coords": result.data.coords,
        "extra": _jsonable(getattr(result, "extra", {}) or {}),
    }
    if result.structure is not None:  # what a model must have to take these parameters back
        meta["model_params"] = result.structure.model_param_names(state["params"])
        meta["latent_sites"] = [s.name for s in result.structure.latent_sites]
    payload = {
        "meta": json.dumps(meta),
        "params": {k: v.detach().cpu().clone() for k, v in state["params"].items()},
        "losses": torch.as_tensor(np.asarray(result.losses, dtype=np.float64)),
        "data": data_tensors,
    }
    if len(getattr(result, "restarts", [])) > 1:
        payload["restarts"] = [
            {
                "meta": json.dumps({
                    "seed": r.seed, "steps": r.steps, "converged": r.converged, "interrupted": r.interrupted,
                    "kept": r is result, "options": _jsonable(r.options),
                    "constraints": {k: _encode_constraint(c) for k, c in r.param_state["constraints"].items()},
                }),
                "params": {k: v.detach().cpu().clone() for k, v in r.param_state["params"].items()},
                "losses": torch.as_tensor(np.asarray(r.losses, dtype=np.float64)),
            }
            for r in result.restarts
        ]
    payload["checksums"] = json.dumps(_checksums(payload))
    _write_atomically(payload, _checked_target(path))


def _digest(value: Any) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes, or of a string."""
    h = hashlib.sha256()
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    else:
        h.update(str(value).encode())
    return h.hexdigest()


def _leaves(payload: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every stored tensor and string of a payload by path (``params/W``, ``restarts/1/losses``, ...)."""
    if isinstance(payload, dict):
        for key in sorted(payload):
            if prefix == "" and key == "checksums":
                continue
            yield from _leaves(payload[key], f"{prefix}{key}/")
    elif isinstance(payload, (list, tuple)):
        for i, item in enumerate(payload):
            yield from _leaves(item, f"{prefix}{i}/")
    else:
        yield prefix.rstrip("/"), payload


def _checksums(payload: dict) -> dict[str, str]:
    return {path: _digest(value) for path, value in _leaves(payload)}


def _checked_target(path: Any) -> Path:
    """``path`` as a file that can be written, or a clear error before anything is written."""
    target = Path(path)
    if target.is_dir():
        raise PplLvmError(f"cannot save to {target}: it is a folder; give a file name such as {target / 'result.pt'}")
    parent = target.parent
    if parent.exists() and not parent.is_dir():
        raise PplLvmError(f"cannot save to {target}: {parent} is a file, not a folder")
    if not parent.exists():
        raise PplLvmError(f"cannot save to {target}: the folder {parent} does not exist; create it first "
                          "(os.makedirs) or choose another path")
    return target


def _write_atomically(payload: dict, target: Path) -> None:
    """Write to a temporary file beside ``target``, then rename: a crash never leaves half a file."""
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _verify(payload: dict, path: Any) -> None:
    """Compare every stored tensor and the metadata with the checksums written beside them."""
    try:
        meta = json.loads(payload["meta"])
        expected = json.loads(payload["checksums"]) if "checksums" in payload else None
    except (TypeError, ValueError) as exc:
        raise PplLvmError(f"{path} is damaged or not a ppl_lvm result (unreadable metadata: {exc})") from exc
    if expected is None:
        if meta.get("format", 1) >= 2:
            raise PplLvmError(f"{path} is damaged or not a ppl_lvm result (its checksums are missing)")
        return  # format 1 files were written before checksums
    actual = _checksums(payload)
    changed = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise PplLvmError(f"{path} is damaged or not a ppl_lvm result: {shown} differ from the checksums written "
                          "with the file; it was not loaded")


def read_result_file(path: str) -> tuple[dict, dict]:
    """Read a file written by :func:`save_result`: ``(meta, payload)``, never unpickling code.

    ``payload["state"]`` is the kept fit's parameter-store state (constraints rebuilt), and each entry of
    ``payload["restarts"]`` holds ``info`` and ``state`` the same way.

    Raises
    ------
    PplLvmError
        If the file is not a ppl_lvm result, or holds anything but plain data (it is never unpickled as code).
    """
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise PplLvmError(
            f"{path} holds objects other than plain data and was refused without running them ({exc})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign files
        raise PplLvmError(f"{path} is damaged or not a ppl_lvm result (it cannot be read: {exc})") from exc
    if not isinstance(payload, dict) or "meta" not in payload:
        raise PplLvmError(f"{path} is damaged or not a ppl_lvm result (no metadata)")
    _verify(payload, path)
    meta = json.loads(payload["meta"])
    payload = dict(payload)
    payload["state"] = {
        "params": dict(payload["params"]),
        "constraints": {k: _decode_constraint(v) for k, v in meta["constraints"].items()},
    }
    restarts = []
    for entry in payload.get("restarts", []):
        info = json.loads(entry["meta"])
        restarts.append({
            "info": info,
            "losses": entry["losses"],
            "state": {"params": dict(entry["params"]),
                      "constraints": {k: _decode_constraint(v) for k, v in info["constraints"].items()}},
        })
    payload["restarts"] = restarts
    return meta, payload
