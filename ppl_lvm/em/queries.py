"""Queries of a fitted closed-form model at given parameters: the E-step a fit reports, new data, new draws.

A recognised pattern (:mod:`ppl_lvm.em.patterns`) plus the fitted parameters (``params``: the model's
``lvm.param`` values by name) is all a mixture or a chain needs to score data and to draw from; the generic route
answers the E-step by contraction (:mod:`ppl_lvm.em.generic`). The results layer calls these on a fresh fit and on a
loaded one alike, so both answer with the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch

from ..handlers import enumerating
from .generic import e_step, site_marginals
from .hmm import hmm_e_step, viterbi
from .patterns import HMMPattern
from .recognise import recognise_discrete_hmm, recognise_mixture
from .recognise_chain import recognise_hmm
from .rows import MixtureRows, keeps_rows, kernel_family

__all__ = ["chain_posteriors", "chain_viterbi", "fitted_posterior", "mixture_rows", "recognise", "sample_chain",
           "sample_mixture"]


def recognise(model: Any, kwargs: dict, structure: Any) -> Any:
    """The closed-form pattern of ``model`` on ``kwargs`` (a mixture, a chain of ``lvm.markov`` steps or one
    ``DiscreteHMM`` site), or ``None`` for the generic route.

    Call it inside the parameter-store scope that holds the model's parameters.
    """
    for attempt in (recognise_mixture, recognise_hmm, recognise_discrete_hmm):
        pattern = attempt(model, kwargs, structure)
        if pattern is not None:
            return pattern
    return None


def _kernel_params(pattern: Any, params: Any) -> dict[str, torch.Tensor]:
    return pattern.family.complete_params(pattern.to_kernel(params))


def chain_posteriors(pattern: HMMPattern, params: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(x_b) per sequence (B,), state posteriors (B, T, K) padded with 0)`` of the pattern's sequences."""
    kernel = _kernel_params(pattern, params)
    found = hmm_e_step(
        pattern.family.log_prob(pattern.data, kernel),
        [int(v) for v in pattern.lengths],
        kernel["startprob"],
        kernel["transmat"],
    )
    return found.log_likelihood, pattern.pad(found.gamma)


def chain_viterbi(pattern: HMMPattern, params: Any) -> torch.Tensor:
    """The most probable state path of each of the pattern's sequences, ``(B, T)``, ``-1`` past each one's end."""
    kernel = _kernel_params(pattern, params)
    log_emission = pattern.family.log_prob(pattern.data, kernel)
    _, states = viterbi(log_emission, [int(v) for v in pattern.lengths], kernel["startprob"], kernel["transmat"])
    return pattern.pad(states, fill=-1)


def mixture_rows(pattern: Any, params: Any, kwargs: dict, options: dict) -> tuple[MixtureRows, bool]:
    """``(rows, kept)``: every row's values of a fitted mixture as its fit computes them (its kernels' dtype and
    chunks, from ``options``: ``dtype``, ``keep_responsibilities``), and whether its result holds them."""
    family = kernel_family(pattern.family, options.get("dtype"))
    x = pattern.matrix(kwargs)
    kept = keeps_rows(options.get("keep_responsibilities", "auto"), x.shape[0], pattern.n_components)
    kernel = family.complete_params(pattern.to_kernel(params))
    return MixtureRows.of_data(family, kernel, x, pattern.latent, on_demand=not kept), kept


def fitted_posterior(
    model: Any, kwargs: dict, structure: Any, pattern: Any, params: Any, options: dict | None = None
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """What an EM fit reports at its parameters: ``log p(x_i)`` per data point (or per sequence) and the
    responsibilities of every discrete latent site.

    ``params`` are the model's parameters by name; on the generic route (``pattern`` None) they must also be the
    live parameter store (the model is run). ``options``: the fit's (a mixture's kernel dtype and chunks).
    """
    if pattern is None:
        enumerated = enumerating(model, [s.name for s in structure.discrete_latents])
        found = e_step(enumerated, kwargs, structure.max_plate_nesting, max_bytes=None)
        return found.log_likelihood_per_point, site_marginals(found, structure)
    if isinstance(pattern, HMMPattern):
        per_sequence, gamma = chain_posteriors(pattern, params)
        return per_sequence, {pattern.latent: gamma}
    per_point, resp, _ = mixture_rows(pattern, params, kwargs, options or {})[0].compute()
    return per_point, {pattern.latent: resp}


def sample_mixture(
    pattern: Any, params: Any, num_samples: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` draws ``(x, component)`` of a fitted mixture."""
    kernel = _kernel_params(pattern, params)
    components = torch.multinomial(kernel["weights"], num_samples, replacement=True, generator=generator)
    x = pattern.family.sample(kernel, components, generator)
    return (x.reshape(-1) if pattern.univariate else x), components


def sample_chain(
    pattern: HMMPattern, params: Any, num_sequences: int, n_steps: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_sequences`` sequences of ``n_steps`` steps of a fitted chain: ``(x (B, T, ...), states (B, T))``.

    ``x`` is ``(B, T)`` for one symbol or number per step (a categorical chain), ``(B, T, D)`` otherwise.
    """
    kernel = _kernel_params(pattern, params)
    states = torch.empty((num_sequences, n_steps), dtype=torch.long)
    states[:, 0] = torch.multinomial(kernel["startprob"], num_sequences, replacement=True, generator=generator)
    for t in range(1, n_steps):
        states[:, t] = torch.multinomial(kernel["transmat"][states[:, t - 1]], 1, generator=generator).squeeze(1)
    x = pattern.family.sample(kernel, states.reshape(-1), generator)
    shape = (num_sequences, n_steps) if pattern.univariate else (num_sequences, n_steps, *x.shape[1:])
    return x.reshape(shape), states
