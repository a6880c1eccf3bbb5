"""The primitives used inside a model or guide: thin wrappers over Pyro's that name sites from the code.

Each primitive resolves its site name (``name=`` if given, else the assignment target found by
:mod:`ppl_lvm.naming`), records the site in the current run, and calls the Pyro primitive. Errors raised by Pyro
for a site are re-raised with the site name and the user's source line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from .errors import ModelCheckError, ModelDefinitionError, PplLvmError
from .interpreter import current_interpreter
from .naming import ResolvedName, resolve
from .runtime import Run, SiteRecord, current_fit, current_run, selected_steps
from .site_checks import as_tensor, check_observation, explain

__all__ = ["latent", "observe", "param", "plate", "markov", "module", "deterministic"]


def _site_name(resolved: ResolvedName, run: Run) -> str:
    """The site name of a call inside ``lvm.markov`` loops: the call's name with the steps appended."""
    return resolved.name + "".join(f"_{i}" for i in run.markov_indices)


def _new_record(site: str, kind: str, resolved: ResolvedName, argument: str | None = None) -> SiteRecord:
    """A site's record; kept on ``resolved`` when the site has the call's own name (no step appended), so that the
    next run of the same call reuses it."""
    record = SiteRecord(site, kind, resolved.location, argument)
    if site is resolved.name:
        resolved.records[kind] = record
    return record


def _duplicate(name: str, previous: SiteRecord, resolved: ResolvedName) -> ModelDefinitionError:
    return ModelDefinitionError(
        f"two sites are named '{name}' (the first at {previous.location}). Site names must be unique "
        "within one run: rename one, pass name='...', or for a loop over time use lvm.markov(...), "
        "which appends the step to the name.",
        resolved.location,
    )


def _register(run: Run, resolved: ResolvedName, explicit: str | None, kind: str, argument: str | None = None) -> str:
    """Name a sampled, observed or deterministic site within ``run`` (the steps of ``lvm.markov`` loops appended to
    a name found in the code), refuse a name the run already has, and record the site: the call's kept record when
    the site has the call's own name, else a new one. Returns the site's name."""
    site = resolved.name
    if run.markov_indices and explicit is None:
        site = _site_name(resolved, run)
    sites = run.sites
    if site in sites:
        raise _duplicate(site, sites[site], resolved)
    record = resolved.records.get(kind) if site is resolved.name else None
    sites[site] = record if record is not None else _new_record(site, kind, resolved, argument)
    return site


# The primitives below run at every statement of every step of a fit: the call's name and site record come from
# per-call caches (naming.resolve, ResolvedName.records), and an observed floating-point tensor outside the
# prototype run needs no check.


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
    run = current_run()
    site = resolved.name
    value = obs
    argument = None
    if value is None and resolved.is_argument and resolved.frame_locals_value is not None:
        value = resolved.frame_locals_value
        argument = site
    if run is not None:
        site = _register(run, resolved, name, "latent" if value is None else "observed", argument)
    return _emit(site, fn, value, infer, resolved, run)


def observe(fn: dist.Distribution, value: Any, *, name: str | None = None) -> torch.Tensor:
    """Condition on data: ``lvm.observe(dist.Normal(mu, 1.), x)`` creates the observed site ``"x"``.

    The site is named by the assignment target, else by ``value`` when it is a plain variable name. A ``value``
    of ``None`` samples the site instead (simulation).
    """
    resolved = resolve("observe", name)
    run = current_run()
    site = resolved.name
    if run is not None:
        site = _register(run, resolved, name, "latent" if value is None else "observed",
                         resolved.call.value_name if resolved.call is not None else None)
    return _emit(site, fn, value, None, resolved, run)


