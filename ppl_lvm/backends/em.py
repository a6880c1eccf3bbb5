"""``method="em"``: exact-enumeration expectation-maximisation.

Every latent must be discrete with finite support; it is summed out exactly. When the model is a finite mixture of
a recognised emission family (see :mod:`ppl_lvm.em.recognise`) the E- and M-steps run in the closed-form kernels
of :mod:`ppl_lvm.em` (scikit-learn's numbers, faster); any other enumerable model runs the generic route of
:mod:`ppl_lvm.em.generic`: an exact E-step by contracting the enumerated trace and a numerical M-step that is
accepted only when it raises the expected complete-data log-likelihood (generalised EM), so the log-likelihood
never decreases either way.

Both routes fit through the one restart loop, :func:`~ppl_lvm.backends.restarts.run_restarts`: each restart
returns its own :class:`~ppl_lvm.outcome.EMOutcome` (all kept in ``restarts``), the one with the highest exact
log-likelihood is returned. How each route starts is said in :mod:`ppl_lvm.em.routes`.
"""

from __future__ import annotations

import dataclasses
import sys
from contextlib import nullcontext
from typing import Any

import pyro
import torch

from ..collective import checked, collective, set_up
from ..em.accumulate import ModelChunks, Reducer, Source
from ..em.generic import check_enumeration_size
from ..em.hmm import chain_source
from ..em.queries import recognise
from ..em.routes import closed_form_fit, create_params, em_outcome, generic_fit
from ..em.rows import keeps_rows, kernel_family
from ..em.stream import memory_chunks
from ..errors import DataError, UnsupportedModelError
from ..handlers import enumerating
from ..outcome import EMOutcome
from ..runtime import clone_param_state, select_steps
from .base import Backend, Problem
from .em_checks import check_enumerable, check_kept_rows, check_streams
from .em_options import EMOptions
from .restarts import run_restarts

__all__ = ["EM", "EMOptions"]

def _progress_bar(enabled: bool | None, total: int, desc: str):
    show = enabled if enabled is not None else sys.stderr.isatty()
    if not show:
        return None
    from tqdm.auto import tqdm  # lazy: only a shown progress bar needs it (tqdm.auto may import ipywidgets)

    return tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)


def _write_init_values(store: Any, values: dict) -> None:
    unknown = sorted(set(values) - set(store.keys()))
    if unknown:
        raise ValueError(f"init_params has unknown parameter(s) {unknown}; the model's are {sorted(store.keys())}")
    for name, value in values.items():
        # a copy: the store makes its tensors trainable leaves, the caller's must stay untouched
        store[name] = torch.as_tensor(value, dtype=store[name].dtype).detach().clone()


def _params_in_default_dtype(store: Any) -> None:
    """float32 data kept for the float32 kernels may have made float32 parameters (initial values read from the
    data): they are stored in torch's default dtype, as they are when the data are converted to it."""
    default = torch.get_default_dtype()
    state = store.get_state()
    params = {name: value.detach().to(default) if value.dtype == torch.float32 else value
              for name, value in state["params"].items()}
    store.set_state(clone_param_state({"params": params, "constraints": state["constraints"]}))


def _options_signature(opts: EMOptions) -> dict[str, str]:
    """The options every rank of a data-parallel fit must share: all but the seed (rank 0's starts are used), the
    progress bar and the callbacks themselves (their number is kept), and ``init_params`` values (rank 0's)."""
    out = {}
    for name in opts.names():
        value = getattr(opts, name)
        if name in ("seed", "progress"):
            continue
        if name == "callbacks":
            value = len(value)
        elif name == "init_params" and isinstance(value, dict):
            value = f"dict of {sorted(value)}"
        out[name] = repr(value)
    return out


