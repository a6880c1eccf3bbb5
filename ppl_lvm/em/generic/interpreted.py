"""The generic M-step's ``Q`` without Pyro's effect stack: the model re-run by the DSL's interpreter.

L-BFGS evaluates ``Q(theta | theta_old) = sum_f sum(marginal_f * log_prob_f(theta))`` several times per M-step.
Evaluated by Pyro, each is a trace of the model with every discrete latent enumerated (``poutine.enum``), its
log-probs computed and packed (:func:`~ppl_lvm.em.generic.factors._enum_trace`). The enumerated values do not
depend on ``theta`` (each latent's support, laid along its enumeration dim), nor does the layout of the packed
factors; only the distributions the model builds from its parameters do. :class:`InterpretedQ` therefore reads,
from one Pyro trace, every latent's enumerated value and every site's map of dims to packed symbols, and
evaluates the factors by running the model through :mod:`ppl_lvm.interpreter` (role ``"enumerated"``: those
values replayed, no handler), computing each site's log-density as ``Trace.compute_log_prob`` does and packing it
as ``Trace.pack_tensors`` does. ``Q`` is then summed by the same code as the traced path's
(:func:`~ppl_lvm.em.generic.mstep.q_of_factors`), so the two agree to the last bit on the models tested.

:class:`FastQ` decides once per fit (:func:`~ppl_lvm.em.generic.fit.fit_generic_em`, so once per restart): at the
first M-step it evaluates ``Q`` and its gradient both ways at the old parameters and keeps the interpreted route
only when the values agree to ``rtol`` and every parameter's gradient too (:meth:`FastQ.start`); otherwise, and
for models the interpreter cannot run (a Pyro handler inside the model such as ``poutine.mask``, a ``pyro.plate``,
a scaled or masked site), every evaluation is a Pyro trace and :attr:`FastQ.reason` says
why. An evaluation whose sites or dims differ from the plan's (the structure changed) raises
:class:`~ppl_lvm.interpreter.NotPlannable` before anything is summed; that evaluation and the rest of the fit are
then traced (:meth:`FastQ.stop`), with equal values, so the fit does not change.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.ops.packed import pack

from ...interpreter import Interpreter, NotPlannable, interpreting

__all__ = ["FastQ", "InterpretedQ"]


class InterpretedQ:
    """The packed factors of ``model`` at the store's parameters, by the interpreter (see the module docstring).

    Parameters
    ----------
    model : callable
        The model as written with the DSL's statements, with no Pyro handler around it.
    trace : pyro.poutine.Trace
        Pyro's enumerated, packed trace of the model (the traced path's), read for the sites, their enumerated
        values and their dims.
    """

    def __init__(self, model: Callable, trace: poutine.Trace):
        self.model = model
        self.names: list[str] = []
        self.values: dict[str, torch.Tensor] = {}
        self.dim_to_symbol: dict[str, dict[int, str]] = {}
        for name, node in trace.nodes.items():
            if node["type"] != "sample":
                continue
            self.names.append(name)
            self.dim_to_symbol[name] = dict(node["infer"]["_dim_to_symbol"])
            if not node["is_observed"]:
                self.values[name] = node["value"]

    def factors(self, kwargs: dict[str, Any], marginals: dict[str, torch.Tensor]
                ) -> tuple[OrderedDict, dict[str, frozenset[str]]]:
        """Site name -> packed log-prob (with ``_pyro_dims``), and site name -> names of the plates around it.

        Raises :class:`~ppl_lvm.interpreter.NotPlannable` when the run's sites, or a factor's dims, differ from
        the trace's and ``marginals``' (the E-step's of the same data).
        """
        interp = Interpreter("enumerated", replay=self.values)
        with interpreting(interp), interp.pyro_statements():
            self.model(**kwargs)
        names = [s.name for s in interp.sites]
        if names != self.names:
            missing = sorted(set(self.names) - set(names))
            raise NotPlannable(
                "the interpreter's run of the model has the sites "
                f"{names} where Pyro's enumerated trace has {self.names}"
                + (f" ({missing} missing)" if missing else "")
            )
        factors: OrderedDict = OrderedDict()
        plates: dict[str, frozenset[str]] = {}
        for site in interp.sites:
            if site.scale != 1.0 or site.mask is not None:
                raise NotPlannable(f"site '{site.name}' has a likelihood scale or mask")
            log_p = site.fn.log_prob(site.value)
            if not isinstance(log_p, torch.Tensor):
                raise NotPlannable(f"site '{site.name}': its log-density is not a tensor ({type(log_p).__name__})")
            try:
                log_p = pack(log_p, self.dim_to_symbol[site.name])
            except ValueError as exc:
                raise NotPlannable(f"site '{site.name}': its log-density has dims Pyro's trace did not: {exc}") from exc
            marg = marginals.get(site.name)
            dims = getattr(marg, "_pyro_dims", None)
            if marg is not None and dims is not None and sorted(dims) != sorted(log_p._pyro_dims):
                raise NotPlannable(f"site '{site.name}': its factor's dims {log_p._pyro_dims!r} differ from the "
                                   f"E-step's {dims!r}")
            factors[site.name] = log_p
            plates[site.name] = frozenset(f.name for f in site.frames)
        return factors, plates


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * scale))


class FastQ:
    """Whether a fit's M-steps evaluate ``Q`` by the interpreter, and the plan they use (module docstring).

    Parameters
    ----------
    model : callable or None
        The model as written with the DSL (no handler around it); ``None``: every evaluation is traced.
    reason : str, optional
        Why the fit cannot use the interpreter, decided before it starts (``fast_path=False``).
    """

    #: how close the interpreted Q and gradients must be to the traced ones, in units of the dtype's epsilon
    EPS_TOLERANCE = 64

    def __init__(self, model: Callable | None, reason: str | None = None):
        self.model = model
        self.plan: InterpretedQ | None = None
        self.reason = reason if reason is not None else (
            None if model is not None else "the model is not one written with the DSL's statements (lvm.model)")
        self.started = False

    @property
    def active(self) -> bool:
        """Evaluations run on the interpreter now."""
        return self.plan is not None

    def stop(self, reason: str) -> None:
        """Leave the interpreter for the rest of the fit."""
        self.plan, self.reason = None, reason

    def start(self, trace: Callable[[], poutine.Trace], traced: Callable, interpreted: Callable,
              leaves: dict[str, torch.Tensor]) -> None:
        """At the first M-step: build the plan from ``trace()`` and keep it if ``interpreted(scale)`` (an
        :data:`~ppl_lvm.em.generic.mstep.Objective`) equals ``traced(scale)`` in value and in the gradient it leaves
        on every tensor of ``leaves``; their ``.grad`` are cleared after."""
        if self.started:
            return
        self.started = True
        if self.model is None or self.reason is not None:
            return
        self.plan = InterpretedQ(self.model, trace())
        named = [(n, p) for n, p in leaves.items() if p.requires_grad]
        tensors = [p for _, p in named]
        try:
            q_traced, g_traced = _value_and_grads(traced, tensors)
            try:
                q_interp, g_interp = _value_and_grads(interpreted, tensors)
            except Exception as exc:  # noqa: BLE001 - the traced Q ran: what failed is the interpreter's run
                return self.stop(f"the interpreter failed: {type(exc).__name__}: {exc}")
        finally:
            for p in tensors:
                p.grad = None
        if not self.active:  # the interpreted objective left the plan (and evaluated by Pyro's trace)
            return
        rtol = self.EPS_TOLERANCE * torch.finfo(q_traced.dtype).eps
        if not _close(q_interp, q_traced, rtol):
            return self.stop(f"its Q {float(q_interp)!r} differed from the traced Q {float(q_traced)!r}")
        for (name, _), a, b in zip(named, g_interp, g_traced, strict=True):
            if (a is None) != (b is None) or (a is not None and not _close(a, b, rtol)):
                return self.stop(f"its gradient of '{name}' differed from the traced Q's")
        return None


def _value_and_grads(objective: Callable, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list]:
    for p in tensors:
        p.grad = None
    with torch.enable_grad():
        q = objective(1.0)
    return q, [None if p.grad is None else p.grad.clone() for p in tensors]
