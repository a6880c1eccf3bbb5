"""The primitives used inside a model or guide: thin wrappers over Pyro's that name sites from the code.

Each primitive resolves its site name (``name=`` if given, else the assignment target found by
:mod:`ppl_lvm.naming`), records the site in the current run, and calls the Pyro primitive. Errors raised by Pyro
for a site are re-raised with the site name and the user's source line.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from .errors import DataWarning, ModelCheckError, ModelDefinitionError, PplLvmError
from .interpreter import current_interpreter
from .naming import ResolvedName, resolve
from .runtime import SiteRecord, broadcast_shape, current_fit, current_run

__all__ = ["latent", "observe", "param", "plate", "markov", "module", "deterministic"]


def _shape(s: torch.Size | tuple) -> str:
    return "(" + ", ".join(str(int(d)) for d in s) + ("," if len(s) == 1 else "") + ")"


def _site_name(resolved: ResolvedName, explicit: str | None) -> str:
    run = current_run()
    if run is None or not run.markov_indices or explicit is not None:
        return resolved.name
    return resolved.name + "".join(f"_{i}" for i in run.markov_indices)


def _record(name: str, kind: str, resolved: ResolvedName, argument: str | None = None) -> None:
    run = current_run()
    if run is None:
        return
    previous = run.sites.get(name)
    if previous is not None:
        raise ModelDefinitionError(
            f"two sites are named '{name}' (the first at {previous.location}). Site names must be unique "
            "within one run: rename one, pass name='...', or for a loop over time use lvm.markov(...), "
            "which appends the step to the name.",
            resolved.location,
        )
    run.sites[name] = SiteRecord(name, kind, resolved.location, argument)


def _as_tensor(value: Any, name: str, resolved: ResolvedName) -> torch.Tensor:
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


def _check_observation(name: str, fn: Any, value: torch.Tensor, resolved: ResolvedName) -> torch.Tensor:
    support = getattr(fn, "support", None)
    if support is not None and not value.is_floating_point() and not support.is_discrete:
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
            _check_support(name, fn, value, resolved)
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


def _check_support(name: str, fn: Any, value: torch.Tensor, resolved: ResolvedName) -> None:
    """Refuse observed values outside the distribution's support: how many, the first positions and values."""
    support = getattr(fn, "support", None)
    if support is None:
        return
    try:
        ok = support.check(value)
    except (RuntimeError, ValueError, TypeError):
        return  # supports that cannot check this value are left to the distribution's own validation
    if bool(ok.all()):
        return
    bad = torch.nonzero(~ok.expand(value.shape[: ok.dim()]) if ok.dim() else ~ok.reshape(1))
    shown = bad[:3].tolist()
    event = value.dim() - ok.dim()
    values = [value[tuple(i)].tolist() if event else float(value[tuple(i)]) for i in shown] if ok.dim() else []
    where = ", ".join(f"{tuple(i)} = {v}" for i, v in zip(shown, values, strict=False))
    raise ModelCheckError(
        f"{int((~ok).sum())} of {ok.numel()} observed values lie outside the support of {distribution_name(fn)} "
        f"({_support_text(support)}); the first at {where}. Fix: clean or re-encode the data (e.g. categories as "
        "0..K-1, binary data as 0/1), or choose a distribution whose support contains them.",
        site=name, location=resolved.location,
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


def _explain(exc: Exception) -> str:
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


def _sample(name: str, fn: Any, obs: Any, resolved: ResolvedName, infer: dict | None, kind: str):
    interp = current_interpreter()  # a planned step runs the statement itself (ppl_lvm.interpreter)
    try:
        if interp is not None:
            return interp.sample(name, fn, obs, infer)
        return pyro.sample(name, fn, obs=obs, infer=infer)
    except (ValueError, RuntimeError, IndexError) as exc:
        if isinstance(exc, PplLvmError):
            raise
        raise ModelCheckError(_explain(exc), site=name, location=resolved.location) from exc


def latent(
    fn: dist.Distribution,
    *,
    name: str | None = None,
    obs: Any = None,
    infer: dict | None = None,
) -> torch.Tensor:
    """Draw a latent variable: ``z = lvm.latent(dist.Normal(0., 1.))`` creates the site ``"z"``.

    When the assignment target is also an argument of the model (``def model(x=None): x = lvm.latent(...)``),
    the site is observed with that argument's value when it is given and sampled when it is ``None``, so one
    model both fits and simulates.

    Parameters
    ----------
    fn : pyro.distributions.Distribution
        The distribution of the site.
    name : str, optional
        Site name; overrides the name found in the code.
    obs : tensor, optional
        Condition the site on this value (makes it observed).
    infer : dict, optional
        Pyro's per-site inference config (e.g. ``{"enumerate": "parallel"}``).

    Returns
    -------
    torch.Tensor
        The sampled (or observed) value.
    """
    resolved = resolve("latent", name)
    site = _site_name(resolved, name)
    value = obs
    argument = None
    if value is None and resolved.is_argument and resolved.frame_locals_value is not None:
        value = resolved.frame_locals_value
        argument = resolved.name
    kind = "latent" if value is None else "observed"
    _record(site, kind, resolved, argument)
    if value is not None:
        value = _check_observation(site, fn, _as_tensor(value, site, resolved), resolved)
    return _sample(site, fn, value, resolved, infer, kind)


def observe(fn: dist.Distribution, value: Any, *, name: str | None = None) -> torch.Tensor:
    """Condition on data: ``lvm.observe(dist.Normal(mu, 1.), x)`` creates the observed site ``"x"``.

    The site is named by the assignment target, else by ``value`` when it is a plain variable name. A ``value``
    of ``None`` samples the site instead (simulation).
    """
    resolved = resolve("observe", name)
    site = _site_name(resolved, name)
    kind = "latent" if value is None else "observed"
    argument = resolved.call.value_name if resolved.call is not None else None
    _record(site, kind, resolved, argument)
    if value is not None:
        value = _check_observation(site, fn, _as_tensor(value, site, resolved), resolved)
    return _sample(site, fn, value, resolved, None, kind)


def param(
    init: Any = None,
    constraint: constraints.Constraint = constraints.real,
    *,
    name: str | None = None,
    event_dim: int | None = None,
) -> torch.Tensor:
    """A learnable parameter: ``mu = lvm.param(torch.zeros(K, D))``.

    Parameters
    ----------
    init : tensor, array, number or callable
        Initial value (in the constrained space); a callable is called only when the parameter is created.
    constraint : torch.distributions.constraints.Constraint
        Support of the parameter, e.g. ``constraints.positive`` or ``constraints.simplex``.
    name : str, optional
        Parameter name; overrides the name found in the code.
    event_dim : int, optional
        Rightmost dims that belong together, for subsampled parameters (as in :func:`pyro.param`).
    """
    resolved = resolve("param", name)
    run = current_run()
    if run is not None and resolved.name not in run.sites:
        run.sites[resolved.name] = SiteRecord(resolved.name, "param", resolved.location)
    if init is not None and not callable(init) and not isinstance(init, torch.Tensor):
        init = torch.as_tensor(np.asarray(init), dtype=torch.get_default_dtype())
    interp = current_interpreter()
    try:
        if interp is not None:
            return interp.param(resolved.name, init, constraint, event_dim)
        return pyro.param(resolved.name, init, constraint=constraint, event_dim=event_dim)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ModelCheckError(str(exc), site=resolved.name, location=resolved.location) from exc


def plate(
    *args: Any,
    name: str | None = None,
    dim: int | None = None,
    subsample_size: int | None = None,
) -> pyro.plate:
    """A plate of conditionally independent draws: ``with lvm.plate(N) as data: ...``.

    Accepts ``plate(size)`` (named by ``as`` target or assignment), ``plate("name", size)`` as in Pyro, and
    ``name=``. During a minibatch fit the data plate is given the full data size and the batch indices, so the
    likelihood is scaled correctly.
    """
    if args and isinstance(args[0], str):
        if name is not None:
            raise TypeError("plate() got its name both positionally and as name=")
        name, args = args[0], args[1:]
    if len(args) > 1:
        raise TypeError("plate() takes at most a name and a size")
    size = args[0] if args else None
    if name is None:
        name = resolve("plate", None).name
    fit, interp = current_fit(), current_interpreter()
    if fit is not None and name in fit.subsample:
        full, indices = fit.subsample[name]
        if interp is not None:
            return interp.plate(name, full, indices, None, dim)
        return pyro.plate(name, full, subsample=indices, dim=dim)
    if isinstance(size, torch.Tensor):
        size = int(size)
    if interp is not None:
        return interp.plate(name, size, None, subsample_size, dim)
    return pyro.plate(name, size, subsample_size=subsample_size, dim=dim)


def markov(iterable: Iterable[int], history: int = 1, keep: bool = False) -> Iterator[int]:
    """Iterate over time steps of a Markov chain: ``for t in lvm.markov(range(T)): z = lvm.latent(...)``.

    Sites named automatically inside the loop get the step appended (``z_0``, ``z_1``, ...), and the loop is a
    :func:`pyro.markov` context, so enumeration reuses dimensions (memory linear in T, not exponential).
    """
    run = current_run()
    for index in pyro.markov(iterable, history=history, keep=keep):
        if run is not None:
            run.markov_indices.append(index)
        try:
            yield index
        finally:
            if run is not None:
                run.markov_indices.pop()


def module(nn_module: torch.nn.Module, *, name: str | None = None, update_module_params: bool = True):
    """Register a torch module's parameters (an encoder, a decoder) with Pyro: ``lvm.module(encoder)``.

    The module's weights are taken from the parameter store on every call (``update_module_params=True``), so a
    result queried after another fit of the same module still uses its own weights.
    """
    resolved = resolve("module", name)
    run = current_run()
    if run is not None and resolved.name not in run.sites:
        run.sites[resolved.name] = SiteRecord(resolved.name, "module", resolved.location)
    if current_interpreter() is not None:  # a planned step: the fit checked the weights are the store's
        return nn_module
    return pyro.module(resolved.name, nn_module, update_module_params=update_module_params)


def deterministic(value: torch.Tensor, *, name: str | None = None, event_dim: int | None = None):
    """Record a derived quantity in the trace: ``mean = lvm.deterministic(a + b)``."""
    resolved = resolve("deterministic", name)
    site = _site_name(resolved, name)
    _record(site, "deterministic", resolved)
    if current_interpreter() is not None:  # no density: nothing of the loss
        return value
    return pyro.deterministic(site, value, event_dim=event_dim)
