"""The part of a section that only a hidden Markov model has: its Viterbi path, transition matrix and state means."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import plots
from ..plots import hmm_parameters
from .page import Report

__all__ = ["is_hmm", "hmm_figures", "hmm_words", "add_hmm_tables"]

MAX_PATHS = 2  # sequences whose Viterbi path is drawn


def is_hmm(result: Any) -> bool:
    """Whether ``result`` is an EM fit of a recognised hidden Markov chain (its transition matrix is known)."""
    return hasattr(getattr(result, "pattern", None), "trans")


def hmm_figures(result: Any) -> list[tuple[str, Callable[[], Any]]]:
    """``(caption, draw)`` of the Viterbi path of the first sequences and of the transition matrix."""
    lengths = hmm_parameters(result)["lengths"]
    figs: list[tuple[str, Callable[[], Any]]] = []
    for b in range(min(len(lengths), MAX_PATHS)):
        figs.append(
            (
                f"Sequence {b} ({int(lengths[b])} steps) with its Viterbi path, the most probable sequence of "
                "hidden states: the background is coloured by the state, the black steps are that state's "
                "mean.",
                lambda b=b: plots.plot_state_path(result, sequence=b),
            )
        )
    figs.append(
        (
            "Transition matrix: row i, column j is the probability of moving from state i to state j in one step.",
            lambda: plots.plot_transition_matrix(result),
        )
    )
    return figs


def hmm_words(result: Any) -> list[tuple[str, str]]:
    """Where the chain spends its time, and how long it stays, in plain words."""
    params = hmm_parameters(result)
    trans = params["transmat"]
    latent = params["latent"]
    path = np.asarray(result.map_assignments()[latent])
    states = path[path >= 0].astype(int)
    k = trans.shape[0]
    counts = np.bincount(states, minlength=k)
    stay = np.diag(trans)
    durations = ", ".join(f"{latent}={j}: {1.0 / max(1.0 - s, 1e-12):.3g}" for j, s in enumerate(stay))
    n_seq = len(params["lengths"])
    out = [
        (
            "ok",
            f"Viterbi path over {n_seq} sequence{'s' if n_seq > 1 else ''} ({len(states)} steps): steps per "
            f"state {', '.join(str(int(c)) for c in counts)}. Expected stay in each state, 1 / (1 - p(stay)): "
            f"{durations} steps.",
        )
    ]
    empty = [j for j in range(k) if counts[j] == 0]
    if empty:
        out.append(("warn", f"State(s) {empty} never lie on the Viterbi path: fewer states may do."))
    return out


def _state_labels(latent: str, k: int) -> list[str]:
    return [f"{latent}={j}" for j in range(k)]


def add_hmm_tables(report: Report, result: Any) -> None:
    """The transition matrix with the start probabilities, and the state means (or emission probabilities)."""
    import pandas as pd  # pandas is slow to import and only the tables need it

    params = hmm_parameters(result)
    latent = params["latent"]
    k = params["transmat"].shape[0]
    labels = _state_labels(latent, k)
    report.heading("Hidden Markov chain", 3)
    trans = pd.DataFrame(params["transmat"], index=[f"from {s}" for s in labels], columns=[f"to {s}" for s in labels])
    trans.insert(0, "start", params["startprob"])
    trans.index.name = "state"
    report.table(
        trans,
        caption="start: the probability of each state at the first step; then each row is the "
        "distribution of the next state given this one (rows sum to 1)",
    )
    if "means" in params:
        means = params["means"].reshape(k, -1)
        columns = params["columns"] or [f"x[{d}]" for d in range(means.shape[1])]
        frame = pd.DataFrame(means, index=labels, columns=columns)
        frame.index.name = "state"
        report.table(frame, caption="the emission mean of each state, in the units of the data")
    elif "probs" in params:
        frame = pd.DataFrame(
            params["probs"], index=labels, columns=[f"symbol {c}" for c in range(params["probs"].shape[1])]
        )
        frame.index.name = "state"
        report.table(frame, caption="the emission probabilities of each state (rows sum to 1)")
