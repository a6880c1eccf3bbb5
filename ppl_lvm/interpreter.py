"""A light interpreter of the DSL's statements: one run of a model or a guide without Pyro's effect stack.

The primitives of :mod:`ppl_lvm.primitives` (and the amortised guides) hand their statement to the active
:class:`Interpreter` instead of Pyro when one is set (:func:`interpreting`). It does what Pyro's handlers do for the
statements a variational step needs, and nothing else: plates allocate their dim as Pyro's dim allocator does, give
their indices (the fit's minibatch rows) and scale the sites inside them by ``full size / batch size``; a sample
statement broadcasts its distribution over the active plates as ``BroadcastMessenger`` does, draws (``rsample``, in
a guide) or replays the guide's value (in a model), and records the site; ``param`` reads the parameter store;
``module`` returns the module, whose weights the fit already holds in the store (the fit checks it). The fit's KL weight ``beta``
scales continuous latent sites, as :class:`ppl_lvm.fit.KLWeight` does.

Within :class:`unchecked_distributions` (a planned step) the Pyro distributions built in this thread skip their
argument checks; torch's process-wide default is not touched.

Anything the interpreter cannot run exactly as Pyro would raises :class:`NotPlannable` with the reason (a Pyro
handler around a statement, a plate used as an iterator or drawing its own subsample, a sample statement without
``rsample`` in a guide, a model latent the guide does not draw); the caller then uses Pyro for the whole fit.

The generic EM route's M-step runs a model in the role ``"enumerated"``: its discrete latents replay the values
Pyro's parallel enumeration gave them (the support laid along each latent's enumeration dim), so the sites'
log-densities are those of Pyro's enumerated trace (:mod:`ppl_lvm.em.generic.interpreted`); an ``lvm.markov`` loop
then runs as a plain loop (the replayed values already carry the dims Pyro's markov context allotted), and Pyro's
own sample statements the model calls (``pyro.factor`` for a log-prior) reach the interpreter through
:meth:`Interpreter.pyro_statements`, the only handler then allowed on Pyro's stack.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro.distributions.distribution import COERCIONS
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK

from .runtime import current_fit

__all__ = ["Frame", "Interpreter", "NotPlannable", "RunSite", "current_interpreter", "interpreting",
           "unchecked_distributions"]


class NotPlannable(Exception):
    """A statement the interpreter cannot run as Pyro would; its message is the reason (recorded in a result)."""


@dataclass
class Frame:
    """An active plate: its name, dim, batch size, full size (``size`` unless subsampled)."""

    name: str
    dim: int
    size: int
    full_size: int


@dataclass
class RunSite:
    """One sample statement as the interpreter ran it."""

    name: str
    fn: Any
    value: torch.Tensor
    observed: bool
    scale: float
    mask: Any
    frames: tuple[Frame, ...]


_local = threading.local()


def current_interpreter() -> Interpreter | None:
    """The interpreter the primitives hand their statements to, or ``None`` (then they call Pyro)."""
    return getattr(_local, "interpreter", None)


class interpreting:
    """``with interpreting(interp):`` sets the current interpreter (a class, not a generator: it runs every step)."""

    __slots__ = ("interp", "previous")

    def __init__(self, interp: Interpreter):
        self.interp = interp

    def __enter__(self) -> Interpreter:
        self.previous = getattr(_local, "interpreter", None)
        _local.interpreter = self.interp
        return self.interp

    def __exit__(self, *exc: Any) -> None:
        _local.interpreter = self.previous


class unchecked_distributions:
    """``with unchecked_distributions():`` the Pyro distributions built in this thread skip their argument and
    sample checks (they are built with ``validate_args=False``, unless the call passes ``validate_args`` itself);
    torch's process-wide default (``Distribution.set_default_validate_args``) is left as it is, so other threads
    and distributions of other libraries are checked as usual."""

    __slots__ = ("previous",)

    def __enter__(self) -> None:
        self.previous = getattr(_local, "unchecked", False)
        _local.unchecked = True

    def __exit__(self, *exc: Any) -> None:
        _local.unchecked = self.previous


#: distribution class -> whether its constructor takes ``validate_args``
_TAKES_VALIDATE_ARGS: dict[type, bool] = {}


def _unchecked(cls: type, args: tuple, kwargs: dict) -> Any:
    """A coercion of Pyro's ``DistributionMeta``: the distribution built unchecked within
    :class:`unchecked_distributions`, else ``None`` (built as usual)."""
    if not getattr(_local, "unchecked", False) or "validate_args" in kwargs or _PYRO_STACK:
        return None
    takes = _TAKES_VALIDATE_ARGS.get(cls)
    if takes is None:
        signature = getattr(cls, "__signature__", None) or inspect.signature(cls)
        takes = _TAKES_VALIDATE_ARGS[cls] = "validate_args" in signature.parameters
    if not takes:
        return None
    kwargs["validate_args"] = False
    return type.__call__(cls, *args, **kwargs)  # what DistributionMeta.__call__ does after its coercions


COERCIONS.append(_unchecked)  # once, at import; Pyro's CollapseMessenger pushes and pops its own after it


class _Plate:
    __slots__ = ("interp", "frame", "indices")

    def __init__(self, interp: Interpreter, frame: Frame, indices: torch.Tensor | None):
        self.interp, self.frame, self.indices = interp, frame, indices

    def __enter__(self) -> torch.Tensor:
        frames = self.interp.frames
        used = {f.dim for f in frames}
        if self.frame.dim is None:
            dim = -1
            while dim in used:
                dim -= 1
            self.frame.dim = dim
        elif self.frame.dim in used or self.frame.dim >= 0:
            raise NotPlannable(f"plate '{self.frame.name}' asks for dim {self.frame.dim}, which is taken")
        frames.append(self.frame)
        self.interp._stack = None
        if self.indices is None:
            self.indices = torch.arange(self.frame.size)
        return self.indices

    def __exit__(self, *exc: Any) -> None:
        self.interp.frames.remove(self.frame)
        self.interp._stack = None

    def __iter__(self):
        raise NotPlannable(f"plate '{self.frame.name}' is iterated over (a sequential plate)")


class Interpreter:
    """Runs one call of a model or a guide (``role``), recording its sample sites in :attr:`sites`.

    Parameters
    ----------
    role : {"guide", "model", "enumerated"}
        A guide draws its latent sites; a model replays the guide's values (``replay``); an enumerated model
        replays its latents' enumerated values (``replay``; sites marked for enumeration are accepted).
    replay : dict, optional
        Site name -> the guide's value (the model's run), or the latent's enumerated value.
    outer : list of Frame, optional
        Plates around the whole run (the vectorised particles of ``iwae``).
    """

    def __init__(self, role: str, replay: dict[str, torch.Tensor] | None = None, outer: tuple[Frame, ...] = ()):
        self.role = role
        self.replay = replay or {}
        self.frames: list[Frame] = list(outer)
        self._stack: tuple[tuple[Frame, ...], float] | None = None
        self.sites: list[RunSite] = []
        #: the names of the parameters the run read (``lvm.param``), in order
        self.params: list[str] = []
        fit = current_fit()
        self.beta = 1.0 if fit is None else fit.beta
        self.direct: _PyroStatements | None = None

    def pyro_statements(self) -> _PyroStatements:
        """``with interp.pyro_statements():`` hands Pyro's sample statements (``pyro.sample``, ``pyro.factor``)
        called inside the run to this interpreter, as the DSL's are."""
        self.direct = _PyroStatements(self)
        return self.direct

    def _under_pyro(self) -> str | None:
        """The Pyro handler the statement runs under, if any but :meth:`pyro_statements`'s."""
        if not _PYRO_STACK or (len(_PYRO_STACK) == 1 and _PYRO_STACK[0] is self.direct):
            return None
        return type(_PYRO_STACK[-1]).__name__

    def plate(self, name: str, size: Any, subsample: torch.Tensor | None, subsample_size: int | None,
              dim: int | None) -> _Plate:
        if isinstance(size, torch.Tensor):
            size = int(size)
        if subsample is not None:
            return _Plate(self, Frame(name, dim, len(subsample), size), subsample)
        if size is None or (subsample_size is not None and subsample_size < size):
            raise NotPlannable(f"plate '{name}' draws its own subsample (subsample_size) or has no size")
        return _Plate(self, Frame(name, dim, size, size), None)

    def sample(self, name: str, fn: Any, obs: Any, infer: dict | None) -> torch.Tensor:
        handler = self._under_pyro()
        if handler is not None:
            raise NotPlannable(f"site '{name}' runs under a Pyro handler ({handler})")
        if infer and infer.get("enumerate") and self.role != "enumerated":
            raise NotPlannable(f"site '{name}' is enumerated")
        frames, scale = self._stack if self._stack is not None else self._stack_of_frames()
        if frames:
            fn = self._broadcast(name, fn, frames)
        mask = None
        observed = obs is not None
        if observed:
            value = obs
        else:
            if self.beta != 1.0:
                support = getattr(fn, "support", None)
                if not (support is not None and support.is_discrete):
                    if self.beta == 0.0:
                        mask = False
                    else:
                        scale = scale * self.beta
            if self.role == "guide":
                if not fn.has_rsample:
                    raise NotPlannable(f"the guide samples site '{name}' without rsample (a score-function site)")
                value = fn.rsample()
            else:
                value = self.replay.get(name)
                if value is None:
                    drawn = "has no enumerated value" if self.role == "enumerated" else "is not drawn by the guide"
                    raise NotPlannable(f"the model's latent site '{name}' {drawn}")
        self.sites.append(RunSite(name, fn, value, observed, scale, mask, frames))
        return value

    def _stack_of_frames(self) -> tuple[tuple[Frame, ...], float]:
        """The active plates, innermost first (as Pyro's ``cond_indep_stack``), and the scale of a site inside
        them; kept until a plate is entered or left."""
        frames = tuple(reversed(self.frames))
        scale = 1.0
        for f in frames:
            scale = scale * f.full_size / f.size
        self._stack = (frames, scale)
        return self._stack

    @staticmethod
    def _broadcast(name: str, fn: Any, frames: tuple[Frame, ...]) -> Any:
        """``fn`` expanded over the plates, as Pyro's ``BroadcastMessenger`` does."""
        actual = fn.batch_shape
        target: list[int | None] = [None if size == 1 else size for size in actual]
        for f in frames:
            if len(target) < -f.dim:
                target = [None] * (-f.dim - len(target)) + target
            if target[f.dim] is not None and target[f.dim] != f.size:
                raise ValueError(f"Shape mismatch inside plate('{f.name}') at site {name} dim {f.dim}, "
                                 f"{f.size} vs {target[f.dim]}")
            target[f.dim] = f.size
        n = len(target)
        shape = tuple(t if t is not None else (actual[i - n] if len(actual) >= n - i else 1)
                      for i, t in enumerate(target))
        return fn if shape == tuple(actual) else fn.expand(shape)

    def param(self, name: str, init: Any, constraint: Any, event_dim: int | None) -> torch.Tensor:
        self.params.append(name)
        handler = self._under_pyro()
        if handler is not None:
            raise NotPlannable(f"parameter '{name}' is read under a Pyro handler ({handler})")
        return pyro.get_param_store().get_param(name, init, constraint=constraint, event_dim=event_dim)


class _PyroStatements(Messenger):
    """Pyro's own sample statements in an interpreted run, handed to the interpreter (its value, its record)."""

    def __init__(self, interp: Interpreter):
        super().__init__()
        self.interp = interp

    def _pyro_sample(self, msg: dict) -> None:
        obs = msg["value"] if msg["is_observed"] else None
        msg["value"] = self.interp.sample(msg["name"], msg["fn"], obs, msg["infer"])
        msg["done"] = msg["stop"] = True
