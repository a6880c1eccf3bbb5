"""The one convergence rule of every EM loop (mixtures, chains, the generic route), like hmmlearn's ConvergenceMonitor.

Rule
----
After each E-step the loop reports the log-likelihood it just computed.  The fit has *converged*, and stops, when
the log-likelihood changed by less than ``tol`` since the previous report: ``abs(history[-1] - history[-2]) <
tol``.  It is reported converged only then: a fit stopped by ``max_iter``, a callback or an interruption is not.

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
    tol : float
        Convergence when the reported value changes by less than ``tol`` (absolute change).

    Attributes
    ----------
    history : list of float
        Every reported value, in order.
    converged : bool
        Whether the last report met the tolerance.
    """

    tol: float
    history: list[float] = field(default_factory=list)
    converged: bool = False

    def report(self, value: float) -> bool:
        """Record ``value``; True when it is within ``tol`` of the previous one (the loop should stop, converged)."""
        self.history.append(float(value))
        if len(self.history) >= 2 and abs(self.history[-1] - self.history[-2]) < self.tol:
            self.converged = True
        return self.converged

    def fixed_point(self) -> bool:
        """The loop cannot move (e.g. the generic M-step found no better parameters): a change of 0, same rule."""
        self.converged = 0.0 < self.tol
        return self.converged


def not_converged_message(max_iter: int, tol: float, what: str = "EM") -> str:
    """The text of the ConvergenceWarning of a fit that used all ``max_iter`` iterations."""
    return (
        f"{what} did not converge in {max_iter} iterations: the last change of the mean log-likelihood per data "
        f"point was above tol={tol}. Increase max_iter or tol."
    )
