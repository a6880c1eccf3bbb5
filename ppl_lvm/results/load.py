"""``lvm.load``: a result file back into a result (the file is read by :mod:`ppl_lvm.io`, never unpickled)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyro
import torch

from ..data import BoundData
from ..em.patterns import MixturePattern
from ..em.queries import fitted_posterior, mixture_rows, recognise
from ..errors import PplLvmError
from ..guides import GUIDES, build_guide, empty_guide
from ..io import read_result_file
from ..model import check_model
from ..outcome import EMOutcome, Outcome, ResponsibilitiesOnDemand, StochasticEMOutcome
from ..runtime import clone_param_state
from .build import build_result

__all__ = ["load"]


def _check_same_sites(meta: dict, structure: Any, model: Any, path: str) -> None:
    """Refuse a model whose parameters or latent sites differ from those the file was saved with."""
    for key, what, expected in (
        ("model_params", "parameters", structure.model_param_names()),
        ("latent_sites", "latent sites", [s.name for s in structure.latent_sites]),
    ):
        saved = meta.get(key)
        if saved is not None and sorted(saved) != sorted(expected):
            raise PplLvmError(
                f"{path} was saved from a model with {what} {sorted(saved)}, but {model.__name__}() has "
                f"{sorted(expected)}; load it with the model it was fitted with"
            )


def _restore_e_step(outcome: EMOutcome, extra: dict, path: str) -> None:
    """Re-derive what an EM fit held beside its parameters: the recognised pattern (which new data, draws and the
    Viterbi path need), the responsibilities and log p(x_i), from the model on the saved data at the saved
    parameters (the same computation the fit ended with; for a result that recomputed them on access, what
    recomputes them)."""
    kwargs = dict(outcome.data.kwargs)
    with outcome.activated():
        store = pyro.get_param_store()
        outcome.pattern = recognise(outcome.model, kwargs, outcome.structure)
        if (outcome.pattern is not None) != outcome.closed_form:
            route = "closed-form" if outcome.closed_form else "generic"
            raise PplLvmError(f"{path} was fitted on the {route} EM route, but {outcome.model.__name__}() on the saved "
                              "data takes the other one; load it with the model it was fitted with")
        if extra.get("streamed"):  # a fit on data read chunk by chunk kept no per-point values
            return
        if isinstance(outcome.pattern, MixturePattern):
            rows, kept = mixture_rows(outcome.pattern, store, kwargs, outcome.options)
            if not kept:  # recomputed on access, as by the fit's result (keep_responsibilities)
                outcome.rows, outcome.responsibilities = rows, ResponsibilitiesOnDemand(rows)
                outcome.log_likelihood_per_point = None
                return
        per_point, responsibilities = fitted_posterior(outcome.model, kwargs, outcome.structure, outcome.pattern,
                                                       store, outcome.options)
    outcome.log_likelihood_per_point = None if per_point is None else per_point.detach()
    outcome.responsibilities = {k: v.detach() for k, v in responsibilities.items()}


def load(path: str, model: Any = None, guide: Any = None) -> Any:
    """Load a result written by :meth:`Result.save`.

    Parameters
    ----------
    path : str
        The file.
    model : Model, optional
        The model the result was fitted with; needed for posterior queries and further fitting.
    guide : callable, optional
        The user guide, when the fit used one (built-in guides are rebuilt by name).

    Raises
    ------
    PplLvmError
        If the file is not a ppl_lvm result, or holds anything but plain data (it is never unpickled as code).
    """
    meta, payload = read_result_file(path)
    kwargs = dict(payload["data"]) | meta.get("data_other", {})
    data = BoundData((), kwargs, meta.get("coords", {}))
    em = meta["method"] == "em"
    structure = None
    guide_obj = guide
    if model is not None:
        model = check_model(model)
        structure = model.inspect(**kwargs)
        _check_same_sites(meta, structure, model, path)
        if guide_obj is None and em:
            guide_obj = empty_guide
        elif guide_obj is None:
            spec = meta["guide_name"] if meta["guide_name"] in GUIDES else None
            with torch.no_grad():
                guide_obj, _ = build_guide(spec, model, structure)
    cls, fields = Outcome, {}
    extra = meta.get("extra") or {}
    if em:
        cls = EMOutcome
        fields = {
            "log_likelihood": float(extra.get("log_likelihood", float("nan"))),
            "history": np.asarray(extra.get("history", []), dtype=float),
            "n_iter": int(extra.get("n_iter", meta["steps"])),
            "n_parameters": int(extra.get("n_parameters", 0)),
            "n_samples": int(extra.get("n_samples", 0)),
            "closed_form": bool(extra.get("closed_form", False)),
        }
    elif meta["method"] in ("vem", "mcem"):
        cls = StochasticEMOutcome
        fields = {
            "history": np.asarray(extra.get("history", []), dtype=float),
            "history_se": np.asarray(extra.get("history_se", []), dtype=float),
            "sample_sizes": np.asarray(extra.get("sample_sizes", []), dtype=int),
            "n_iter": int(extra.get("n_iter", meta["steps"])),
        }
    common = dict(method=meta["method"], guide_name=meta["guide_name"], model=model, data=data, structure=structure,
                  enumerated=meta["enumerated"], **fields)
    # the parameters as trainable leaves, as a fit leaves them (lvm.module copies them into its network)
    kept = cls(losses=payload["losses"].numpy(), converged=meta["converged"], steps=meta["steps"], seed=meta["seed"],
               guide=guide_obj, param_state=clone_param_state(payload["state"]), interrupted=meta["interrupted"],
               options=meta["options"], **common)
    restarts = []
    for entry in payload["restarts"]:
        info = entry["info"]
        if info["kept"]:
            restarts.append(kept)
            continue
        other_guide = guide_obj
        if guide is None and model is not None and not em and meta["guide_name"] in GUIDES:
            with torch.no_grad():  # each restart had its own guide object
                other_guide, _ = build_guide(meta["guide_name"], model, structure)
        restarts.append(cls(losses=entry["losses"].numpy(), converged=info["converged"], steps=info["steps"],
                            seed=info["seed"], guide=other_guide, param_state=clone_param_state(entry["state"]),
                            interrupted=info["interrupted"], options=info.get("options", meta["options"]), **common))
    kept.restarts = restarts
    if em and model is not None:
        for outcome in restarts or [kept]:
            _restore_e_step(outcome, extra, path)
    return build_result(kept)
