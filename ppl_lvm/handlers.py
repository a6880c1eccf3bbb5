"""Effect handlers the layers share: enumerate these sites, replay these values, find enumeration dims."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyro.poutine as poutine
import torch

__all__ = ["enum_dims", "enumerating", "replay_trace"]


def enumerating(model: Any, sites: Iterable[str]) -> Any:
    """``model`` with the given discrete latent sites marked for parallel enumeration."""
    names = frozenset(sites)

    def config(msg: dict) -> dict:
        if msg["type"] == "sample" and msg["name"] in names and not msg["is_observed"]:
            return {"enumerate": "parallel"}
        return {}

    return poutine.infer_config(model, config)


def replay_trace(values: dict[str, torch.Tensor]) -> poutine.Trace:
    """A trace holding only ``values`` as sample sites, for ``poutine.replay``."""
    trace = poutine.Trace()
    for name, value in values.items():
        trace.add_node(name, type="sample", name=name, value=value, is_observed=False, infer={})
    return trace


def enum_dims(tensor: torch.Tensor, nesting: int) -> set[int]:
    """Negative positions left of the plate dims where ``tensor`` has size > 1 (enumeration dims)."""
    return {d for d in range(-tensor.dim(), -nesting) if tensor.shape[d] > 1}
