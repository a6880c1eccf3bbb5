"""``@lvm.model`` and ``@lvm.guide``: a function compiled to a Pyro model that knows its own structure.

A :class:`Model` is still an ordinary Pyro model (a callable), so ``poutine.trace``, ``Predictive`` and Pyro's own
``SVI`` accept it. Decorating scans the source once for site names; :meth:`Model.inspect` runs the model once (a
prototype run, as Pyro's autoguides do) to record every site's kind, support, shapes, plates and source line.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect as _inspect
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch

from .chains import extend_chains
from .data import CHECK_ROWS, row_arguments
from .errors import SourceLocation
from .naming import source_index
from .runtime import FitContext, Run, SiteRecord, fit_scope, run_scope, run_stack, select_steps
from .site_checks import check_support
from .structure import ModelStructure, PlateInfo, SiteInfo, structure_from_trace

__all__ = ["Model", "Guide", "model", "guide", "ModelStructure", "SiteInfo", "PlateInfo"]


def _by_reference(module: str, qualname: str) -> Any:
    """The object named ``qualname`` in ``module`` (how a pickled model or guide is found again)."""
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


class _Compiled:
    """Shared behaviour of models and guides: source scan at decoration, a run scope per call."""

    def __init__(self, fn: Callable):
        if not callable(fn):
            raise TypeError(f"expected a function, got {type(fn).__name__}")
        functools.update_wrapper(self, fn)
        self.fn = fn
        code = getattr(fn, "__code__", None)
        if code is None:
            raise TypeError(f"{fn!r} is not a Python function; decorate a `def` function")
        self._index = source_index(code)
        self.signature = _inspect.signature(fn)
        #: site name -> record of the most recent run (kind and source line)
        self.site_records: dict[str, SiteRecord] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run = Run(self)  # the run scope, written out: this runs at every call of a model or a guide
        stack = run_stack()
        stack.append(run)
        try:
            return self.fn(*args, **kwargs)
        finally:
            stack.pop()
            self.site_records = run.sites

    @property
    def argument_names(self) -> list[str]:
        return list(self.signature.parameters)

    def location_of(self, site: str) -> SourceLocation | None:
        record = self.site_records.get(site)
        return record.location if record is not None else None

    def __reduce__(self) -> tuple:
        # pickled by reference, as Python pickles functions: the decorated object under its module and name
        module, qualname = self.__module__, self.__qualname__
        try:
            found = _by_reference(module, qualname)
        except (ImportError, AttributeError):
            found = None
        if found is not self:
            raise pickle.PicklingError(
                f"cannot pickle {type(self).__name__.lower()} {qualname}(): it is not importable as {module}.{qualname} "
                "(defined inside a function, or the name now holds another object); define it at module level"
            )
        return _by_reference, (module, qualname)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.__name__} at {self._index.filename}:{self.fn.__code__.co_firstlineno}>"


class Model(_Compiled):
    """A generative model declared with :func:`model`.

    Examples
    --------
    >>> import torch, ppl_lvm as lvm
    >>> from ppl_lvm import dist
    >>> @lvm.model
    ... def normal_mean(x=None, n=10):
    ...     mu = lvm.latent(dist.Normal(0.0, 10.0), name="mu")
    ...     with lvm.plate("data", n):
    ...         return lvm.latent(dist.Normal(mu, 1.0), name="x", obs=x)
    >>> sorted(normal_mean.inspect(torch.zeros(10)).sites)
    ['mu', 'x']
    """

    def __init__(self, fn: Callable):
        super().__init__(fn)
        self.user_guide: Guide | None = None

    def guide(self, fn: Callable) -> Guide:
        """Decorator: declare ``fn`` as this model's guide (``@my_model.guide``)."""
        g = fn if isinstance(fn, Guide) else Guide(fn)
        g.model = self
        self.user_guide = g
        return g

    def inspect(self, *args: Any, **kwargs: Any) -> ModelStructure:
        """Run the model once (a prototype run) and record every site.

        The run leaves no trace: it uses a private parameter store and forks the random number generator.
        Observed shapes are checked strictly on this run, so shape errors name the site and the source line.
        """
        return trace_structure(self, args, kwargs)

    def describe(self, *args: Any, **kwargs: Any) -> str:
        """The table of sites of :meth:`inspect`, as text (also printed)."""
        table = self.inspect(*args, **kwargs).table()
        print(table)
        return table


class Guide(_Compiled):
    """A variational family declared with :func:`guide`; same arguments as its model."""

    def __init__(self, fn: Callable, model: Model | None = None):
        super().__init__(fn)
        self.model = model


def model(fn: Callable) -> Model:
    """Decorator: compile a Python function into a :class:`Model`."""
    return fn if isinstance(fn, Model) else Model(fn)


def guide(target: Model | Callable | None = None) -> Any:
    """Declare a guide: ``@lvm.guide(my_model)`` (for a given model) or ``@lvm.guide`` alone."""
    if isinstance(target, Model):
        return target.guide
    if target is None:
        return Guide
    return Guide(target)


#: rows of the data plate that the prototype run of many rows traces (an odd size, so that a dim of this size
#: outside the data plate is known to come from the slice)
PROTOTYPE_ROWS = 1009


