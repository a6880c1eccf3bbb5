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
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyro
import torch

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
from .restarts import run_restarts

__all__ = ["EM", "EMOptions"]

#: the starts of the closed-form route (recognised mixtures and chains); "params" also serves the generic route
INITS = ("k-means++", "kmeans", "random", "random_from_data", "params")
#: the starts of the generic route (see :mod:`ppl_lvm.em.routes`)
GENERIC_INITS = ("params", "random")
DEFAULT_INIT = {"closed form": "k-means++", "generic": "params"}
#: the values of ``dtype`` (the closed-form E-step kernels' floating-point type)
KERNEL_DTYPES = {"float32": torch.float32, "float64": torch.float64, torch.float32: torch.float32,
                 torch.float64: torch.float64}


@dataclass
class EMOptions:
    """Options of ``method="em"`` (scikit-learn's names).

    Parameters
    ----------
    max_iter : int
        Maximum EM iterations per restart.
    tol : float or None
        Stop, converged, when the mean (per data point) log-likelihood changes by less than ``tol`` (the rule of
        :mod:`ppl_lvm.em.convergence`, the same on every route). ``None``: no early stop, every one of the
        ``max_iter`` iterations runs on every route (only a callback or a failure stops sooner); the fit is then
        reported not converged, without a ``ConvergenceWarning``. ``n_iter == max_iter``; ``len(history)`` is
        ``max_iter`` on the closed-form route (each iteration's E-step, before its M-step) and ``max_iter + 1`` on
        the generic route (the start, then each iteration's result).
    n_init : int
        Independent restarts; all are kept (``result.restarts``), the one with the highest log-likelihood is
        returned.
    init_params : str or dict, optional
        How each restart starts. ``None`` (default): the route's default, ``"k-means++"`` for a recognised mixture
        or chain (``"params"`` for a mixture of regressions), ``"params"`` for the generic route. Recognised models: ``"k-means++"``, ``"kmeans"``,
        ``"random"`` (random responsibilities), ``"random_from_data"``, ``"params"`` (the initial values written
        in the model's ``lvm.param`` calls). The generic route: ``"params"`` (restart 0 from the model's values,
        later restarts from random starts around them) or ``"random"`` (every restart from a random start); the
        data-seeded starts are refused there. Either route: a dict of initial values by parameter name (used like
        ``"params"``). ``result.options`` records the start actually used (``"dict"`` for a dict).
    reg_covar : float, optional
        Added to covariance diagonals (Gaussian emissions, scikit-learn's ``reg_covar``, default 1e-6); for
        discrete emissions the floor of probabilities. Refused on the generic route, which has no covariance to
        regularise.
    seed : int
        Seed of the initialisation (restart r uses ``seed + r``).
    progress : bool, optional
        Progress bar over iterations; default: only when stderr is a terminal.
    callbacks : sequence of callables
        ``callback(iteration, mean_log_likelihood)``; return ``True`` to stop.
    max_bytes : int
        Refuse (before allocating) an enumeration larger than this.
    distributed : bool
        Data-parallel EM over the ranks of the initialised ``torch.distributed`` process group (a script started
        by ``torchrun``): every rank calls ``lvm.infer`` with its own part of the data (its shard; see
        ``lvm.chunks(...).shard``), the expected sufficient statistics of the shards are summed with one
        ``all_reduce`` per iteration, so every rank runs the same iterations and ends with the same parameters,
        equal to those of one process on all the data. The start is rank 0's (a data-seeded start is drawn from
        rank 0's shard). ``log_likelihood``, the history and the BIC are those of all the data; the
        responsibilities and per-point values those of the rank's shard. Closed-form route only (recognised
        mixtures and chains).
    online : bool
        Online EM (Cappé and Moulines 2009; :mod:`ppl_lvm.em.online`) for a recognised mixture: a Robbins-Monro step
        on the sufficient statistics after each minibatch of ``batch_size`` points; ``max_iter`` counts passes
        over the data and ``tol`` compares the mean log-likelihood of successive passes. For data too many to
        pass over often; in one process.
    batch_size : int
        Points per online step (with ``online=True``; default 1000).
    step_exponent : float
        ``alpha`` of the online step sizes ``t^(-alpha)``, in (0.5, 1].
    polyak : int, optional
        Average the online parameters from this step on (Polyak-Ruppert); None: no averaging.
    dtype : {None, "float64", "float32"}
        The floating-point type of the closed-form E-step kernels of a recognised mixture (batch EM, in memory,
        streamed or data-parallel). ``None`` (default) and ``"float64"``: float64 kernels, the data converted
        chunk by chunk. ``"float32"``: log densities and responsibilities in float32 (float32 data stay float32;
        float64 data are converted chunk by chunk), each chunk's sufficient statistics (of at most 65 536 rows)
        summed in float64 and the M-step in float64; the reported responsibilities and per-point
        log-likelihoods are float32, the total log-likelihood a float64 sum. Faster (1.4x per iteration for a
        diagonal GMM on 1e7 rows) and half the memory for the responsibilities, at float32's accuracy (the
        log-likelihood within ~1e-7 relative of the float64 fit's in the tests).
        ``torch.float32`` / ``torch.float64`` are accepted too; ``result.options["dtype"]`` records the one used.
        With ``"float32"``, float32 data stay float32 on the way in (no float64 copy of them, whatever torch's
        default dtype); the model's parameters are in torch's default dtype, as for converted data.
    keep_responsibilities : {"auto", True, False}
        Whether the result of a recognised mixture holds every row's responsibilities and ``log p(x_i)``
        (``result.responsibilities``, ``result.log_likelihood_per_point``). ``False``: it does not; they are
        recomputed on access from the fitted parameters and the data, chunk by chunk (each access holds the (N, K)
        answer and one chunk's temporaries; the same tensor again while you hold it), so the fit's memory is the
        data's and one chunk's. Such a fit reads its data in chunks of 2**16 rows from 2**16 rows on (else from
        2**20), so its numbers are those a held result of the same chunks has, bit for bit; on fewer than 2**20
        rows they differ from a default fit's by rounding (~1e-14 relative). ``"auto"`` (default): held when N x K is at most
        ``ppl_lvm.em.rows.KEEP_ROWS_ENTRIES`` (2**24, 128 MiB of float64), recomputed on access above.
        Hidden Markov chains and the generic route hold theirs (``False`` is refused there); data read chunk by
        chunk (``lvm.chunks``) are never held at once, so no row's values are kept (``True`` is refused there).
    """

    max_iter: int = 100
    tol: float | None = 1e-3
    n_init: int = 1
    init_params: str | dict | None = None
    reg_covar: float | None = None
    seed: int = 0
    progress: bool | None = None
    callbacks: Sequence = ()
    max_bytes: int = 2 * 1024**3
    distributed: bool = False
    online: bool = False
    batch_size: int | None = None
    step_exponent: float = 0.6
    polyak: int | None = None
    dtype: str | torch.dtype | None = None
    keep_responsibilities: bool | str = "auto"

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def validate(self) -> None:
        for name in ("max_iter", "n_init", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        tol = self.tol
        if tol is not None and (not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0):
            raise ValueError(f"tol must be a number >= 0, or None to run all max_iter iterations, got {tol!r}")
        if self.reg_covar is not None and (not isinstance(self.reg_covar, (int, float)) or self.reg_covar < 0):
            raise ValueError(f"reg_covar must be a number >= 0, got {self.reg_covar!r}")
        init = self.init_params
        if init is not None and not isinstance(init, dict) and init not in INITS:
            raise ValueError(f"unknown init_params {init!r}; choose one of {list(INITS)} or pass a dict of values")
        for name in ("distributed", "online"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not self.online and (self.batch_size is not None or self.polyak is not None):
            raise ValueError("batch_size and polyak set the steps of online EM: pass online=True with them")
        if self.online and self.distributed:
            raise ValueError("online=True runs in one process; drop distributed=True (or online=True for exact "
                             "data-parallel EM)")
        for name in ("batch_size", "polyak"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if not isinstance(self.step_exponent, (int, float)) or not 0.5 < self.step_exponent <= 1:
            raise ValueError(f"step_exponent must be in (0.5, 1], got {self.step_exponent!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.dtype is not None and KERNEL_DTYPES.get(self.dtype) is None:
            raise ValueError(f"dtype must be 'float32' or 'float64' (the dtype of the closed-form E-step kernels; "
                             f"None: float64), got {self.dtype!r}")
        keep = self.keep_responsibilities
        if not isinstance(keep, bool) and keep != "auto":
            raise ValueError(f"keep_responsibilities must be True, False or 'auto', got {keep!r}")
        if self.kernel_dtype == torch.float32 and self.online:
            raise ValueError("dtype='float32' runs the kernels of batch EM; online=True steps its statistics in "
                             "float64: drop dtype or online=True")

    @property
    def kernel_dtype(self) -> torch.dtype:
        """The torch dtype of the closed-form E-step kernels (``dtype``; float64 by default)."""
        return torch.float64 if self.dtype is None else KERNEL_DTYPES[self.dtype]

    def for_route(self, route: str, default_reg: float | None = None, default_init: str | None = None
                  ) -> dict[str, Any]:
        """The options as the route runs them (``"closed form"`` or ``"generic"``): defaults filled, refusals raised.

        ``default_init``: the start of a family that has its own (a mixture of regressions starts from the
        model's values). Returns the plain record kept in ``outcome.options``: ``init_params`` is the start actually used
        (``"dict"`` for a dict of values), ``reg_covar`` the regularisation actually used (``None`` on the generic
        route).
        """
        init = self.init_params
        if route == "generic":
            if self.online:
                raise UnsupportedModelError(
                    "online=True steps the sufficient statistics of the closed-form EM route (a recognised mixture); "
                    "this model runs the generic EM route, which has none. Drop online=True."
                )
            if self.distributed:
                raise UnsupportedModelError(
                    "distributed=True sums the expected sufficient statistics of the closed-form EM route "
                    "(recognised mixtures and hidden Markov chains of the Gaussian, Bernoulli, categorical and "
                    "Poisson families); this model runs the generic EM route (it is not a recognised mixture or "
                    "chain), which has no such statistics. Fit it in one process (drop distributed=True), or write "
                    "it as a recognised mixture or chain."
                )
            if isinstance(init, str) and init not in GENERIC_INITS:
                raise UnsupportedModelError(
                    f"init_params={init!r} seeds the components of a recognised mixture or chain from its data "
                    "matrix; this model runs the generic EM route (it is not a recognised mixture or chain), which "
                    "has no such matrix to seed from. Use init_params='params' (the model's lvm.param values, the "
                    "default), 'random' (random starts around them) or a dict of initial values."
                )
            if self.kernel_dtype != torch.float64:
                raise UnsupportedModelError(
                    f"dtype={self.dtype!r} sets the kernels of the closed-form EM route (a recognised mixture); "
                    "this model runs the generic EM route (it is not a recognised mixture or chain), which "
                    "computes in the model's own dtype. Drop dtype (or pass data and parameters in float32)."
                )
            if self.keep_responsibilities is False:
                raise UnsupportedModelError(
                    "keep_responsibilities=False recomputes the responsibilities of a recognised mixture from its "
                    "closed-form parameters; this model runs the generic EM route (it is not a recognised mixture "
                    "or chain), whose result holds them: drop keep_responsibilities"
                )
            if self.reg_covar is not None:
                raise UnsupportedModelError(
                    f"reg_covar={self.reg_covar!r} regularises the covariances of a recognised Gaussian mixture or "
                    "chain; this model runs the generic EM route, whose numerical M-step has no covariance to "
                    "regularise. Drop reg_covar, or write a prior into the model (lvm.factor) to regularise it."
                )
        record = {k: v for k, v in vars(self).items() if k != "callbacks"}
        record["dtype"] = str(self.kernel_dtype).removeprefix("torch.") if route != "generic" else None
        record["init_params"] = "dict" if isinstance(init, dict) else (init or default_init or DEFAULT_INIT[route])
        if route != "generic":
            record["reg_covar"] = float(default_reg if self.reg_covar is None else self.reg_covar)
        return record


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


class EMBackend(Backend):
    name = "em"
    options_class = EMOptions
    accepts_chunks = True  # a recognised mixture's or chain's data may be lvm.chunks (read chunk by chunk)

    def keeps_float32(self, loop: EMOptions) -> bool:
        """float32 data stay float32 for the float32 kernels (``dtype="float32"``): no float64 copy of them."""
        return loop.kernel_dtype == torch.float32

    def fit(self, problem: Problem) -> EMOutcome:
        """Recognise the model's route, then run ``n_init`` restarts of it through ``run_restarts``."""
        opts, _ = self.options_of(problem)
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
                return any(bool(cb(i, ll)) for cb in opts.callbacks)

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
        Reducer(opts.distributed)  # no process group: that error first
        options = opts.for_route("generic")
        structure = problem.structure
        model = enumerating(problem.model, [s.name for s in structure.discrete_latents])
        check_enumeration_size(model, kwargs, structure.max_plate_nesting, opts.max_bytes)  # once, not per restart
        data = ModelChunks(kwargs, problem.streams) if problem.streams else None
        return options, generic_fit(model, kwargs, structure, initial, options, callback, data)


EM = EMBackend()
