"""The NUTS E-step of ``method="mcem"`` (``proposal="nuts"``): draws from ``p(z | x, theta)`` by Pyro's NUTS.

With the parameters ``theta`` held at their current values, one chain of NUTS runs on the model's local latents
(all data points at once: given ``theta`` they are independent, so the joint chain is a product of per-point
chains sharing a step size and a diagonal mass matrix). Each E-step adapts afresh for ``nuts_warmup`` steps
(``theta`` has moved, so the posterior has) starting from the last draw of the previous E-step, then keeps
``S_t`` draws. The draws are from the posterior itself, not weighted: their self-normalised weights are all
``1 / S_t``. Divergent transitions in an E-step are counted in ``result.options["nuts_divergences"]`` and reported
with one :class:`~ppl_lvm.errors.InferenceWarning` at the end of the fit.
"""

from __future__ import annotations

import pyro.poutine as poutine
import torch
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.mcmc import MCMC, NUTS

from .base import Problem

__all__ = ["NUTSEStep"]


class NUTSEStep:
    """Posterior draws of the local latents under the current parameters, laid out as the E-step's particles.

    Parameters
    ----------
    problem : Problem
        The fit's model, data and structure.
    warmup : int
        Warm-up (step size and mass matrix adaptation) steps of each E-step's chain.
    target_accept_prob : float
        Target acceptance probability of the step-size adaptation.
    """

    def __init__(self, problem: Problem, warmup: int, target_accept_prob: float):
        structure = problem.structure
        self.model, self.kwargs = problem.model, dict(problem.data.kwargs)
        self.nesting = structure.max_plate_nesting
        self.n = structure.n_data
        self.latents = [s.name for s in structure.latent_sites]
        self.warmup, self.target = int(warmup), float(target_accept_prob)
        self.last: dict[str, torch.Tensor] | None = None
        self.divergences: list[int] = []
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            trace = poutine.trace(self.model).get_trace(**self.kwargs)
        # (1,) * k inserted after the particle dim puts each site's batch dims where the particle plate expects them
        self.padding = {name: (1,) * (self.nesting - len(trace.nodes[name]["fn"].batch_shape))
                        for name in self.latents}

    def draw(self, num: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``num`` posterior draws per data point, shaped as under the particle plate, and their log weights
        (zeros: equal weights), ``(num, n)``."""
        kernel = NUTS(self.model, max_plate_nesting=self.nesting, target_accept_prob=self.target,
                      init_strategy=init_to_value(values=self.last or {}))  # Pyro's uniform start the first time
        mcmc = MCMC(kernel, num_samples=int(num), warmup_steps=self.warmup, num_chains=1, disable_progbar=True)
        mcmc.run(**self.kwargs)
        self.divergences.append(sum(1 for t in kernel._divergences if t >= 0))  # warm-up ones are negative
        samples = {name: value.detach() for name, value in mcmc.get_samples().items() if name in self.latents}
        self.last = {name: value[-1] for name, value in samples.items()}
        values = {name: value.reshape((int(num),) + self.padding[name] + tuple(value.shape[1:]))
                  for name, value in samples.items()}
        dtype = next(iter(values.values())).dtype
        return values, torch.zeros(int(num), self.n, dtype=dtype)