class EMBackend(Backend):
    name = "em"
    options_class = EMOptions
    accepts_chunks = True  # a recognised mixture's or chain's data may be lvm.chunks (read chunk by chunk)

    def keeps_float32(self, loop: EMOptions) -> bool:
        """float32 data stay float32 for the float32 kernels (``dtype="float32"``): no float64 copy of them."""
        return loop.kernel_dtype == torch.float32

    def fit(self, problem: Problem) -> EMOutcome:
        """Recognise the model's route, then run ``n_init`` restarts of it through ``run_restarts``.

        With ``distributed=True`` the set-up, up to each restart's first iteration, runs inside
        :func:`~ppl_lvm.collective.set_up`: a rank that fails in it is named by the others, which raise too.
        """
        opts, _ = self.options_of(problem)
        with set_up("setting up the EM fit", active=opts.distributed):
            return self._fit(problem, opts)

    def _fit(self, problem: Problem, opts: EMOptions) -> EMOutcome:
        structure = problem.structure
        check_enumerable(structure)
        kwargs = dict(problem.data.kwargs)
        start = problem.init_state if problem.init_state is not None else {"params": {}, "constraints": {}}
        with torch.random.fork_rng(devices=[]), pyro.get_param_store().scope(start):
            pyro.set_rng_seed(int(opts.seed))
            store = pyro.get_param_store()
            with select_steps():  # a long lvm.markov chain: its first steps create its parameters
                create_params(problem.model, kwargs, structure)
            if problem.structure.model_param_names(store.keys()) != problem.structure.model_param_names():
                create_params(problem.model, kwargs, structure)  # a parameter made at a later step: run them all
            if self.keeps_float32(opts):
                _params_in_default_dtype(store)
            if isinstance(opts.init_params, dict):
                _write_init_values(store, opts.init_params)
            initial = clone_param_state(store.get_state())
            pattern = recognise(problem.model, kwargs, structure)
            bar = None

            def callback(i: int, ll: float) -> bool:
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loglik=f"{ll:.6g}", refresh=False)
                if not (opts.distributed and opts.callbacks):
                    return any(bool(cb(i, ll)) for cb in opts.callbacks)
                error, stop = None, False
                try:
                    stop = any(bool(cb(i, ll)) for cb in opts.callbacks)
                except Exception as exc:  # noqa: BLE001 - announced to the other ranks, then re-raised
                    error = exc
                # a stop asked on one rank stops every rank; a callback that raised on one rank raises on all
                return checked(error, f"running the callbacks of iteration {i}", float(stop)).high > 0

            route = "generic" if pattern is None else type(pattern).__name__  # recognised on each rank's data
            Reducer(opts.distributed).agree({"route": route, **_options_signature(opts)}, "the EM route and options")
            check_streams(problem, pattern)
            check_kept_rows(problem, opts.keep_responsibilities)
            if pattern is not None:
                options, run = self._closed_form(pattern, kwargs, opts, initial, callback, problem.streams)
            else:
                options, run = self._generic(problem, kwargs, opts, initial, callback)
            bar = _progress_bar(opts.progress, opts.max_iter * opts.n_init, "em" if pattern else "em (generic)")

            def fit_once(restart: int, seed: int) -> EMOutcome:
                return em_outcome(problem, options, seed, run(restart, seed), pattern)

            try:
                return run_restarts(fit_once, n_init=opts.n_init, seed=int(opts.seed), name="EM",
                                    score=lambda o: o.log_likelihood)
            finally:
                if bar is not None:
                    bar.close()

    # ------------------------------------------------------------------ the two routes
    def _closed_form(self, pattern: Any, kwargs: dict, opts: EMOptions, initial: dict, callback: Any,
                     streams: dict):
        """Recognised mixtures (``fit_mixture``) and chains (Baum-Welch)."""
        chain = hasattr(pattern, "trans")
        if chain and opts.online:
            raise UnsupportedModelError("online=True fits recognised mixtures; this model is a hidden Markov chain: "
                                        "drop online=True (batch EM)")
        if chain and opts.keep_responsibilities is False:
            raise UnsupportedModelError("keep_responsibilities=False recomputes the responsibilities of a recognised "
                                        "mixture; this model is a hidden Markov chain, whose result holds its state "
                                        "posteriors: drop keep_responsibilities")
        if opts.kernel_dtype != torch.float64:
            if chain:
                raise UnsupportedModelError(f"dtype={opts.dtype!r} sets the kernels of a recognised mixture; this "
                                            "model is a hidden Markov chain, fitted in float64: drop dtype")
            # the fit's kernels; the result's queries keep the pattern's
            pattern = dataclasses.replace(pattern, family=kernel_family(pattern.family, opts.kernel_dtype))
        x = pattern.data if chain else pattern.matrix(kwargs)
        # a mixture's rows in memory: held by the result, or recomputed on access in the chunks read here
        keep_rows = chain or bool(streams) or keeps_rows(opts.keep_responsibilities, x.shape[0],
                                                          pattern.n_components)
        reducer = Reducer(opts.distributed)
        if chain and streams:  # one stream of whole sequences, in hmmlearn's layout (rows of every step)
            stream = next(iter(streams.values()))
            if not pattern.latents:  # one DiscreteHMM site: every sequence has the first chunk's steps
                stream = stream.as_sequences(pattern.n_steps)
            source = chain_source(pattern.family, stream.transformed(pattern.step_rows), reducer=reducer)
        elif chain:
            source = chain_source(pattern.family, x, [int(v) for v in pattern.lengths], reducer=reducer)
        elif streams:
            source = Source(pattern.family, streams[pattern.data_argument].transformed(pattern.data_matrix),
                            reducer=reducer)
        else:  # a large tensor is read in chunks (the temporaries of one chunk at a time; float32: summed in float64)
            source = Source(pattern.family, memory_chunks(x, float32=opts.kernel_dtype == torch.float32,
                                                          on_demand=not keep_rows), reducer=reducer)
        n, k = source.n, pattern.n_components
        if n < k:
            what = ("observations", "hidden states") if chain else ("data points", "mixture components")
            raise DataError(f"{n} {what[0]} are fewer than the {k} {what[1]}; reduce K or add data")
        options = opts.for_route("closed form", pattern.family.default_reg,
                                 getattr(pattern.family, "default_init", None))
        return options, closed_form_fit(pattern, source, initial, options, callback, keep_rows)

    def _generic(self, problem: Problem, kwargs: dict, opts: EMOptions, initial: dict, callback: Any):
        """Any other enumerable model: exact E-step by contraction, numerical (generalised) M-step."""
        reducer = Reducer(opts.distributed)  # no process group: that error first
        options = opts.for_route("generic")
        structure = problem.structure
        model = enumerating(problem.model, [s.name for s in structure.discrete_latents])
        # once, not per restart; on the rank's own data, so a refusal on one rank is announced to all
        with collective("checking the size of the enumeration") if reducer.distributed else nullcontext():
            check_enumeration_size(model, kwargs, structure.max_plate_nesting, opts.max_bytes)
        data = ModelChunks(kwargs, problem.streams, reducer) if problem.streams or reducer.distributed else None
        return options, generic_fit(model, kwargs, structure, initial, options, callback, data, problem.model)


EM = EMBackend()
