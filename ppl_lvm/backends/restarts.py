"""The one restart loop: ``n_init`` independent fits, all kept, the best returned, one warning of each kind.

Every backend and every EM route fits through :func:`run_restarts`; a backend supplies only ``fit_once`` (one fit
from one seed) and ``score`` (higher is better), as scikit-learn's ``BaseMixture.fit_predict`` owns ``n_init`` for
every mixture.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TypeVar

from ..errors import ConvergenceWarning, FitError, InferenceWarning

__all__ = ["run_restarts"]

O = TypeVar("O")


def _reemit(caught: list[warnings.WarningMessage], seen: set) -> None:
    for w in caught:
        key = (w.category, str(w.message))
        if key in seen:
            continue
        seen.add(key)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def run_restarts(
    fit_once: Callable[[int, int], O],
    *,
    n_init: int,
    seed: int,
    score: Callable[[O], float],
    name: str,
) -> O:
    """Run ``fit_once(restart, seed + restart)`` for ``restart = 0 .. n_init - 1`` and return the best outcome.

    Parameters
    ----------
    fit_once : callable
        ``fit_once(restart, seed) -> outcome``; raises :class:`~ppl_lvm.errors.FitError` when the fit fails.
    n_init : int
        Number of restarts.
    seed : int
        Seed of restart 0; restart ``r`` uses ``seed + r``.
    score : callable
        ``score(outcome) -> float``, higher is better; a NaN score ranks last.
    name : str
        The route's name, used in messages.

    Returns
    -------
    The outcome with the highest score; with ``n_init > 1`` its ``restarts`` lists every finished restart in the
    order run (itself included).

    Notes
    -----
    A restart that raises ``FitError`` is dropped with one :class:`~ppl_lvm.errors.InferenceWarning`; its error is
    raised only when every restart fails. Ctrl-C during a restart keeps the best finished restart (marked
    ``interrupted``, one warning) and stops the loop; with none finished it propagates. Warnings raised inside the
    restarts are passed on once each; the :class:`~ppl_lvm.errors.ConvergenceWarning` only for the kept fit.
    """
    fits: list[O] = []
    convergence: list[list[warnings.WarningMessage]] = []  # per finished fit: only the kept one's are passed on
    others: list[warnings.WarningMessage] = []
    failures: list[FitError] = []
    dropped: list[str] = []
    interrupted_at: int | None = None
    for restart in range(n_init):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcome = fit_once(restart, int(seed) + restart)
            except FitError as err:
                failures.append(err)
                dropped.append(f"restart {restart} (seed {int(seed) + restart}) of {name} failed and is dropped: {err}")
                outcome = None
            except KeyboardInterrupt:
                if not fits:
                    raise
                interrupted_at = restart
                outcome = None
        others.extend(w for w in caught if not issubclass(w.category, ConvergenceWarning))
        if interrupted_at is not None:
            break
        if outcome is None:
            continue
        fits.append(outcome)
        convergence.append([w for w in caught if issubclass(w.category, ConvergenceWarning)])
        if getattr(outcome, "interrupted", False):  # Ctrl-C inside the fit ends the restarts too
            break
    seen: set = set()
    _reemit(others, seen)
    if not fits:
        raise failures[-1]
    scores = [float(score(f)) for f in fits]
    scores = [s if math.isfinite(s) else -math.inf for s in scores]
    best_index = max(range(len(fits)), key=scores.__getitem__)
    best = fits[best_index]
    if n_init > 1:
        for message in dropped:
            warnings.warn(message, InferenceWarning, stacklevel=3)
    if interrupted_at is not None:
        best.interrupted = True
        warnings.warn(f"{name} interrupted (Ctrl-C) during restart {interrupted_at + 1} of {n_init}; the best "
                      "finished restart is kept", InferenceWarning, stacklevel=3)
    _reemit(convergence[best_index], seen)
    if n_init > 1:
        for fit in fits:
            fit.restarts = []
        best.restarts = list(fits)
    return best
