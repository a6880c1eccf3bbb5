"""``@lvm.model`` and ``@lvm.guide``: a function compiled to a Pyro model that knows its own structure.

A :class:`Model` is still an ordinary Pyro model (a callable), so ``poutine.trace``, ``Predictive`` and Pyro's own
``SVI`` accept it. Decorating scans the source once for site names; :meth:`Model.inspect` runs the model once (a
prototype run, as Pyro's autoguides do) to record every site's kind, support, shapes, plates and source line.
"""

from __future__ import annotations

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
from .errors import SourceLocation
from .naming import source_index
from .runtime import SiteRecord, run_scope, select_steps
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
        with run_scope(self) as run:
            try:
                return self.fn(*args, **kwargs)
            finally:
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


def trace_structure(compiled: _Compiled, args: tuple, kwargs: dict) -> ModelStructure:
    """Run ``compiled`` once under a trace and summarise its sites (see :meth:`Model.inspect`).

    A long ``lvm.markov`` loop runs a few of its steps when they show that the others repeat them
    (:mod:`ppl_lvm.chains`); otherwise, and for every other model, the run is of the whole model.
    """
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
        except Exception:  # with a chain shortened, a run of every step below meets the error where it first occurs
            if not selection.loops:
                raise
    if extended is not None:  # the warnings of the run that stands
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if extended is not None:
        structure, compiled.site_records = extended
        return structure
    with store.scope(), torch.random.fork_rng(devices=[]):
        with run_scope(compiled, preflight=True) as run:
            trace = poutine.trace(compiled.fn).get_trace(*args, **kwargs)
        compiled.site_records = run.sites
        return structure_from_trace(trace, run.sites)


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

