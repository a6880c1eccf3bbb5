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
import pyro.poutine as poutine
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
from .interpreter import NotPlannable
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


def _snapshot(store: Any, buffer: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Copy the unconstrained parameters into ``buffer`` (reused across steps: no allocation per step)."""
    buffer = {} if buffer is None else buffer
    sources, targets = [], []
    with torch.no_grad():
        for name, value in store._params.items():
            kept = buffer.get(name)
            if kept is None or kept.shape != value.shape or kept.dtype != value.dtype or kept.device != value.device:
                buffer[name] = value.detach().clone()
            else:
                sources.append(value)
                targets.append(kept)
        if targets:
            torch._foreach_copy_(targets, sources)  # one call for all of them
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
    raw_model, raw_guide, planned = model, guide, None  # the interpreter applies beta itself
    if callable(options.beta) or options.beta != 1.0:
        weight = KLWeight(ctx)
        model, guide = weight(model), weight(guide)
    if parallel is not None:
        model, guide = parallel.wrap(model), parallel.wrap(guide)
    step = 0
    try:
        with fit_scope(ctx):
            for step in range(1, options.steps + 1):
                if step > total:
                    break
                if anneal_len and step > anneal_start:
                    factor = anneal_factor(step - anneal_start, anneal_len)
                    _scale_lr(optim, factor / lr_factor)
                    lr_factor = factor
                step_kwargs = kwargs
                loss_scale = 1.0
                if minibatch is not None:
                    if order is None or cursor + minibatch.batch_size > minibatch.size:
                        order = torch.randperm(minibatch.size, generator=generator)
                        cursor = 0
                    idx = order[cursor : cursor + minibatch.batch_size]
                    cursor += minibatch.batch_size
                    full, factor = minibatch.size, 1.0
                    if parallel is not None:  # the global batch's rows in this rank's shard
                        idx, full, factor = parallel.local_rows(idx, minibatch.batch_size)
                    step_kwargs = dict(kwargs)
                    for name in minibatch.arguments:
                        step_kwargs[name] = kwargs[name].index_select(0, idx.to(kwargs[name].device))
                    if minibatch.scaling == "plate":
                        ctx.subsample = {minibatch.plate: (full, idx)}
                    else:
                        loss_scale = factor * minibatch.size / minibatch.batch_size
                ctx.beta = float(options.beta(step - 1)) if callable(options.beta) else float(options.beta)
                ctx.step = step - 1

                error: Exception | None = None
                if planned is not None:  # the fast path (ppl_lvm.backends.planned)
                    state_before = torch.get_rng_state()
                    named = planned.named
                    try:
                        loss = planned.loss_and_grads(raw_model, raw_guide, **step_kwargs)
                        if not math.isfinite(loss):  # Pyro's step says where (its argument checks are on)
                            raise NotPlannable(f"the loss became {loss}")
                    except NotPlannable as exc:  # e.g. the structure changed: this step and the rest by Pyro
                        planner.stop(f"from step {step}: {exc}")
                        torch.set_rng_state(state_before)
                        for p in named.values():
                            p.grad = None
                        planned = None
                    except Exception as exc:  # noqa: BLE001 - raised below, as on the Pyro path
                        error = exc
                if planned is None:
                    state_before = torch.get_rng_state() if planner is not None and step == 1 else None
                    with poutine.trace(param_only=True) as param_capture:
                        try:
                            loss = loss_and_grads(model, guide, **step_kwargs)
                        except Exception as exc:  # noqa: BLE001 - raised below, on every rank of a data-parallel fit
                            error = exc
                    named = {name: site["value"].unconstrained() for name, site in param_capture.trace.nodes.items()}
                    if state_before is not None and error is None:
                        planned = planner.start(raw_model, raw_guide, step_kwargs, named, loss, state_before)
                        if planned is not None and named:  # nothing to step: the model has no parameters
                            optim = FlatOptim(optim, list(named.values()))
                if parallel is not None:  # collective: a failure on another rank is raised here too
                    try:
                        parallel.check_step(error, named, step)
                    except FitError:
                        store._params.update({k: v.clone().requires_grad_() for k, v in best_state.items()})
                        raise
                if isinstance(error, (ValueError, RuntimeError)):
                    if step == 1 or isinstance(error, PplLvmError):
                        raise error  # the model or the guide, not the parameters the fit reached
                    message = _fault_message(error, step, method, best_step, best, store, options)
                    store._params.update({k: v.clone().requires_grad_() for k, v in best_state.items()})
                    raise FitError(message, step=step) from error
                if error is not None:
                    raise error
                params = set(named.values())
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
                if smoothed < best:
                    best = smoothed
                    best_step = step
                    best_state = _snapshot(store, best_state)  # the parameters this loss was computed at
                optim(params)
                if planned is not None:
                    for p in params:
                        p.grad = None
                else:
                    pyro.infer.util.zero_grads(params)

                if bar is not None:
                    bar.update(1)
                    if step % postfix_every == 0:
                        bar.set_postfix(loss=f"{smoothed:.4g}", refresh=False)
                if anneal_len and step > total - int(anneal_len * AVERAGED):
                    n_averaged += 1
                    _accumulate(store, averaged, n_averaged)
                state = FitState(step, loss, smoothed, best, ctx.beta)
                stop = any(bool(cb(state)) for cb in options.callbacks)
                if parallel is not None and options.callbacks:
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
        "best_state": best_state,
        "averaged": n_averaged,
        "settling": check,
        "fast_path": planned is not None,
    }


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
