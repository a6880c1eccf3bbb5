"""The refusals of method ``em`` that read the model's structure or its streamed data (:mod:`ppl_lvm.backends.em`)."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedModelError
from .base import Problem

__all__ = ["check_enumerable", "check_kept_rows", "check_streams"]


def check_enumerable(structure: Any) -> None:
    """Refuse a model with a latent that EM cannot sum out (continuous, or discrete without finite support)."""
    for site in structure.continuous_latents:
        raise UnsupportedModelError(
            f"method 'em' needs every latent to be discrete with finite support, but '{site.name}' "
            f"({site.location}) is a continuous {site.distribution}. Fit this model with method='svi' or "
            "method='iwae', or make the site a parameter (lvm.param) for maximum likelihood."
        )
    for site in structure.discrete_latents:
        if not site.enumerable:
            raise UnsupportedModelError(
                f"method 'em' cannot enumerate '{site.name}' ({site.location}): {site.distribution} has no "
                "finite support. Use a Categorical/Bernoulli latent, or method='svi'."
            )


def check_streams(problem: Problem, pattern: Any) -> None:
    """Which data may be read chunk by chunk on each route (see :mod:`ppl_lvm.em.stream`)."""
    streams = problem.streams
    if not streams:
        return
    names = sorted(streams)
    sequences = sorted(problem.sequence_streams)
    chain = pattern is not None and hasattr(pattern, "trans")
    if sequences and not chain:
        raise UnsupportedModelError(
            f"data read chunk by chunk as sequences (lvm.chunks with lengths or sequences=True: {sequences}) are "
            "fitted by a hidden Markov chain written with lvm.markov; this model is not one. Pass the rows without "
            "lengths (lvm.chunks(x, chunk_size))"
        )
    if pattern is None:  # the generic route reads every streamed argument side by side (ModelChunks)
        return
    if chain and not pattern.latents:  # one DiscreteHMM site: rows of whole sequences, or sequences
        if names != [pattern.data_argument]:
            raise UnsupportedModelError(
                f"a hidden Markov chain written as one DiscreteHMM site reads one argument chunk by chunk, its "
                f"observed sequences of one length, given as lvm.chunks(x, chunk_size) over the rows (sequences) of "
                f"an array of shape (sequences, steps, ...); got {names}"
            )
        return
    if chain:
        if len(names) != 1 or sequences != names:
            raise UnsupportedModelError(
                f"a hidden Markov chain reads one argument chunk by chunk, its observed sequences, given as "
                f"lvm.chunks(x, chunk_size, lengths=lengths) or lvm.chunks(list_of_sequences, chunk_size, "
                f"sequences=True); got {names} (as sequences: {sequences})"
            )
        return
    if pattern.data_argument is None:
        raise UnsupportedModelError(
            f"data read chunk by chunk (lvm.chunks: {names}) are fitted for a mixture whose observed data are one "
            "argument of the model; this mixture's kernels read their data from several observed sites or from a "
            "regression's design: pass the data in memory"
        )
    if names != [pattern.data_argument]:
        raise UnsupportedModelError(
            f"only the observed data may be read chunk by chunk; {sorted(set(names) - {pattern.data_argument})} "
            f"feed the model otherwise: pass them in memory"
        )


def check_kept_rows(problem: Problem, keep: bool | str) -> None:
    """``keep_responsibilities=True`` needs every row in memory (see :mod:`ppl_lvm.em.rows`)."""
    if keep is True and problem.streams:
        raise UnsupportedModelError(
            f"keep_responsibilities=True holds every row's responsibilities, but the data {sorted(problem.streams)} "
            "are read chunk by chunk (lvm.chunks) and never held at once, so no row's values are kept: drop "
            "keep_responsibilities, or score the rows chunk by chunk with result.predict_proba(chunk)"
        )
