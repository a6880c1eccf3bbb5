"""``method="nuts"``: the No-U-Turn sampler (Pyro's ``MCMC`` with ``NUTS``) on the model's posterior.

Continuous latent sites are sampled; discrete latent sites are summed out exactly in the potential (parallel
enumeration with ``max_plate_nesting``), and drawn from their exact conditional when the fit is queried. Chains
run one after the other (seeds ``seed, seed + 1, ...``), each with its own warm-up (step size and diagonal mass
matrix adaptation). Model parameters (``lvm.param``, ``lvm.module``) have no prior, so NUTS cannot sample them:
such a model is refused (give the parameter a prior with ``lvm.latent``, or fit it with ``svi`` / ``em``).

The fit is an :class:`~ppl_lvm.outcome.MCMCOutcome` whose guide is a :class:`StoredDraws`: the posterior layer
reads the chains' draws through it exactly as it reads a variational guide's draws.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer.mcmc import MCMC, NUTS
from pyro.ops.stats import split_gelman_rubin
from pyro.poutine.runtime import get_plates

from ..em.generic.size import check_enumeration_size
from ..errors import ConvergenceWarning, InferenceWarning, UnsupportedModelError
from ..handlers import enumerating
from ..outcome import MCMCOutcome
from ..structure import ModelStructure
from .base import Backend, Problem

__all__ = ["NUTS_BACKEND", "NUTSBackend", "NUTSOptions", "StoredDraws"]

#: split R-hat above this (or any divergence) makes the fit "not converged", with a ConvergenceWarning
RHAT_LIMIT = 1.01


@dataclass
class NUTSOptions:
    """Options of ``method="nuts"``.

    Parameters
    ----------
    num_samples : int
        Draws kept per chain, after warm-up.
    warmup_steps : int
        Warm-up (adaptation) steps per chain, discarded.
    num_chains : int
        Chains, run one after the other; R-hat needs at least two.
    seed : int
        Chain ``c`` runs with seed ``seed + c``.
    target_accept_prob : float
        Target acceptance probability of the step-size adaptation, in (0, 1); raise it (0.9, 0.95) when there
        are divergences.
    max_tree_depth : int
        Maximum depth of NUTS's trajectory tree (at most 2**max_tree_depth leapfrog steps per draw).
    dense_mass : bool
        Adapt a dense mass matrix (helps strongly correlated posteriors) instead of a diagonal one.
    progress : bool, optional
        Show Pyro's progress bar; default: only when stderr is a terminal.
    """

    num_samples: int = 1000
    warmup_steps: int = 500
    num_chains: int = 2
    seed: int = 0
    target_accept_prob: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    progress: bool | None = None

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def validate(self) -> None:
        for name in ("num_samples", "warmup_steps", "num_chains", "max_tree_depth"):
            value = getattr(self, name)
            low = 0 if name == "warmup_steps" else 1
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                kind = "an integer >= 0" if low == 0 else "a positive integer"
                raise ValueError(f"{name} must be {kind}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        p = self.target_accept_prob
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
            raise ValueError(f"target_accept_prob must be a number in (0, 1), e.g. 0.8 or 0.95, got {p!r}")
        for name in ("dense_mass", "progress"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "progress" and value is None):
                raise ValueError(f"{name} must be True or False, got {value!r}")


class StoredDraws:
    """A guide that hands out stored posterior draws instead of sampling a distribution.

    Called under a plate of ``S`` draws (the plate just left of the model's ``max_plate_nesting`` plates, as the
    posterior layer draws), it returns ``S`` draws evenly spaced over the chains laid end to end: all of them, in
    order, when ``S`` equals the number stored, and every chain's share in that chain's block when ``S`` is a
    multiple of the number of chains. Called without that plate, it returns the draw :meth:`pinned` names, else one
    draw chosen uniformly with torch's generator (seeded by the caller). Each site is a ``Delta`` at the draw: the
    guide has no density.

    Parameters
    ----------
    draws : dict of str -> Tensor
        ``(total_draws, *site)`` per latent site.
    structure : ModelStructure
        The model's structure (site shapes, ``max_plate_nesting``).
    """

    def __init__(self, draws: dict[str, torch.Tensor], structure: ModelStructure):
        self.draws = draws
        self.structure = structure
        self.total = next(iter(draws.values())).shape[0] if draws else 0
        self._pinned: int | None = None

    def spread(self, count: int) -> torch.Tensor:
        """The indices of ``count`` draws evenly spaced over the stored ones (all of them, in order, for
        ``count == total``), as a plate of ``count`` draws receives them."""
        return torch.arange(count) * self.total // count

    @contextmanager
    def pinned(self, index: int) -> Iterator[None]:
        """Calls without a plate of draws return draw ``index`` (one draw at a time, in a chosen order)."""
        previous, self._pinned = self._pinned, int(index)
        try:
            yield
        finally:
            self._pinned = previous

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        nesting = self.structure.max_plate_nesting
        frame = next((f for f in get_plates() if f.dim == -(nesting + 1)), None)
        if frame is None:
            index = self._pinned if self._pinned is not None else int(torch.randint(self.total, ()))
            for name, values in self.draws.items():
                event = len(self.structure.sites[name].shape)
                pyro.sample(name, dist.Delta(values[index], event_dim=event))
            return
        index = self.spread(frame.size)
        for name, values in self.draws.items():
            info = self.structure.sites[name]
            pad = nesting - len(info.batch_shape)
            value = values[index].reshape((frame.size,) + (1,) * pad + tuple(info.shape))
            pyro.sample(name, dist.Delta(value, event_dim=len(info.event_shape)))


def _check_model(problem: Problem) -> list[str]:
    """Refuse what NUTS cannot sample; return the discrete latents to enumerate."""
    structure = problem.structure
    if problem.guide is not None or problem.model.user_guide is not None:
        raise UnsupportedModelError(
            "method 'nuts' samples the posterior itself and uses no guide; drop guide= (or fit the guide with "
            "method='svi')"
        )
    if problem.init_state is not None:
        raise UnsupportedModelError("method 'nuts' cannot start from a result's parameters (init= / fit_more); "
                                    "run lvm.infer(..., method='nuts') afresh with more num_samples")
    params = list(structure.param_sites)
    if params:
        listed = ", ".join(f"'{s.name}' ({s.location})" if s.location else f"'{s.name}'" for s in params)
        raise UnsupportedModelError(
            f"method 'nuts' samples latent sites only, but the model has parameters without a prior: {listed}. "
            "Give each a prior (lvm.latent(dist.Normal(...)) instead of lvm.param), or fit them by maximum "
            "likelihood with method='svi' or method='em'."
        )
    for site in structure.discrete_latents:
        if not site.enumerable:
            raise UnsupportedModelError(
                f"method 'nuts' cannot sample the discrete latent '{site.name}' ({site.location}) and cannot "
                f"enumerate it: {site.distribution} has no finite support. Use a finite discrete distribution "
                "(Categorical, Bernoulli) or method='svi' with a guide that samples it."
            )
    if not structure.continuous_latents:
        raise UnsupportedModelError(
            "method 'nuts' needs a continuous latent site to sample; this model's latents are all discrete "
            "(summed out exactly). Use method='em' (maximum likelihood) or method='svi'."
        )
    return [s.name for s in structure.discrete_latents]


class _Recorder:
    """Per-draw statistics of one chain, read from the kernel after each draw (a ``hook_fn`` of ``MCMC``).

    Pyro's NUTS keeps no per-draw record: the divergence count (``_divergences``) and the running mean of the
    acceptance probability (``_mean_accept_prob``, over the draws after warm-up) are read after every draw and
    differenced (Pyro 1.9).
    """

    def __init__(self, num_samples: int):
        self.diverging = np.zeros(num_samples, dtype=bool)
        self.step_size = np.zeros(num_samples)
        self.acceptance_rate = np.zeros(num_samples)
        self.potential_energy = np.zeros(num_samples)
        self._divergences = 0
        self._mean = 0.0

    def __call__(self, kernel: Any, params: Any, stage: str, i: int) -> None:
        if not stage.startswith("Sample"):
            self._mean = float(kernel._mean_accept_prob)
            return
        count = len(kernel._divergences)
        self.diverging[i] = count > self._divergences
        self._divergences = count
        mean = float(kernel._mean_accept_prob)
        self.acceptance_rate[i] = self._mean + (i + 1) * (mean - self._mean) if i else mean
        self._mean = mean
        self.step_size[i] = float(kernel.step_size)
        self.potential_energy[i] = float(kernel._potential_energy_last)


class NUTSBackend(Backend):
    name = "nuts"
    options_class = NUTSOptions

    def fit(self, problem: Problem) -> MCMCOutcome:
        """Run ``num_chains`` chains of NUTS one after the other and return their draws.

        Ctrl-C during chain ``c > 0`` keeps the chains finished before it (one warning, ``interrupted``); during
        the first chain it propagates. A fit whose split R-hat reaches 1.01 for some coordinate, or with any
        divergent transition, is marked not converged with one :class:`~ppl_lvm.errors.ConvergenceWarning`.
        """
        options, _ = self.options_of(problem)
        enumerated = _check_model(problem)
        structure = problem.structure
        nesting = structure.max_plate_nesting
        kwargs = dict(problem.data.kwargs)
        model = enumerating(problem.model, enumerated) if enumerated else problem.model
        if enumerated:
            check_enumeration_size(
                model, kwargs, nesting, route="method 'nuts'",
                advice="Decouple the discrete latents (plates for independent ones), reduce their number of states, "
                       "or fit with method='svi'")
        progress = options.progress if options.progress is not None else sys.stderr.isatty()
        chains: list[dict[str, torch.Tensor]] = []
        records: list[_Recorder] = []
        interrupted = False
        state: dict = {"params": {}, "constraints": {}}
        with pyro.get_param_store().scope(state):
            for chain in range(options.num_chains):
                pyro.set_rng_seed(int(options.seed) + chain)
                kernel = NUTS(model, max_plate_nesting=nesting, target_accept_prob=float(options.target_accept_prob),
                              max_tree_depth=int(options.max_tree_depth), full_mass=bool(options.dense_mass))
                recorder = _Recorder(int(options.num_samples))
                mcmc = MCMC(kernel, num_samples=int(options.num_samples), warmup_steps=int(options.warmup_steps),
                            num_chains=1, hook_fn=recorder, disable_progbar=not progress)
                try:
                    mcmc.run(**kwargs)
                except KeyboardInterrupt:
                    if not chains:
                        raise
                    interrupted = True
                    warnings.warn(f"nuts interrupted (Ctrl-C) during chain {chain + 1} of {options.num_chains}; the "
                                  f"{len(chains)} finished chain(s) are kept", InferenceWarning, stacklevel=4)
                    break
                chains.append({n: v.detach() for n, v in mcmc.get_samples().items()})
                records.append(recorder)
        names = [s.name for s in structure.continuous_latents]
        samples = {n: torch.stack([c[n] for c in chains]) for n in names}
        stats = {key: np.stack([getattr(r, key) for r in records])
                 for key in ("diverging", "step_size", "acceptance_rate", "potential_energy")}
        converged = self._converged(samples, stats, structure, bool(enumerated))
        flat = {n: v.reshape((-1,) + tuple(v.shape[2:])) for n, v in samples.items()}
        return MCMCOutcome(
            method=self.name,
            losses=np.zeros(0),
            converged=converged,
            steps=int(options.warmup_steps) + int(options.num_samples),
            seed=int(options.seed),
            guide_name="nuts draws",
            model=problem.model,
            guide=StoredDraws(flat, structure),
            data=problem.data,
            structure=structure,
            param_state=state,
            options={k: v for k, v in vars(options).items()},
            enumerated=enumerated,
            interrupted=interrupted,
            samples=samples,
            sample_stats=stats,
            num_chains=len(chains),
            num_draws=int(options.num_samples),
            warmup_steps=int(options.warmup_steps),
        )

    @staticmethod
    def _converged(samples: dict[str, torch.Tensor], stats: dict[str, np.ndarray], structure: ModelStructure,
                   mixture: bool) -> bool:
        """No divergence and split R-hat < 1.01: of every sampled coordinate, or, with enumerated discrete latents
        (a mixture, whose chains may settle on different labellings of one mode), of the potential energy, which
        does not depend on the labelling."""
        worst, where = 0.0, ""
        checked = {"potential energy": torch.as_tensor(stats["potential_energy"])} if mixture else samples
        for name, value in checked.items():
            if value.shape[1] < 4:
                continue
            rhat = split_gelman_rubin(value.double(), chain_dim=0, sample_dim=1)
            top = float(torch.nan_to_num(rhat, nan=1.0).max())
            if top > worst:
                worst, where = top, name
        divergences = int(stats["diverging"].sum())
        problems = []
        if worst >= RHAT_LIMIT or math.isnan(worst):
            at = "of the potential energy" if mixture else f"at site '{where}' ({structure.location(where)})"
            problems.append(f"split R-hat {worst:.3f} >= {RHAT_LIMIT} {at}: run more or longer chains "
                            "(num_samples, warmup_steps)")
        if divergences:
            problems.append(f"{divergences} divergent transition(s) after warm-up: raise target_accept_prob "
                            "(e.g. 0.95) or reparameterise the model (non-centred)")
        if problems:
            warnings.warn("nuts: " + "; ".join(problems), ConvergenceWarning, stacklevel=4)
        return not problems


NUTS_BACKEND = NUTSBackend()
