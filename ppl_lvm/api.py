"""``lvm.infer``: the one entry point that fits a model to data with a chosen method."""

from __future__ import annotations

from typing import Any

from .backends import BACKENDS, get_backend
from .backends.problem import make_problem
from .results import fit_result
from .runtime import clone_param_state

__all__ = ["infer"]


def infer(
    model: Any,
    data: Any = None,
    method: str = "svi",
    *,
    guide: Any = None,
    init: Any = None,
    **options: Any,
):
    """Fit ``model`` to ``data`` with ``method`` and return a :class:`~ppl_lvm.results.Result`.

    Parameters
    ----------
    model : Model or function
        A function decorated with :func:`ppl_lvm.model` (a plain function is compiled on the fly).
    data : tensor, ndarray, pandas object, dict or tuple
        Bound to the model's arguments: a dict by name, a tuple by position, anything else to the first
        argument. Continuous data become the torch default dtype, integer data ``long``.
    method : str
        ``"svi"`` (Trace_ELBO; discrete latents the guide does not sample are enumerated exactly, those it samples
        are fitted by the score function with ``baseline="average"|"net"|None`` through TraceGraph_ELBO),
        ``"meanfield"`` (TraceMeanField_ELBO, analytic KLs), ``"iwae"`` (RenyiELBO with alpha=0 and K
        vectorised importance samples), ``"renyi"`` (any alpha != 1), and the methods registered by other
        backends (``lvm.backends.BACKENDS`` lists them).
    guide : str, function or AutoGuide, optional
        ``"normal"`` (mean-field), ``"fullrank"``, ``"delta"`` (MAP), a function decorated with
        :func:`ppl_lvm.guide`, an :class:`~ppl_lvm.guides.AmortizedNormal` (or ``AmortizedFlow``,
        ``AmortizedBernoulli``, ``AmortizedCategorical``), or any Pyro guide.
    init : Result, optional
        Start from this result's parameters (fitting further).
    **options
        Options of the method: see :class:`ppl_lvm.fit.FitOptions` (``steps``, ``lr``, ``batch_size``,
        ``num_particles``, ``beta``, ``patience``, ``seed``, ``progress``, ``callbacks``, ...). ``distributed=True``
        fits data-parallel inside a ``torch.distributed`` process group (``em``, ``svi``, ``meanfield``, ``iwae``,
        ``renyi``): every rank passes its own rows (see :mod:`ppl_lvm.backends.distributed`). Every method takes
        ``num_threads``: ``"auto"`` (default) runs the fit with the torch thread count its work size calls for
        (one thread for small steps such as a VAE's minibatches; up to the usable cores for large E-steps), unless
        the user set the count (``torch.set_num_threads``, ``OMP_NUM_THREADS``), which is kept; an integer is used
        as given; ``None`` leaves torch's count alone. The count is restored after the fit and recorded in
        ``result.options["num_threads"]`` (the rule: :mod:`ppl_lvm.threads`).

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
    init_state = None
    if init is not None:
        state = getattr(init, "param_state", None)
        if state is None:
            raise TypeError(f"init must be a Result, got {type(init).__name__}")
        init_state = clone_param_state(state)
    problem = make_problem(backend, model, data, guide=guide, init_state=init_state, options=options)
    return fit_result(backend, problem)


def methods() -> list[str]:
    """The names accepted by ``infer(method=...)``."""
    return sorted(BACKENDS)
