"""``lvm.infer``: the one entry point that fits a model to data with a chosen method."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .backends import BACKENDS, Problem, get_backend
from .data import bind_data
from .errors import DataError, DataWarning
from .model import Model, check_model
from .runtime import clone_param_state

__all__ = ["infer"]


def _convert_integer_data(model: Model, bound, kwargs: dict[str, Any]):
    """Inspect the model; integer data feeding a continuous likelihood are converted once, with one warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        structure = model.inspect(**kwargs)
    for w in caught:
        if not issubclass(w.category, DataWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    converted = []
    for site in structure.observed_sites:
        value = kwargs.get(site.argument) if site.argument else None
        if isinstance(value, torch.Tensor) and not value.is_floating_point() and not site.discrete:
            kwargs[site.argument] = value.to(torch.get_default_dtype())
            converted.append(f"'{site.argument}' (site '{site.name}', {site.location})")
    if converted:
        warnings.warn(
            f"integer data given to a continuous likelihood were converted to {torch.get_default_dtype()}: "
            + ", ".join(converted),
            DataWarning,
            stacklevel=3,
        )
    elif any(issubclass(w.category, DataWarning) for w in caught):
        for w in caught:
            if issubclass(w.category, DataWarning):
                warnings.warn(w.message, DataWarning, stacklevel=3)
    bound.kwargs = kwargs
    return structure


def infer(
    model: Any,
    data: Any = None,
    method: str = "svi",
    *,
    guide: Any = None,
    init: Any = None,
    **options: Any,
):
    """Fit ``model`` to ``data`` with ``method`` and return a :class:`~ppl_lvm.result.Result`.

    Parameters
    ----------
    model : Model or function
        A function decorated with :func:`ppl_lvm.model` (a plain function is compiled on the fly).
    data : tensor, ndarray, pandas object, dict or tuple
        Bound to the model's arguments: a dict by name, a tuple by position, anything else to the first
        argument. Continuous data become the torch default dtype, integer data ``long``.
    method : str
        ``"svi"`` (Trace_ELBO; discrete latents the guide does not sample are enumerated exactly),
        ``"meanfield"`` (TraceMeanField_ELBO, analytic KLs), ``"iwae"`` (RenyiELBO with alpha=0 and K
        vectorised importance samples), ``"renyi"`` (any alpha != 1), and the methods registered by other
        backends (``lvm.backends.BACKENDS`` lists them).
    guide : str, function or AutoGuide, optional
        ``"normal"`` (mean-field), ``"fullrank"``, ``"delta"`` (MAP), a function decorated with
        :func:`ppl_lvm.guide`, an :class:`~ppl_lvm.guides.AmortizedNormal`, or any Pyro guide.
    init : Result, optional
        Start from this result's parameters (fitting further).
    **options
        Options of the method: see :class:`ppl_lvm.fit.FitOptions` (``steps``, ``lr``, ``batch_size``,
        ``num_particles``, ``beta``, ``patience``, ``seed``, ``progress``, ``callbacks``, ...).

    Returns
    -------
    Result

    Raises
    ------
    ValueError
        Unknown method (the message lists the known ones) or an invalid option value.
    DataError
        Data with NaN/inf (count and first positions), non-numeric columns, or keys that are not arguments.
    ModelCheckError
        A shape or support problem found by the model's pre-flight run (names the site and source line).
    UnsupportedModelError
        The method cannot fit this model (names the site and the method to use instead).
    FitError
        The loss became NaN/inf; the best parameters so far are in the exception's ``result``.
    """
    backend = get_backend(method)
    model = check_model(model)
    bound = bind_data(model, data)
    kwargs = dict(bound.kwargs)
    missing = [
        name
        for name, p in model.signature.parameters.items()
        if p.default is p.empty and name not in kwargs and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if missing:
        raise DataError(f"{model.__name__}() needs argument(s) {missing}; pass them in data (a dict by name)")
    # options are validated before the (possibly slow) prototype run
    backend.parse_options(options)
    structure = _convert_integer_data(model, bound, kwargs)
    init_state = None
    if init is not None:
        state = getattr(init, "param_state", None)
        if state is None:
            raise TypeError(f"init must be a Result, got {type(init).__name__}")
        init_state = clone_param_state(state)
    problem = Problem(
        model=model,
        data=bound,
        structure=structure,
        method=backend.name,
        guide=guide,
        init_state=init_state,
        options=options,
    )
    return backend.fit(problem)


def methods() -> list[str]:
    """The names accepted by ``infer(method=...)``."""
    return sorted(BACKENDS)
