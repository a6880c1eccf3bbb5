"""The one convergence rule of every EM loop (mixtures, chains, the generic route), like hmmlearn's ConvergenceMonitor.

Rule
----
After each E-step the loop reports the log-likelihood it just computed.  The fit has *converged*, and stops, when
the log-likelihood changed by less than ``tol`` since the previous report: ``abs(history[-1] - history[-2]) <
tol``.  It is reported converged only then: a fit stopped by ``max_iter``, a callback or an interruption is not.
An iteration that cannot move the parameters (the generic route's rejected M-step) reports the previous value
again: a change of 0, judged by the same rule.

``tol=None`` switches the test off: no change stops the loop, every one of the ``max_iter`` iterations runs (only a
callback, or a failure that warns, such as a NaN, stops it sooner), the fit is reported not converged and no
``ConvergenceWarning`` is issued (none was asked for).  ``tol=0`` runs every iteration too (no change is below 0)
but still warns that the fit did not converge.  Iterations and history, per route: the closed-form kernels
(mixtures, chains) score each iteration's E-step before its M-step, so ``len(history) == n_iter``; the generic
route scores the start and then each iteration's result, so ``len(history) == n_iter + 1``.  Either way
``history[i]`` is the log-likelihood after ``i`` M-steps.

Through ``lvm.infer(..., method="em")`` the reported value is always the mean log-likelihood per data point (per
observation for chains), so ``tol`` means the same on every route.  The kernels keep their reference libraries'
units: :func:`~ppl_lvm.em.mixture.fit_mixture` reports the mean per point (scikit-learn's ``lower_bounds_``),
:func:`~ppl_lvm.em.hmm.fit_hmm` the total over all sequences (hmmlearn's ``monitor_.history``; the EM backend passes
``tol * n_observations``).  The change is taken in absolute value, as scikit-learn does: exact EM never lowers the
log-likelihood, so the sign only matters for rounding noise, which counts as no change.  (hmmlearn compares the
signed increase; the two agree unless the log-likelihood falls by more than ``tol``.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ConvergenceMonitor", "not_converged_message"]


@dataclass
class ConvergenceMonitor:
    """Records the log-likelihood of each E-step and says when the fit has converged.

    Parameters
    ----------
    tol : float or None
        Convergence when the reported value changes by less than ``tol`` (absolute change); ``None``: never
        (every iteration runs).

    Attributes
    ----------
    history : list of float
        Every reported value, in order.
    converged : bool
        Whether the last report met the tolerance.
    """

    tol: float | None
    history: list[float] = field(default_factory=list)
    converged: bool = False

    def report(self, value: float) -> bool:
        """Record ``value``; True when it is within ``tol`` of the previous one (the loop should stop, converged)."""
        self.history.append(float(value))
        if self.tol is not None and len(self.history) >= 2 and abs(self.history[-1] - self.history[-2]) < self.tol:
            self.converged = True
        return self.converged

    def fixed_point(self) -> bool:
        """The loop cannot move (e.g. the generic M-step found no better parameters): the previous value again.

        A change of 0, the same rule: converged when ``0 < tol``.  Needs a previous report.
        """
        return self.report(self.history[-1])


def not_converged_message(max_iter: int, tol: float | None, what: str = "EM") -> str:
    """The text of the ConvergenceWarning of a fit that used all ``max_iter`` iterations."""
    return (
        f"{what} did not converge in {max_iter} iterations: the last change of the mean log-likelihood per data "
        f"point was above tol={tol}. Increase max_iter or tol."
    )