def trace_structure(compiled: _Compiled, args: tuple, kwargs: dict, rows: int | None = None) -> ModelStructure:
    """Run ``compiled`` once under a trace and summarise its sites (see :meth:`Model.inspect`).

    ``rows``: when the data have more than ``8 * rows`` rows (:func:`~ppl_lvm.data.row_arguments`: the tensor
    arguments of the longest first dim), trace only their first ``rows`` rows, the data plate run on them by the
    minibatch machinery (:attr:`~ppl_lvm.runtime.FitContext.rows`: the plate keeps its full size), and record the
    sites inside it at their full size; the observed values' supports are then checked over every row, block by
    block. The slice is kept only when it answers as the whole data would (the sliced arguments are the observed
    data of the one data plate, each site's value is its argument, supports without per-row bounds, no other dim
    of the slice's size); otherwise, and when the sliced run raises, the whole data are traced, so every error
    names its site and source line as a run on all rows does.

    A long ``lvm.markov`` loop runs a few of its steps when they show that the others repeat them
    (:mod:`ppl_lvm.chains`); otherwise the run is of the whole model.
    """
    if rows is not None and not args:
        found = _sliced_structure(compiled, kwargs, int(rows))
        if found is not None:
            return found
    found = _chain_structure(compiled, args, kwargs)
    return found if found is not None else _traced(compiled, args, kwargs)[0]


def _chain_structure(compiled: _Compiled, args: tuple, kwargs: dict) -> ModelStructure | None:
    """The structure from one run with long ``lvm.markov`` loops shortened, or None: run every step then."""
    store = pyro.get_param_store()
    extended = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with store.scope(), torch.random.fork_rng(devices=[]):
                with select_steps() as selection, run_scope(compiled, preflight=True) as run:
                    trace = poutine.trace(compiled.fn).get_trace(*args, **kwargs)
                arguments = compiled.signature.bind_partial(*args, **kwargs).arguments
                extended = (extend_chains(trace, run.sites, selection, arguments) if selection.loops
                            else (structure_from_trace(trace, run.sites), run.sites))
        except Exception:  # with a chain shortened, a run of every step meets the error where it first occurs
            if not selection.loops:
                raise
    if extended is None:
        return None
    for w in caught:  # the warnings of the run that stands
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    structure, compiled.site_records = extended
    return structure


def _traced(compiled: _Compiled, args: tuple, kwargs: dict) -> tuple[ModelStructure, poutine.Trace]:
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=[]):
        with run_scope(compiled, preflight=True) as run:
            trace = poutine.trace(compiled.fn).get_trace(*args, **kwargs)
        compiled.site_records = run.sites
        return structure_from_trace(trace, run.sites), trace


def _sliced_structure(compiled: _Compiled, kwargs: dict, rows: int) -> ModelStructure | None:
    """The structure of ``compiled`` on all the data, from a run on their first ``rows`` rows, or ``None``."""
    n, names = row_arguments(kwargs)
    if n is None or n <= 8 * rows:
        return None
    context = FitContext(rows=(n, torch.arange(rows)))
    sliced = {k: v[:rows] if k in names else v for k, v in kwargs.items()}
    try:
        with fit_scope(context):
            structure, trace = _traced(compiled, (), sliced)
    except Exception:  # noqa: BLE001 - the run on every row raises it again, naming its site and line
        return None
    plate = structure.data_plate
    observed = {s.argument: s for s in structure.observed_sites if s.argument in names}
    if plate is None or set(context.sliced_plates) != {plate} or set(observed) != set(names):
        return None
    plate_dim = structure.plates[plate].dim
    for arg, site in observed.items():
        fn = trace.nodes[site.name]["fn"]
        if site.shape != tuple(sliced[arg].shape) or len(site.shape) - len(site.event_shape) != -plate_dim \
                or _per_row_bounds(getattr(fn, "support", None)):
            return None
    sites = {}
    for name, site in structure.sites.items():
        inside = plate in site.plates
        restored = {}
        for field, shape, event in (("batch_shape", site.batch_shape, 0), ("shape", site.shape, len(site.event_shape))):
            at = len(shape) - event + plate_dim if inside else None
            if any(size == rows and i != at for i, size in enumerate(shape)):
                return None  # a dim of the slice's size that the data plate does not explain
            if at is not None and 0 <= at < len(shape) and shape[at] == rows:
                restored[field] = shape[:at] + (n,) + shape[at + 1 :]
        sites[name] = dataclasses.replace(site, **restored)
    for site in observed.values():  # the whole data's supports, block by block (the slice was checked in the run)
        check_support(site.name, trace.nodes[site.name]["fn"], kwargs[site.argument], site.location, CHECK_ROWS)
    plates = dict(structure.plates)
    plates[plate] = dataclasses.replace(plates[plate], size=n)  # a trace's frame holds the subsample's size
    return ModelStructure(sites, plates, structure.max_plate_nesting)


def _per_row_bounds(support: Any) -> bool:
    """Whether a support has tensor bounds of more than one entry (which the slice's rows alone carry)."""
    while support is not None and hasattr(support, "base_constraint"):
        support = support.base_constraint
    return any(isinstance(v, torch.Tensor) and v.numel() > 1 for v in vars(support).values()) if support else False


def check_model(obj: Any, what: str = "model") -> Model:
    """Accept a :class:`Model`, or wrap a plain function (site names then come from its source too)."""
    if isinstance(obj, Model):
        return obj
    if isinstance(obj, Guide):
        raise TypeError(f"expected a model, got the guide {obj.__name__}(); pass the model it belongs to")
    if callable(obj) and hasattr(obj, "__code__"):
        return Model(obj)
    raise TypeError(
        f"{what} must be a function decorated with @lvm.model (or a plain Python function), "
        f"got {type(obj).__name__}"
    )

