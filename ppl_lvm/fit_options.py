"""The options of the optimisation loop, what a callback sees, minibatch slicing and the loss smoothing rule."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyro.optim
import torch

__all__ = ["OPTIMIZERS", "FitOptions", "FlatOptim", "FitState", "Minibatch", "Settling", "anneal_factor", "linear_warmup", "settling",
           "temperature_schedule",
           "smoothed_final_loss", "smoothed_losses"]

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
        Learning rate of the optimiser (its value before the final annealing phase).
    anneal : float
        Fraction of the steps, at the end, in which the learning rate decays (half a cosine, from ``lr`` towards 0)
        while the iterates are averaged: the returned parameters are the mean of the unconstrained parameters over
        the second half of this phase (Polyak averaging), which removes the noise a constant step size leaves in
        the final iterate. ``0`` keeps ``lr`` constant and returns the final iterate.
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
        The convergence rule (:func:`settling`): over a window of steps the losses are cut into 10 blocks and the
        trend of the block means is fitted; the fit has settled when the decrease over the window is below
        ``tol`` times the loss, or below three standard errors of its own estimate (not distinguishable from the
        loss's noise). ``converged`` is this rule on the window of the last ``patience`` steps (default: the
        averaging half of the annealing phase, or the last 10% of the steps, at least 50) at the end of the fit;
        a fit that has not settled says so with a :class:`~ppl_lvm.errors.ConvergenceWarning`. With
        ``patience`` set the rule is also checked during the fit: once it holds at the constant ``lr`` the
        annealing phase starts there (or the fit stops, with ``anneal=0``).
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
        Independent restarts with seeds ``seed, seed + 1, ...``; the one with the highest bound at its returned
        parameters (``result.elbo``) is returned and all of them are kept in ``result.restarts``.
    fast_path : bool
        Run the steps without Pyro's effect stack where the model and guide allow it (default ``True``): after the
        first step (run by Pyro's ELBO) the loss is evaluated by a plan of the sites that step recorded, run by
        :mod:`ppl_lvm.interpreter` (on either path one torch optimiser steps every parameter after the first step,
        with the update rule of Pyro's per-parameter ones: :class:`FlatOptim`). The plan is kept only when its loss and gradients equal the Pyro step's on the same draws. The guides it runs:
        the DSL's, the amortised ones and the built-in autoguides ``"normal"`` (the default), ``"delta"`` /
        ``"map"``, ``"fullrank"`` / ``"mvn"`` and Pyro's ``AutoNormal`` (:mod:`ppl_lvm.backends.planned_guides`;
        not the last two with ``meanfield``, whose KL terms have no place for their auxiliary sites, and
        ``"fullrank"``'s global auxiliary site makes ``iwae`` run ``LocalIWAE``, on Pyro's path); models it cannot
        plan (enumerated or score-function sites, other autoguides, Pyro handlers inside the model, estimators it
        does not implement, ``distributed``) run Pyro throughout. ``result.options["fast_path"]`` says whether it
        ran and ``result.options["fast_path_reason"]`` why not. ``False`` runs Pyro's ELBO on every step.
    distributed : bool
        Data-parallel fit over the ranks of the initialised ``torch.distributed`` process group (a script started
        by ``torchrun``): every rank passes its own contiguous rows of the data, in rank order, with the same
        model, options and seed; ``batch_size`` is the global batch. Gradients are summed over the ranks each step
        and every rank ends with the same parameters; the losses, ``converged`` and ``result.elbo`` are those of all
        the data. See :mod:`ppl_lvm.backends.distributed` for how the loss is split and how the draws are made.
    """

    steps: int = 1000
    lr: float = 0.05
    anneal: float = 0.3
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
    distributed: bool = False
    fast_path: bool = True

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def validate(self) -> None:
        if self.device is not None:
            try:
                device = torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise ValueError(f"device={self.device!r} is not a torch device ({exc}); e.g. 'cpu' or 'cuda:0'") from exc
            available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}.get(device.type)
            if available is not None and not available():
                raise ValueError(f"device={self.device!r}, but this torch build or machine has no {device.type.upper()} "
                                 f"device (torch.{device.type}.is_available() is False); use device='cpu' or leave "
                                 "device unset")

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
        if isinstance(self.anneal, bool) or not isinstance(self.anneal, (int, float)) or not 0 <= self.anneal < 1:
            raise ValueError(f"anneal must be a fraction of the steps in [0, 1), got {self.anneal!r}")
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
        if not isinstance(self.distributed, bool):
            raise ValueError(f"distributed must be True or False, got {self.distributed!r}")
        if not isinstance(self.fast_path, bool):
            raise ValueError(f"fast_path must be True or False, got {self.fast_path!r}")
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


#: blocks of the window in :func:`settling` and the t quantile of its trend test
SETTLING_BLOCKS = 10
SETTLING_T = 3.0


@dataclass
class Settling:
    """What :func:`settling` measured over a window: whether the loss settled, its decrease and that decrease's noise."""

    settled: bool
    decrease: float
    noise: float
    window: int


