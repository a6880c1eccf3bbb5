"""The options of ``method="em"`` (:class:`EMOptions`): their defaults, their checks, and what each route reads."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from ..errors import UnsupportedModelError

__all__ = ["DEFAULT_INIT", "EMOptions", "GENERIC_INITS", "INITS", "KERNEL_DTYPES"]


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
        responsibilities and per-point values those of the rank's shard. On the generic route every evaluation
        of the M-step's ``Q`` and its gradient (L-BFGS) and every E-step is summed over the ranks instead (two
        all-reduces each), so every rank's optimiser takes the same steps; its model's log-likelihood must be a
        sum over the points of its data plate.
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
    fast_path : bool
        The generic route's M-step evaluates ``Q`` (several times per iteration, by L-BFGS) by re-running the model
        through the DSL's interpreter, with the enumerated values of its latents replayed, instead of tracing it
        with Pyro each time (:mod:`ppl_lvm.em.generic.interpreted`); each fit checks at its first M-step that this
        ``Q`` and its gradient equal the traced ones, and traces otherwise. ``result.options["fast_path"]`` says
        whether it ran and ``["fast_path_reason"]`` why not. ``False``: every evaluation is a Pyro trace. The
        closed-form route has no such ``Q`` (``result.options["fast_path"]`` is the option as given there, with no
        reason recorded).
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
    fast_path: bool = True
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
        for name in ("distributed", "online", "fast_path"):
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
