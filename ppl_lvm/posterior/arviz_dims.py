"""Names, coordinates and attributes of the ArviZ groups (the dataset building shared by every kind of fit).

The dimension of a site's value that a plate indexes is named after the plate (``len(x)`` becomes ``x_index``,
other plate names are sanitised); the remaining dimensions are ``<site>_dim_<i>``; pandas labels of the data become
coordinates.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyro
import torch

from .._version import __version__
from ..outcome import Outcome
from . import arviz_compat

__all__ = ["attrs", "dataset", "label_coords", "numpy", "plate_dim_name", "site_dims", "split"]


def plate_dim_name(plate: str) -> str:
    match = re.fullmatch(r"len\((\w+)\)", plate.replace(" ", ""))
    if match:
        return f"{match.group(1)}_index"
    name = re.sub(r"\W+", "_", plate).strip("_")
    return name or "plate"


def site_dims(structure: Any, name: str, shape: tuple[int, ...], batch_shape: tuple[int, ...] | None = None
               ) -> list[str]:
    """Dimension names of one site's value (without chain/draw): plates for batch dims, ``<site>_dim_i`` else."""
    info = structure.sites.get(name)
    if batch_shape is None:
        batch_shape = tuple(info.batch_shape) if info is not None else ()
    n_batch = len(batch_shape) if tuple(shape[: len(batch_shape)]) == tuple(batch_shape) else 0
    dims: list[str] = []
    by_dim = {}
    if info is not None:
        for plate in info.plates:
            p = structure.plates.get(plate)
            if p is not None and p.dim is not None:
                by_dim[p.dim] = p
    generic = 0
    for j in range(len(shape)):
        plate = by_dim.get(j - n_batch) if j < n_batch else None
        if plate is not None and plate.size == shape[j]:
            dims.append(plate_dim_name(plate.name))
        else:
            dims.append(f"{name}_dim_{generic}")
            generic += 1
    return dims


def label_coords(result: Outcome, dims_of: dict[str, list[str]], shapes: dict[str, tuple[int, ...]]) -> dict:
    """Coordinates from pandas labels: the data plate gets the index, an observed site's first event dim the columns."""
    coords: dict[str, list] = {}
    labels = getattr(result.data, "coords", {}) or {}
    structure = result.structure
    for site in structure.observed_sites:
        lab = labels.get(site.argument or site.name)
        if not lab or site.name not in dims_of:
            continue
        dims, shape = dims_of[site.name], shapes[site.name]
        nb = len(site.batch_shape)
        if "index" in lab and nb >= 1 and shape[0] == len(lab["index"]):
            coords.setdefault(dims[0], list(lab["index"]))
        if "columns" in lab and len(shape) > nb and shape[nb] == len(lab["columns"]):
            coords.setdefault(dims[nb], list(lab["columns"]))
    return coords


def numpy(value: torch.Tensor) -> np.ndarray:
    array = value.detach().cpu().numpy()
    return array.astype(np.int64) if array.dtype.kind in "iub" else array.astype(np.float64)


def split(array: np.ndarray, chains: int) -> np.ndarray:
    """Independent draws (S, ...) as (chains, S // chains, ...)."""
    return array.reshape((chains, array.shape[0] // chains) + array.shape[1:])


def dataset(variables: dict[str, tuple[list[str], np.ndarray]], coords: dict, attrs: dict | None = None) -> Any:
    xr = arviz_compat.xr()
    used = {d for dims, _ in variables.values() for d in dims}
    return xr.Dataset(
        dict(variables.items()),
        coords={k: v for k, v in coords.items() if k in used},
        attrs=dict(attrs or {}),
    )


def attrs(result: Outcome) -> dict:
    return {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "creation_library": "ppl_lvm",
        "creation_library_version": __version__,
        "method": str(result.method),
        "guide": str(result.guide_name),
        "steps": int(result.steps),
        "converged": int(bool(result.converged)),
        "seed": int(result.seed),
    }