def settling(losses: Sequence[float], tol: float) -> Settling:
    """Whether the losses of a window have settled: their trend compared with its own noise.

    The window is cut into 10 blocks (fewer, of two steps at least, for a window under 20 steps) (batch means absorb the short-range correlation of successive losses); a
    least-squares line through the block means gives the decrease over the window and its standard error. The
    loss has settled when the decrease is at most ``tol * |mean loss|`` (negligible) or at most three standard
    errors (indistinguishable from noise); a loss still falling clearly, as in a fit cut short, has not.
    """
    y = np.asarray(losses, dtype=float)
    n = len(y)
    count = min(SETTLING_BLOCKS, n // 2)
    if count < 4 or not np.all(np.isfinite(y)):
        return Settling(False, math.nan, math.nan, n)
    blocks = np.array([b.mean() for b in np.array_split(y, count)])
    t = np.arange(count, dtype=float) - (count - 1) / 2
    slope = float((t * (blocks - blocks.mean())).sum() / (t * t).sum())
    resid = blocks - blocks.mean() - slope * t
    se_slope = math.sqrt(float((resid**2).sum()) / (count - 2) / float((t * t).sum()))
    span = count - 1
    decrease, noise = -slope * span, se_slope * span
    settled = decrease <= max(tol * abs(float(y.mean())), SETTLING_T * noise)
    return Settling(bool(settled), decrease, noise, n)


def anneal_factor(k: int, length: int) -> float:
    """The learning-rate factor at step ``k`` (1..length) of an annealing phase of ``length`` steps: half a
    cosine from 1 towards 0 (never 0)."""
    return 0.5 * (1.0 + math.cos(math.pi * k / (length + 1)))


def linear_warmup(steps: int, start: float = 0.0, end: float = 1.0) -> Callable[[int], float]:
    """A KL-weight schedule rising linearly from ``start`` to ``end`` over ``steps`` steps, then constant."""
    if steps < 1:
        raise ValueError(f"warm-up steps must be >= 1, got {steps}")

    def schedule(step: int) -> float:
        return start + (end - start) * min(1.0, step / steps)

    return schedule


def temperature_schedule(start: float = 1.0, end: float = 0.5, steps: int = 1000) -> Callable[[int], float]:
    """A temperature falling geometrically from ``start`` at step 0 to ``end`` at step ``steps``, then constant.

    ``tau(t) = start * (end / start) ** (min(t, steps) / steps)``: the exponential decay of Jang, Gu and Poole
    (2017), for the ``temperature`` of a relaxed guide (:class:`ppl_lvm.AmortizedCategorical`). The fit loop
    counts steps from 0, so a fit of ``steps + 1`` steps ends at ``end``.
    """
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"temperature_schedule: {name} must be a positive number, got {value!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"temperature_schedule: steps must be a positive integer, got {steps!r}")
    ratio = float(end) / float(start)

    def schedule(step: int) -> float:
        return float(start) * ratio ** (min(max(step, 0), steps) / steps)

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




class FlatOptim:
    """One torch optimiser over every parameter, with the update rule of a :class:`pyro.optim.PyroOptim`.

    ``PyroOptim`` keeps one torch optimiser per parameter; the optimisers in :data:`OPTIMIZERS` update each element
    on its own, so one optimiser over all of them takes the same steps (per-parameter gradient clipping included)
    at one call instead of one per parameter. A torch optimiser runs its multi-tensor (``foreach``) implementation
    unless ``optim_args`` says otherwise: the same operations, in a few calls over all the parameters. It is called as ``PyroOptim`` is, with the parameters to step;
    a parameter it has not seen joins as a new group at the current learning rate.
    """

    def __init__(self, pyro_optim: Any, params: Sequence[torch.Tensor]):
        if callable(pyro_optim.pt_optim_args) or callable(pyro_optim.pt_clip_args):
            raise TypeError("FlatOptim needs optimiser and clipping arguments given as dicts")
        self.pyro_optim = pyro_optim
        self.params = list(params)
        self.known = set(self.params)
        args = dict(pyro_optim.pt_optim_args)
        if "foreach" not in args and "foreach" in inspect.signature(pyro_optim.pt_optim_constructor).parameters:
            args["foreach"] = True  # the same arithmetic as one tensor at a time (bit for bit), in fewer calls
        self.optim = pyro_optim.pt_optim_constructor(self.params, **args)
        self.clip = dict(pyro_optim.pt_clip_args)
        self._checked: Any = None  # the last list of parameters checked for new ones

    @property
    def param_groups(self) -> list[dict]:
        return self.optim.param_groups

    def __call__(self, params: Any) -> None:
        if params is not self._checked:  # the fast path passes the same list every step
            new = [p for p in params if p not in self.known]
            if new:
                self.optim.add_param_group({"params": new, "lr": self.optim.param_groups[0]["lr"]})
                self.known.update(new)
                self.params.extend(new)
            self._checked = params
        if self.clip:
            for p in self.params:
                self.pyro_optim._clip_grad(p, **self.clip)
        self.optim.step()
