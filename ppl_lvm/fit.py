"""The one optimisation loop behind every gradient-based backend.

It owns what every fit needs and no backend should write again: seeding, the optimiser, minibatches with correct
likelihood scaling, a KL weight schedule, a smoothed loss with patience (early stop), the progress bar, callbacks,
NaN detection that keeps the best parameters, and Ctrl-C that returns what was reached.
"""

from __future__ import annotations

import math
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyro
import pyro.optim
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .errors import ConvergenceWarning, FitError, PplLvmError, PplLvmWarning
from .runtime import FitContext, fit_scope

__all__ = ["FitOptions", "FitState", "run_loop", "OPTIMIZERS", "smoothed_final_loss", "smoothed_losses"]

OPTIMIZERS = {
    "adam": pyro.optim.Adam,
    "clippedadam": pyro.optim.ClippedAdam,
    "adamw": pyro.optim.AdamW,
    "sgd": pyro.optim.SGD,
    "rmsprop": pyro.optim.RMSprop,
    "adagrad": pyro.optim.Adagrad,
}


@dataclass
class FitOptions:
    """Options of the optimisation loop (shared by ``svi``, ``meanfield``, ``iwae`` and ``renyi``).

    Parameters
    ----------
    steps : int
        Maximum number of optimisation steps.
    lr : float
        Learning rate of the optimiser.
    optimizer : str
        One of ``adam`` (default), ``clippedadam``, ``adamw``, ``sgd``, ``rmsprop``, ``adagrad``.
    optim_args : dict
        Further keyword arguments of the optimiser (e.g. ``{"betas": (0.9, 0.99)}``).
    clip_norm : float, optional
        Clip each parameter's gradient norm to this value.
    num_particles : int
        Monte Carlo particles per step (for ``iwae``/``renyi`` the number of importance samples K).
    vectorize_particles : bool
        Draw the particles in one vectorised pass.
    batch_size : int, optional
        Minibatch size over the data plate; the likelihood is scaled by N / batch_size.
    tol, patience : float, int
        Early stop when the smoothed loss has not improved by ``tol`` (relative) for ``patience`` steps.
        ``patience=None`` runs every step and only reports whether the criterion held.
    smoothing : int
        Window (in steps) of the exponential moving average of the loss.
    beta : float or callable
        Weight of the KL term on continuous latents: a constant (beta-VAE) or ``beta(step) -> float``
        (warm-up, e.g. :func:`ppl_lvm.linear_warmup`).
    callbacks : sequence of callables
        ``callback(state)`` after each step; return ``True`` to stop.
    progress : bool, optional
        Show a progress bar; default: only when stderr is a terminal.
    device : str or torch.device, optional
        Device for the data and the tensors the model creates.
    seed : int
        Seed of Pyro's, torch's and numpy's generators and of the minibatch order.
    n_init : int
        Independent restarts with seeds ``seed, seed + 1, ...``; the one with the lowest final smoothed loss is
        returned and all of them are kept in ``result.restarts``.
    """

    steps: int = 1000
    lr: float = 0.01
    optimizer: str = "adam"
    optim_args: dict = field(default_factory=dict)
    clip_norm: float | None = None
    num_particles: int = 1
    vectorize_particles: bool = True
    batch_size: int | None = None
    tol: float = 1e-4
    patience: int | None = None
    smoothing: int = 50
    beta: float | Callable[[int], float] = 1.0
    callbacks: Sequence[Callable] = ()
    progress: bool | None = None
    device: str | torch.device | None = None
    seed: int = 0
    n_init: int = 1

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def validate(self) -> None:
        def positive_int(name: str, value: Any, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        positive_int("steps", self.steps)
        positive_int("num_particles", self.num_particles)
        positive_int("smoothing", self.smoothing)
        positive_int("batch_size", self.batch_size, allow_none=True)
        positive_int("patience", self.patience, allow_none=True)
        positive_int("n_init", self.n_init)
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not isinstance(self.tol, (int, float)) or self.tol < 0:
            raise ValueError(f"tol must be a number >= 0, got {self.tol!r}")
        if self.clip_norm is not None and (not isinstance(self.clip_norm, (int, float)) or self.clip_norm <= 0):
            raise ValueError(f"clip_norm must be a positive number, got {self.clip_norm!r}")
        if self.optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        if not callable(self.beta) and (not isinstance(self.beta, (int, float)) or self.beta < 0):
            raise ValueError(f"beta must be a number >= 0 or a function of the step, got {self.beta!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        for cb in self.callbacks:
            if not callable(cb):
                raise ValueError(f"callbacks must be callables, got {cb!r}")


@dataclass
class FitState:
    """What a callback sees after each step."""

    step: int
    loss: float
    smoothed_loss: float
    best_loss: float
    beta: float


def smoothed_losses(losses: Sequence[float], smoothing: int) -> np.ndarray:
    """The exponential moving average of ``losses`` at every step (``alpha = 2 / (smoothing + 1)``), as the loop
    computes it."""
    alpha = 2.0 / (smoothing + 1.0)
    out = np.empty(len(losses), dtype=float)
    smoothed = math.nan
    for i, loss in enumerate(losses):
        smoothed = loss if i == 0 else (1 - alpha) * smoothed + alpha * loss
        out[i] = smoothed
    return out


def smoothed_final_loss(losses: Sequence[float], smoothing: int) -> float:
    """The exponential moving average of ``losses`` at the last step (NaN for no steps)."""
    return float(smoothed_losses(losses, smoothing)[-1]) if len(losses) else math.nan


def linear_warmup(steps: int, start: float = 0.0, end: float = 1.0) -> Callable[[int], float]:
    """A KL-weight schedule rising linearly from ``start`` to ``end`` over ``steps`` steps, then constant."""
    if steps < 1:
        raise ValueError(f"warm-up steps must be >= 1, got {steps}")

    def schedule(step: int) -> float:
        return start + (end - start) * min(1.0, step / steps)

    return schedule


@dataclass
class Minibatch:
    """How one step slices the data: the data plate, its full size, and which arguments are sliced."""

    plate: str
    size: int
    batch_size: int
    arguments: list[str]
    #: "plate": Pyro scales sites in the subsampled plate; "loss": loss and gradients are scaled (IWAE)
    scaling: str = "plate"


class KLWeight(Messenger):
    """Weight the log-densities of continuous latent sites (in model and guide alike) by the fit's beta.

    Scaling log p(z) and log q(z) by the same beta scales the KL term of the ELBO (beta-VAE, warm-up);
    beta = 0 masks them out. Observed and discrete sites are untouched.
    """

    def __init__(self, ctx: FitContext):
        super().__init__()
        self.ctx = ctx

    def _process_message(self, msg: dict) -> None:
        beta = self.ctx.beta
        if beta == 1.0 or msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
            return
        support = getattr(msg["fn"], "support", None)
        if support is not None and support.is_discrete:
            return
        if beta == 0.0:
            msg["mask"] = False
        else:
            msg["scale"] = msg["scale"] * beta


def _snapshot(store: Any, buffer: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Copy the unconstrained parameters into ``buffer`` (reused across steps: no allocation per step)."""
    buffer = {} if buffer is None else buffer
    with torch.no_grad():
        for name, value in store._params.items():
            kept = buffer.get(name)
            if kept is None or kept.shape != value.shape:
                buffer[name] = value.detach().clone()
            else:
                kept.copy_(value)
    return buffer


def _library_file(filename: str) -> bool:
    """Whether a traceback frame is inside torch, Pyro, ppl_lvm or the standard library (not the user's code)."""
    parts = filename.replace("\\", "/").split("/")
    return any(p in ("torch", "pyro", "ppl_lvm", "contextlib.py", "functools.py") for p in parts) or "python3." in filename


def _fault_message(exc: BaseException, step: int, method: str, best_step: int, best: float, store: Any,
                   options: FitOptions) -> str:
    """What failed at a step once the parameters had moved: the site, the parameters that ran off, what to try."""
    text = " ".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None)
    site = re.search(r"at site '([^']+)'", text)
    where = f" at site '{site.group(1)}'" if site else ""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _library_file(f.filename)]
    if frames:
        where += f" ({frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}(): {frames[-1].line})"
    bad = [name for name in store.keys() if not bool(torch.isfinite(store[name].detach()).all())]
    small = [name for name in store.keys() if store[name].numel() == 1 and "$$$" not in name]
    running = f"; parameters with non-finite values: {bad}" if bad else ""
    if not bad and small and len(store.keys()) <= 6:
        running = "; the parameters were " + ", ".join(f"{n}={float(store[n].detach()):.6g}" for n in small)
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"step {step} of {method} failed{where}: {type(exc).__name__}: {first_line}{running}. The parameters of step "
        f"{best_step} (smoothed loss {best:.6g}) are kept in the exception's .result and in the parameter store. "
        f"Try a smaller lr (now {options.lr}), clip_norm=10, or constraints that keep the parameters in their support."
    )


def run_loop(
    *,
    loss_and_grads: Callable[..., float],
    model: Callable,
    guide: Callable,
    kwargs: dict[str, Any],
    options: FitOptions,
    minibatch: Minibatch | None,
    method: str,
) -> dict[str, Any]:
    """Optimise ``loss_and_grads(model, guide, **kwargs)`` and return the history.

    Must run inside the fit's parameter-store scope. Returns a dict with ``losses``, ``steps``, ``converged``,
    ``interrupted`` and ``best_state``.
    """
    store = pyro.get_param_store()
    optim_cls = OPTIMIZERS[options.optimizer.lower()]
    optim_args = {"lr": options.lr, **options.optim_args}
    if options.clip_norm is not None and options.optimizer.lower() != "clippedadam":
        optim = optim_cls(optim_args, clip_args={"clip_norm": options.clip_norm})
    else:
        if options.clip_norm is not None:
            optim_args["clip_norm"] = options.clip_norm
        optim = optim_cls(optim_args)

    generator = torch.Generator().manual_seed(int(options.seed))
    order: torch.Tensor | None = None
    cursor = 0
    ctx = FitContext()
    progress = options.progress if options.progress is not None else sys.stderr.isatty()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=options.steps, desc=method, leave=True, dynamic_ncols=True)

    losses: list[float] = []
    alpha = 2.0 / (options.smoothing + 1.0)
    smoothed = math.nan
    best = math.inf
    best_state = _snapshot(store)
    best_step = 0
    stall = 0
    converged = False
    interrupted = False
    patience = options.patience or max(50, options.steps // 10)
    postfix_every = max(1, options.steps // 100)
    if callable(options.beta) or options.beta != 1.0:
        weight = KLWeight(ctx)
        model, guide = weight(model), weight(guide)
    step = 0
    try:
        with fit_scope(ctx):
            for step in range(1, options.steps + 1):
                step_kwargs = kwargs
                loss_scale = 1.0
                if minibatch is not None:
                    if order is None or cursor + minibatch.batch_size > minibatch.size:
                        order = torch.randperm(minibatch.size, generator=generator)
                        cursor = 0
                    idx = order[cursor : cursor + minibatch.batch_size]
                    cursor += minibatch.batch_size
                    step_kwargs = dict(kwargs)
                    for name in minibatch.arguments:
                        step_kwargs[name] = kwargs[name].index_select(0, idx.to(kwargs[name].device))
                    if minibatch.scaling == "plate":
                        ctx.subsample = {minibatch.plate: (minibatch.size, idx)}
                    else:
                        loss_scale = minibatch.size / minibatch.batch_size
                ctx.beta = float(options.beta(step - 1)) if callable(options.beta) else float(options.beta)

                with poutine.trace(param_only=True) as param_capture:
                    try:
                        loss = loss_and_grads(model, guide, **step_kwargs)
                    except (ValueError, RuntimeError) as exc:
                        if step == 1 or isinstance(exc, PplLvmError):
                            raise  # the model or the guide, not the parameters the fit reached
                        message = _fault_message(exc, step, method, best_step, best, store, options)
                        store._params.update({k: v.clone().requires_grad_() for k, v in best_state.items()})
                        raise FitError(message, step=step) from exc
                params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
                loss = float(loss) * loss_scale
                if not math.isfinite(loss):
                    for p in params:
                        p.grad = None
                    store._params.update({k: v.clone().requires_grad_() for k, v in best_state.items()})
                    raise FitError(
                        f"the loss became {loss} at step {step} of {method}. The parameters of step {best_step} "
                        f"(smoothed loss {best:.6g}) are kept in the exception's .result and in the parameter "
                        f"store. Try a smaller lr (now {options.lr}), clip_norm=10, standardising the data, or "
                        "tighter constraints/priors on the parameters that ran off.",
                        step=step,
                    )
                losses.append(loss)
                smoothed = loss if step == 1 else (1 - alpha) * smoothed + alpha * loss
                improved = not math.isfinite(best) or smoothed < best - options.tol * abs(best)
                if improved:
                    stall = 0
                else:
                    stall += 1
                if smoothed < best:
                    best = smoothed
                    best_step = step
                    best_state = _snapshot(store, best_state)  # the parameters this loss was computed at
                if loss_scale != 1.0:
                    for p in params:
                        if p.grad is not None:
                            p.grad.mul_(loss_scale)
                optim(params)
                pyro.infer.util.zero_grads(params)

                if bar is not None:
                    bar.update(1)
                    if step % postfix_every == 0:
                        bar.set_postfix(loss=f"{smoothed:.4g}", refresh=False)
                state = FitState(step, loss, smoothed, best, ctx.beta)
                stop = any(bool(cb(state)) for cb in options.callbacks)
                if stall >= patience:
                    converged = True
                    if options.patience is not None:
                        break
                if stop:
                    break
    except KeyboardInterrupt:
        interrupted = True
        warnings.warn(
            f"{method} interrupted at step {step}; the result holds the parameters reached so far.",
            PplLvmWarning,
            stacklevel=3,
        )
    finally:
        if bar is not None:
            bar.close()
    if not converged and not interrupted and options.patience is not None:
        warnings.warn(
            f"{method} stopped after {options.steps} steps before the smoothed loss settled (relative change "
            f"< {options.tol} for {options.patience} steps); increase steps or lr, or relax tol.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return {
        "losses": np.asarray(losses, dtype=float),
        "steps": len(losses),
        "converged": converged,
        "interrupted": interrupted,
        "best_state": best_state,
    }
