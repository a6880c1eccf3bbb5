"""The one optimisation loop behind every gradient-based backend.

It owns what every fit needs and no backend should write again: seeding, the optimiser, minibatches with correct
likelihood scaling, a KL weight schedule, the final annealing phase (a decaying step size with iterate averaging),
the noise-aware convergence rule with patience (early start of the annealing), the progress bar, callbacks, NaN
detection that keeps the best parameters, and Ctrl-C that returns what was reached.
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
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .errors import ConvergenceWarning, FitError, PplLvmError, PplLvmWarning
from .fit_options import (
    OPTIMIZERS,
    FitOptions,
    FitState,
    FlatOptim,
    Minibatch,
    Settling,
    anneal_factor,
    linear_warmup,
    settling,
    smoothed_final_loss,
    smoothed_losses,
)
from .fit_step import Batches, BestSnapshot, Stepper
from .runtime import FitContext, fit_scope

__all__ = ["OPTIMIZERS", "FitOptions", "FitState", "Minibatch", "linear_warmup", "run_loop", "smoothed_final_loss",
           "smoothed_losses"]

#: the fraction of the annealing phase, at its end, whose iterates are averaged
AVERAGED = 0.5


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
    parallel: Any = None,
    planner: Any = None,
) -> dict[str, Any]:
    """Optimise ``loss_and_grads(model, guide, **kwargs)`` and return the history.

    Must run inside the fit's parameter-store scope. Returns a dict with ``losses``, ``steps``, ``converged``,
    ``interrupted`` and ``best_state``. ``parallel`` (a :class:`~ppl_lvm.backends.distributed.DataParallel`) makes
    the fit data-parallel: the minibatch indices are global rows (this rank evaluates those of its shard), each
    step's loss and gradients are summed over the ranks before the optimiser step, and a failure on one rank is
    raised on all.
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

    ctx = FitContext()
    batches = Batches(minibatch, options.seed, ctx, parallel) if minibatch is not None else None
    progress = options.progress if options.progress is not None else sys.stderr.isatty()
    bar = None
    if progress:
        from tqdm.auto import tqdm  # only when a progress bar is shown

        bar = tqdm(total=options.steps, desc=method, leave=True, dynamic_ncols=True)

    losses: list[float] = []
    alpha = 2.0 / (options.smoothing + 1.0)
    smoothed = math.nan
    best = math.inf
    snapshot = BestSnapshot(store)
    best_step = 0
    converged = False
    interrupted = False
    total = options.steps
    anneal_len = int(round(options.anneal * options.steps))
    anneal_start = total - anneal_len  # steps anneal_start + 1 .. total anneal
    check_every = max(1, (options.patience or 1) // 10)
    averaged: dict[str, torch.Tensor] = {}
    n_averaged = 0
    lr_factor = 1.0
    postfix_every = max(1, options.steps // 100)
    callbacks = list(options.callbacks)
    beta_schedule = options.beta if callable(options.beta) else None
    ctx.beta = float(options.beta) if beta_schedule is None else ctx.beta
    raw_model, raw_guide = model, guide  # the interpreter applies beta itself
    if beta_schedule is not None or options.beta != 1.0:
        weight = KLWeight(ctx)
        model, guide = weight(model), weight(guide)
    if parallel is not None:
        model, guide = parallel.wrap(model), parallel.wrap(guide)
    stepper = Stepper(loss_and_grads, model, guide, raw_model, raw_guide, planner, optim)
    step = 0
    try:
        with fit_scope(ctx):
            for step in range(1, options.steps + 1):
                if step > total:
                    break
                if anneal_len and step > anneal_start:
                    factor = anneal_factor(step - anneal_start, anneal_len)
                    _scale_lr(stepper.optim, factor / lr_factor)
                    lr_factor = factor
                step_kwargs, loss_scale = batches.next(kwargs) if batches is not None else (kwargs, 1.0)
                if beta_schedule is not None:
                    ctx.beta = float(beta_schedule(step - 1))
                ctx.step = step - 1

                loss, named, params, error = stepper(step, step_kwargs)
                if parallel is not None:  # collective: a failure on another rank is raised here too
                    try:
                        parallel.check_step(error, named, step)
                    except FitError:
                        snapshot.restore()
                        raise
                if error is not None:
                    _raise_step_error(error, step, method, best_step, best, store, options, snapshot)
                loss = float(loss) * loss_scale
                if loss_scale != 1.0:
                    for p in params:
                        if p.grad is not None:
                            p.grad.mul_(loss_scale)
                if parallel is not None:  # the gradients summed over the ranks, before the optimiser step
                    loss = parallel.reduce(named, loss)
                if not math.isfinite(loss):
                    for p in params:
                        p.grad = None
                    snapshot.restore()
                    raise FitError(
                        f"the loss became {loss} at step {step} of {method}. The parameters of step {best_step} "
                        f"(smoothed loss {best:.6g}) are kept in the exception's .result and in the parameter "
                        f"store. Try a smaller lr (now {options.lr}), clip_norm=10, standardising the data, or "
                        "tighter constraints/priors on the parameters that ran off.",
                        step=step,
                    )
                losses.append(loss)
                smoothed = loss if step == 1 else (1 - alpha) * smoothed + alpha * loss
                if smoothed < best:
                    best = smoothed
                    best_step = step
                    snapshot.take()  # the parameters this loss was computed at
                stepper.step_optimizer(params)

                if bar is not None:
                    bar.update(1)
                    if step % postfix_every == 0:
                        bar.set_postfix(loss=f"{smoothed:.4g}", refresh=False)
                if anneal_len and step > total - int(anneal_len * AVERAGED):
                    n_averaged += 1
                    _accumulate(store, averaged, n_averaged)
                stop = False
                if callbacks:
                    state = FitState(step, loss, smoothed, best, ctx.beta)
                    for cb in callbacks:  # the first that asks stops the fit (the later ones are not called)
                        if cb(state):
                            stop = True
                            break
                    if parallel is not None:
                        stop = parallel.any(stop)  # a callback on one rank stops every rank
                if (options.patience is not None and step <= anneal_start and step >= options.patience
                        and step % check_every == 0 and settling(losses[-options.patience:], options.tol).settled):
                    # settled at the constant lr: anneal from here (or stop, without annealing)
                    anneal_start = step
                    total = min(options.steps, step + anneal_len)
                    if not anneal_len or total == step:
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
    if n_averaged:  # the returned parameters are the average of the iterates, not the last one
        with torch.no_grad():
            for name, mean in averaged.items():
                if name in store._params:
                    store._params[name].copy_(mean)
    # the rule on the constant-lr steps just before the annealing (which only shrinks the steps' noise: the loss
    # keeps falling a little there by design), or on the last steps without annealing
    end = min(len(losses), anneal_start) if anneal_len else len(losses)
    window = options.patience or max(50, options.steps // 10)
    check = settling(losses[max(0, end - window):end], options.tol)
    converged = check.settled
    if not converged and not interrupted:
        warnings.warn(_not_settled(method, len(losses), check, options), ConvergenceWarning, stacklevel=3)
    return {
        "losses": np.asarray(losses, dtype=float),
        "steps": len(losses),
        "converged": converged,
        "interrupted": interrupted,
        "best_state": snapshot.state,
        "averaged": n_averaged,
        "settling": check,
        "fast_path": stepper.planned is not None,
    }


def _raise_step_error(error: Exception, step: int, method: str, best_step: int, best: float, store: Any,
                      options: FitOptions, snapshot: BestSnapshot) -> None:
    """Raise what a step raised: a check of the model or the guide as it is; a ``ValueError`` or ``RuntimeError``
    once the parameters have moved as a :class:`FitError` that keeps the best parameters."""
    if isinstance(error, (ValueError, RuntimeError)):
        if step == 1 or isinstance(error, PplLvmError):
            raise error  # the model or the guide, not the parameters the fit reached
        message = _fault_message(error, step, method, best_step, best, store, options)
        snapshot.restore()
        raise FitError(message, step=step) from error
    raise error


def _scale_lr(optim: Any, ratio: float) -> None:
    """Multiply the learning rate of every parameter's optimiser by ``ratio`` (composes with ClippedAdam's lrd)."""
    groups = optim.param_groups if isinstance(optim, FlatOptim) else [
        group for opt in optim.optim_objs.values() for group in opt.param_groups]
    for group in groups:
        group["lr"] = group["lr"] * ratio


def _accumulate(store: Any, averaged: dict[str, torch.Tensor], n: int) -> None:
    """Fold the current unconstrained parameters into their running mean (``n``: iterates so far, this one
    included; a parameter created later starts its mean at its first value)."""
    with torch.no_grad():
        for name, value in store._params.items():
            mean = averaged.get(name)
            if mean is None or mean.shape != value.shape:
                averaged[name] = value.detach().clone()
            else:
                mean.add_(value.detach() - mean, alpha=1.0 / n)


def _not_settled(method: str, steps: int, check: Settling, options: FitOptions) -> str:
    if not math.isfinite(check.decrease):
        measured = f"the window of {check.window} steps is too short to tell (at least 8 are needed)"
    else:
        measured = (f"over its last {check.window} steps the loss still fell by {check.decrease:.4g}, more than "
                    f"three times its noise ({check.noise:.3g}) and more than tol={options.tol} of the loss")
    return (f"{method} stopped after {steps} steps before the loss settled: {measured}. Increase steps (now "
            f"{options.steps}), or change lr (now {options.lr}); result.fit_more() continues from here.")
