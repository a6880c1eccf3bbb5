"""A guide checked against its model before any step: same latent sites, nothing extra, nothing missing."""

from __future__ import annotations

from typing import Any

import pyro.poutine as poutine
from pyro.poutine.util import site_is_subsample

from ..errors import ModelCheckError
from ..structure import ModelStructure

__all__ = ["check_guide"]


def check_guide(structure: ModelStructure, gtrace: poutine.Trace, guide: Any, guide_name: str) -> None:
    """Refuse a guide that misses a continuous latent of the model or samples a site the model lacks.

    Pyro only warns ("Found vars in model but not guide") and then draws the missing latent from its prior at every
    step, which optimises another objective; a guide site the model lacks is silently ignored. Discrete latents may be
    left out: they are enumerated exactly. Sites marked ``infer={"is_auxiliary": True}`` are the guide's own.
    """
    sampled = {
        name
        for name, node in gtrace.nodes.items()
        if node["type"] == "sample" and not node["infer"].get("is_auxiliary") and not site_is_subsample(node)
    }
    extra = sorted(n for n in sampled if n not in structure.sites)
    if extra:
        name = extra[0]
        latents = [s.name for s in structure.latent_sites]
        raise ModelCheckError(
            f"the guide {guide_name} samples {extra}, which the model does not have (its latent sites: {latents}). "
            "Name the guide's sites as the model's (the variable the model assigns lvm.latent to), or mark a helper "
            "site auxiliary with infer={'is_auxiliary': True}",
            site=name, location=getattr(guide, "location_of", lambda _: None)(name),
        )
    missing = [s for s in structure.continuous_latents if s.name not in sampled]
    if missing:
        site = missing[0]
        where = ", ".join(f"'{s.name}'" for s in missing)
        raise ModelCheckError(
            f"the guide {guide_name} does not sample the model's continuous latent(s) {where}; each would be drawn "
            "from its prior at every step, which is not the ELBO of this model. Add them to the guide (same names), "
            "or fit with a built-in guide (guide='normal')",
            site=site.name, location=site.location,
        )