def _emit(site: str, fn: Any, value: Any, infer: Any, resolved: Any, run: Any) -> torch.Tensor:
    """The site itself, once named and recorded: the observed value checked (a floating-point tensor outside the
    prototype run goes as it is), then Pyro's ``sample`` or, in a planned step, the interpreter's
    (:mod:`ppl_lvm.interpreter`); an error in the distribution is re-raised with the site and its source line."""
    if value is not None and not (isinstance(value, torch.Tensor) and value.is_floating_point()
                                  and (run is None or not run.preflight)):
        value = check_observation(site, fn, as_tensor(value, site, resolved), resolved)
    interp = current_interpreter()
    try:
        if interp is not None:
            return interp.sample(site, fn, value, infer)
        return pyro.sample(site, fn, obs=value, infer=infer)
    except (ValueError, RuntimeError, IndexError) as exc:
        if isinstance(exc, PplLvmError):
            raise
        raise ModelCheckError(explain(exc), site=site, location=resolved.location) from exc


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
        run.sites[resolved.name] = resolved.records.get("param") or _new_record(resolved.name, "param", resolved)
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
    if fit is not None and fit.rows is not None and subsample_size is None and size in (fit.rows[0], len(fit.rows[1])):
        full, indices = fit.rows  # the prototype run of many rows: the data plate on its first rows, full size kept
        fit.sliced_plates.append(name)
        return pyro.plate(name, full, subsample=indices, dim=dim)
    if interp is not None:
        return interp.plate(name, size, None, subsample_size, dim)
    return pyro.plate(name, size, subsample_size=subsample_size, dim=dim)


def markov(iterable: Iterable[int], history: int = 1, keep: bool = False) -> Iterator[int]:
    """Iterate over time steps of a Markov chain: ``for t in lvm.markov(range(T)): z = lvm.latent(...)``.

    Sites named automatically inside the loop get the step appended (``z_0``, ``z_1``, ...), and the loop is a
    :func:`pyro.markov` context, so enumeration reuses dimensions (memory linear in T, not exponential).

    A model's prototype run (``inspect``, and the set-up of ``method="em"``) runs a loop of more than 11 steps on its
    first 3 and 8 spread up to the last, and lists the other steps' sites from them when the steps that ran agree
    (same sites, distributions, shapes and source lines; observations read as ``x[:, t]`` of an argument); when they
    differ it runs every step. A step that differs from the others only where none of those 11 runs (``if t == 517``)
    is not seen by that run: write such a step outside the loop (see :mod:`ppl_lvm.chains`).
    """
    run = current_run()
    iterable, loop = selected_steps(iterable, run)
    interp = current_interpreter()
    if interp is None or interp.role != "enumerated":  # an enumerated run replays values whose dims are allotted
        iterable = pyro.markov(iterable, history=history, keep=keep)
    for position, index in enumerate(iterable):
        if run is not None:
            run.markov_indices.append(index)
        before = len(run.sites) if loop is not None else 0
        try:
            yield index
        finally:
            if run is not None:
                run.markov_indices.pop()
            if loop is not None:
                loop.record(position, run.sites, before)
    if loop is not None:
        loop.complete = True


def module(nn_module: torch.nn.Module, *, name: str | None = None, update_module_params: bool = True):
    """Register a torch module's parameters (an encoder, a decoder) with Pyro: ``lvm.module(encoder)``.

    The module's weights are taken from the parameter store on every call (``update_module_params=True``), so a
    result queried after another fit of the same module still uses its own weights.
    """
    resolved = resolve("module", name)
    run = current_run()
    if run is not None and resolved.name not in run.sites:
        run.sites[resolved.name] = resolved.records.get("module") or _new_record(resolved.name, "module", resolved)
    if current_interpreter() is not None:  # a planned step: the fit checked the weights are the store's
        return nn_module
    return pyro.module(resolved.name, nn_module, update_module_params=update_module_params)


def deterministic(value: torch.Tensor, *, name: str | None = None, event_dim: int | None = None):
    """Record a derived quantity in the trace: ``mean = lvm.deterministic(a + b)``."""
    resolved = resolve("deterministic", name)
    run = current_run()
    site = resolved.name if run is None else _register(run, resolved, name, "deterministic")
    if current_interpreter() is not None:  # no density: nothing of the loss
        return value
    return pyro.deterministic(site, value, event_dim=event_dim)
