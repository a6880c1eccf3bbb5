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
from collections.abc import Callable
from typing import Any

import numpy as np
import pyro
import pyro.optim
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .errors import ConvergenceWarning, FitError, PplLvmError, PplLvmWarning
from .fit_options import (
    OPTIMIZERS,
    FitOptions,
    FitState,
    Minibatch,
    linear_warmup,
    smoothed_final_loss,
    smoothed_losses,
)
from .runtime import FitContext, fit_scope

__all__ = ["OPTIMIZERS", "FitOptions", "FitState", "Minibatch", "linear_warmup", "run_loop", "smoothed_final_loss",
           "smoothed_losses"]

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
        from tqdm.auto import tqdm  # only when a progress bar is shown

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
